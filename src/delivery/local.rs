//! Local delivery for system users and alias targets: the mailbox of a passwd user
//! (mail_spool_directory/USER as mbox, or home_mailbox), `|command` and `/file` targets.
//!
//! These functions run where the privileges are: in the privileged delivery helper
//! ([`crate::privsep`]) when poshta was started as root, or in the daemon itself when it runs
//! as a normal user (then they can only succeed for that user's own files).
//!
//! # Whose identity (Postfix local(8), "DELIVERY RIGHTS")
//!
//! - The spool mailbox `mail_spool_directory/USER` is written by root with the checks of
//!   [`super::mbox`] (O_NOFOLLOW, regular file, one link, owned by the user; a new one is
//!   created 0600 USER:mail as Debian's Postfix does): /var/mail is `root:mail 2775`, and
//!   the dot-lock next to the mailbox needs that directory's write access.
//! - Anything under a user's home (`home_mailbox`) is written by a child process running as
//!   the user (`poshta delivery-agent`, uid and gid set by `std::process::Command`, which
//!   also clears supplementary groups): the user controls every directory on that path, so
//!   root must not walk it.
//! - `|command` runs as `/bin/sh -c COMMAND` with the uid/gid of the owner of the file the
//!   target came from (the aliases file, or the `:include:` file); when that owner is root,
//!   with default_privs (`nobody`) — never as root. `/file` is appended to by the same
//!   identity, as an mbox (From_ line, `>From ` quoting, dot-lock + fcntl lock).
//! - Commands get a clean environment: `HOME`, `USER`, `LOGNAME`, `SHELL=/bin/sh`,
//!   `PATH=/usr/bin:/bin`, `SENDER`, `RECIPIENT`; the message is written to standard input
//!   with a From_ line, `Return-Path:` and `Delivered-To:` first (as Postfix's local(8));
//!   the working directory is the home directory (or `/`). Exit 0 is delivered, 75
//!   (EX_TEMPFAIL) or death by a signal defers, any other status bounces (Postfix maps
//!   sysexits the same way); past [`LOCAL_COMMAND_TIME_LIMIT_SECS`] the command is killed
//!   and the delivery deferred.
//! - Standard output and error share one pipe, read while the message is written (a
//!   command that writes much and reads nothing cannot stall on a full pipe). The first
//!   [`LOCAL_COMMAND_OUTPUT_BYTES_MAX`] bytes are kept, the rest read and dropped; on
//!   failure they end the reason (`Command died with status 1: "CMD". Command output:
//!   oops`), as Postfix's pipe_command does: tab, CR and LF become spaces, other bytes
//!   outside printable ASCII `_`, so the text is one ASCII line for the log and the DSN.
//!
//! # The agent protocol (`poshta delivery-agent`, helper → child as the user)
//!
//! Standard input: one frame ([`crate::privsep::write_frame`]) holding an [`AgentJob`], then
//! the message body up to end of file. Standard output: one frame holding an
//! [`AgentResult`]. The agent trusts its input no more than a user would: it runs with the
//! user's rights only.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::mbox::{self, MboxDelivery};
use super::{maildir, DeliveryError};
use crate::limits::{LOCAL_COMMAND_OUTPUT_BYTES_MAX, LOCAL_COMMAND_TIME_LIMIT_SECS, MBOX_LOCK_WAIT_MS};

/// Copy buffer for bodies.
const COPY_BYTES: usize = 64 * 1024;

/// Postfix's default_privs: the identity for commands and files of root-owned sources.
pub const DEFAULT_PRIVS: &str = "nobody";

/// A user to act as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ident {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

impl Ident {
    pub fn from_user(u: &nix::unistd::User) -> Ident {
        Ident {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            name: u.name.clone(),
            home: u.dir.clone(),
        }
    }

