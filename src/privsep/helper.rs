//! The privileged delivery helper (`poshta delivery-helper -c MAIN.CF`): see the module doc
//! of [`crate::privsep`] for what it accepts and why.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, CWD};

use super::{read_frame, write_frame, Request, Response, Work};
use crate::config::Settings;
use crate::delivery::local::{self, Ident, LocalConfig, Meta};
use crate::delivery::mbox::MboxLock;
use crate::delivery::DeliveryError;
use crate::limits::{POP3_HOME_AGENTS_MAX, PRIVSEP_OPEN_MBOXES_MAX};
use crate::mailbox::agent::{Job, Place};
use crate::mailbox::system::{locate, Account, Location};
use crate::policy::aliases::{Aliases, Source, Target};

/// How long `OpenMbox` waits for another program's lock.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(3);

/// What the helper knows: its own reading of main.cf and alias_maps.
pub struct State {
    settings: Settings,
    local: LocalConfig,
    aliases: Arc<Aliases>,
    alias_stamps: Vec<Option<(i64, i64, u64, u64)>>,
    open: HashMap<u64, (PathBuf, MboxLock)>,
    next_handle: u64,
    /// Maildrop agents started for POP3 sessions, reaped as they exit.
    agents: Vec<std::process::Child>,
}

fn stamps(settings: &Settings) -> Vec<Option<(i64, i64, u64, u64)>> {
    crate::net::alias_paths(settings)
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
        })
        .collect()
}

impl State {
    pub fn new(settings: Settings) -> State {
        let mut st = State {
            local: LocalConfig::from_settings(&settings),
            aliases: Arc::new(Aliases::default()),
            alias_stamps: Vec::new(),
            settings,
            open: HashMap::new(),
            next_handle: 1,
            agents: Vec::new(),
        };
        st.load_aliases();
        st
    }

    fn load_aliases(&mut self) {
        self.alias_stamps = stamps(&self.settings);
        match crate::net::load_aliases(&self.settings) {
            Ok((a, _)) => self.aliases = Arc::new(a),
            // The daemon logs the file:line errors; the helper keeps its last good table.
            Err(e) => crate::mlog!("local", "warning: alias_maps: {e}; keeping the last good version"),
        }
    }

    fn refresh_aliases(&mut self) {
        if stamps(&self.settings) != self.alias_stamps {
            self.load_aliases();
        }
    }

    /// The file an alias's targets came from (the first alias file that exists), whose
    /// owner a command or file target of `Source::Alias` runs as.
    fn alias_file(&self) -> Option<PathBuf> {
        crate::net::alias_paths(&self.settings)
            .into_iter()
            .find(|p| p.is_file())
    }
}

/// `poshta delivery-helper`: serve the daemon on standard input until end of file.
pub fn main(config_file: &Path) -> i32 {
    use std::os::fd::AsFd;
    // Signals meant for the daemon's terminal or process group must not end the helper
    // first: it ends at end of file, after the daemon.
    let _signals = async_signal::Signals::new([
        async_signal::Signal::Hup,
        async_signal::Signal::Int,
        async_signal::Signal::Term,
    ]);
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("poshta delivery-helper: stdin: {e}");
            return 1;
        }
    };
    // main.cf and alias_maps are read when the first request comes, not now. Many boxes
    // never ask the helper anything (virtual mailboxes only, relay-only, POP3 on Maildir),
    // and the configuration and the code that parses it would stay resident in an idle
    // root process for nothing: measured 1.98 MiB RSS at start, see docs/decisions.md
    // ("The helper reads its configuration at its first request"). The daemon has just
    // checked the same file; should it have become invalid meanwhile, the helper ends at
    // that first request and the daemon defers local deliveries ("delivery helper is
    // gone"), exactly what a helper that failed at its start would have caused.
    // A swallowed signal (above) interrupts the wait; any other poll error is left for the
    // first read to report.
    while poll_in(&sock, None) == Err(rustix::io::Errno::INTR) {}
    let loaded = match crate::config::load(config_file) {
        Ok(l) if !l.has_errors() => l,
        Ok(_) => {
            eprintln!(
                "poshta delivery-helper: {}: configuration errors",
                config_file.display()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("poshta delivery-helper: {}: {e}", config_file.display());
            return 1;
        }
    };
    let s = loaded.settings;
    let _ = crate::log::init(&s.myhostname, &s.syslog_name, s.maillog_file.as_deref());
    serve(sock, State::new(s), Some(config_file))
}

/// Wait up to `timeout` (None: for ever) for `sock` to have something to read: a request,
/// or end of file.
fn poll_in(sock: &UnixStream, timeout: Option<&rustix::event::Timespec>) -> rustix::io::Result<usize> {
    use rustix::event::{poll, PollFd, PollFlags};
    poll(&mut [PollFd::new(sock, PollFlags::IN)], timeout)
}

