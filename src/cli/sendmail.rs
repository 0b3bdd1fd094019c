//! `sendmail` (and `mailq`, `newaliases`): the Sendmail-compatible command local programs
//! use to send mail, as Postfix's sendmail(1) provides it. One binary, chosen by `argv[0]`.
//!
//! # Options (Postfix's set; getopt rules: options end at the first non-option or `--`)
//!
//! ```text
//! -t          recipients from To:, Cc:, Bcc: (or Resent-*), added to those on the command
//!             line (Postfix >= 2.1; classic Sendmail would remove them instead)
//! -i, -oi     a line with only "." does not end the input (without: it does)
//! -f SENDER, -r SENDER   envelope sender ("<>" or "": the null sender)
//! -F NAME     full name for an added From: (default: $NAME, else the passwd GECOS field)
//! -bs         SMTP on stdin/stdout (the SMTP server core; bare LF is taken as CR LF)
//! -bp         = mailq;   -bi, -I  = newaliases;   -q  = `poshta queue flush`
//! -bm         deliver (the default);  -bh, -bH, -qINTERVAL: accepted, nothing to do
//! -v          say on stderr where the message went (Postfix would mail a delivery report)
//! -C PATH     main.cf, or the directory holding it
//! -o X        -oi as above; -oe*, -od*, -om, -o7, -o8 accepted silently; any other -oX is
//!             ignored with a warning
//! -B TYPE     7BIT or 8BITMIME (checked, not needed: the queue keeps 8-bit data)
//! -A -G -L -N -O -R -U -V -X -c -e -h -m -p -x: accepted and ignored, as Postfix does
//! ```
//! `-bd`, `-bv`, `-n`, `-qR`, `-qI` are refused with EX_USAGE (`poshta serve` runs the
//! daemon).
//!
//! # Configuration
//!
//! `-C`, else $POSHTA_CONFIG, else /etc/poshta/main.cf when it exists (also for users who
//! are not root: it describes the system's mail), else the per-user default. A main.cf
//! owned by root gets the appliance defaults (queue in /var/spool/poshta) whoever reads it.
//!
//! # Sender identity
//!
//! The envelope sender is the login name of the real uid (getpwuid), qualified with
//! myorigin, unless -f says otherwise. Any user may use -f, as with Postfix's default
//! (local_login_sender_maps = static:*); the daemon logs the uid that submitted
//! (`uid=1000 from=<...>`) and writes it in the Received: header, so a chosen sender is
//! never anonymous. Bare names (`nick2`) on the command line, in -f, in address headers and
//! in -bs MAIL FROM / RCPT TO (`<postmaster>` too) are qualified with myorigin (Postfix's
//! append_at_myorigin).
//!
//! # Handoff and exit status
//!
//! The message is first processed into an unnamed temporary file (`sendmail_msg`), then
//! sent to the daemon over `$queue_directory/public/pickup` (`net::pickup`). The daemon
//! answers once the message is durable in the queue. When the daemon is not running (or
//! answers a temporary error), the same bytes go to `$queue_directory/maildrop/` (temporary
//! name, fsync, rename, fsync of the directory; a user who may not open the directory
//! syncs the file system instead) and the daemon imports them when it runs. Exit 0 only
//! when the message is durable in one of the two.
//!
//! sysexits.h: 64 EX_USAGE (bad option, no recipients), 65 EX_DATAERR (over
//! message_size_limit, unreadable input, -t with a header over the limit, too many
//! recipients), 67 EX_NOUSER (an address that is not an address), 69 EX_UNAVAILABLE,
//! 71 EX_OSERR (no passwd entry for the uid), 75 EX_TEMPFAIL (neither the daemon nor
//! maildrop took the message), 78 EX_CONFIG (main.cf has errors). Each failure prints one
//! line `sendmail: fatal: REASON` on stderr.
//!
//! Over message_size_limit is EX_DATAERR, a permanent failure: retrying the same input
//! cannot succeed (the SMTP side answers 552 for the same reason).

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sendmail_msg::{command_line_addresses, MsgError, Options, Processor};
use crate::config::Loaded;
use crate::net::pickup::{self, Submission};

pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOUSER: i32 = 67;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_OSERR: i32 = 71;
pub const EX_TEMPFAIL: i32 = 75;
pub const EX_CONFIG: i32 = 78;

/// The system configuration local programs use by default.
const SYSTEM_CONFIG: &str = "/etc/poshta/main.cf";