    /// The passwd entry of `uid`; root is replaced by [`DEFAULT_PRIVS`] (never run as root).
    pub fn owner_or_default_privs(uid: u32) -> Result<Ident, DeliveryError> {
        let u = if uid == 0 {
            nix::unistd::User::from_name(DEFAULT_PRIVS).ok().flatten()
        } else {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
        };
        match u {
            Some(u) if u.uid.as_raw() != 0 => Ok(Ident::from_user(&u)),
            Some(_) => Err(DeliveryError::temporary(format!(
                "default_privs user {DEFAULT_PRIVS} is root; refusing"
            ))),
            None => Err(DeliveryError::temporary(format!(
                "no passwd entry for uid {uid} (or default_privs {DEFAULT_PRIVS})"
            ))),
        }
    }
}

/// What one delivery is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Envelope sender ("" null sender).
    pub sender: String,
    /// The recipient address for Delivered-To: and $RECIPIENT.
    pub recipient: String,
    /// Unix time for the From_ line and file names.
    pub time_secs: u64,
    pub time_micros: u32,
    /// POP3 UID for mbox (`{secs}.M{micros}P{pid}Q{seq}`) and the Maildir sequence.
    pub uidl: String,
    pub seq: u64,
    /// Body size as stored (informational for Maildir).
    pub size: u64,
}

impl Meta {
    /// Return-Path: and Delivered-To: (RFC 5321 §4.4; Delivered-To as Postfix, for loop
    /// detection). Control characters in either would inject header lines: refused.
    pub fn prepend(&self) -> Result<String, DeliveryError> {
        if self
            .sender
            .chars()
            .chain(self.recipient.chars())
            .any(|c| c.is_control())
        {
            return Err(DeliveryError::permanent("control character in an envelope address"));
        }
        Ok(format!(
            "Return-Path: <{}>\nDelivered-To: {}\n",
            self.sender, self.recipient
        ))
    }
}

/// Settings local delivery needs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub mail_spool_directory: PathBuf,
    pub home_mailbox: String,
    pub mailbox_size_limit: u64,
    pub myhostname: String,
}

impl LocalConfig {
    pub fn from_settings(s: &crate::config::Settings) -> LocalConfig {
        LocalConfig {
            mail_spool_directory: s.mail_spool_directory.clone(),
            home_mailbox: s.home_mailbox.clone(),
            mailbox_size_limit: s.mailbox_size_limit,
            myhostname: s.myhostname.clone(),
        }
    }
}

/// Is this process root (then home and command deliveries switch identity)?
fn privileged() -> bool {
    rustix::process::geteuid().is_root()
}

/// The gid of group `mail` (Debian: spool mailboxes are USER:mail 0600), else `fallback`.
fn mail_gid(fallback: u32) -> u32 {
    nix::unistd::Group::from_name("mail")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .unwrap_or(fallback)
}

/// Where a user's mail goes by the settings (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentKind {
    /// Append to this mbox; `owner`: expected (uid, gid), None: no owner check.
    Mbox { path: PathBuf, owner: Option<(u32, u32)> },
    /// Write into this Maildir.
    Maildir { dir: PathBuf },
}

/// Deliver to system user `user`'s mailbox.
pub fn deliver_mailbox(
    cfg: &LocalConfig,
    user: &Ident,
    meta: &Meta,
    body: &mut dyn Read,
) -> Result<String, DeliveryError> {
    if !crate::policy::router::valid_system_name(&user.name) {
        return Err(DeliveryError::permanent(format!("bad user name {:?}", user.name)));
    }
    let hm = cfg.home_mailbox.trim();
    if hm.is_empty() {
        let path = cfg.mail_spool_directory.join(&user.name);
        let owner = (user.uid, mail_gid(user.gid));
        write_here(
            cfg,
            &AgentKind::Mbox {
                path: path.clone(),
                owner: Some(owner),
            },
            meta,
            body,
        )?;
        return Ok(format!("delivered to mailbox {}", path.display()));
    }
    if hm.starts_with('/') || hm.split('/').any(|c| c == "..") {
        return Err(DeliveryError::temporary(format!(
            "home_mailbox {hm:?} must be a relative path inside the home directory"
        )));
    }
    let kind = if hm.ends_with('/') {
        AgentKind::Maildir {
            dir: user.home.join(hm.trim_end_matches('/')),
        }
    } else {
        AgentKind::Mbox {
            path: user.home.join(hm),
            owner: Some((user.uid, user.gid)),
        }
    };
    let shown = match &kind {
        AgentKind::Maildir { dir } => format!("delivered to maildir {}", dir.display()),
        AgentKind::Mbox { path, .. } => format!("delivered to mailbox {}", path.display()),
    };
    write_as(cfg, user, &kind, meta, body)?;
    Ok(shown)
}