/// Wait until `sock` has something to read, reaping maildrop agents that ended meanwhile
/// (once a second while any is alive), so a POP3 session's agent does not stay a zombie
/// until the next request. Returns at once when no agent is alive; any poll error is left
/// for the read that follows to report.
fn wait_reaping(sock: &UnixStream, st: &mut State) {
    let second = rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 };
    while !st.agents.is_empty() {
        match poll_in(sock, Some(&second)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => {
                st.agents.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            }
            _ => return,
        }
    }
}

/// Serve requests on `sock` until end of file (0) or a protocol error (1).
pub fn serve(sock: UnixStream, mut st: State, config_file: Option<&Path>) -> i32 {
    let mut r = &sock;
    loop {
        wait_reaping(&sock, &mut st);
        let req: Request = match read_frame(&mut r) {
            Ok(q) => q,
            Err(e) if e == super::EOF => return 0,
            Err(e) => {
                crate::mlog!("local", "fatal: delivery helper: {e}");
                return 1;
            }
        };
        let answer = match req {
            Request::Deliver { work, meta } => {
                let mut body = Frames {
                    sock: &sock,
                    buf: Vec::new(),
                    pos: 0,
                    state: FrameState::Open,
                };
                let r = deliver(&mut st, &work, &meta, &mut body);
                if let Err(e) = body.drain() {
                    crate::mlog!("local", "fatal: delivery helper: {e}");
                    return 1;
                }
                let r = match (r, body.state) {
                    (_, FrameState::Aborted) => Err(DeliveryError::temporary("the daemon could not read the message")),
                    (r, _) => r,
                };
                match r {
                    Ok(detail) => Response::Done {
                        ok: true,
                        permanent: false,
                        reason: detail,
                    },
                    Err(e) => Response::Done {
                        ok: false,
                        permanent: e.permanent,
                        reason: e.reason,
                    },
                }
            }
            Request::OpenMbox { user } => match open_mbox(&mut st, &user) {
                Ok(handle) => {
                    let fd_ok = st
                        .open
                        .get(&handle)
                        .map(|(_, lock)| send_with_fd(&sock, &Response::Opened { handle }, lock.file().as_fd()));
                    match fd_ok {
                        Some(Ok(())) => continue,
                        Some(Err(e)) => {
                            st.open.remove(&handle);
                            crate::mlog!("local", "fatal: delivery helper: send: {e}");
                            return 1;
                        }
                        None => Response::Refused("internal: lost the handle".into()),
                    }
                }
                Err(why) => Response::Refused(why),
            },
            Request::OpenHome { user } => match start_agent(&mut st, &user) {
                Ok(ours) => {
                    // Our copy closes here: the session and the agent hold the two ends.
                    if let Err(e) = send_with_fd(&sock, &Response::Agent, ours.as_fd()) {
                        crate::mlog!("local", "fatal: delivery helper: send: {e}");
                        return 1;
                    }
                    continue;
                }
                Err(why) => Response::Refused(why),
            },
            Request::CloseMbox { handle } => match st.open.remove(&handle) {
                Some(_) => Response::Closed,
                None => Response::Refused(format!("no open mailbox {handle}")),
            },
            Request::Reload => match config_file.map(crate::config::load) {
                Some(Ok(l)) if !l.has_errors() => {
                    st.settings = l.settings;
                    st.local = LocalConfig::from_settings(&st.settings);
                    st.load_aliases();
                    Response::Done {
                        ok: true,
                        permanent: false,
                        reason: String::new(),
                    }
                }
                Some(Ok(_)) => Response::Refused("configuration errors; keeping the old one".into()),
                Some(Err(e)) => Response::Refused(format!("{e}; keeping the old configuration")),
                None => Response::Done {
                    ok: true,
                    permanent: false,
                    reason: String::new(),
                },
            },
            Request::Data(_) | Request::End | Request::Abort => {
                crate::mlog!("local", "fatal: delivery helper: data outside a delivery");
                return 1;
            }
        };
        let mut w = &sock;
        if write_frame(&mut w, &answer).is_err() {
            return 0;
        }
    }
}