/// What the command is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enqueue,
    /// -bs
    Smtp,
    /// -bp, mailq
    ListQueue,
    /// -q
    FlushQueue,
    /// -bi, -I, newaliases
    NewAliases,
    /// -bh, -bH, -qINTERVAL: nothing to do.
    Ignore,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub mode: Mode,
    pub extract: bool,
    pub dot_ends: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub verbose: u32,
    pub config: Option<PathBuf>,
    pub recipients: Vec<String>,
    /// Warnings to print (ignored -o options).
    pub warnings: Vec<String>,
}

/// Parse options the way Postfix's sendmail does (getopt without permutation).
pub fn parse_flags(mode: Mode, args: &[String]) -> Result<Flags, String> {
    // Options that take an argument (Postfix's GETOPT_LIST).
    const WITH_ARG: &[u8] = b"ABCFLNORVXbefhopqr";
    let mut f = Flags {
        mode,
        extract: false,
        dot_ends: true,
        sender: None,
        full_name: None,
        verbose: 0,
        config: None,
        recipients: Vec::new(),
        warnings: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if a == "-q" {
            // Not getopt-compatible (Postfix special-cases it too).
            f.mode = Mode::FlushQueue;
            i += 1;
            continue;
        }
        let bytes = a.as_bytes();
        let mut j = 1;
        while j < bytes.len() {
            let c = bytes[j];
            j += 1;
            let optarg = if WITH_ARG.contains(&c) {
                let v = if j < bytes.len() {
                    a[j..].to_string()
                } else {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("option requires an argument -- '{}'", c as char))?
                };
                j = bytes.len();
                Some(v)
            } else {
                None
            };
            let arg = optarg.unwrap_or_default();
            match c {
                b't' => f.extract = true,
                b'i' => f.dot_ends = false,
                b'v' => f.verbose += 1,
                b'I' => f.mode = Mode::NewAliases,
                b'f' | b'r' => f.sender = Some(arg),
                b'F' => f.full_name = Some(arg),
                b'C' => f.config = Some(PathBuf::from(arg)),
                b'b' => match arg.as_bytes().first() {
                    Some(b'm') => f.mode = Mode::Enqueue,
                    Some(b's') => f.mode = Mode::Smtp,
                    Some(b'p') => f.mode = Mode::ListQueue,
                    Some(b'i') => f.mode = Mode::NewAliases,
                    Some(b'h' | b'H') => f.mode = Mode::Ignore,
                    Some(b'd') => return Err("-bd: daemon mode is `poshta serve`".into()),
                    _ => return Err(format!("unsupported: -b{arg}")),
                },
                b'o' => match arg.as_bytes().first() {
                    Some(b'i') => f.dot_ends = false,
                    // Error mode, delivery mode (-odi, -odb, -odq), "me too", 7/8 bit:
                    // common in scripts and meaningless here.
                    Some(b'e' | b'd' | b'm' | b'7' | b'8') => {}
                    _ => f.warnings.push(format!("-o{arg} option ignored")),
                },
                b'B' => {
                    if arg != "7BIT" && arg != "8BITMIME" {
                        return Err("-B option needs 8BITMIME or 7BIT".into());
                    }
                }
                b'q' => match arg.as_bytes().first() {
                    Some(b'0'..=b'9') => f.mode = Mode::Ignore,
                    _ => return Err(format!("-q{arg} is not implemented")),
                },
                b'n' => return Err("-n option not supported".into()),
                // Accepted and ignored, as by Postfix.
                b'A' | b'G' | b'L' | b'N' | b'O' | b'R' | b'U' | b'V' | b'X' | b'c' | b'e' | b'h' | b'm' | b'p'
                | b'x' => {}
                _ => return Err(format!("invalid option -- '{}'", c as char)),
            }
        }
        i += 1;
    }
    f.recipients = args[i.min(args.len())..].to_vec();
    if f.extract && f.mode != Mode::Enqueue {
        return Err("-t can be used only in delivery mode".into());
    }
    Ok(f)
}

/// The main.cf for local programs (see the module docs) and its settings.
pub fn local_config(explicit: Option<&Path>) -> Result<(PathBuf, Loaded), String> {
    let path = match explicit {
        Some(p) if p.is_dir() => p.join("main.cf"),
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("POSHTA_CONFIG") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ if Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
            _ => crate::config::config_path(None),
        },
    };
    let mut env = crate::config::Env::system();
    if !env.is_root {
        // A root-owned main.cf describes the system's mail system: its defaults apply.
        env.is_root = std::fs::metadata(&path).is_ok_and(|m| m.uid() == 0);
    }
    let loaded = crate::config::load_env(&path, &env).map_err(|e| format!("{}: {e}", path.display()))?;
    if loaded.has_errors() {
        let first = loaded
            .diagnostics
            .iter()
            .find(|d| d.severity == crate::config::Severity::Error)
            .map(|d| d.to_string())
            .unwrap_or_default();
        return Err(format!("{first} (run `poshta check`)"));
    }
    Ok((path, loaded))
}

