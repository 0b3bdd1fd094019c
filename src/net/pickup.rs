//! Mail from local programs (`sendmail`, mail(1)): the pickup socket and the maildrop
//! directory. Like Postfix's pickup(8), this is where locally submitted mail enters the
//! queue; only the daemon writes the queue log.
//!
//! # Files
//!
//! ```text
//! $queue_directory/public/          0755  (the daemon's user)
//! $queue_directory/public/pickup    Unix stream socket, 0666: any local user may submit
//! $queue_directory/maildrop/        1733  (the daemon's user): write-only for others
//! $queue_directory/maildrop/.tmp-*  being written by a `sendmail` (ignored; removed after
//!                                   limits::PICKUP_TMP_STALE_SECS)
//! $queue_directory/maildrop/NAME    complete submissions, imported and then deleted
//! $queue_directory/maildrop/.bad-*  submissions that could not be imported (kept, logged)
//! ```
//!
//! The socket is bound before a root daemon gives up root (next to the control socket); the
//! maildrop directory is made by the running event loop, so it belongs to whatever user the
//! daemon runs as (mail_owner after a root start, else the user who started it). Local
//! users must reach both, so the queue directory gets search permission for everyone at
//! start (0711: still nobody else may list it); queue segments are 0600 (the daemon's umask
//! is 077, and older segments are made 0600 then).
//!
//! `mailq` lists the files waiting in maildrop/ after the queued messages (`list_waiting`:
//! only heads are read, and the listing is bounded by limits::MAILQ_MAILDROP_*): the daemon
//! for its LIST, and `poshta queue` itself when the daemon is down (only root can list the
//! directory then).
//!
//! A maildrop file is 0644, named with 128 random bits in a directory nobody but the daemon
//! may list: other users cannot find it, the daemon (running as mail_owner, not as the
//! submitter) can read it, and its owner is the submitting identity. A file that is not a
//! regular file, has more than one link, or is a symlink is refused.
//!
//! # Protocol (socket) and file format (maildrop): the same bytes
//!
//! ```text
//! submission = "POSHTA-PICKUP 1" LF
//!              "sender " [address] LF          ; empty: the null sender
//!              1*("rcpt " address LF)           ; at most limits::PICKUP_RECIPIENTS_MAX
//!              "size " 1*DIGIT LF               ; bytes of the message that follow
//!              LF
//!              message                          ; exactly `size` bytes, LF line ends
//! reply      = "OK " queue-id LF                ; durable in the queue (fsynced)
//!            / "ERR " exit-code SP text LF      ; nothing queued; exit-code from sysexits.h
//! ```
//!
//! The head is at most limits::PICKUP_HEAD_BYTES_MAX bytes. Addresses are complete
//! (`local@domain`; the sender may be empty): `sendmail` qualifies bare names with
//! myorigin before it writes them. The daemon checks every address as an SMTP path, the
//! size against message_size_limit (`ERR 65`), and answers `OK` only after the commit
//! record is durable. `ERR 75` (temporary: queue write error, busy) tells `sendmail` to use
//! maildrop instead; other codes are final.
//!
//! # Identity
//!
//! The submitter's uid comes from the kernel, never from the submission: SO_PEERCRED on the
//! socket, the file owner in maildrop. It goes into the log line (`uid=1000 from=<...>`)
//! and the trace header, as Postfix's pickup writes it:
//!
//! ```text
//! Received: by HOSTNAME (poshta, from userid 1000)
//! <TAB>id QUEUE-ID; DATE
//! ```
//!
//! The envelope sender is whatever `sendmail` sends (its -f option included): Postfix
//! allows any local user to choose it by default (local_login_sender_maps = static:*), and
//! so does poshta; the uid in the log and the header shows who did.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use smol::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

use super::Ctx;
// The wire format (head, replies, exit codes, the Received: line) is a sans-IO core.
use crate::limits;
use crate::mlog;
pub use crate::proto::pickup::*;
use crate::queue::{Envelope, QueueError, QueueId};

