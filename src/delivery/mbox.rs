//! mbox delivery (`mail_spool_directory/USER`, Debian: `/var/mail/USER`) and an mbox reader.
//!
//! # Format: mboxrd
//!
//! Each message is stored as
//!
//! ```text
//! From SENDER Sat Nov 28 01:59:01 2026\n     <- the From_ line (asctime date, UTC)
//! Return-Path: <...>\n ...                   <- `prepend` (caller's trace headers)
//! X-UIDL: UNIQUE\n                           <- see "POP3 UIDs"
//! message, every line matching ^>*From  gets one more '>'\n
//! \n                                         <- a blank line ends the message
//! ```
//!
//! - SENDER is the envelope sender, `MAILER-DAEMON` for the null sender (as Postfix); any
//!   whitespace or control character in it is written as `_`, so the line stays parseable.
//! - mboxrd quoting: a line `From x` becomes `>From x`, `>From x` becomes `>>From x`, and so
//!   on. The reader removes exactly one `>` from such lines, so any message round-trips.
//! - A message that does not end with a newline gets one. If the mailbox does not end with
//!   a newline (damaged by another program), one is written first, so the new From_ line
//!   always starts a line.
//! - The date is UTC (poshta keeps no time zone database, see `crate::time`).
//!
//! # Reading: where a message starts
//!
//! A line starting with `From ` starts a message when it is the first line of the file, or
//! when the line before it is blank and it carries a time (`H:MM` or `HH:MM` somewhere after
//! `From `), as every From_ line's asctime date does ([`starts_message`]). A `From ` line in
//! a body that a writer failed to quote (mboxo writers, damaged files) does not split the
//! message unless it looks exactly like a From_ line after a blank line (mutt's and
//! Dovecot's heuristics are of the same kind). Everything else, including garbage, belongs
//! to the message before it.
//!
//! # POP3 UIDs
//!
//! Every delivered message gets `X-UIDL: UNIQUE` as its first header after the caller's
//! prepended trace headers, even when the message already carries an `X-UIDL:` — a sender
//! must not choose the UID of a message (a copied UID would make POP3 clients skip mail).
//! The reader takes the first `X-UIDL:` of a message's header. UNIQUE is chosen by the
//! caller; the suggested scheme is the Maildir unique name, `{secs}.M{micros}P{pid}Q{seq}`,
//! which is unique per delivery and 1–70 characters of 0x21..0x7E (RFC 1939 §7).
//!
//! # Locking (Debian Policy §11.6; mail(1), mutt, s-nail, Dovecot)
//!
//! The same two locks as Postfix on Debian (`mailbox_delivery_lock = fcntl, dotlock`) and
//! Dovecot (`mbox_write_locks = dotlock fcntl`); mutt and s-nail take fcntl plus a dot-lock
//! made by a setgid-mail helper. fcntl first, then the dot-lock, both non-blocking and
//! retried, so no order of taking them can deadlock against us:
//!
//! 1. a POSIX record lock (`fcntl(F_SETLK, F_WRLCK)` on the whole file, via
//!    `rustix::fs::fcntl_lock`);
//! 2. the dot-lock `USER.lock` next to the mailbox, created with O_EXCL|O_NOFOLLOW and
//!    holding our pid (as liblockfile writes it). A dot-lock older than
//!    [`MBOX_DOTLOCK_STALE_SECS`] is stale and removed.
//!
//! When either is busy, the other is released and both are retried with a doubling pause
//! (up to [`MBOX_LOCK_RETRY_MS_MAX`]) until the caller's wait runs out: then a temporary
//! error (the message stays queued). Creating the dot-lock needs write access to the spool
//! directory (Debian: `/var/mail` is `root:mail 2775`): run the delivery as root or with
//! group mail. fcntl locks belong to a process, not a thread, and closing any descriptor of
//! the file drops them: so inside poshta every user of a mailbox goes through [`MboxLock`],
//! which keeps an in-process table of mailbox paths and opens the file only once no other
//! thread has it open (a second descriptor closing would release the first one's lock).
//! A POP3 session takes an [`MboxLock`] and reads through [`MboxReader::locked`].
//!
//! # Safety (delivering as root must not become a root exploit)
//!
//! The mailbox is opened with O_NOFOLLOW|O_NONBLOCK|O_NOCTTY (a symlink fails, a FIFO does
//! not block) and, through the descriptor, refused unless it is a regular file with one
//! link, owned by the expected uid. Refusals are temporary errors with the logged reason
//! (an admin can fix the mailbox; the queue lifetime bounds the retries). After locking,
//! the path must still name the file we opened (another program may have replaced it).
//! A new mailbox is created with mode 0600 and given to the expected uid and gid.
//!
//! # Atomicity
//!
//! The message is written with O_APPEND under both locks and fsynced; on any error
//! (a failing write, ENOSPC, the body reader failing, mailbox_size_limit), the file is
//! truncated back to its size before the delivery, so a partial message never stays.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::DeliveryError;
use crate::limits::{
    MBOX_DOTLOCK_STALE_SECS, MBOX_HEADER_LINE_BYTES_MAX, MBOX_LOCK_RETRY_MS_MAX, MBOX_MESSAGES_MAX, POP3_UID_BYTES_MAX,
    SMTP_PATH_BYTES_MAX,
};

