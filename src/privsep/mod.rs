//! Privilege separation: the privileged delivery helper and the daemon's client for it.
//!
//! # Processes
//!
//! Started as root, `poshta serve` binds its ports and the control socket, makes
//! queue_directory and virtual_mailbox_base belong to mail_owner, then starts the helper
//! by re-executing its own binary (`/proc/self/exe delivery-helper -c MAIN.CF`) with one end
//! of a `socketpair(AF_UNIX, SOCK_STREAM)` as the helper's standard input, and finally drops
//! to mail_owner for good: `setgroups([gid])`, `setgid`, `setuid` (process-wide; checked
//! afterwards: `setuid(0)` must fail). The event loop, every session and the queue then run
//! as mail_owner. The helper keeps root, serves one request at a time and exits when the
//! socket reaches end of file (the daemon is gone); it swallows SIGHUP, SIGINT and SIGTERM
//! so a terminal's signals cannot end it before the daemon finishes its writes.
//! Started as a normal user there is no helper ([`Mode::InProcess`]): local delivery runs
//! in the daemon with the user's own rights.
//!
//! # What the helper trusts
//!
//! Only "deliver this message for user X" and "open user X's mailbox" (the spool mbox
//! itself, or a home mailbox through an agent running as X). It reads main.cf
//! itself (the path comes from root's command line, not from the socket) and re-reads it on
//! `Reload`; it looks every user up itself (getpwnam); it writes the spool mailbox as root
//! with the checks of [`crate::delivery::mbox`] and everything in a home directory, every
//! `/file` and every `|command` as a non-root user ([`crate::delivery::local`]). For an
//! alias target the daemon names only the alias and the target: the helper expands the
//! alias from its own copy of alias_maps and refuses a target that is not in the
//! expansion or whose class (alias, include) allow_mail_to_commands / allow_mail_to_files
//! do not list. A compromised daemon can therefore make the helper deliver mail, but not
//! run a command or write a file that root's configuration did not name.
//!
//! # Wire format
//!
//! ```text
//! frame = length:u32 (big-endian) | payload     ; 1 <= length <= PRIVSEP_FRAME_BYTES_MAX
//! payload = postcard(Request) | postcard(Response)
//! ```
//! A delivery is `Deliver { work, meta }`, then `Data(bytes)` frames of at most
//! PRIVSEP_CHUNK_BYTES, then `End` (or `Abort` when the daemon could not read the queue);
//! the helper reads every frame up to `End`/`Abort` whatever happens, then answers one
//! `Done`. `OpenHome { user }` is answered by `Agent` carrying, as an SCM_RIGHTS
//! descriptor, one end of a socketpair whose other end is the standard input of a
//! `poshta maildrop-agent` the helper started as the user (at most POP3_HOME_AGENTS_MAX
//! alive; the helper reaps them), or `Refused(reason)`: the session then talks to the agent
//! itself ([`crate::mailbox::agent`]). `OpenMbox { user }` is answered by `Opened { handle }` carrying the open
//! mailbox (O_RDWR) as an SCM_RIGHTS descriptor in the same message, or `Refused(reason)`.
//! The helper keeps the mailbox's dot-lock and fcntl lock until `CloseMbox { handle }`
//! (answered `Closed`) or end of file; while it holds them, deliveries to that mailbox are
//! deferred at once ("mailbox locked"). `Reload` is answered `Done`. Anything else, an
//! oversized frame or an undecodable one, ends the helper (the daemon then defers local
//! deliveries with "delivery helper is gone").

pub mod helper;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::delivery::local::Meta;
use crate::delivery::DeliveryError;
use crate::limits::{LOCAL_COMMAND_TIME_LIMIT_SECS, PRIVSEP_CHUNK_BYTES, PRIVSEP_FRAME_BYTES_MAX};

/// How local deliveries get their privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the privileged helper (started as root).
    Helper,
    /// In this process, with its own rights (started as a normal user).
    InProcess,
}

static MODE: OnceLock<Mode> = OnceLock::new();
static CLIENT: OnceLock<Arc<Client>> = OnceLock::new();

/// The mode of this process ([`Mode::InProcess`] unless a helper was started).
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::InProcess)
}

/// The helper's client, when there is one.
pub fn client() -> Option<Arc<Client>> {
    CLIENT.get().cloned()
}

/// What to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// The mailbox of system user `user` (mail_spool_directory or home_mailbox).
    Mailbox { user: String },
    /// The `|command` target of alias `alias` (the command line without `|`).
    AliasCommand { alias: String, command: String },
    /// The `/file` target of alias `alias`.
    AliasFile { alias: String, path: String },
}