/// Entry point for `argv[0]` = sendmail / mailq / newaliases.
pub fn main(prog: &str, args: &[String]) -> i32 {
    let mode = match prog {
        "mailq" => Mode::ListQueue,
        "newaliases" => Mode::NewAliases,
        _ => Mode::Enqueue,
    };
    let fatal = |code: i32, msg: &str| {
        eprintln!("{prog}: fatal: {msg}");
        code
    };
    let flags = match parse_flags(mode, args) {
        Ok(f) => f,
        Err(e) => return fatal(EX_USAGE, &e),
    };
    for w in &flags.warnings {
        eprintln!("{prog}: warning: {w}");
    }
    let (_, loaded) = match local_config(flags.config.as_deref()) {
        Ok(x) => x,
        Err(e) => return fatal(EX_CONFIG, &e),
    };
    let s = &loaded.settings;
    let no_recipients = |what: &str| {
        if flags.recipients.is_empty() {
            None
        } else {
            Some(fatal(EX_USAGE, &format!("{what} mode requires no recipient")))
        }
    };
    match flags.mode {
        Mode::Ignore => 0,
        Mode::ListQueue => {
            no_recipients("display queue").unwrap_or_else(|| super::queue::run_in(&s.queue_directory, &[]))
        }
        Mode::FlushQueue => no_recipients("flush queue")
            .unwrap_or_else(|| super::queue::run_in(&s.queue_directory, &["flush".to_string()])),
        Mode::NewAliases => {
            no_recipients("alias initialization").unwrap_or_else(|| super::newaliases::run(prog, &loaded))
        }
        Mode::Smtp => no_recipients("stand-alone").unwrap_or_else(|| smtp_mode(prog, &flags, &loaded)),
        Mode::Enqueue => match enqueue(&flags, &loaded) {
            Ok(done) => {
                if flags.verbose > 0 {
                    eprintln!("{prog}: {done}");
                }
                0
            }
            Err((code, msg)) => fatal(code, &msg),
        },
    }
}

/// The submitting user: login name and full name (passwd GECOS up to the first comma, `&`
/// as the capitalised login, as Postfix's fullname() reads it).
fn login() -> Result<(String, String), (i32, String)> {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => {
            let gecos = u.gecos.to_string_lossy();
            let first = gecos.split(',').next().unwrap_or("").to_string();
            let mut cap = u.name.clone();
            if let Some(c) = cap.get(..1) {
                cap.replace_range(..1, &c.to_ascii_uppercase());
            }
            Ok((u.name.clone(), first.replace('&', &cap)))
        }
        _ => Err((EX_OSERR, format!("no login name found for user ID {}", uid.as_raw()))),
    }
}

/// The null sender, a qualified address, or an error for -f.
fn envelope_sender(raw: &str, origin: &str) -> Result<String, String> {
    let t = raw.trim();
    let t = t.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(t);
    if t.is_empty() {
        return Ok(String::new());
    }
    pickup::check_address(&qualify(t, origin), true).map_err(|e| format!("-f: {e}"))
}

/// A bare name (no `@`) gets `@origin`, as Postfix's cleanup does to every envelope address
/// (append_at_myorigin); `postmaster` included: Postfix has no exception for it there.
fn qualify(addr: &str, origin: &str) -> String {
    if addr.contains('@') {
        addr.to_string()
    } else {
        format!("{addr}@{origin}")
    }
}

/// `addr (Full Name)` for an added From: (a comment, RFC 5322 §3.2.2: parentheses and
/// backslashes in the name are escaped).
fn from_value(sender: &str, full_name: &str) -> String {
    if sender.is_empty() {
        return "MAILER-DAEMON".into();
    }
    let name: String = full_name
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '(' | ')' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    if name.trim().is_empty() {
        sender.to_string()
    } else {
        format!("{sender} ({})", name.trim())
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        // No /dev/urandom (a broken chroot): time and pid still make names unique.
        let (secs, nanos) = crate::time::now();
        let seed = secs ^ ((nanos as u64) << 20) ^ std::process::id() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An unnamed temporary file for the processed message ($TMPDIR or /tmp).
fn temp_file() -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode as FsMode, OFlags};
    let dir = std::env::temp_dir();
    if let Ok(fd) = rustix::fs::open(
        &dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        FsMode::from_raw_mode(0o600),
    ) {
        return Ok(std::fs::File::from(fd));
    }
    // No O_TMPFILE on this file system: a named file, unlinked at once.
    for _ in 0..16 {
        let p = dir.join(format!("poshta-sendmail-{}-{}", std::process::id(), random_hex(8)));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&p)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no unique temporary file name"))
}