/// Body copy buffer.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// First pause between lock attempts.
const LOCK_RETRY_MS_MIN: u64 = 20;
/// How often delivery re-opens a mailbox that was replaced while it waited for the locks.
const REOPEN_ATTEMPTS_MAX: usize = 3;

/// One delivery into an mbox.
pub struct MboxDelivery<'a> {
    /// The mailbox file (`mail_spool_directory/USER`); its directory must exist.
    pub path: &'a Path,
    /// Expected owner (uid, gid): an existing mailbox owned by another uid is refused; a new
    /// one is chowned to them (Debian: the user, group mail). None: no ownership check and
    /// a new mailbox belongs to whoever runs the delivery.
    pub owner: Option<(u32, u32)>,
    /// Envelope sender; "" is the null sender (written `MAILER-DAEMON`).
    pub sender: &'a str,
    /// Unix time for the From_ line (injected: arrival or delivery time).
    pub time_secs: u64,
    /// Header lines to prepend (Return-Path:, Delivered-To:), LF-ended.
    pub prepend: &'a [u8],
    /// The POP3 UID (see the module doc): 1–70 characters of 0x21..0x7E.
    pub uidl: &'a str,
    /// mailbox_size_limit: the mailbox may not grow past this many bytes (0: no limit).
    pub size_limit_bytes: u64,
    /// How long to wait for the locks before a temporary error (MBOX_LOCK_WAIT_MS).
    pub lock_wait: Duration,
}

/// Where a delivered message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Offset of its From_ line.
    pub offset: u64,
    /// Bytes appended (including newlines written before it, if the mailbox needed them).
    pub bytes: u64,
}

fn temp(path: &Path, what: &str, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::temporary(format!("mbox {}: {what}: {e}", path.display()))
}

fn classify(path: &Path, what: &str, e: std::io::Error) -> DeliveryError {
    // As maildir: only "file too large" is permanent; a full disk or quota defers.
    if e.raw_os_error() == Some(Errno::FBIG.raw_os_error()) {
        DeliveryError::permanent(format!("mbox {}: {what}: {e}", path.display()))
    } else {
        temp(path, what, e)
    }
}

/// `Sat Nov 28 01:59:01 2026` (asctime(3), UTC) from the RFC 5322 form.
pub fn asctime(unix: u64) -> String {
    let s = crate::time::rfc5322(unix);
    // "Sat, 28 Nov 2026 01:59:01 +0000"
    let p: Vec<&str> = s.split_whitespace().collect();
    match p.as_slice() {
        [wd, day, mon, year, time, _] => {
            format!("{} {mon} {day:>2} {time} {year}", wd.trim_end_matches(','))
        }
        _ => s,
    }
}

/// The From_ line (with its LF).
pub fn from_line(sender: &str, unix: u64) -> String {
    let mut who: String = sender
        .chars()
        .take(SMTP_PATH_BYTES_MAX)
        .map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c })
        .collect();
    if who.is_empty() {
        who.push_str("MAILER-DAEMON");
    }
    format!("From {who} {}\n", asctime(unix))
}

/// RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..0x7E.
fn valid_uidl(u: &str) -> bool {
    !u.is_empty() && u.len() <= POP3_UID_BYTES_MAX && u.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

const FROM: &[u8] = b"From ";

/// Streaming mboxrd quoting: one more `>` on every line matching `^>*From `. The extra `>`
/// may go anywhere in the run of `>`s, so the run is passed through as it comes and only the
/// (at most five) bytes of `From ` are held back: memory stays constant whatever the input.
#[derive(Debug)]
pub struct Quoter {
    at_line_start: bool,
    matched: usize,
}

impl Default for Quoter {
    fn default() -> Self {
        Quoter {
            at_line_start: true,
            matched: 0,
        }
    }
}

impl Quoter {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.at_line_start {
                if self.matched == 0 && b == b'>' {
                    out.push(b);
                    continue;
                }
                if b == FROM[self.matched] {
                    self.matched += 1;
                    if self.matched == FROM.len() {
                        out.push(b'>');
                        out.extend_from_slice(FROM);
                        self.at_line_start = false;
                        self.matched = 0;
                    }
                    continue;
                }
                out.extend_from_slice(&FROM[..self.matched]);
                self.at_line_start = false;
                self.matched = 0;
            }
            out.push(b);
            if b == b'\n' {
                self.at_line_start = true;
            }
        }
    }

    /// End of input: write out what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.at_line_start && self.matched > 0 {
            out.extend_from_slice(&FROM[..self.matched]);
            self.at_line_start = false;
        }
        self.matched = 0;
    }
}

/// Streaming mboxrd un-quoting: one `>` less on every line matching `^>+From `. The first
/// `>` of a line is held back; the rest of the run passes through.
#[derive(Debug)]
pub struct Unquoter {
    at_line_start: bool,
    held_gt: bool,
    matched: usize,
}

impl Default for Unquoter {
    fn default() -> Self {
        Unquoter::new()
    }
}

impl Unquoter {
    pub fn new() -> Unquoter {
        Unquoter {
            at_line_start: true,
            held_gt: false,
            matched: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.at_line_start {
                if self.matched == 0 && b == b'>' {
                    if self.held_gt {
                        out.push(b);
                    } else {
                        self.held_gt = true;
                    }
                    continue;
                }
                if self.held_gt && b == FROM[self.matched] {
                    self.matched += 1;
                    if self.matched == FROM.len() {
                        out.extend_from_slice(FROM);
                        self.reset_line(false);
                    }
                    continue;
                }
                self.flush_held(out);
            }
            out.push(b);
            if b == b'\n' {
                self.reset_line(true);
            }
        }
    }

    fn reset_line(&mut self, at_start: bool) {
        self.at_line_start = at_start;
        self.held_gt = false;
        self.matched = 0;
    }

    fn flush_held(&mut self, out: &mut Vec<u8>) {
        if self.held_gt {
            out.push(b'>');
        }
        out.extend_from_slice(&FROM[..self.matched]);
        self.reset_line(false);
    }

    /// End of input: write out what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.at_line_start {
            self.flush_held(out);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Locking

/// Mailboxes (by path) this process holds or is opening: fcntl locks cannot tell our
/// threads apart, and closing any descriptor of a file drops the process's fcntl lock on
/// it, so one thread at a time may even have a mailbox open. Callers name a mailbox by one
/// path (symlinks and hard links are refused anyway).
static LOCKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static UNLOCKED: Condvar = Condvar::new();

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Still busy when the wait ran out (another program holds the mailbox).
    Timeout(String),
    /// A system error (no write access to the spool directory, ...).
    Io(String),
    /// The `open` function failed (its reason).
    Open(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Timeout(s) | LockError::Io(s) | LockError::Open(s) => f.write_str(s),
        }
    }
}

/// An open mailbox with both locks held (see the module doc). Dropping it removes the
/// dot-lock, releases the fcntl lock, closes the file and lets other threads in.
#[derive(Debug)]
pub struct MboxLock {
    /// Declared before `_gate`: fields drop in order, so the file is closed before other
    /// threads may open the mailbox.
    file: File,
    dotlock: PathBuf,
    /// The dot-lock's (device, inode), to remove only our own.
    dotlock_id: (u64, u64),
    _gate: Gate,
}

/// `/var/mail/nick` → `/var/mail/nick.lock`.
pub fn dotlock_path(mbox: &Path) -> PathBuf {
    let mut s = OsString::from(mbox.as_os_str());
    s.push(".lock");
    PathBuf::from(s)
}

enum Attempt {
    Busy(String),
    Fail(String),
}

/// Holds a path in the in-process table; frees it on drop.
#[derive(Debug)]
struct Gate(PathBuf);