/// Append to `/file` as `who` (an alias or include owner).
pub fn append_file(
    cfg: &LocalConfig,
    who: &Ident,
    path: &Path,
    meta: &Meta,
    body: &mut dyn Read,
) -> Result<String, DeliveryError> {
    if !path.is_absolute() {
        return Err(DeliveryError::permanent(format!(
            "{}: not an absolute path",
            path.display()
        )));
    }
    write_as(
        cfg,
        who,
        &AgentKind::Mbox {
            path: path.to_path_buf(),
            owner: None,
        },
        meta,
        body,
    )?;
    Ok(format!("delivered to file: {}", path.display()))
}

/// Write as `who`: in a child with its identity when we are root and it is someone else,
/// else here.
fn write_as(
    cfg: &LocalConfig,
    who: &Ident,
    kind: &AgentKind,
    meta: &Meta,
    body: &mut dyn Read,
) -> Result<(), DeliveryError> {
    let me = rustix::process::geteuid().as_raw();
    if privileged() && who.uid != me {
        run_agent(cfg, who, kind, meta, body)
    } else {
        write_here(cfg, kind, meta, body)
    }
}

/// Write in this process, with its rights.
fn write_here(cfg: &LocalConfig, kind: &AgentKind, meta: &Meta, body: &mut dyn Read) -> Result<(), DeliveryError> {
    let prepend = meta.prepend()?;
    match kind {
        AgentKind::Mbox { path, owner } => mbox::deliver(
            &MboxDelivery {
                path,
                owner: *owner,
                sender: &meta.sender,
                time_secs: meta.time_secs,
                prepend: prepend.as_bytes(),
                uidl: &meta.uidl,
                size_limit_bytes: cfg.mailbox_size_limit,
                lock_wait: Duration::from_millis(MBOX_LOCK_WAIT_MS),
            },
            body,
        )
        .map(|_| ()),
        AgentKind::Maildir { dir } => maildir::deliver(
            &maildir::MaildirDelivery {
                maildir: dir,
                hostname: &cfg.myhostname,
                prepend: prepend.as_bytes(),
                body_size: meta.size,
                now_secs: meta.time_secs,
                now_micros: meta.time_micros,
                seq: meta.seq,
            },
            body,
        )
        .map(|_| ()),
    }
}

/// What the helper hands the agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentJob {
    pub kind: AgentKind,
    pub meta: Meta,
    pub myhostname: String,
    pub mailbox_size_limit: u64,
}

/// What the agent answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentResult {
    pub ok: bool,
    pub permanent: bool,
    pub reason: String,
}