/// The values a message gets when it lacks Message-ID:, Date: or From:.
fn fill_in(s: &crate::config::Settings, sender: &str, full_name: &str) -> (String, String, String) {
    let now = crate::time::now_unix();
    (
        format!(
            "<{}.{:x}{}@{}>",
            crate::time::compact(now),
            std::process::id(),
            random_hex(4),
            s.myhostname
        ),
        crate::time::rfc5322(now),
        from_value(sender, full_name),
    )
}

/// A message being processed into its temporary file.
type MsgWriter = Processor<std::io::BufWriter<std::fs::File>>;

/// Where a message went.
pub enum Handed {
    Queued(String),
    Dropped(PathBuf),
}

impl std::fmt::Display for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handed::Queued(q) => write!(f, "queued as {q}"),
            Handed::Dropped(p) => write!(
                f,
                "the mail system is not running; message saved as {} for delivery when it starts",
                p.display()
            ),
        }
    }
}

/// Normal mode: read stdin, process, hand off.
fn enqueue(flags: &Flags, loaded: &Loaded) -> Result<Handed, (i32, String)> {
    let s = &loaded.settings;
    let (login, gecos) = login()?;
    let sender = match &flags.sender {
        Some(f) => envelope_sender(f, &s.myorigin).map_err(|e| (EX_USAGE, e))?,
        None => envelope_sender(&login, &s.myorigin).map_err(|e| (EX_OSERR, e))?,
    };
    let mut recipients = Vec::new();
    for a in &flags.recipients {
        let found = command_line_addresses(a, &s.myorigin);
        if found.is_empty() {
            return Err((EX_NOUSER, format!("{a}: bad address syntax")));
        }
        recipients.extend(found);
    }
    if recipients.is_empty() && !flags.extract {
        return Err((
            EX_USAGE,
            format!(
                "{login}({}): Recipient addresses must be specified on the command line or via the -t option",
                nix::unistd::getuid()
            ),
        ));
    }
    let full_name = flags
        .full_name
        .clone()
        .or_else(|| std::env::var("NAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or(gecos);
    let (message_id, date, from) = fill_in(s, &sender, &full_name);
    let opts = Options {
        extract: flags.extract,
        dot_ends: flags.dot_ends,
        myorigin: s.myorigin.clone(),
        size_limit: s.message_size_limit,
        message_id,
        date,
        from,
    };
    let tmp = temp_file().map_err(|e| (EX_TEMPFAIL, format!("temporary file: {e}")))?;
    let mut p = Processor::new(opts, std::io::BufWriter::new(tmp));
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut buf = vec![0u8; 64 * 1024];
    let msg_err = |e: MsgError| match e {
        MsgError::Write(_) => (EX_TEMPFAIL, e.to_string()),
        _ => (EX_DATAERR, e.to_string()),
    };
    // Bounded by the input: EOF, a lone ".", or message_size_limit ends it.
    while !p.ended() {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((EX_DATAERR, format!("error reading input: {e}"))),
        };
        p.push(&buf[..n]).map_err(msg_err)?;
    }
    let (extracted, out, size) = p.finish().map_err(msg_err)?;
    let mut body = out
        .into_inner()
        .map_err(|e| (EX_TEMPFAIL, format!("temporary file: {}", e.error())))?;
    recipients.extend(extracted);
    dedupe(&mut recipients);
    if recipients.is_empty() {
        return Err((
            EX_USAGE,
            format!(
                "{login}({}): No recipient addresses found in message header",
                nix::unistd::getuid()
            ),
        ));
    }
    if recipients.len() > crate::limits::PICKUP_RECIPIENTS_MAX {
        return Err((
            EX_DATAERR,
            format!("too many recipients (at most {})", crate::limits::PICKUP_RECIPIENTS_MAX),
        ));
    }
    for r in recipients.iter_mut() {
        *r = pickup::check_address(r, false).map_err(|e| (EX_NOUSER, e))?;
    }
    let sub = Submission {
        sender,
        recipients,
        size,
    };
    handoff(&s.queue_directory, &sub, &mut body)
}

/// Keep the first of each address (compared case-insensitively), as Postfix's sort-uniq.
fn dedupe(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|a| seen.insert(a.to_ascii_lowercase()));
}