impl Gate {
    fn enter(path: &Path, deadline: Instant) -> Result<Gate, LockError> {
        let mut locked = LOCKED.lock().unwrap_or_else(|p| p.into_inner());
        while locked.iter().any(|p| p == path) {
            let now = Instant::now();
            if now >= deadline {
                return Err(LockError::Timeout(
                    "mailbox is locked by another delivery in this process".into(),
                ));
            }
            locked = UNLOCKED
                .wait_timeout(locked, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        locked.push(path.to_path_buf());
        Ok(Gate(path.to_path_buf()))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut locked = LOCKED.lock().unwrap_or_else(|p| p.into_inner());
        locked.retain(|p| *p != self.0);
        UNLOCKED.notify_all();
    }
}

impl MboxLock {
    /// Open the mailbox at `path` with `open` (called once, after no other thread of this
    /// process has it open) and take both locks, waiting until `deadline` at most.
    pub fn acquire(
        path: &Path,
        deadline: Instant,
        open: impl FnOnce() -> Result<File, String>,
    ) -> Result<MboxLock, LockError> {
        let gate = Gate::enter(path, deadline)?;
        let file = open().map_err(LockError::Open)?;
        let dotlock = dotlock_path(path);
        let mut pause = LOCK_RETRY_MS_MIN;
        loop {
            match Self::try_both(&file, &dotlock) {
                Ok(dotlock_id) => {
                    return Ok(MboxLock {
                        file,
                        dotlock,
                        dotlock_id,
                        _gate: gate,
                    });
                }
                Err(Attempt::Fail(why)) => return Err(LockError::Io(why)),
                Err(Attempt::Busy(why)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(LockError::Timeout(format!("mailbox is locked: {why}")));
                    }
                    std::thread::sleep(Duration::from_millis(pause).min(deadline - now));
                    pause = (pause * 2).min(MBOX_LOCK_RETRY_MS_MAX);
                }
            }
        }
    }

    /// The locked mailbox. Never close another descriptor of it while this lock lives.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Debian Policy §11.6: fcntl first, then the dot-lock; both non-blocking.
    fn try_both(file: &File, dotlock: &Path) -> Result<(u64, u64), Attempt> {
        match rustix::fs::fcntl_lock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::AGAIN) | Err(Errno::ACCESS) => return Err(Attempt::Busy("fcntl lock held".into())),
            Err(e) => return Err(Attempt::Fail(format!("fcntl lock: {e}"))),
        }
        match create_dotlock(dotlock) {
            Ok(id) => Ok(id),
            Err(a) => {
                let _ = rustix::fs::fcntl_lock(file, FlockOperation::NonBlockingUnlock);
                Err(a)
            }
        }
    }
}

/// Create the dot-lock (O_EXCL, never through a link), writing our pid; remove a stale one.
fn create_dotlock(dotlock: &Path) -> Result<(u64, u64), Attempt> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, dotlock, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => {
            let mut f = File::from(fd);
            // liblockfile's format: the pid in ASCII and a newline. Best effort: the lock is
            // the file's existence.
            let _ = writeln!(f, "{}", rustix::process::getpid().as_raw_nonzero());
            let meta = f
                .metadata()
                .map_err(|e| Attempt::Fail(format!("fstat dot-lock {}: {e}", dotlock.display())))?;
            Ok((meta.dev(), meta.ino()))
        }
        Err(Errno::EXIST) => {
            if let Ok(meta) = std::fs::symlink_metadata(dotlock) {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .unwrap_or_default();
                if age > Duration::from_secs(MBOX_DOTLOCK_STALE_SECS) {
                    // Look again just before removing, so a lock re-created meanwhile by
                    // someone else is kept (the window that remains is liblockfile's too).
                    let same = std::fs::symlink_metadata(dotlock)
                        .is_ok_and(|m2| m2.ino() == meta.ino() && m2.mtime() == meta.mtime());
                    if same && std::fs::remove_file(dotlock).is_ok() {
                        return Err(Attempt::Busy(format!("removed stale dot-lock {}", dotlock.display())));
                    }
                }
            }
            Err(Attempt::Busy(format!("dot-lock {} exists", dotlock.display())))
        }
        Err(e) => Err(Attempt::Fail(format!(
            "cannot create dot-lock {}: {e}",
            dotlock.display()
        ))),
    }
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.dotlock).is_ok_and(|m| (m.dev(), m.ino()) == self.dotlock_id) {
            let _ = std::fs::remove_file(&self.dotlock);
        }
        let _ = rustix::fs::fcntl_lock(&self.file, FlockOperation::NonBlockingUnlock);
    }
}

// ---------------------------------------------------------------------------------------
// Delivery