/// Daemon → helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Deliver {
        work: Work,
        meta: Meta,
    },
    Data(Vec<u8>),
    End,
    Abort,
    OpenMbox {
        user: String,
    },
    CloseMbox {
        handle: u64,
    },
    Reload,
    /// Start a maildrop agent as `user` for their home mailbox (crate::mailbox::agent).
    OpenHome {
        user: String,
    },
}

/// Helper → daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done {
        ok: bool,
        permanent: bool,
        reason: String,
    },
    Opened {
        handle: u64,
    },
    Closed,
    Refused(String),
    /// The session's end of the agent's socket comes with this (SCM_RIGHTS).
    Agent,
}

/// Write one frame.
pub fn write_frame<T: Serialize>(w: &mut dyn Write, msg: &T) -> std::io::Result<()> {
    let payload = postcard::to_stdvec(msg).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    if payload.is_empty() || payload.len() > PRIVSEP_FRAME_BYTES_MAX {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "frame too large"));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf)
}

/// What [`read_frame`] says at a clean end of file.
pub const EOF: &str = "end of file";

/// Read one frame (bounded by PRIVSEP_FRAME_BYTES_MAX).
pub fn read_frame<T: DeserializeOwned>(r: &mut dyn Read) -> Result<T, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => EOF.to_string(),
        _ => e.to_string(),
    })?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > PRIVSEP_FRAME_BYTES_MAX {
        return Err(format!("bad frame length {len}"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| e.to_string())?;
    postcard::from_bytes(&buf).map_err(|e| format!("bad frame: {e}"))
}

/// Read exactly `buf.len()` bytes with recvmsg, keeping the first descriptor passed.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fd: &mut Option<OwnedFd>) -> std::io::Result<()> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let r = recvmsg(
            sock,
            &mut [std::io::IoSliceMut::new(&mut buf[got..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        );
        let n = match r {
            Ok(m) => m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for f in fds {
                    if fd.is_none() {
                        *fd = Some(f);
                    }
                }
            }
        }
        if n == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "delivery helper is gone"));
        }
        got += n;
    }
    Ok(())
}

/// Read one response frame and the descriptor that came with it, if any.
fn recv_response(sock: &UnixStream) -> Result<(Response, Option<OwnedFd>), String> {
    let mut fd = None;
    let mut len = [0u8; 4];
    recv_exact(sock, &mut len, &mut fd).map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > PRIVSEP_FRAME_BYTES_MAX {
        return Err(format!("bad frame length {len}"));
    }
    let mut buf = vec![0u8; len];
    recv_exact(sock, &mut buf, &mut fd).map_err(|e| e.to_string())?;
    let r = postcard::from_bytes(&buf).map_err(|e| format!("bad frame: {e}"))?;
    Ok((r, fd))
}

/// A mailbox the helper holds open and locked for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u64);

/// The daemon's side of the socket. Requests are serialised (the helper serves one at a
/// time anyway); blocking: call it from the thread pool (`smol::unblock`).
pub struct Client {
    /// None once the protocol broke (the helper died or stopped answering).
    sock: Mutex<Option<UnixStream>>,
    _child: Option<std::process::Child>,
}

impl Client {
    /// A client on `sock` (tests: a helper on a thread).
    pub fn new(sock: UnixStream) -> Client {
        // A helper that stops answering must not hold deliveries forever.
        let _ = sock.set_read_timeout(Some(Duration::from_secs(LOCAL_COMMAND_TIME_LIMIT_SECS + 60)));
        Client {
            sock: Mutex::new(Some(sock)),
            _child: None,
        }
    }