/// Send `answer` with a descriptor (SCM_RIGHTS): `Opened` with the mailbox's (the helper
/// keeps its own: closing any descriptor of the file would drop its fcntl lock), `Agent`
/// with the session's end of the agent's socket.
fn send_with_fd(sock: &UnixStream, answer: &Response, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let payload = postcard::to_stdvec(answer).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    let mut sent = sendmsg(sock, &[std::io::IoSlice::new(&bytes)], &mut cmsg, SendFlags::empty())?;
    // The descriptor went with the first bytes; the rest is plain data.
    let mut w = sock;
    while sent < bytes.len() {
        sent += std::io::Write::write(&mut w, &bytes[sent..])?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    Open,
    Ended,
    Aborted,
}

/// The body of a delivery, read from `Data` frames up to `End`.
struct Frames<'a> {
    sock: &'a UnixStream,
    buf: Vec<u8>,
    pos: usize,
    state: FrameState,
}

impl Frames<'_> {
    /// Read the rest up to End/Abort (the next request starts after it).
    fn drain(&mut self) -> Result<(), String> {
        let mut sink = [0u8; 8192];
        while self.state == FrameState::Open {
            match self.read(&mut sink) {
                Ok(_) => {}
                Err(_) if self.state == FrameState::Aborted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

impl Read for Frames<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                FrameState::Ended => return Ok(0),
                FrameState::Aborted => return Err(std::io::Error::other("the daemon aborted the message")),
                FrameState::Open => {}
            }
            let mut r = self.sock;
            match read_frame::<Request>(&mut r) {
                Ok(Request::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Request::End) => self.state = FrameState::Ended,
                Ok(Request::Abort) => self.state = FrameState::Aborted,
                Ok(other) => {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("unexpected {other:?} in a body"),
                    ))
                }
                Err(e) => return Err(std::io::Error::new(ErrorKind::InvalidData, e)),
            }
        }
    }
}

fn user(name: &str) -> Result<Ident, DeliveryError> {
    match crate::policy::router::system_user(name) {
        Some(u) => Ok(Ident::from_user(&u)),
        None => Err(DeliveryError::permanent(format!("unknown user: \"{name}\""))),
    }
}

fn deliver(st: &mut State, work: &Work, meta: &Meta, body: &mut dyn Read) -> Result<String, DeliveryError> {
    match work {
        Work::Mailbox { user: name } => {
            let who = user(name)?;
            let spool = st.local.mail_spool_directory.join(&who.name);
            if st.local.home_mailbox.trim().is_empty() && st.open.values().any(|(p, _)| *p == spool) {
                return Err(DeliveryError::temporary(format!(
                    "mbox {}: mailbox locked (open for POP3)",
                    spool.display()
                )));
            }
            local::deliver_mailbox(&st.local, &who, meta, body)
        }
        Work::AliasCommand { alias, command } => {
            let (source, class) = alias_target(st, alias, |t| match t {
                Target::Command { command: c, source } if c == command => Some(source.clone()),
                _ => None,
            })?;
            if !st.settings.allow_mail_to_commands.iter().any(|c| c == class) {
                return Err(DeliveryError::permanent(format!(
                    "mail to command is restricted (allow_mail_to_commands does not list {class})"
                )));
            }
            let who = identity(st, &source)?;
            local::run_command(command, &who, meta, body)
        }
        Work::AliasFile { alias, path } => {
            let (source, class) = alias_target(st, alias, |t| match t {
                Target::File { path: p, source } if p.as_os_str() == path.as_str() => Some(source.clone()),
                _ => None,
            })?;
            if !st.settings.allow_mail_to_files.iter().any(|c| c == class) {
                return Err(DeliveryError::permanent(format!(
                    "mail to file is restricted (allow_mail_to_files does not list {class})"
                )));
            }
            let who = identity(st, &source)?;
            local::append_file(&st.local, &who, Path::new(path), meta, body)
        }
    }
}

/// Expand `alias` from the helper's own table and find the target `pick` accepts.
fn alias_target(
    st: &mut State,
    alias: &str,
    pick: impl Fn(&Target) -> Option<Source>,
) -> Result<(Source, &'static str), DeliveryError> {
    st.refresh_aliases();
    if !st.aliases.contains(alias) {
        return Err(DeliveryError::temporary(format!("{alias}: not an alias (any more)")));
    }
    let domains: Vec<String> = st.settings.mydestination.clone();
    let ex = st.aliases.expand(alias, |d| domains.iter().any(|x| x == d));
    let source = ex
        .deliveries
        .iter()
        .find_map(pick)
        .ok_or_else(|| DeliveryError::temporary(format!("{alias}: target is not in the alias expansion")))?;
    let class = match source {
        Source::Alias => "alias",
        Source::Include(_) => "include",
    };
    Ok((source, class))
}

/// Postfix: the owner of the aliases file or the include file; root → default_privs.
fn identity(st: &State, source: &Source) -> Result<Ident, DeliveryError> {
    let file = match source {
        Source::Alias => st
            .alias_file()
            .ok_or_else(|| DeliveryError::temporary("no aliases file"))?,
        Source::Include(p) => p.clone(),
    };
    let meta = std::fs::metadata(&file).map_err(|e| DeliveryError::temporary(format!("{}: {e}", file.display())))?;
    Ident::owner_or_default_privs(meta.uid())
}