/// The submission socket's directory and name in the queue directory.
pub const PUBLIC_DIR: &str = "public";
pub const SOCKET_NAME: &str = "pickup";
pub const MAILDROP_DIR: &str = "maildrop";
pub fn socket_path(queue_dir: &Path) -> PathBuf {
    queue_dir.join(PUBLIC_DIR).join(SOCKET_NAME)
}

pub fn maildrop_dir(queue_dir: &Path) -> PathBuf {
    queue_dir.join(MAILDROP_DIR)
}

/// Create `public/` (0755) and bind `public/pickup` (0666), removing a stale socket. Call
/// next to `control::bind` (after the queue lock, before privileges are dropped).
pub fn bind(queue_dir: &Path) -> std::io::Result<Async<UnixListener>> {
    let public = queue_dir.join(PUBLIC_DIR);
    match std::fs::DirBuilder::new().mode(0o755).create(&public) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&public)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            public.display()
        )));
    }
    // Everyone must reach the socket; nobody but its owner may put things in public/.
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755))?;
    let l = super::control::bind_public_socket(&socket_path(queue_dir))?;
    open_queue_dir(queue_dir)?;
    Async::new(l)
}

/// Local users must reach public/ and maildrop/ in the queue directory: it gets search
/// permission for everyone (0711: nobody else may list it). Queue segments are made 0600
/// (the daemon's umask is 077); segments from before that rule are made 0600 here.
fn open_queue_dir(queue_dir: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(queue_dir)?.mode() & 0o7777;
    for e in std::fs::read_dir(queue_dir)? {
        let e = e?;
        let is_segment = e.file_name().to_str().is_some_and(|n| n.ends_with(".log"));
        if is_segment {
            let m = e.metadata()?;
            if m.is_file() && m.mode() & 0o077 != 0 {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(queue_dir, std::fs::Permissions::from_mode(mode | 0o011))?;
        mlog!(
            "pickup",
            "{}: mode {:o} -> {:o} (local users reach public/pickup and maildrop/)",
            queue_dir.display(),
            mode,
            mode | 0o011
        );
    }
    Ok(())
}

/// Make maildrop/ (1733) as the user the daemon now runs as. Runs in the event loop, i.e.
/// after a root daemon has dropped its privileges.
fn prepare_maildrop(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o1733).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "owned by uid {}, not by the daemon's uid {me}: imported files could not be deleted",
            meta.uid()
        )));
    }
    // The umask must not take the sticky or write bits away.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1733))
}

/// Serve the pickup socket (if bound) and import maildrop/ at start and every
/// limits::PICKUP_SCAN_SECS, until shutdown.
pub async fn serve(ctx: Rc<Ctx>, listener: Option<Async<UnixListener>>, queue_dir: PathBuf) {
    let dir = maildrop_dir(&queue_dir);
    let dir2 = dir.clone();
    match smol::unblock(move || prepare_maildrop(&dir2)).await {
        Ok(()) => {}
        Err(e) => mlog!("pickup", "warning: maildrop {}: {e}", dir.display()),
    }
    if let Some(l) = listener {
        ctx.ex.spawn(accept_loop(ctx.clone(), l)).detach();
    }
    loop {
        import_maildrop(&ctx, &dir).await;
        let stop = smol::future::or(
            async {
                Timer::after(Duration::from_secs(limits::PICKUP_SCAN_SECS)).await;
                false
            },
            async {
                ctx.stopped().await;
                true
            },
        )
        .await;
        if stop {
            return;
        }
    }
}