    fn call<T>(&self, f: impl FnOnce(&UnixStream) -> Result<T, String>) -> Result<T, String> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sock) = guard.as_ref() else {
            return Err("delivery helper is gone".into());
        };
        let r = f(sock);
        if let Err(e) = &r {
            crate::mlog!(
                "local",
                "warning: delivery helper: {e}; local deliveries will be deferred"
            );
            *guard = None;
        }
        r
    }

    /// Deliver `body` as `work` says.
    pub fn deliver(&self, work: &Work, meta: &Meta, body: &mut dyn Read) -> Result<String, DeliveryError> {
        let mut read_error = None;
        let r = self.call(|sock| {
            let mut w = sock;
            write_frame(
                &mut w,
                &Request::Deliver {
                    work: work.clone(),
                    meta: meta.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; PRIVSEP_CHUNK_BYTES];
            loop {
                match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => write_frame(&mut w, &Request::Data(buf[..n].to_vec())).map_err(|e| e.to_string())?,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        read_error = Some(e.to_string());
                        break;
                    }
                }
            }
            let last = if read_error.is_some() {
                Request::Abort
            } else {
                Request::End
            };
            write_frame(&mut w, &last).map_err(|e| e.to_string())?;
            recv_response(sock).map(|(r, _)| r)
        });
        if let (Some(re), Ok(_)) = (&read_error, &r) {
            return Err(DeliveryError::temporary(format!("queue read: {re}")));
        }
        match r {
            Ok(Response::Done { ok: true, reason, .. }) => Ok(reason),
            Ok(Response::Done { permanent, reason, .. }) => Err(DeliveryError { permanent, reason }),
            Ok(other) => Err(DeliveryError::temporary(format!(
                "delivery helper: unexpected {other:?}"
            ))),
            Err(e) => Err(DeliveryError::temporary(match read_error {
                Some(r) => format!("queue read: {r}"),
                None => format!("delivery helper: {e}"),
            })),
        }
    }

    /// Open and lock system user `user`'s spool mailbox (blocking).
    pub fn open_mbox(&self, user: &str) -> Result<(std::fs::File, Handle), String> {
        let r = self.call(|sock| {
            let mut w = sock;
            write_frame(&mut w, &Request::OpenMbox { user: user.to_string() }).map_err(|e| e.to_string())?;
            recv_response(sock)
        })?;
        match r {
            (Response::Opened { handle }, Some(fd)) => Ok((std::fs::File::from(fd), Handle(handle))),
            (Response::Opened { handle }, None) => {
                // The helper holds a lock we cannot use: give it back.
                let _ = self.close_mbox(Handle(handle));
                Err("delivery helper sent no descriptor".into())
            }
            (Response::Refused(why), _) => Err(why),
            (other, _) => Err(format!("delivery helper: unexpected {other:?}")),
        }
    }

    /// Release a mailbox from [`Client::open_mbox`] (blocking).
    pub fn close_mbox(&self, handle: Handle) -> Result<(), String> {
        let r = self.call(|sock| {
            let mut w = sock;
            write_frame(&mut w, &Request::CloseMbox { handle: handle.0 }).map_err(|e| e.to_string())?;
            recv_response(sock).map(|(r, _)| r)
        })?;
        match r {
            Response::Closed => Ok(()),
            Response::Refused(why) => Err(why),
            other => Err(format!("delivery helper: unexpected {other:?}")),
        }
    }

    /// Have the helper start a maildrop agent as system user `user` for their home mailbox
    /// (blocking): the socket to talk to it ([`crate::mailbox::agent`]).
    pub fn open_home(&self, user: &str) -> Result<UnixStream, String> {
        let r = self.call(|sock| {
            let mut w = sock;
            write_frame(&mut w, &Request::OpenHome { user: user.to_string() }).map_err(|e| e.to_string())?;
            recv_response(sock)
        })?;
        match r {
            (Response::Agent, Some(fd)) => Ok(UnixStream::from(fd)),
            (Response::Agent, None) => Err("delivery helper sent no socket".into()),
            (Response::Refused(why), _) => Err(why),
            (other, _) => Err(format!("delivery helper: unexpected {other:?}")),
        }
    }

    /// Tell the helper to read main.cf and the aliases again (SIGHUP).
    pub fn reload(&self) -> Result<(), String> {
        let r = self.call(|sock| {
            let mut w = sock;
            write_frame(&mut w, &Request::Reload).map_err(|e| e.to_string())?;
            recv_response(sock).map(|(r, _)| r)
        })?;
        match r {
            Response::Done { ok: true, .. } => Ok(()),
            Response::Done { reason, .. } | Response::Refused(reason) => Err(reason),
            other => Err(format!("delivery helper: unexpected {other:?}")),
        }
    }

    /// [`Client::open_mbox`] off the event loop.
    pub async fn open_mbox_async(self: &Arc<Self>, user: &str) -> Result<(std::fs::File, Handle), String> {
        let c = self.clone();
        let user = user.to_string();
        smol::unblock(move || c.open_mbox(&user)).await
    }

    /// [`Client::close_mbox`] off the event loop.
    pub async fn close_mbox_async(self: &Arc<Self>, handle: Handle) -> Result<(), String> {
        let c = self.clone();
        smol::unblock(move || c.close_mbox(handle)).await
    }
}

/// POP3 over mbox for a system user when running with the helper: the open mailbox
/// (read/write) and the handle to give back with [`close_mbox`]. The helper holds the
/// dot-lock and the fcntl lock until then.
pub async fn open_mbox(user: &str) -> Result<(std::fs::File, Handle), String> {
    let c = client().ok_or("no privileged delivery helper (poshta was not started as root)")?;
    c.open_mbox_async(user).await
}