/// Run `poshta delivery-agent` as `who` and feed it the job and the body.
fn run_agent(
    cfg: &LocalConfig,
    who: &Ident,
    kind: &AgentKind,
    meta: &Meta,
    body: &mut dyn Read,
) -> Result<(), DeliveryError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| DeliveryError::temporary(format!("current_exe: {e}")))?;
    let mut child = Command::new(exe)
        .arg("delivery-agent")
        .env_clear()
        .current_dir("/")
        .uid(who.uid)
        .gid(who.gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| DeliveryError::temporary(format!("start delivery agent as {}: {e}", who.name)))?;
    let job = AgentJob {
        kind: kind.clone(),
        meta: meta.clone(),
        myhostname: cfg.myhostname.clone(),
        mailbox_size_limit: cfg.mailbox_size_limit,
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the agent stopped reading: its answer says why.
        let _ = crate::privsep::write_frame(&mut stdin, &job).and_then(|()| copy_body(body, &mut stdin));
    }
    let result = child
        .stdout
        .take()
        .ok_or_else(|| "no pipe".to_string())
        .and_then(|mut out| crate::privsep::read_frame::<AgentResult>(&mut out));
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(LOCAL_COMMAND_TIME_LIMIT_SECS),
        std::thread::sleep,
    );
    match (result, status) {
        (Ok(r), _) if r.ok => Ok(()),
        (Ok(r), _) => Err(DeliveryError {
            permanent: r.permanent,
            reason: r.reason,
        }),
        (Err(e), st) => Err(DeliveryError::temporary(format!(
            "delivery agent as {} gave no answer ({e}; {st:?})",
            who.name
        ))),
    }
}