/// Open (or create) the mailbox without following links or blocking, and check it.
fn open_mbox(d: &MboxDelivery<'_>) -> Result<(File, bool), DeliveryError> {
    let flags = OFlags::RDWR | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let refuse = |e: Errno| match e {
        Errno::LOOP => temp(d.path, "refused", "is a symbolic link"),
        Errno::NXIO => temp(d.path, "refused", "not a regular file (FIFO or device)"),
        e => classify(d.path, "open", e.into()),
    };
    let (fd, created) = match rustix::fs::openat(CWD, d.path, flags, Mode::empty()) {
        Ok(fd) => (fd, false),
        Err(Errno::NOENT) => match rustix::fs::openat(
            CWD,
            d.path,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => (fd, true),
            // Created by someone else meanwhile: open what is there (and check it).
            Err(Errno::EXIST) => (
                rustix::fs::openat(CWD, d.path, flags, Mode::empty()).map_err(refuse)?,
                false,
            ),
            Err(e) => return Err(refuse(e)),
        },
        Err(e) => return Err(refuse(e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| classify(d.path, "fstat", e))?;
    if created {
        if let Some((uid, gid)) = d.owner {
            if (meta.uid(), meta.gid()) != (uid, gid) {
                if let Err(e) = std::os::unix::fs::fchown(&file, Some(uid), Some(gid)) {
                    if same_file(d.path, &file) {
                        let _ = std::fs::remove_file(d.path);
                    }
                    return Err(temp(d.path, "chown new mailbox", e));
                }
            }
        }
        // A new directory entry is durable only once its directory is.
        if let Some(dir) = d.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| classify(dir, "fsync directory", e))?;
        }
        return Ok((file, true));
    }
    if !meta.file_type().is_file() {
        return Err(temp(d.path, "refused", "not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(temp(d.path, "refused", format!("has {} hard links", meta.nlink())));
    }
    if let Some((uid, _)) = d.owner {
        if meta.uid() != uid {
            return Err(temp(
                d.path,
                "refused",
                format!("owned by uid {}, not {uid}", meta.uid()),
            ));
        }
    }
    Ok((file, false))
}

/// Does `path` (not followed) still name the open `file`?
fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Blocking: append one message to the mbox under both locks, fsync. See the module doc.
pub fn deliver(d: &MboxDelivery<'_>, body: &mut dyn Read) -> Result<Delivered, DeliveryError> {
    if !valid_uidl(d.uidl) {
        return Err(temp(d.path, "bad X-UIDL value", format!("{:?}", d.uidl)));
    }
    let deadline = Instant::now() + d.lock_wait;
    for _ in 0..REOPEN_ATTEMPTS_MAX {
        let mut open_error = None;
        let lock = MboxLock::acquire(d.path, deadline, || {
            open_mbox(d).map(|(f, _)| f).map_err(|e| {
                let reason = e.reason.clone();
                open_error = Some(e);
                reason
            })
        });
        let lock = match lock {
            Ok(l) => l,
            Err(e) => return Err(open_error.unwrap_or_else(|| temp(d.path, "lock", e))),
        };
        if !same_file(d.path, lock.file()) {
            // Replaced while we waited (a reader rewrote it by rename): start again.
            drop(lock);
            continue;
        }
        let r = append(d, lock.file(), body);
        drop(lock);
        return r;
    }
    Err(temp(d.path, "open", "the mailbox kept being replaced"))
}

/// Write the message at the end of the locked `file`; on error, cut it back.
fn append(d: &MboxDelivery<'_>, file: &File, body: &mut dyn Read) -> Result<Delivered, DeliveryError> {
    let orig = file.metadata().map_err(|e| classify(d.path, "fstat", e))?.len();
    match write_message(d, file, orig, body) {
        Ok((offset, bytes)) => Ok(Delivered { offset, bytes }),
        Err(err) => {
            // Never leave a partial message: cut back to where we started.
            let undo = file.set_len(orig).and_then(|()| file.sync_all());
            Err(match undo {
                Ok(()) => err,
                Err(e) => DeliveryError {
                    permanent: err.permanent,
                    reason: format!("{err}; truncating back to {orig} bytes failed too: {e}"),
                },
            })
        }
    }
}

/// Returns the offset of the From_ line and the bytes written.
fn write_message(
    d: &MboxDelivery<'_>,
    file: &File,
    orig: u64,
    body: &mut dyn Read,
) -> Result<(u64, u64), DeliveryError> {
    let mut head = Vec::with_capacity(256 + d.prepend.len());
    if orig > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, orig - 1)
            .map_err(|e| classify(d.path, "read", e))?;
        if last[0] != b'\n' {
            // A damaged mailbox: our From_ line must start a line.
            head.extend_from_slice(b"\n\n");
        }
    }
    let offset = orig + head.len() as u64;
    head.extend_from_slice(from_line(d.sender, d.time_secs).as_bytes());
    let mut q = Quoter::default();
    q.feed(d.prepend, &mut head);
    q.feed(format!("X-UIDL: {}\n", d.uidl).as_bytes(), &mut head);
    let mut total = 0u64;
    let limit = d.size_limit_bytes;
    let mut w = BufWriter::with_capacity(COPY_BUFFER_BYTES, file);
    let mut put = |w: &mut BufWriter<&File>, bytes: &[u8]| -> Result<(), DeliveryError> {
        total += bytes.len() as u64;
        if limit > 0 && orig + total > limit {
            return Err(DeliveryError::permanent(format!(
                "mbox {}: mailbox_size_limit {limit} exceeded (mailbox full)",
                d.path.display()
            )));
        }
        w.write_all(bytes).map_err(|e| classify(d.path, "write", e))
    };
    put(&mut w, &head)?;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut out = Vec::with_capacity(COPY_BUFFER_BYTES + COPY_BUFFER_BYTES / 4);
    let mut last_byte = b'\n';
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(temp(d.path, "read message body", e)),
        };
        out.clear();
        q.feed(&buf[..n], &mut out);
        if let Some(&b) = out.last() {
            last_byte = b;
        }
        put(&mut w, &out)?;
    }
    out.clear();
    q.finish(&mut out);
    if let Some(&b) = out.last() {
        last_byte = b;
    }
    // The message ends with a newline, then a blank line ends it in the mbox.
    if last_byte != b'\n' {
        out.push(b'\n');
    }
    out.push(b'\n');
    put(&mut w, &out)?;
    w.flush().map_err(|e| classify(d.path, "write", e))?;
    drop(w);
    file.sync_all().map_err(|e| classify(d.path, "fsync", e))?;
    Ok((offset, total))
}