/// Release a mailbox from [`open_mbox`].
pub async fn close_mbox(handle: Handle) -> Result<(), String> {
    let c = client().ok_or("no privileged delivery helper")?;
    c.close_mbox_async(handle).await
}

/// Start the helper (as root, before dropping privileges): see the module doc.
pub fn start_helper(config_file: &Path) -> Result<(), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let child = std::process::Command::new(exe)
        .arg("delivery-helper")
        .arg("-c")
        .arg(config_file)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start the delivery helper: {e}"))?;
    let mut c = Client::new(ours);
    c._child = Some(child);
    CLIENT
        .set(Arc::new(c))
        .map_err(|_| "the delivery helper was already started".to_string())?;
    let _ = MODE.set(Mode::Helper);
    Ok(())
}

/// Entries [`prepare_dirs`] looks at in one tree (bounds a start-up on a huge store).
const CHOWN_ENTRIES_MAX: usize = 1_000_000;
/// Depth of the walk: queue/maildrop/FILE, mail/USER/new/FILE.
const CHOWN_DEPTH_MAX: usize = 4;

/// As root, before binding: mail_owner must exist; queue_directory and virtual_mailbox_base
/// (with what is in them, so a store written by an older root-run poshta keeps working)
/// and the users file become mail_owner's; a TLS key mail_owner cannot read is warned
/// about (the first load happens as root, but a replaced key could not be read later).
pub fn prepare_dirs(s: &crate::config::Settings) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let u = nix::unistd::User::from_name(&s.mail_owner)
        .map_err(|e| format!("mail_owner {}: {e}", s.mail_owner))?
        .ok_or_else(|| {
            format!(
                "mail_owner {0} does not exist: create it with `poshta init` (or `useradd --system {0}`)",
                s.mail_owner
            )
        })?;
    if u.uid.is_root() {
        return Err(format!(
            "mail_owner {} has uid 0; it must be an unprivileged user",
            s.mail_owner
        ));
    }
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    // maildrop/ keeps its files' owners: the owner of a dropped message is the uid that
    // submitted it (net::pickup names it in the log and the Received: header).
    let maildrop = s.queue_directory.join("maildrop");
    for dir in [&s.queue_directory, &s.virtual_mailbox_base] {
        let mut budget = CHOWN_ENTRIES_MAX;
        chown_tree(dir, uid, gid, 0, &mut budget, &maildrop).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(&s.mailbox_users_file) {
        if m.is_file() && m.uid() != uid {
            std::os::unix::fs::lchown(&s.mailbox_users_file, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", s.mailbox_users_file.display()))?;
        }
    }
    if let Some(key) = &s.smtpd_tls_key_file {
        if let Ok(m) = std::fs::metadata(key) {
            let mode = m.mode();
            let readable =
                (m.uid() == uid && mode & 0o400 != 0) || (m.gid() == gid && mode & 0o040 != 0) || mode & 0o004 != 0;
            if !readable {
                crate::mlog!(
                    "master",
                    "warning: {} is not readable by mail_owner {}: it is loaded now, but a replaced key will not be; make it root:{} 0640 (poshta init does)",
                    key.display(),
                    s.mail_owner,
                    s.mail_owner
                );
            }
        }
    }
    Ok(())
}

/// lchown `path` and what is below it (not following links) where the owner differs;
/// `keep_contents` itself is changed, what is inside it is not.
fn chown_tree(
    path: &Path,
    uid: u32,
    gid: u32,
    depth: usize,
    budget: &mut usize,
    keep_contents: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if *budget == 0 {
        return Ok(());
    }
    *budget -= 1;
    let m = std::fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if m.is_dir() && depth < CHOWN_DEPTH_MAX && path != keep_contents {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid, depth + 1, budget, keep_contents)?;
        }
    }
    Ok(())
}

/// Become `user` for good (process-wide): supplementary groups, gid, uid.
pub fn drop_privileges(user: &str) -> Result<(u32, u32), String> {
    use nix::unistd::{setgid, setgroups, setuid, User};
    let u = User::from_name(user)
        .map_err(|e| format!("mail_owner {user}: {e}"))?
        .ok_or_else(|| {
            format!("mail_owner {user} does not exist; create it (`poshta init` does: useradd --system {user})")
        })?;
    if u.uid.is_root() {
        return Err(format!("mail_owner {user} has uid 0; it must be an unprivileged user"));
    }
    setgroups(&[u.gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(u.gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(u.uid).map_err(|e| format!("setuid: {e}"))?;
    // Once dropped, there is no way back.
    if setuid(nix::unistd::Uid::from_raw(0)).is_ok() || nix::unistd::geteuid() != u.uid {
        return Err("privileges were not dropped".into());
    }
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

#[cfg(test)]
mod tests;