async fn accept_loop(ctx: Rc<Ctx>, listener: Async<UnixListener>) {
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let accepted = smol::future::or(async { Some(listener.accept().await) }, async {
            ctx.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok((s, _))) => s,
            Some(Err(e)) => {
                mlog!("pickup", "warning: accept: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.get() >= limits::PICKUP_CLIENTS_MAX {
            // The client falls back to maildrop on a temporary error.
            ctx.ex
                .spawn(async move {
                    let mut s = smol::net::unix::UnixStream::from(stream);
                    let _ = send(&mut s, format!("ERR {EX_TEMPFAIL} busy\n").as_bytes()).await;
                })
                .detach();
            continue;
        }
        active.set(active.get() + 1);
        let slot = super::SessionSlot::take(&ctx);
        let (ctx2, active2) = (ctx.clone(), active.clone());
        ctx.ex
            .spawn(async move {
                client(&ctx2, stream).await;
                drop(slot);
                active2.set(active2.get().saturating_sub(1));
            })
            .detach();
    }
}

fn timeout() -> Duration {
    Duration::from_secs(limits::PICKUP_CLIENT_TIMEOUT_SECS)
}

async fn send(stream: &mut smol::net::unix::UnixStream, data: &[u8]) -> bool {
    smol::future::or(async { stream.write_all(data).await.is_ok() }, async {
        Timer::after(timeout()).await;
        false
    })
    .await
}

/// Read one chunk within the timeout; None on timeout or error.
async fn read_some<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<usize> {
    smol::future::or(async { r.read(buf).await.ok() }, async {
        Timer::after(timeout()).await;
        None
    })
    .await
}

/// Read the head: returns the submission and the message bytes read past it.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Submission, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some((sub, n)) = parse_head(&buf)? {
            let rest = buf.split_off(n);
            return Ok((sub, rest));
        }
        let room = (limits::PICKUP_HEAD_BYTES_MAX + 1 - buf.len()).min(chunk.len());
        match read_some(r, &mut chunk[..room]).await {
            Some(0) | None => return Err(refuse(EX_TEMPFAIL, "submission incomplete")),
            Some(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn client(ctx: &Rc<Ctx>, stream: Async<std::os::unix::net::UnixStream>) {
    let uid = match rustix::net::sockopt::socket_peercred(stream.get_ref()) {
        Ok(c) => c.uid.as_raw(),
        Err(e) => {
            mlog!("pickup", "warning: peer credentials: {e}");
            return;
        }
    };
    let mut stream = smol::net::unix::UnixStream::from(stream);
    let reply = match read_head(&mut stream).await {
        Ok((sub, rest)) => match enqueue(ctx, uid, &sub, rest, &mut stream, "socket").await {
            Ok(qid) => format!("OK {qid}\n"),
            Err(r) => format!("ERR {} {}\n", r.code, r.text),
        },
        Err(r) => {
            mlog!("pickup", "warning: uid={uid}: {}", r.text);
            format!("ERR {} {}\n", r.code, r.text)
        }
    };
    let _ = send(&mut stream, reply.as_bytes()).await;
}

/// Check the limits, take the message (`rest` first, then `reader`, `sub.size` bytes in all)
/// into the queue with its trace header, and return once it is durable.
async fn enqueue<R: AsyncRead + Unpin>(
    ctx: &Rc<Ctx>,
    uid: u32,
    sub: &Submission,
    mut rest: Vec<u8>,
    reader: &mut R,
    via: &str,
) -> Result<QueueId, Refusal> {
    let policy = ctx.policy();
    let s = &policy.settings;
    if s.message_size_limit > 0 && sub.size > s.message_size_limit {
        mlog!(
            "pickup",
            "warning: uid={uid} from=<{}>: message file too big ({} > message_size_limit {})",
            sub.sender,
            sub.size,
            s.message_size_limit
        );
        return Err(refuse(EX_DATAERR, "message file too big"));
    }
    let now = crate::time::now_unix();
    let env = Envelope {
        sender: sub.sender.clone(),
        recipients: sub.recipients.clone(),
        arrival_unix: now,
        client: format!("local (uid {uid})"),
    };
    let queue_err = |e: QueueError| {
        mlog!("pickup", "warning: uid={uid} queue: {e}");
        refuse(EX_TEMPFAIL, "queue file write error")
    };
    let mut inc = ctx.queue.begin(env).map_err(queue_err)?;
    let qid = inc.qid();
    let trace = received_header(&s.myhostname, uid, qid, &crate::time::rfc5322(now));
    inc.write(trace.as_bytes()).await.map_err(queue_err)?;
    let mut left = sub.size;
    if rest.len() as u64 > left {
        // More bytes than announced: a broken or hostile submission.
        return Err(refuse(EX_USAGE, "more data than the size line says"));
    }
    if !rest.is_empty() {
        inc.write(&rest).await.map_err(queue_err)?;
        left -= rest.len() as u64;
        rest.clear();
    }
    let mut buf = vec![0u8; limits::QUEUE_CHUNK_BYTES_MAX];
    // Bounded: `left` shrinks with every chunk; a stalled reader times out.
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        match read_some(reader, &mut buf[..want]).await {
            Some(0) | None => {
                mlog!("pickup", "warning: uid={uid} qid={qid}: submission cut short ({via})");
                return Err(refuse(EX_TEMPFAIL, "submission cut short"));
            }
            Some(n) => {
                inc.write(&buf[..n]).await.map_err(queue_err)?;
                left -= n as u64;
            }
        }
    }
    inc.commit().await.map_err(queue_err)?;
    mlog!("pickup", "qid={qid} uid={uid} from=<{}> ({via})", sub.sender);
    mlog!(
        "qmgr",
        "qid={qid} from=<{}>, size={}, nrcpt={} (queue active)",
        sub.sender,
        sub.size + trace.len() as u64,
        sub.recipients.len()
    );
    Ok(qid)
}

/// What became of one maildrop file.
enum Import {
    Done,
    /// The file disappeared before it was opened.
    Gone,
    /// Leave it for the next scan (queue trouble).
    Retry,
    /// It can never be imported: keep it aside as `.bad-NAME`.
    Bad(String),
}

async fn import_maildrop(ctx: &Rc<Ctx>, dir: &Path) {
    let d = dir.to_path_buf();
    let names = smol::unblock(move || list_maildrop(&d)).await;
    let names = match names {
        Ok(n) => n,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                mlog!("pickup", "warning: maildrop {}: {e}", dir.display());
            }
            return;
        }
    };
    for name in names {
        if ctx.stopping.get() {
            return;
        }
        let path = dir.join(&name);
        match import_file(ctx, &path).await {
            Import::Done => {
                let (p, d) = (path.clone(), dir.to_path_buf());
                // The message is durable in the queue; now the file may go (a crash before
                // this imports it again: at-least-once, like every delivery).
                let removed = smol::unblock(move || std::fs::remove_file(&p).and_then(|()| sync_dir(&d))).await;
                if let Err(e) = removed {
                    mlog!("pickup", "warning: remove {}: {e}", path.display());
                }
            }
            Import::Gone => {}
            Import::Retry => return,
            Import::Bad(why) => {
                mlog!("pickup", "warning: maildrop {name}: {why}; kept as .bad-{name}");
                let (p, to) = (path.clone(), dir.join(format!(".bad-{name}")));
                if let Err(e) = smol::unblock(move || std::fs::rename(&p, &to)).await {
                    mlog!("pickup", "warning: rename {}: {e}", path.display());
                }
            }
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The complete submissions in maildrop (oldest names first), removing stale temporary
/// files on the way.
fn list_maildrop(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let now = std::time::SystemTime::now();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with(".tmp-") {
            let stale = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age.as_secs() > limits::PICKUP_TMP_STALE_SECS);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        names.push(name);
        // Bounded per scan; the rest waits for the next one.
        if names.len() >= limits::PICKUP_SCAN_FILES_MAX * 4 {
            break;
        }
    }
    names.sort();
    names.truncate(limits::PICKUP_SCAN_FILES_MAX);
    Ok(names)
}

/// Open a maildrop file without following links and check it; returns the file, its
/// owner and its size (None: it is gone).
fn open_dropped(path: &Path) -> Result<Option<(std::fs::File, u32, u64)>, String> {
    use rustix::fs::{Mode, OFlags};
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    // A hard link to someone else's file must not be imported as if it were a submission.
    if meta.nlink() != 1 {
        return Err(format!("{} links", meta.nlink()));
    }
    Ok(Some((file, meta.uid(), meta.len())))
}

/// Read and check the head of a maildrop file of `len` bytes: the submission and the
/// message bytes read past it. Reads at most limits::PICKUP_HEAD_BYTES_MAX + 1 bytes, so a
/// huge or garbage file costs no more than a proper one.
fn read_file_head(file: &mut std::fs::File, len: u64) -> Result<(Submission, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Bounded: parse_head refuses a head longer than the limit, and `room` never lets the
    // buffer grow past it.
    loop {
        match parse_head(&buf) {
            Ok(Some((sub, n))) => {
                if n as u64 + sub.size != len {
                    return Err(format!(
                        "file has {len} bytes, head and size say {}",
                        n as u64 + sub.size
                    ));
                }
                let rest = buf.split_off(n);
                return Ok((sub, rest));
            }
            Ok(None) => {}
            Err(r) => return Err(r.text),
        }
        let room = (limits::PICKUP_HEAD_BYTES_MAX + 1 - buf.len()).min(chunk.len());
        match file.read(&mut chunk[..room]) {
            Ok(0) => return Err("truncated head".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One maildrop file as mailq lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The file name, printable (control characters shown as `?`).
    pub name: String,
    /// Bytes of the whole file (head included), as Postfix's showq counts a maildrop file.
    pub size: u64,
    pub mtime_unix: u64,
    /// The file's owner: the submitting user.
    pub uid: u32,
    /// The envelope, or why the file cannot be picked up.
    pub head: Result<Submission, String>,
}

/// The messages waiting in maildrop/ for the daemon's pickup, for mailq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitingList {
    /// Oldest first.
    pub files: Vec<Waiting>,
    /// Files past the listing bounds (limits::MAILQ_MAILDROP_*): counted, not listed.
    pub more_files: u64,
    pub more_bytes: u64,
}

/// The complete submissions waiting in maildrop/ (names not starting with `.`), each read
/// only as far as its head. A missing directory is an empty one; an unreadable one (mailq
/// run by a user other than root and the daemon's) is an error. Blocking.
pub fn list_waiting(dir: &Path) -> std::io::Result<WaitingList> {
    let mut out = WaitingList::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut text_bytes = 0usize;
    for e in entries.take(limits::MAILQ_MAILDROP_SCAN_MAX) {
        let e = e?;
        let raw = e.file_name();
        let raw = raw.to_string_lossy();
        if raw.starts_with('.') {
            continue;
        }
        let full =
            out.files.len() >= limits::MAILQ_MAILDROP_FILES_MAX || text_bytes >= limits::MAILQ_MAILDROP_TEXT_BYTES_MAX;
        if full {
            // Counted by its size from the directory entry (lstat), not opened.
            if let Ok(m) = e.metadata() {
                out.more_files += 1;
                out.more_bytes += m.len();
            }
            continue;
        }
        let name: String = raw.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let Some(w) = waiting_file(&e.path(), name) else {
            // Imported (or removed) meanwhile.
            continue;
        };
        text_bytes += w.name.len();
        if let Ok(sub) = &w.head {
            text_bytes += sub.sender.len() + sub.recipients.iter().map(String::len).sum::<usize>();
        }
        out.files.push(w);
    }
    out.files
        .sort_by(|a, b| (a.mtime_unix, &a.name).cmp(&(b.mtime_unix, &b.name)));
    Ok(out)
}

/// Stat and read the head of one maildrop file; None when it is gone.
fn waiting_file(path: &Path, name: String) -> Option<Waiting> {
    let mut w = Waiting {
        name,
        size: 0,
        mtime_unix: 0,
        uid: 0,
        head: Err(String::new()),
    };
    let lstat = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            w.head = Err(format!("stat: {e}"));
            return Some(w);
        }
    };
    w.size = lstat.len();
    w.mtime_unix = u64::try_from(lstat.mtime()).unwrap_or(0);
    w.uid = lstat.uid();
    // The same checks as the import (no links, regular files only), so what mailq calls
    // damaged is what the daemon will set aside as .bad-NAME.
    w.head = match open_dropped(path) {
        Ok(None) => return None,
        Ok(Some((mut file, _, len))) => read_file_head(&mut file, len).map(|(sub, _)| sub),
        Err(why) => Err(why),
    };
    Some(w)
}

/// An opened maildrop file: the file, its owner, the head, the message bytes read past it.
type Opened = (std::fs::File, u32, Submission, Vec<u8>);

async fn import_file(ctx: &Rc<Ctx>, path: &Path) -> Import {
    let p = path.to_path_buf();
    // Open and read the head off the event loop (a file read may block).
    let opened = smol::unblock(move || -> Result<Opened, Result<(), String>> {
        let (mut file, uid, len) = match open_dropped(&p) {
            Ok(Some(x)) => x,
            // Vanished meanwhile: nothing to do.
            Ok(None) => return Err(Ok(())),
            Err(e) => return Err(Err(e)),
        };
        let (sub, rest) = read_file_head(&mut file, len).map_err(Err)?;
        Ok((file, uid, sub, rest))
    })
    .await;
    let (file, uid, sub, rest) = match opened {
        Ok(x) => x,
        Err(Ok(())) => return Import::Gone,
        Err(Err(why)) => return Import::Bad(why),
    };
    let mut reader = smol::Unblock::new(file);
    match enqueue(ctx, uid, &sub, rest, &mut reader, "maildrop").await {
        Ok(_) => Import::Done,
        Err(r) if r.code == EX_TEMPFAIL && r.text == "queue file write error" => Import::Retry,
        Err(r) => Import::Bad(r.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Submission {
        Submission {
            sender: "nick2@mx.example.org".into(),
            recipients: vec!["alice@example.org".into(), "bob@example.org".into()],
            size: 5,
        }
    }

    #[test]
    fn head_round_trip_in_pieces() {
        let mut bytes = sub().encode_head();
        let head_len = bytes.len();
        bytes.extend_from_slice(b"hello");
        // Incomplete at every cut before the blank line, complete after it.
        for cut in 0..head_len {
            assert_eq!(parse_head(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let (s, n) = parse_head(&bytes).unwrap().unwrap();
        assert_eq!(s, sub());
        assert_eq!(n, head_len);
    }

    #[test]
    fn null_sender() {
        let mut s = sub();
        s.sender.clear();
        let (p, _) = parse_head(&s.encode_head()).unwrap().unwrap();
        assert_eq!(p.sender, "");
    }

    #[test]
    fn hostile_heads() {
        let bad = |h: &str| parse_head(h.as_bytes()).unwrap_err().code;
        assert_eq!(bad("GET / HTTP/1.0\n\n"), EX_USAGE);
        assert_eq!(bad("POSHTA-PICKUP 1\nsender a@b\nsize 1\n\n"), EX_USAGE);
        assert_eq!(bad("POSHTA-PICKUP 1\nsender a@b\nrcpt bare\nsize 1\n\n"), EX_NOUSER);
        assert_eq!(bad("POSHTA-PICKUP 1\nsender a@b\nrcpt x@y\nsize -1\n\n"), EX_USAGE);
        assert_eq!(bad("POSHTA-PICKUP 1\nsender a@b\nrcpt x@y\n\n"), EX_USAGE);
        assert_eq!(bad("POSHTA-PICKUP 1\nsender a b@c\nrcpt x@y\nsize 1\n\n"), EX_USAGE);
        assert_eq!(
            bad("POSHTA-PICKUP 1\nsender a@b\nrcpt x@y\rBcc: z\nsize 1\n\n"),
            EX_NOUSER
        );
        assert_eq!(
            bad("POSHTA-PICKUP 1\nsender a@b\nrcpt x@y\nsize 99999999999999999999999\n\n"),
            EX_USAGE
        );
        // A head that never ends is refused at the limit, not buffered forever.
        let mut long = b"POSHTA-PICKUP 1\nsender a@b\n".to_vec();
        while long.len() < limits::PICKUP_HEAD_BYTES_MAX {
            long.extend_from_slice(b"rcpt x@y\n");
        }
        assert!(parse_head(&long).is_err());
    }

    #[test]
    fn too_many_recipients() {
        let s = Submission {
            sender: String::new(),
            recipients: vec!["a@b".into(); limits::PICKUP_RECIPIENTS_MAX + 1],
            size: 0,
        };
        assert_eq!(parse_head(&s.encode_head()).unwrap_err().code, EX_DATAERR);
    }

    /// mailq's view of maildrop/: good files with their envelope, damaged ones (garbage,
    /// a head that never ends, a size that does not match, a symlink) with the reason,
    /// temporary and set-aside files not at all; a huge file is read only up to the head limit.
    #[test]
    fn listing_waiting_files() {
        let d = crate::testutil::TempDir::new(&format!("poshta-mdlist-{}", std::process::id()));
        assert_eq!(list_waiting(&d.join("missing")).unwrap(), WaitingList::default());
        let mut good = sub().encode_head();
        good.extend_from_slice(b"hello");
        std::fs::write(d.join("a-good"), &good).unwrap();
        std::fs::write(d.join("b-garbage"), b"GET / HTTP/1.0\r\n\r\n").unwrap();
        // 8 MB that starts like a head and never ends it.
        let mut huge = b"POSHTA-PICKUP 1\nsender a@b\n".to_vec();
        huge.resize(8 << 20, b'r');
        std::fs::write(d.join("c-huge"), &huge).unwrap();
        let mut short = sub().encode_head();
        short.extend_from_slice(b"hel");
        std::fs::write(d.join("d-short"), &short).unwrap();
        std::os::unix::fs::symlink(d.join("a-good"), d.join("e-link")).unwrap();
        std::fs::write(d.join("f\nnewline"), &good).unwrap();
        std::fs::write(d.join(".tmp-1-2"), &good).unwrap();
        std::fs::write(d.join(".bad-x"), &good).unwrap();
        let mut l = list_waiting(&d).unwrap();
        assert_eq!((l.more_files, l.more_bytes), (0, 0));
        l.files.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = l.files.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["a-good", "b-garbage", "c-huge", "d-short", "e-link", "f?newline"]
        );
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(l.files[0].head, Ok(sub()));
        assert_eq!((l.files[0].size, l.files[0].uid), (good.len() as u64, me));
        assert!(l.files[0].mtime_unix > 0);
        assert_eq!(l.files[1].head, Err("not a poshta submission".into()));
        assert_eq!(l.files[2].head, Err("submission head too long".into()));
        assert_eq!(l.files[2].size, 8 << 20);
        assert!(l.files[3].head.as_ref().is_err_and(|e| e.contains("head and size say")));
        assert!(l.files[4].head.as_ref().is_err_and(|e| e.starts_with("open:")));
        assert_eq!(l.files[5].head, Ok(sub()));
    }

    #[test]
    fn received_names_the_uid() {
        let h = received_header("mx.example.org", 1000, QueueId(0xAB), "Sat, 28 Nov 2026 10:00:00 +0000");
        assert_eq!(
            h,
            "Received: by mx.example.org (poshta, from userid 1000)\n\tid 0000000000AB; Sat, 28 Nov 2026 10:00:00 +0000\n"
        );
    }
}