/// Copy the body, reading to the end even when the writer goes away (the frames of the
/// helper protocol must be consumed).
fn copy_body(body: &mut dyn Read, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; COPY_BYTES];
    let mut failed = None;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if failed.is_none() {
            if let Err(e) = out.write_all(&buf[..n]) {
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `poshta delivery-agent`: see the module doc. Runs as the user; exit status 0 when an
/// answer was written.
pub fn agent_main() -> i32 {
    let mut stdin = std::io::stdin().lock();
    let job: AgentJob = match crate::privsep::read_frame(&mut stdin) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("poshta delivery-agent: bad job: {e}");
            return 1;
        }
    };
    let cfg = LocalConfig {
        mail_spool_directory: PathBuf::new(),
        home_mailbox: String::new(),
        mailbox_size_limit: job.mailbox_size_limit,
        myhostname: job.myhostname.clone(),
    };
    let r = write_here(&cfg, &job.kind, &job.meta, &mut stdin);
    // Whatever is left of the body is not needed; the helper stops at our answer.
    let answer = match r {
        Ok(()) => AgentResult {
            ok: true,
            permanent: false,
            reason: String::new(),
        },
        Err(e) => AgentResult {
            ok: false,
            permanent: e.permanent,
            reason: e.reason,
        },
    };
    let mut out = std::io::stdout().lock();
    match crate::privsep::write_frame(&mut out, &answer).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Wait for `child` at most `limit`; kill it after that. Polls: the helper has nothing else
/// to do meanwhile (it serves one request at a time). `pause(d)` passes about `d` between
/// polls (a sleep, or reading the command's output meanwhile).
fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
    mut pause_for: impl FnMut(Duration),
) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {}s", limit.as_secs()));
            }
            Ok(None) => {
                pause_for(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads per [`CommandOutput::drain`] call (8 KiB each): bounds one call against a
/// command that writes as fast as we read; the caller's deadline bounds the rest.
const OUTPUT_READS_PER_DRAIN: usize = 64;

/// The read end of a command's standard output and error (module doc), non-blocking.
struct CommandOutput {
    /// None once at end of file (or broken).
    pipe: Option<OwnedFd>,
    /// The first [`LOCAL_COMMAND_OUTPUT_BYTES_MAX`] bytes.
    kept: Vec<u8>,
}

impl CommandOutput {
    /// Read what the pipe holds now, keeping the first bytes and dropping the rest.
    fn drain(&mut self) {
        let Some(fd) = &self.pipe else { return };
        let mut buf = [0u8; 8192];
        for _ in 0..OUTPUT_READS_PER_DRAIN {
            match rustix::io::read(fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let room = LOCAL_COMMAND_OUTPUT_BYTES_MAX.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                // End of file (every writer, the command's children too, closed it) or
                // an error: nothing more to wait for.
                _ => {
                    self.pipe = None;
                    return;
                }
            }
        }
        // A full round: the rest on the next call.
    }

    /// Wait up to `timeout` for output to read or, with `also`, for room to write there.
    fn wait(&self, also: Option<&std::process::ChildStdin>, timeout: Duration) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let t = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = Vec::with_capacity(2);
        if let Some(p) = &self.pipe {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        if let Some(w) = also {
            fds.push(PollFd::new(w, PollFlags::OUT));
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        // An error (EINTR) only shortens the wait; the caller loops on its deadline.
        let _ = poll(&mut fds, Some(&t));
    }

    /// The kept output as one line of printable ASCII (module doc); "" when none.
    fn text(&self) -> String {
        printable_output(&self.kept)
    }
}

/// Postfix's pipe_command: tab, CR and LF become spaces, other bytes outside printable
/// ASCII `_` (header injection and non-ASCII in a DSN field are impossible); trimmed.
fn printable_output(raw: &[u8]) -> String {
    let s: String = raw
        .iter()
        .map(|&b| match b {
            b'\t' | b'\r' | b'\n' => ' ',
            0x20..=0x7e => b as char,
            _ => '_',
        })
        .collect();
    s.trim().to_string()
}

/// A non-blocking pipe written until a deadline, reading the command's output while the
/// pipe is full (the command may be blocked writing that output).
struct DeadlineWriter<'a> {
    pipe: std::process::ChildStdin,
    deadline: Instant,
    output: &'a mut CommandOutput,
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.pipe.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= self.deadline {
                        return Err(std::io::Error::new(ErrorKind::TimedOut, "command does not read"));
                    }
                    let left = self.deadline.saturating_duration_since(now).min(Duration::from_secs(1));
                    self.output.wait(Some(&self.pipe), left);
                    self.output.drain();
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pipe the message to `/bin/sh -c command` as `who` (see the module doc for the
/// environment and the exit statuses).
pub fn run_command(command: &str, who: &Ident, meta: &Meta, body: &mut dyn Read) -> Result<String, DeliveryError> {
    use std::os::unix::process::CommandExt;
    let prepend = meta.prepend()?;
    if privileged() && who.uid == 0 {
        return Err(DeliveryError::temporary("refusing to run a command as root"));
    }
    let home = if who.home.is_dir() {
        who.home.clone()
    } else {
        PathBuf::from("/")
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .env("HOME", &who.home)
        .env("USER", &who.name)
        .env("LOGNAME", &who.name)
        .env("SHELL", "/bin/sh")
        .env("PATH", "/usr/bin:/bin")
        .env("SENDER", &meta.sender)
        .env("RECIPIENT", &meta.recipient)
        .current_dir(home)
        .stdin(Stdio::piped());
    // One pipe for standard output and error (module doc); close-on-exec, so only the
    // command's descriptors 1 and 2 reach it.
    let pipe_err = |e: &dyn std::fmt::Display| DeliveryError::temporary(format!("command {command:?}: pipe: {e}"));
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| pipe_err(&e))?;
    let write_dup = write_end.try_clone().map_err(|e| pipe_err(&e))?;
    rustix::fs::fcntl_setfl(&read_end, rustix::fs::OFlags::NONBLOCK).map_err(|e| pipe_err(&e))?;
    cmd.stdout(Stdio::from(write_end)).stderr(Stdio::from(write_dup));
    if privileged() {
        cmd.uid(who.uid).gid(who.gid);
    }
    let spawned = cmd.spawn();
    // Our copies of the write end go with `cmd`: end of file then means the command (and
    // whatever it started) closed its output.
    drop(cmd);
    let mut child = spawned.map_err(|e| DeliveryError::temporary(format!("command {command:?}: start: {e}")))?;
    let mut output = CommandOutput {
        pipe: Some(read_end),
        kept: Vec::with_capacity(LOCAL_COMMAND_OUTPUT_BYTES_MAX),
    };
    let deadline = Instant::now() + Duration::from_secs(LOCAL_COMMAND_TIME_LIMIT_SECS);
    if let Some(stdin) = child.stdin.take() {
        let mut head = mbox::from_line(&meta.sender, meta.time_secs).into_bytes();
        head.extend_from_slice(prepend.as_bytes());
        // A command that does not read its input is its business (exit status decides);
        // one that neither reads nor exits is bounded by the deadline.
        let mut w = DeadlineWriter {
            pipe: stdin,
            deadline,
            output: &mut output,
        };
        let _ = rustix::fs::fcntl_setfl(&w.pipe, rustix::fs::OFlags::NONBLOCK);
        let _ = w.write_all(&head).and_then(|()| copy_body(body, &mut w));
    } else {
        let _ = copy_body(body, &mut std::io::sink());
    }
    let status = wait_bounded(&mut child, deadline.saturating_duration_since(Instant::now()), |d| {
        output.wait(None, d);
        output.drain();
    });
    // What the command wrote just before it ended is still in the pipe.
    output.drain();
    let shown = output.text();
    // Postfix: `... "COMMAND". Command output: TEXT` when there was output.
    let with_output = |reason: String| {
        if shown.is_empty() {
            reason
        } else {
            format!("{reason}. Command output: {shown}")
        }
    };
    match status {
        Ok(st) if st.success() => Ok(format!("delivered to command: {command}")),
        // sysexits.h EX_TEMPFAIL
        Ok(st) if st.code() == Some(75) => Err(DeliveryError::temporary(with_output(format!(
            "command {command:?} exited with EX_TEMPFAIL"
        )))),
        Ok(st) => match st.code() {
            Some(c) => Err(DeliveryError::permanent(with_output(format!(
                "Command died with status {c}: \"{command}\""
            )))),
            None => Err(DeliveryError::temporary(with_output(format!(
                "command {command:?} killed by a signal"
            )))),
        },
        Err(e) => Err(DeliveryError::temporary(with_output(format!(
            "command {command:?}: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            sender: "a@example.org".into(),
            recipient: "b@example.org".into(),
            time_secs: 1_700_000_000,
            time_micros: 5,
            uidl: "1700000000.M5P1Q1".into(),
            seq: 1,
            size: 10,
        }
    }

    #[test]
    fn prepend_refuses_header_injection() {
        let mut m = meta();
        assert_eq!(
            m.prepend().unwrap(),
            "Return-Path: <a@example.org>\nDelivered-To: b@example.org\n"
        );
        m.recipient = "b@example.org\nBcc: x@y".into();
        assert!(m.prepend().unwrap_err().permanent);
    }

    #[test]
    fn home_mailbox_must_stay_in_the_home() {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap();
        let who = Ident::from_user(&me);
        for bad in ["/etc/x", "../x", "Mail/../../x"] {
            let cfg = LocalConfig {
                mail_spool_directory: PathBuf::from("/nonexistent"),
                home_mailbox: bad.into(),
                mailbox_size_limit: 0,
                myhostname: "h".into(),
            };
            if !crate::policy::router::valid_system_name(&who.name) {
                return;
            }
            let e = deliver_mailbox(&cfg, &who, &meta(), &mut &b"x\n"[..]).unwrap_err();
            assert!(e.reason.contains("home_mailbox"), "{e}");
        }
    }

    #[test]
    fn command_exit_statuses() {
        let Some(who) = command_user() else { return };
        let dir = crate::testutil::TempDir::new(&format!("poshta-local-cmd-{}", std::process::id()));
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let out = dir.join("out");
        let cmd = format!("cat > {}; echo \"$RECIPIENT\" >> {}", out.display(), out.display());
        run_command(&cmd, &who, &meta(), &mut &b"Subject: x\n\nbody\n"[..]).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("From a@example.org "), "{text}");
        assert!(
            text.contains("Delivered-To: b@example.org\nSubject: x\n\nbody\nb@example.org\n"),
            "{text}"
        );
        assert!(
            !run_command("exit 75", &who, &meta(), &mut &b""[..])
                .unwrap_err()
                .permanent
        );
        assert!(
            run_command("exit 67", &who, &meta(), &mut &b""[..])
                .unwrap_err()
                .permanent
        );
        // A command that reads nothing still gets the whole body consumed.
        let big = vec![b'x'; 1 << 20];
        run_command("true", &who, &meta(), &mut &big[..]).unwrap();
    }

    /// The identity commands run as in these tests: ourselves, or default_privs as root
    /// (commands never run as root).
    fn command_user() -> Option<Ident> {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
        if me.uid.is_root() {
            return nix::unistd::User::from_name(DEFAULT_PRIVS)
                .ok()?
                .map(|u| Ident::from_user(&u));
        }
        Some(Ident::from_user(&me))
    }

    /// Postfix's local(8): a failed command's output ends the bounce reason, one line of
    /// printable ASCII; standard error and output both count.
    #[test]
    fn command_output_in_the_reason() {
        let Some(who) = command_user() else { return };
        let e = run_command(
            "echo oops >&2; printf 'line2\\tx\\r\\n\\033[31mred\\nBcc: y\\n'; exit 1",
            &who,
            &meta(),
            &mut &b"x\n"[..],
        )
        .unwrap_err();
        assert!(e.permanent);
        assert_eq!(
            e.reason,
            "Command died with status 1: \"echo oops >&2; printf 'line2\\tx\\r\\n\\033[31mred\\nBcc: y\\n'; exit 1\". \
             Command output: oops line2 x  _[31mred Bcc: y"
        );
        // Deferrals carry it too; no output, no suffix.
        let e = run_command("echo busy; exit 75", &who, &meta(), &mut &b""[..]).unwrap_err();
        assert!(
            !e.permanent && e.reason.ends_with("EX_TEMPFAIL. Command output: busy"),
            "{e}"
        );
        let e = run_command("exit 67", &who, &meta(), &mut &b""[..]).unwrap_err();
        assert_eq!(e.reason, "Command died with status 67: \"exit 67\"");
        // A background child keeps the pipe open: the exit status still decides at once.
        let t = Instant::now();
        let e = run_command("sleep 5 & echo bg; exit 1", &who, &meta(), &mut &b""[..]).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert!(e.reason.ends_with("Command output: bg"), "{e}");
        // Output is bounded.
        let e = run_command(
            "head -c 100000 /dev/zero | tr '\\0' a; exit 2",
            &who,
            &meta(),
            &mut &b""[..],
        )
        .unwrap_err();
        let shown = e.reason.split("Command output: ").nth(1).unwrap();
        assert_eq!(shown, "a".repeat(LOCAL_COMMAND_OUTPUT_BYTES_MAX));
    }

    /// A command that writes megabytes and reads nothing while we write megabytes to it:
    /// no deadlock (its output is read while its input pipe is full), memory stays bounded
    /// (only the first bytes are kept), well before the time limit.
    #[test]
    fn command_flooding_output_does_not_hang() {
        let Some(who) = command_user() else { return };
        let big = vec![b'x'; 8 << 20];
        let t = Instant::now();
        let e = run_command(
            "head -c 20000000 /dev/zero; echo done >&2; exit 3",
            &who,
            &meta(),
            &mut &big[..],
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        assert!(e.permanent && e.reason.starts_with("Command died with status 3"), "{e}");
        let shown = e.reason.split("Command output: ").nth(1).unwrap();
        assert_eq!(shown.len(), LOCAL_COMMAND_OUTPUT_BYTES_MAX);
        assert!(shown.bytes().all(|b| b == b'_'));
        // Reading everything and writing much succeeds.
        run_command("cat; head -c 5000000 /dev/zero >&2", &who, &meta(), &mut &big[..]).unwrap();
    }
}