/// Give the message to the daemon, else to maildrop (module docs).
pub fn handoff(queue_dir: &Path, sub: &Submission, body: &mut std::fs::File) -> Result<Handed, (i32, String)> {
    let why = match via_socket(queue_dir, sub, body) {
        Ok(Ok(qid)) => return Ok(Handed::Queued(qid)),
        Ok(Err(refused)) => return Err(refused),
        Err(why) => why,
    };
    match to_maildrop(queue_dir, sub, body) {
        Ok(p) => Ok(Handed::Dropped(p)),
        Err(e) => Err((EX_TEMPFAIL, format!("cannot queue the message: {why}; maildrop: {e}"))),
    }
}

/// `Ok(Ok(qid))` queued; `Ok(Err(..))` refused for good; `Err(why)`: try maildrop.
fn via_socket(
    queue_dir: &Path,
    sub: &Submission,
    body: &mut std::fs::File,
) -> Result<Result<String, (i32, String)>, String> {
    let path = pickup::socket_path(queue_dir);
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = Some(Duration::from_secs(crate::limits::PICKUP_CLIENT_TIMEOUT_SECS * 2));
    stream.set_read_timeout(t).map_err(|e| e.to_string())?;
    stream.set_write_timeout(t).map_err(|e| e.to_string())?;
    let sent = (|| -> std::io::Result<()> {
        let mut w = &stream;
        w.write_all(&sub.encode_head())?;
        body.seek(std::io::SeekFrom::Start(0))?;
        let n = std::io::copy(&mut body.take(sub.size), &mut w)?;
        if n != sub.size {
            return Err(std::io::Error::other("temporary file shorter than its size"));
        }
        w.flush()
    })();
    // The daemon may have refused the head and stopped reading: its reply says why.
    let mut line = String::new();
    let got = BufReader::new(&stream).take(1024).read_line(&mut line);
    match (sent, got) {
        (_, Ok(n)) if n > 0 && line.ends_with('\n') => {
            let line = line.trim_end();
            if let Some(qid) = line.strip_prefix("OK ") {
                return Ok(Ok(qid.to_string()));
            }
            if let Some(rest) = line.strip_prefix("ERR ") {
                let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let code: i32 = code.parse().unwrap_or(EX_TEMPFAIL);
                if code == EX_TEMPFAIL {
                    return Err(format!("the mail system said: {text}"));
                }
                return Ok(Err((code, text.to_string())));
            }
            Err(format!("bad reply from the mail system: {line:.80}"))
        }
        (Err(e), _) => Err(format!("{}: {e}", path.display())),
        (_, Err(e)) => Err(format!("{}: no reply: {e}", path.display())),
        _ => Err(format!("{}: no reply", path.display())),
    }
}

/// Write the submission into maildrop/ (module docs of net::pickup): durable on return.
fn to_maildrop(queue_dir: &Path, sub: &Submission, body: &mut std::fs::File) -> Result<PathBuf, String> {
    let dir = pickup::maildrop_dir(queue_dir);
    let rand = random_hex(16);
    let pid = std::process::id();
    let tmp = dir.join(format!(".tmp-{pid}-{rand}"));
    let fd = rustix::fs::open(
        &tmp,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut file = std::fs::File::from(fd);
    let written = (|| -> std::io::Result<()> {
        // 0644 whatever the umask: the daemon runs as another user and must read it; the
        // random name in an unlistable directory keeps it from everyone else.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(&sub.encode_head())?;
        body.seek(std::io::SeekFrom::Start(0))?;
        let n = std::io::copy(&mut body.take(sub.size), &mut file)?;
        if n != sub.size {
            return Err(std::io::Error::other("temporary file shorter than its size"));
        }
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", tmp.display()));
    }
    let name = dir.join(format!("{}-{pid}-{rand}", crate::time::now_unix()));
    if let Err(e) = std::fs::rename(&tmp, &name) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("rename into {}: {e}", dir.display()));
    }
    // The new name must be durable too. Others may not open a 1733 directory (no read
    // permission): then flush the whole file system, which includes the directory entry.
    let synced = match std::fs::File::open(&dir) {
        Ok(d) => d.sync_all(),
        Err(_) => rustix::fs::syncfs(&file).map_err(std::io::Error::from),
    };
    synced.map_err(|e| format!("sync {}: {e}", dir.display()))?;
    Ok(name)
}