// ---------------------------------------------------------------------------------------
// Reader

/// One message in an mbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxEntry {
    /// Offset of the From_ line.
    pub offset: u64,
    /// Bytes from the From_ line to the end of the message, without the blank line that
    /// separates it from the next one.
    pub len: u64,
    /// Bytes of the From_ line, with its newline: the stored message is
    /// `offset + from_line_len .. offset + len` (still mboxrd-quoted).
    pub from_line_len: u64,
    /// The first `X-UIDL:` of its header, when valid (RFC 1939 §7).
    pub uidl: Option<String>,
}

/// Reads an mbox: [`MboxReader::scan`] lists the messages in bounded memory,
/// [`MboxReader::read_message`] streams one back un-quoted.
#[derive(Debug)]
pub struct MboxReader<'f> {
    src: Src<'f>,
}

#[derive(Debug)]
enum Src<'f> {
    Owned(File),
    /// A mailbox held by an [`MboxLock`] (never closed here: that would drop its fcntl lock).
    Locked(&'f File),
}

/// One line met by [`MboxReader::scan_lines`].
#[derive(Debug)]
pub struct Line<'a> {
    /// Offset of its first byte.
    pub start: u64,
    /// Bytes, with its line end.
    pub len: u64,
    /// Its first [`MBOX_HEADER_LINE_BYTES_MAX`] bytes (with the line end when that fits).
    pub head: &'a [u8],
    /// It ends with LF (false only for a last line without one).
    pub lf: bool,
    /// It ends with CR LF.
    pub crlf: bool,
}

impl Line<'_> {
    /// A blank line (LF or CR LF only).
    pub fn is_blank(&self) -> bool {
        self.head == b"\n" || self.head == b"\r\n"
    }
}

/// Whether a line starts a message (see "Reading" in the module doc): `at_file_start` for
/// the first line of the file, `after_blank` when the line before it was blank.
pub fn starts_message(head: &[u8], at_file_start: bool, after_blank: bool) -> bool {
    if !head.starts_with(FROM) {
        return false;
    }
    if at_file_start {
        return true;
    }
    // asctime's "HH:MM:SS" (some writers print "H:MM").
    after_blank
        && head[FROM.len()..]
            .windows(4)
            .any(|w| w[1] == b':' && w[0].is_ascii_digit() && w[2].is_ascii_digit() && w[3].is_ascii_digit())
}