/// Start a maildrop agent as system user `name` for their home mailbox (see
/// [`crate::mailbox::agent`]): the socketpair's other end is its standard input, the job
/// (which mailbox, from this helper's own settings and passwd lookup) is already written
/// into ours, which goes to the session. The agent is never root and never for the spool
/// mbox (that one the helper opens itself: OpenMbox).
fn start_agent(st: &mut State, name: &str) -> Result<OwnedFd, String> {
    use std::os::unix::process::CommandExt;
    // Reap the agents that ended; the rest count against the cap.
    st.agents.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    if st.agents.len() >= POP3_HOME_AGENTS_MAX {
        return Err(format!("too many maildrop agents ({POP3_HOME_AGENTS_MAX})"));
    }
    let who = user(name).map_err(|e| e.reason)?;
    if who.uid == 0 {
        return Err("refusing to start a maildrop agent as root".into());
    }
    if st.local.home_mailbox.trim().is_empty() {
        return Err("home_mailbox is not set: the mailbox is the spool mbox".into());
    }
    let acct = Account {
        name: who.name.clone(),
        uid: who.uid,
        gid: who.gid,
        home: who.home.clone(),
    };
    let place = match locate(&st.local.mail_spool_directory, st.local.home_mailbox.trim(), &acct) {
        Ok(Location::Maildir(d)) => Place::Maildir(d),
        Ok(Location::Mbox(p)) => Place::Mbox(p),
        Err(e) => return Err(e.to_string()),
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let job = Job {
        place,
        uid: who.uid,
        // The session's autologout, plus a margin for a client reading a long message.
        idle_secs: st.settings.pop3d_autologout_secs.max(1) + 60,
    };
    let mut w = &ours;
    // Small: fits the socket buffer before the agent reads it.
    write_frame(&mut w, &job).map_err(|e| format!("agent job: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let child = std::process::Command::new(exe)
        .arg("maildrop-agent")
        .env_clear()
        .current_dir("/")
        .uid(who.uid)
        .gid(who.gid)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start maildrop agent as {}: {e}", who.name))?;
    st.agents.push(child);
    Ok(OwnedFd::from(ours))
}

/// Open and lock a system user's spool mailbox for POP3 (see the module doc).
fn open_mbox(st: &mut State, name: &str) -> Result<u64, String> {
    if st.open.len() >= PRIVSEP_OPEN_MBOXES_MAX {
        return Err("too many open mailboxes".into());
    }
    let who = user(name).map_err(|e| e.reason)?;
    let path = st.local.mail_spool_directory.join(&who.name);
    if st.open.values().any(|(p, _)| *p == path) {
        return Err(format!("mbox {}: mailbox locked (already open)", path.display()));
    }
    let owner = (
        who.uid,
        nix::unistd::Group::from_name("mail")
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
            .unwrap_or(who.gid),
    );
    let lock = MboxLock::acquire(&path, Instant::now() + OPEN_LOCK_WAIT, || open_checked(&path, owner))
        .map_err(|e| format!("mbox {}: {e}", path.display()))?;
    let handle = st.next_handle;
    st.next_handle += 1;
    st.open.insert(handle, (path, lock));
    Ok(handle)
}

/// O_RDWR without following links or blocking; a new mailbox is 0600 owner:mail; an
/// existing one must be a regular file with one link, owned by the user.
fn open_checked(path: &Path, (uid, gid): (u32, u32)) -> Result<File, String> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let refuse = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP => "refused: is a symbolic link".to_string(),
        rustix::io::Errno::NXIO => "refused: not a regular file (FIFO or device)".to_string(),
        e => format!("open: {e}"),
    };
    let (fd, created) = match rustix::fs::openat(CWD, path, flags, Mode::empty()) {
        Ok(fd) => (fd, false),
        Err(rustix::io::Errno::NOENT) => (
            rustix::fs::openat(
                CWD,
                path,
                flags | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            )
            .map_err(refuse)?,
            true,
        ),
        Err(e) => return Err(refuse(e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| format!("fstat: {e}"))?;
    if created {
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
        }
        return Ok(file);
    }
    if !meta.file_type().is_file() {
        return Err("refused: not a regular file".into());
    }
    if meta.nlink() != 1 {
        return Err(format!("refused: has {} hard links", meta.nlink()));
    }
    if meta.uid() != uid {
        return Err(format!("refused: owned by uid {}, not {uid}", meta.uid()));
    }
    Ok(file)
}