/// -bs: an SMTP dialogue on stdin/stdout, with the SMTP server core. Each message is
/// processed like a `sendmail` message (without -t) and handed off the same way; 250 is
/// sent only once it is durable.
fn smtp_mode(prog: &str, flags: &Flags, loaded: &Loaded) -> i32 {
    let (_, gecos) = match login() {
        Ok(x) => x,
        Err((code, msg)) => {
            eprintln!("{prog}: fatal: {msg}");
            return code;
        }
    };
    let full_name = flags.full_name.clone().unwrap_or(gecos);
    smtp_session(
        prog,
        &full_name,
        &loaded.settings,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    )
}

/// The -bs dialogue on `input`/`output`. MAIL FROM and RCPT TO without a domain are
/// qualified with myorigin (Postfix's sendmail -bs: its cleanup's append_at_myorigin), so
/// `RCPT TO:<nick>` is `nick@myorigin` and `<postmaster>` is `postmaster@myorigin`; the
/// null sender `<>` stays empty.
fn smtp_session(
    prog: &str,
    full_name: &str,
    s: &crate::config::Settings,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> i32 {
    use crate::proto::reply::Reply;
    use crate::proto::smtp::server::{BareNewline, Event, HeaderFix, Server, SessionParams};
    let params = SessionParams {
        hostname: s.myhostname.clone(),
        client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        client_name: "localhost".into(),
        bare_newline: BareNewline::Normalize,
        message_size_limit: s.message_size_limit,
        recipient_limit: s.smtpd_recipient_limit.min(crate::limits::PICKUP_RECIPIENTS_MAX),
        extra_ehlo: Vec::new(),
        tls_active: false,
        starttls_offered: false,
        auth_offered: false,
        auth_requires_tls: true,
        auth_required: false,
    };
    let mut server = Server::new(params);
    server.accept_bare_local_rcpt();
    let mut buf = vec![0u8; crate::limits::SESSION_READ_BYTES];
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    // The message being received, or why it failed (answered at its end).
    let mut msg: Option<Result<MsgWriter, (i32, String)>> = None;
    let mut last_cr = false;
    loop {
        while let Some(ev) = server.poll() {
            match ev {
                Event::Helo { .. } => {
                    from = None;
                    rcpts.clear();
                    msg = None;
                    server.accept();
                }
                Event::Mail { from: f, .. } => {
                    msg = None;
                    rcpts.clear();
                    match envelope_sender(&f, &s.myorigin) {
                        Ok(a) => {
                            from = Some(a);
                            server.accept();
                        }
                        Err(_) => server.reject(Reply::owned(553, format!("5.1.7 <{f}>: bad sender address syntax"))),
                    }
                }
                Event::Rcpt { to } => match pickup::check_address(&qualify(&to, &s.myorigin), false) {
                    Ok(a) => {
                        rcpts.push(a);
                        server.accept();
                    }
                    // Qualified, it can outgrow the path limit (RFC 5321 §4.5.3.1.3).
                    Err(_) => server.reject(Reply::owned(501, format!("5.1.3 <{to}>: bad recipient address syntax"))),
                },
                Event::DataStart => {
                    let sender = from.clone().unwrap_or_default();
                    let (message_id, date, fromv) = fill_in(s, &sender, full_name);
                    let opts = Options {
                        extract: false,
                        // The core ended the data already; a "." line in it is content.
                        dot_ends: false,
                        myorigin: s.myorigin.clone(),
                        size_limit: s.message_size_limit,
                        message_id,
                        date,
                        from: fromv,
                    };
                    match temp_file() {
                        Ok(f) => {
                            msg = Some(Ok(Processor::new(opts, std::io::BufWriter::new(f))));
                            server.accept_data(Vec::new(), HeaderFix::default());
                        }
                        Err(e) => {
                            eprintln!("{prog}: warning: temporary file: {e}");
                            server.reject(Reply::new(451, "4.3.0 Error: queue file write error"));
                        }
                    }
                }
                Event::Body(bytes) => {
                    if let Some(Ok(p)) = msg.as_mut() {
                        if let Err(e) = p.push(&bytes) {
                            let code = if matches!(e, MsgError::Write(_)) {
                                EX_TEMPFAIL
                            } else {
                                EX_DATAERR
                            };
                            msg = Some(Err((code, e.to_string())));
                        }
                    }
                }
                Event::DataEnd { .. } => {
                    let reply = match msg.take() {
                        Some(Ok(p)) => {
                            let sub_rcpts = rcpts.clone();
                            let sender = from.clone().unwrap_or_default();
                            let done = p
                                .finish()
                                .map_err(|e| (EX_DATAERR, e.to_string()))
                                .and_then(|(_, w, size)| {
                                    let mut f = w.into_inner().map_err(|e| (EX_TEMPFAIL, e.error().to_string()))?;
                                    let sub = Submission {
                                        sender,
                                        recipients: sub_rcpts,
                                        size,
                                    };
                                    handoff(&s.queue_directory, &sub, &mut f)
                                });
                            data_reply(done)
                        }
                        Some(Err(e)) => data_reply(Err(e)),
                        None => Reply::new(451, "4.3.0 Error: queue file write error"),
                    };
                    rcpts.clear();
                    from = None;
                    server.finish_data(reply);
                }
                Event::DataAborted(_) | Event::Reset | Event::Quit => {
                    msg = None;
                    if !matches!(ev, Event::DataAborted(_)) {
                        rcpts.clear();
                        from = None;
                    }
                }
                // Neither is offered; the core refuses them before they get here.
                Event::StartTls => server.tls_failed(),
                Event::Auth { .. } => server.auth_failed(),
            }
        }
        let out = server.take_output();
        if !out.is_empty() && (output.write_all(&out).is_err() || output.flush().is_err()) {
            return EX_TEMPFAIL;
        }
        if server.is_closed() {
            return 0;
        }
        match input.read(&mut buf) {
            Ok(0) => server.eof(),
            Ok(n) => {
                // A local pipe has no smuggling risk: bare LF is taken as CR LF, so
                // scripts that write LF can end DATA with "\n.\n".
                let mut fixed = Vec::with_capacity(n + n / 16);
                for &b in &buf[..n] {
                    if b == b'\n' && !last_cr {
                        fixed.push(b'\r');
                    }
                    fixed.push(b);
                    last_cr = b == b'\r';
                }
                server.input(&fixed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => server.eof(),
        }
    }
}

fn data_reply(done: Result<Handed, (i32, String)>) -> crate::proto::reply::Reply {
    use crate::proto::reply::Reply;
    match done {
        Ok(Handed::Queued(q)) => Reply::owned(250, format!("2.0.0 Ok: queued as {q}")),
        Ok(Handed::Dropped(_)) => Reply::new(250, "2.0.0 Ok: queued in maildrop"),
        Err((EX_DATAERR, t)) if t.contains("too big") => Reply::new(552, "5.3.4 Error: message file too big"),
        Err((EX_TEMPFAIL, _)) => Reply::new(451, "4.3.0 Error: queue file write error"),
        Err((_, t)) => Reply::owned(554, format!("5.6.0 Error: {}", t.replace(['\r', '\n'], " "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, String> {
        parse_flags(Mode::Enqueue, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn common_script_flags() {
        let f = p(&["-t", "-oi", "-f", "root", "-F", "Cron Daemon"]).unwrap();
        assert!(f.extract && !f.dot_ends);
        assert_eq!(f.sender.as_deref(), Some("root"));
        assert_eq!(f.full_name.as_deref(), Some("Cron Daemon"));
        assert!(f.recipients.is_empty() && f.warnings.is_empty());
        let f = p(&["-i", "-fme@x", "-odi", "-oem", "a", "b@c"]).unwrap();
        assert!(!f.dot_ends);
        assert_eq!(f.sender.as_deref(), Some("me@x"));
        assert_eq!(f.recipients, vec!["a", "b@c"]);
        // Clustered switches, -r, -v twice, -- ends the options.
        let f = p(&["-tiv", "-v", "-r", "x", "--", "-weird"]).unwrap();
        assert!(f.extract && !f.dot_ends);
        assert_eq!((f.verbose, f.sender.as_deref()), (2, Some("x")));
        assert_eq!(f.recipients, vec!["-weird"]);
        // Options stop at the first recipient (Postfix's getopt does not permute).
        let f = p(&["a", "-t"]).unwrap();
        assert!(!f.extract);
        assert_eq!(f.recipients, vec!["a", "-t"]);
    }

    #[test]
    fn modes() {
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::ListQueue);
        assert_eq!(p(&["-bi"]).unwrap().mode, Mode::NewAliases);
        assert_eq!(p(&["-I"]).unwrap().mode, Mode::NewAliases);
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::FlushQueue);
        assert_eq!(p(&["-q30m"]).unwrap().mode, Mode::Ignore);
        assert_eq!(p(&["-bm", "x"]).unwrap().mode, Mode::Enqueue);
        assert_eq!(parse_flags(Mode::ListQueue, &[]).unwrap().mode, Mode::ListQueue);
        let c = p(&["-C", "/etc/x/main.cf", "-bp"]).unwrap();
        assert_eq!(c.config.as_deref(), Some(Path::new("/etc/x/main.cf")));
    }

    #[test]
    fn refusals_and_warnings() {
        assert!(p(&["-bd"]).is_err());
        assert!(p(&["-bv", "x"]).is_err());
        assert!(p(&["-n"]).is_err());
        assert!(p(&["-qRsite"]).is_err());
        assert!(p(&["-f"]).is_err());
        assert!(p(&["-Z"]).is_err());
        assert!(p(&["-B", "BINARYMIME"]).is_err());
        assert!(p(&["-t", "-bp"]).is_err());
        let f = p(&["-oX", "-o", "Y", "-oi", "r"]).unwrap();
        assert_eq!(f.warnings, vec!["-oX option ignored", "-oY option ignored"]);
        assert!(!f.dot_ends);
        // Ignored like Postfix: -N, -V, -X, -U, -m, -h 3.
        let f = p(&["-N", "never", "-V", "id", "-X", "log", "-U", "-m", "-h", "3", "r"]).unwrap();
        assert_eq!(f.recipients, vec!["r"]);
    }

    #[test]
    fn senders() {
        assert_eq!(envelope_sender("<>", "o").unwrap(), "");
        assert_eq!(envelope_sender("", "o").unwrap(), "");
        assert_eq!(
            envelope_sender("nick2", "mx.example.org").unwrap(),
            "nick2@mx.example.org"
        );
        assert_eq!(envelope_sender("<a@b.c>", "o").unwrap(), "a@b.c");
        assert!(envelope_sender("a b@c", "o").is_err());
        assert!(envelope_sender("a@b\r\nRCPT", "o").is_err());
        assert_eq!(from_value("", "x"), "MAILER-DAEMON");
        assert_eq!(from_value("a@b", ""), "a@b");
        assert_eq!(from_value("a@b", "Nick (2)\n"), "a@b (Nick \\(2\\))");
    }

    /// -bs with bare names: RCPT TO:<nick> and <postmaster> are qualified with myorigin, as
    /// Postfix's cleanup does; MAIL FROM:<> stays the null sender. No daemon runs, so the
    /// message lands in maildrop/, whose head shows the envelope handed off.
    #[test]
    fn bs_qualifies_bare_names() {
        let dir = crate::testutil::TempDir::new(&format!("poshta-sendmail-bs-{}", std::process::id()));
        std::fs::create_dir(pickup::maildrop_dir(dir.path())).unwrap();
        let env = crate::config::Env {
            is_root: false,
            hostname: "mx.example.org".into(),
        };
        let mut s = crate::config::load_defaults(&dir.join("main.cf"), &env).settings;
        s.queue_directory = dir.path().to_path_buf();
        s.myorigin = "origin.example".into();
        let script = "EHLO me\r\nMAIL FROM:<>\r\nRCPT TO:<nick>\r\nRCPT TO:<Postmaster>\r\n\
                      RCPT TO:<a@b.example>\r\nRCPT TO:<>\r\nRCPT TO:<x@>\r\n\
                      DATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\n\
                      MAIL FROM:<nick2>\r\nRCPT TO:<nick>\r\nDATA\r\n\r\nsecond\r\n.\r\nQUIT\r\n";
        let mut out = Vec::new();
        assert_eq!(
            smtp_session("sendmail", "Nick", &s, &mut script.as_bytes(), &mut out),
            0
        );
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("250 2.1.5").count(), 4, "{out}");
        assert_eq!(out.matches("501 5.1.3").count(), 2, "{out}");
        assert_eq!(out.matches("250 2.0.0 Ok: queued in maildrop").count(), 2, "{out}");
        let mut subs = Vec::new();
        for e in std::fs::read_dir(pickup::maildrop_dir(dir.path())).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            subs.push(pickup::parse_head(&data).unwrap().unwrap().0);
        }
        subs.sort_by(|a, b| a.sender.cmp(&b.sender));
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].sender, "");
        assert_eq!(
            subs[0].recipients,
            vec!["nick@origin.example", "Postmaster@origin.example", "a@b.example"]
        );
        assert_eq!(subs[1].sender, "nick2@origin.example");
        assert_eq!(subs[1].recipients, vec!["nick@origin.example"]);
    }

    #[test]
    fn dedupe_keeps_first() {
        let mut v = vec!["a@x".to_string(), "B@x".into(), "A@x".into(), "b@x".into()];
        dedupe(&mut v);
        assert_eq!(v, vec!["a@x", "B@x"]);
    }
}