/// Per-line state of a scan.
struct ScanState {
    entries: Vec<MboxEntry>,
    in_header: bool,
    /// The previous line was blank (and its length: 1 or 2 with CR).
    prev_blank: u64,
}

impl ScanState {
    /// A whole line (or its first MBOX_HEADER_LINE_BYTES_MAX bytes) starting at `start`.
    fn line(&mut self, start: u64, len: u64, head: &[u8]) -> bool {
        if starts_message(head, start == 0, self.prev_blank > 0) {
            if let Some(prev) = self.entries.last_mut() {
                prev.len = start - self.prev_blank - prev.offset;
            }
            if self.entries.len() >= MBOX_MESSAGES_MAX {
                return false;
            }
            self.entries.push(MboxEntry {
                offset: start,
                len,
                from_line_len: len,
                uidl: None,
            });
            self.in_header = true;
            self.prev_blank = 0;
            return true;
        }
        let blank = head == b"\n" || head == b"\r\n";
        self.prev_blank = if blank { len } else { 0 };
        if let Some(cur) = self.entries.last_mut() {
            cur.len = start + len - cur.offset;
            if self.in_header {
                if blank {
                    self.in_header = false;
                } else if cur.uidl.is_none() {
                    if let Some(v) = x_uidl(head) {
                        cur.uidl = Some(v);
                    }
                }
            }
        }
        true
    }
}

/// The value of an `X-UIDL:` header line, when it is a valid unique-id (RFC 1939 §7).
pub fn x_uidl(head: &[u8]) -> Option<String> {
    if head.len() > 7 && head[..7].eq_ignore_ascii_case(b"x-uidl:") {
        let v = String::from_utf8_lossy(&head[7..]).trim().to_string();
        return valid_uidl(&v).then_some(v);
    }
    None
}

impl<'f> MboxReader<'f> {
    /// Read the mailbox an [`MboxLock`] holds (what POP3 does: lock, scan, read).
    pub fn locked(lock: &'f MboxLock) -> MboxReader<'f> {
        MboxReader {
            src: Src::Locked(lock.file()),
        }
    }

    /// Read a mailbox file someone else opened and locked (a descriptor handed over by the
    /// privileged helper, or one behind an [`MboxLock`]); it is never closed here.
    pub fn over(file: &'f File) -> MboxReader<'f> {
        MboxReader { src: Src::Locked(file) }
    }

    fn file(&self) -> &File {
        match &self.src {
            Src::Owned(f) => f,
            Src::Locked(f) => f,
        }
    }

    /// Open for reading without locking (never following a symlink). Use
    /// [`MboxReader::locked`] when other programs may write the mailbox.
    pub fn open(path: &Path) -> std::io::Result<MboxReader<'static>> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let file = File::from(fd);
        if !file.metadata()?.file_type().is_file() {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "not a regular file"));
        }
        Ok(MboxReader { src: Src::Owned(file) })
    }

    /// Call `visit` for every line from the start of the file, in order, in bounded memory
    /// (one read buffer and a [`MBOX_HEADER_LINE_BYTES_MAX`] head); `visit` returning false
    /// stops. Returns the offset after the last line visited. Reads from offset 0 with the
    /// file's own position (which it moves).
    pub fn scan_lines(&self, visit: &mut dyn FnMut(&Line<'_>) -> bool) -> std::io::Result<u64> {
        let mut f = self.file();
        f.seek(SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(COPY_BUFFER_BYTES, f);
        let mut pos = 0u64;
        let mut line_start = 0u64;
        let mut head: Vec<u8> = Vec::with_capacity(MBOX_HEADER_LINE_BYTES_MAX);
        // The last byte of the current line so far (to tell CR LF from LF across buffers).
        let mut last: u8 = 0;
        loop {
            let buf = match r.fill_buf() {
                Ok([]) => break,
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let n = buf.len();
            let mut i = 0;
            while i < n {
                let end = buf[i..].iter().position(|&b| b == b'\n').map(|p| i + p + 1);
                let stop = end.unwrap_or(n);
                let room = MBOX_HEADER_LINE_BYTES_MAX.saturating_sub(head.len());
                head.extend_from_slice(&buf[i..stop.min(i + room)]);
                if let Some(end) = end {
                    let before_lf = if end >= i + 2 { buf[end - 2] } else { last };
                    let line_end = pos + end as u64;
                    let line = Line {
                        start: line_start,
                        len: line_end - line_start,
                        head: &head,
                        lf: true,
                        crlf: before_lf == b'\r' && line_end - line_start >= 2,
                    };
                    if !visit(&line) {
                        return Ok(line_start);
                    }
                    line_start = line_end;
                    head.clear();
                    last = 0;
                } else if stop > i {
                    last = buf[stop - 1];
                }
                i = stop;
            }
            pos += n as u64;
            r.consume(n);
        }
        if pos > line_start {
            let line = Line {
                start: line_start,
                len: pos - line_start,
                head: &head,
                lf: false,
                crlf: false,
            };
            if !visit(&line) {
                return Ok(line_start);
            }
        }
        Ok(pos)
    }

    /// List the messages (at most MBOX_MESSAGES_MAX; later ones are left for a later
    /// session). Memory: one buffer and one entry per message. Data before the first From_
    /// line means this is not an mbox: InvalidData.
    pub fn scan(&self) -> std::io::Result<Vec<MboxEntry>> {
        let mut st = ScanState {
            entries: Vec::new(),
            in_header: false,
            prev_blank: 0,
        };
        let mut not_mbox = false;
        self.scan_lines(&mut |l| {
            if l.start == 0 && !l.head.starts_with(FROM) {
                not_mbox = true;
                return false;
            }
            st.line(l.start, l.len, l.head)
        })?;
        if not_mbox {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "not an mbox: no From_ line at the start",
            ));
        }
        // The blank line that ends the last message is not part of it either.
        if let Some(last) = st.entries.last_mut() {
            if last.len >= last.from_line_len + st.prev_blank {
                last.len -= st.prev_blank;
            }
        }
        Ok(st.entries)
    }

    /// Write one message (without its From_ line), un-quoted, to `out`; returns the bytes
    /// written.
    pub fn read_message(&self, e: &MboxEntry, out: &mut dyn Write) -> std::io::Result<u64> {
        let start = e.offset + e.from_line_len;
        let len = e.len.saturating_sub(e.from_line_len);
        let mut f = self.file();
        f.seek(SeekFrom::Start(start))?;
        let mut src = f.take(len);
        let mut un = Unquoter::new();
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        let mut o = Vec::with_capacity(COPY_BUFFER_BYTES);
        let mut written = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            o.clear();
            un.feed(&buf[..n], &mut o);
            out.write_all(&o)?;
            written += o.len() as u64;
        }
        o.clear();
        un.finish(&mut o);
        out.write_all(&o)?;
        Ok(written + o.len() as u64)
    }

    /// [`MboxReader::read_message`] into a vector.
    pub fn message_bytes(&self, e: &MboxEntry) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_message(e, &mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(chunks: &[&[u8]]) -> Vec<u8> {
        let mut q = Quoter::default();
        let mut out = Vec::new();
        for c in chunks {
            q.feed(c, &mut out);
        }
        q.finish(&mut out);
        out
    }

    fn unquote(chunks: &[&[u8]]) -> Vec<u8> {
        let mut u = Unquoter::new();
        let mut out = Vec::new();
        for c in chunks {
            u.feed(c, &mut out);
        }
        u.finish(&mut out);
        out
    }

    #[test]
    fn mboxrd_quoting() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"From x\n", b">From x\n"),
            (b">From x\n", b">>From x\n"),
            (b">>>From x\n", b">>>>From x\n"),
            (b"a\nFrom \n>From\n>>Fro\nFrom", b"a\n>From \n>From\n>>Fro\nFrom"),
            (b" From x\n>x From\n", b" From x\n>x From\n"),
            (b"", b""),
            (b"Fro", b"Fro"),
        ];
        for (input, want) in cases {
            assert_eq!(quote(&[input]), *want, "{:?}", String::from_utf8_lossy(input));
            // Split at every offset.
            for k in 0..=input.len() {
                assert_eq!(quote(&[&input[..k], &input[k..]]), *want);
            }
            let back = unquote(&[want]);
            assert_eq!(back, *input);
            for k in 0..=want.len() {
                assert_eq!(unquote(&[&want[..k], &want[k..]]), *input);
            }
        }
        // Unquoting a line that was never quoted leaves it.
        assert_eq!(unquote(&[b">x\n>\n>>Fro"]), b">x\n>\n>>Fro");
    }

    #[test]
    fn from_lines() {
        assert_eq!(asctime(1_795_831_141), "Sat Nov 28 01:59:01 2026");
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(from_line("", 0), "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n");
        assert_eq!(
            from_line("\"a b\"@x\n", 0),
            "From \"a_b\"@x_ Thu Jan  1 00:00:00 1970\n"
        );
    }
}
