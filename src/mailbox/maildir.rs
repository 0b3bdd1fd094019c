//! A Maildir as a POP3 maildrop (<https://cr.yp.to/proto/maildir.html>).
//!
//! # Opening
//!
//! 1. The Maildir and its `cur/ new/ tmp/` are created when missing (a user with no mail yet),
//!    exactly as delivery creates them; `new/` and `cur/` are then opened with
//!    O_NOFOLLOW|O_DIRECTORY and every later operation is relative to those handles. The
//!    Maildir path itself may be a symlink (an admin's choice), nothing below it is followed.
//! 2. Lock: `flock(LOCK_EX|LOCK_NB)` on `<maildir>/poshta-pop3.lock` (created 0600, never
//!    removed: removing a lock file races with the next locker), plus a process-wide set of
//!    open Maildirs (keyed by canonical path) so two sessions of this process never share one
//!    even where flock is unreliable (some network file systems). Held → [`MailboxError::InUse`]
//!    (RFC 1939 §8: "-ERR maildrop already locked"). Both are released on Drop.
//! 3. `cur/`, then `new/`, is listed; nothing is moved or renamed (a download-and-delete
//!    session thus costs one metadata write per message, the unlink at UPDATE). Regular files
//!    only (the kernel's d_type, or `fstatat` without following links where the file system
//!    does not fill d_type); names starting with `.` are not messages; symlinks, FIFOs,
//!    devices, sockets and unreadable files are skipped with a warning, the rest is served.
//!    At most [`MAILDROP_MESSAGES_MAX`] messages per session over both directories (`cur/`
//!    first; the rest is listed once messages are deleted). Each message remembers its
//!    directory. Messages delivered after this step are not part of the session (they are
//!    listed next time; they are never seen half-written, since delivery renames complete
//!    files into `new/`).
//!
//! # Reading
//!
//! A message is opened in its directory. If it is gone from `new/` (a mail reader that
//! ignores poshta's lock moved it to `cur/` meanwhile), `cur/` is searched once for a regular
//! file with the same unique part, which is served; otherwise the message is gone.
//!
//! # UPDATE (RFC 1939 §6)
//!
//! At QUIT in TRANSACTION state, also when nothing was deleted:
//!
//! 1. Each deleted message is unlinked from its directory. One missing from `new/` is looked
//!    for in `cur/` by its unique part (one pass for all of them) and that file is unlinked,
//!    unless a message kept in this session has the same unique part; one missing from
//!    `cur/` is counted as already gone.
//! 2. Every *listed* survivor still in `new/` is renamed to `cur/` with the info `:2,`
//!    appended (no flags: a POP3 client has seen everything, and RFC 1939 has no flags to
//!    keep), never replacing a file there (`RENAME_NOREPLACE`): a copy of the same name in
//!    `cur/` leaves it in `new/`, with a logged warning. Files that arrived after the listing
//!    are not touched.
//! 3. The directories changed (only those) are fsynced, `cur/` first, before the client hears
//!    +OK.
//!
//! A session that ends without QUIT changes nothing: messages stay where they were. Since
//! the unique id and the order come from the unique part and the name in `cur/`, a message
//! keeps its UIDL and its place whether it is listed from `new/` or from `cur/`.
//!
//! # File names
//!
//! `UNIQUE[:INFO]`, where UNIQUE is what delivery made (poshta:
//! `{secs}.M{micros}P{pid}Q{seq}.{host},S={bytes},W={crlf bytes}`) and INFO is `2,FLAGS`.
//!
//! - Order (message numbers, oldest first): by the leading decimal `secs`, then the decimal
//!   after `.M` (microseconds; 0 when absent, as in older `{secs}.{pid}.{host}` names), then
//!   the bytes of the name in `cur/` (a name in `new/` without info counts with `:2,`), then
//!   `cur/` before `new/`. A name without leading digits sorts after all dated ones.
//! - Size (RFC 1939 §11, CRLF line ends): the decimal of a `,W=` attribute in UNIQUE (Dovecot's
//!   virtual size) when present; otherwise the file is read once, counting bytes and bare LFs.
//!   Only names are read for poshta's own deliveries.
//! - Unique id (RFC 1939 §7: 1..=70 characters in 0x21..=0x7E, unique, persistent): UNIQUE
//!   itself when it qualifies (it never changes: flags live in INFO). Otherwise (longer than 70
//!   bytes, a space, a non-ASCII byte, empty) the FNV-1a 128-bit hash of UNIQUE's bytes (offset
//!   basis 0x6c62272e07bb014262b821756295c58d, prime 2^88 + 0x13b) as 32 lower-case hex digits.
//!   An accidental collision among a mailbox's names has probability around n²/2^129.
//!   Should two files still share an id (the same UNIQUE twice in `cur/` with different INFO,
//!   or in both `new/` and `cur/`, left by a crashed client), every one after the first in
//!   message order gets the hash of `"\0dup\0"` followed by its whole name (as it is in its
//!   directory); a file still clashing after that is skipped.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use rustix::fs::{AtFlags, Dir, FileType, FlockOperation, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use super::{
    CrlfCounter, DeleteReport, Listing, MailboxError, UidAt, MAILDROP_MESSAGES_MAX, MAILDROP_WARNINGS_MAX,
    UID_BYTES_MAX,
};

/// The lock file in the Maildir (see the module doc).
pub const LOCK_FILE: &str = "poshta-pop3.lock";
/// Read buffer for sizing messages whose names carry no `,W=`.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Maildirs open in this process (canonical paths).
static OPEN: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, HashSet<PathBuf>> {
    // The set stays consistent even if a holder panicked: insert/remove are single steps.
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registry entry, removed on Drop.
#[derive(Debug)]
struct Registered(PathBuf);

impl Registered {
    fn claim(key: PathBuf) -> Option<Registered> {
        // Not `then_some(Registered(..))`: that value is built eagerly and, when dropped on the
        // refusal path, would remove the other session's entry (and re-lock the mutex).
        if registry().insert(key.clone()) {
            Some(Registered(key))
        } else {
            None
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        registry().remove(&self.0);
    }
}

/// One POP3 session's view of a Maildir: locked, listed once at open.
pub struct Maildrop {
    path: PathBuf,
    new: OwnedFd,
    cur: OwnedFd,
    entries: Arc<Listing>,
    warnings: Vec<String>,
    // Fields drop in declaration order: the flock is released before the registry entry, so
    // an open in this process never finds the registry free but the lock still held.
    _lock: OwnedFd,
    _registered: Registered,
}

impl std::fmt::Debug for Maildrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maildrop")
            .field("path", &self.path)
            .field("messages", &self.entries.len())
            .field("warnings", &self.warnings.len())
            .finish()
    }
}

/// Warnings, bounded: the first [`MAILDROP_WARNINGS_MAX`] are kept, the rest counted.
#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    more: usize,
}

impl Warnings {
    fn push(&mut self, w: String) {
        if self.list.len() < MAILDROP_WARNINGS_MAX {
            self.list.push(w);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.list.push(format!("{} more warnings not shown", self.more));
        }
        self.list
    }
}

/// A file name for logs: control and non-ASCII bytes escaped (names are not trusted text).
fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

fn open_dir(at: impl AsFd, name: &Path, nofollow: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(at, name, flags, Mode::empty())
}

/// The entry's type without following links; d_type when the file system gives it.
fn kind(dir: &OwnedFd, name: &[u8], d_type: FileType) -> Result<FileType, Errno> {
    if d_type != FileType::Unknown {
        return Ok(d_type);
    }
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Open a message file for reading: never through a link, never blocking on a FIFO planted
/// after the listing (O_NONBLOCK has no effect on regular files), regular files only.
fn open_regular(dir: &OwnedFd, name: &[u8]) -> std::io::Result<(File, u64)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

impl Maildrop {
    /// Lock the Maildir and list `new/` and `cur/` (see the module doc). Changes nothing on
    /// disk but the lock file (and the directories, when missing).
    pub fn open(maildir: &Path) -> Result<Maildrop, MailboxError> {
        crate::delivery::maildir::create_maildir(maildir).map_err(|e| MailboxError::io(maildir, e))?;
        let key = std::fs::canonicalize(maildir).unwrap_or_else(|_| maildir.to_path_buf());
        let registered = Registered::claim(key).ok_or(MailboxError::InUse)?;
        let md = open_dir(CWD, maildir, false).map_err(|e| MailboxError::io(maildir, e))?;
        let lock = take_lock(&md, maildir)?;
        let new = open_dir(&md, Path::new("new"), true).map_err(|e| MailboxError::io(maildir.join("new"), e))?;
        let cur = open_dir(&md, Path::new("cur"), true).map_err(|e| MailboxError::io(maildir.join("cur"), e))?;
        let mut warnings = Warnings::default();
        let mut scan = Scan::default();
        // cur/ first: when the cap is reached, the messages already seen are the ones served.
        scan.add_dir(&cur, false, maildir, &mut warnings)?;
        scan.add_dir(&new, true, maildir, &mut warnings)?;
        let entries = scan.finish(&mut warnings);
        Ok(Maildrop {
            path: maildir.to_path_buf(),
            new,
            cur,
            entries: Arc::new(entries),
            warnings: warnings.finish(),
            _lock: lock,
            _registered: registered,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listing, oldest first: message number n is index n - 1.
    pub fn listing(&self) -> &Arc<Listing> {
        &self.entries
    }

    /// Files skipped while opening, for the log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn dir(&self, in_new: bool) -> &OwnedFd {
        if in_new {
            &self.new
        } else {
            &self.cur
        }
    }

    fn file_path(&self, in_new: bool, name: &[u8]) -> PathBuf {
        self.path.join(dir_name(in_new)).join(show(name))
    }

    /// Open message `index` (0-based) for reading. [`MailboxError::Gone`] when another client
    /// removed it since the listing, or when there is no such index.
    pub fn open_message(&self, index: usize) -> Result<File, MailboxError> {
        self.open_message_sized(index).map(|(f, _)| f)
    }

    /// [`Maildrop::open_message`] with the file's size when it was opened (`fstat`, done
    /// anyway to check it is a regular file): a reader that wants the message whole reads
    /// exactly that much, with no extra read to meet end of file. A message file is never
    /// rewritten (delivery renames complete files in; UPDATE only unlinks and renames).
    pub fn open_message_sized(&self, index: usize) -> Result<(File, u64), MailboxError> {
        let e = self.entries.get(index).ok_or(MailboxError::Gone)?;
        match open_regular(self.dir(e.in_new), e.name) {
            Ok(found) => Ok(found),
            // Another program (a mail reader ignoring poshta's lock) moved it from new/ to
            // cur/ after the listing: same unique part, its own info. Looked for once.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && e.in_new => {
                let unique = unique_part(e.name);
                let Some(name) = self.find_in_cur(|u| u == unique, 1)?.pop() else {
                    return Err(MailboxError::Gone);
                };
                match open_regular(&self.cur, &name) {
                    Ok(found) => Ok(found),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(MailboxError::Gone),
                    Err(err) => Err(MailboxError::io(self.file_path(false, &name), err)),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(MailboxError::Gone),
            Err(err) => Err(MailboxError::io(self.file_path(e.in_new, e.name), err)),
        }
    }

    /// Regular files in `cur/` whose unique part `wanted` accepts, at most `limit`: one pass
    /// over the directory (bounded by its size), only on the rare paths where another program
    /// moved a message listed in `new/`.
    fn find_in_cur(&self, wanted: impl Fn(&[u8]) -> bool, limit: usize) -> Result<Vec<Box<[u8]>>, MailboxError> {
        let cur_path = || self.path.join("cur");
        let dir = Dir::read_from(&self.cur).map_err(|e| MailboxError::io(cur_path(), e))?;
        let mut found = Vec::new();
        for item in dir {
            if found.len() >= limit {
                break;
            }
            let d = item.map_err(|e| MailboxError::io(cur_path(), e))?;
            let name = d.file_name().to_bytes();
            if name.is_empty() || name.starts_with(b".") || !wanted(unique_part(name)) {
                continue;
            }
            if kind(&self.cur, name, d.file_type()) == Ok(FileType::RegularFile) {
                found.push(name.into());
            }
        }
        Ok(found)
    }

    /// RFC 1939 §6 (UPDATE), at every QUIT in TRANSACTION state (`indexes` may be empty):
    /// remove the messages at `indexes` (0-based) from `new/` or `cur/`, then move every listed
    /// survivor still in `new/` to `cur/` (see the module doc). A message already gone is
    /// counted, not an error; other failures are listed in the report and the rest is still
    /// removed; a survivor that cannot move stays in `new/` (logged: nothing is lost, its id
    /// is the same). The directories changed are fsynced before this returns, so the client
    /// hears +OK only for what is durable; only an fsync failing is an `Err`.
    pub fn update(&self, indexes: &[usize]) -> Result<DeleteReport, MailboxError> {
        let mut report = DeleteReport::default();
        let mut failures = Warnings::default();
        let mut marked = vec![false; self.entries.len()];
        let (mut new_changed, mut cur_changed) = (false, false);
        // Marked messages missing from new/: perhaps moved to cur/ by another program.
        let mut missing: Vec<usize> = Vec::new();
        for &i in indexes {
            let Some(e) = self.entries.get(i) else {
                failures.push(format!("no message at index {i}"));
                continue;
            };
            if std::mem::replace(&mut marked[i], true) {
                continue;
            }
            match rustix::fs::unlinkat(self.dir(e.in_new), e.name, AtFlags::empty()) {
                Ok(()) => {
                    report.deleted += 1;
                    new_changed |= e.in_new;
                    cur_changed |= !e.in_new;
                }
                Err(Errno::NOENT) if e.in_new => missing.push(i),
                Err(Errno::NOENT) => report.already_gone += 1,
                Err(err) => failures.push(format!("{}: {err}", self.file_path(e.in_new, e.name).display())),
            }
        }
        if !missing.is_empty() {
            // A failed look into cur/ leaves those messages (reported); the rest goes on.
            match self.delete_moved(&marked, &missing, &mut report, &mut failures) {
                Ok(changed) => cur_changed |= changed,
                Err(e) => failures.push(e.to_string()),
            }
        }
        let moved = self.move_survivors(&marked);
        new_changed |= moved > 0;
        cur_changed |= moved > 0;
        report.failed = failures.finish();
        // cur/ first: should a crash come between the two, a moved message is at worst in both
        // (listed with the duplicate rules), never in neither.
        if cur_changed {
            rustix::fs::fsync(&self.cur).map_err(|e| MailboxError::io(self.path.join("cur"), e))?;
        }
        if new_changed {
            rustix::fs::fsync(&self.new).map_err(|e| MailboxError::io(self.path.join("new"), e))?;
        }
        Ok(report)
    }

    /// Deleted messages found missing from `new/`: remove the file another program moved to
    /// `cur/` (same unique part), unless a message kept in this session has that unique part
    /// (then it is not ours to remove: counted as already gone). Returns whether `cur/` changed.
    fn delete_moved(
        &self,
        marked: &[bool],
        missing: &[usize],
        report: &mut DeleteReport,
        failures: &mut Warnings,
    ) -> Result<bool, MailboxError> {
        let kept: HashSet<&[u8]> = (self.entries.iter().zip(marked))
            .filter(|(_, &m)| !m)
            .map(|(e, _)| unique_part(e.name))
            .collect();
        let mut wanted: HashSet<&[u8]> = missing
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .map(|e| unique_part(e.name))
            .filter(|u| !kept.contains(u))
            .collect();
        let mut changed = false;
        let mut gone = missing.len();
        if wanted.is_empty() {
            report.already_gone += gone;
            return Ok(false);
        }
        // One file per unique part: a second one (another copy) is not what the client saw.
        let found = self.find_in_cur(|u| wanted.contains(u), MAILDROP_MESSAGES_MAX)?;
        for name in found {
            if !wanted.remove(unique_part(&name)) {
                continue;
            }
            match rustix::fs::unlinkat(&self.cur, &*name, AtFlags::empty()) {
                Ok(()) => {
                    report.deleted += 1;
                    changed = true;
                }
                Err(Errno::NOENT) => continue,
                Err(err) => failures.push(format!("{}: {err}", self.file_path(false, &name).display())),
            }
            gone -= 1;
        }
        report.already_gone += gone;
        Ok(changed)
    }

    /// Rename every listed, unmarked message still in `new/` to `cur/` with the info `:2,`
    /// (never replacing a file there). Files delivered after the listing are not touched.
    /// Returns how many moved.
    fn move_survivors(&self, marked: &[bool]) -> usize {
        let mut moved = 0usize;
        let mut w = Warnings::default();
        let mut target = Vec::with_capacity(256);
        for (e, _) in self.entries.iter().zip(marked).filter(|(e, &m)| e.in_new && !m) {
            target.clear();
            target.extend(name_in_cur(e.name, true));
            match rename_noreplace(&self.new, e.name, &self.cur, &target) {
                Ok(()) => moved += 1,
                // Another program moved or removed it meanwhile.
                Err(Errno::NOENT) => {}
                Err(err) => w.push(format!("new/{}: not moved to cur/: {err}", show(e.name))),
            }
        }
        for line in w.finish() {
            crate::mlog!("pop3d", "warning: {}: {line}", self.path.display());
        }
        moved
    }
}

fn take_lock(md: &OwnedFd, maildir: &Path) -> Result<OwnedFd, MailboxError> {
    let path = maildir.join(LOCK_FILE);
    let fd = rustix::fs::openat(
        md,
        LOCK_FILE,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| MailboxError::io(&path, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| MailboxError::io(&path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(MailboxError::io(
            path,
            std::io::Error::other("lock file is not a regular file"),
        ));
    }
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        // RFC 1939 §8: another session has the maildrop.
        Err(Errno::WOULDBLOCK) => Err(MailboxError::InUse),
        Err(e) => Err(MailboxError::io(path, e)),
    }
}

/// Rename without replacing an existing message; file systems without renameat2 flags get a
/// plain rename (a clash needs the same unique name twice).
fn rename_noreplace(from: &OwnedFd, old: &[u8], to: &OwnedFd, new: &[u8]) -> Result<(), Errno> {
    match rustix::fs::renameat_with(from, old, to, new, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) | Err(Errno::NOSYS) => rustix::fs::renameat(from, old, to, new),
        other => other,
    }
}

/// `new` or `cur`, for paths and warnings.
fn dir_name(in_new: bool) -> &'static str {
    if in_new {
        "new"
    } else {
        "cur"
    }
}

/// The name a message has (or will have) in `cur/`: a name from `new/` without info gets
/// `:2,` (Maildir spec: seen by a client, no flags).
fn name_in_cur(name: &[u8], in_new: bool) -> impl Iterator<Item = u8> + '_ {
    let info: &[u8] = if in_new && !name.contains(&b':') { b":2," } else { b"" };
    name.iter().chain(info).copied()
}

/// Steps 3 and 4 of the module doc: the messages of `cur/` and `new/`, sorted at the end.
#[derive(Default)]
struct Scan {
    listed: Vec<Found>,
    /// The names of `listed`, back to back.
    names: Vec<u8>,
    not_listed: usize,
    buf: Vec<u8>,
}

/// A file found by [`Scan`].
struct Found {
    /// Delivery time from the name (the sort key).
    secs: u64,
    micros: u32,
    /// The name: `Scan::names[start..start + len]`.
    start: u32,
    len: u16,
    in_new: bool,
    size: u64,
}

impl Found {
    fn name<'a>(&self, names: &'a [u8]) -> &'a [u8] {
        &names[self.start as usize..][..usize::from(self.len)]
    }
}

impl Scan {
    fn add_dir(&mut self, dir: &OwnedFd, in_new: bool, maildir: &Path, w: &mut Warnings) -> Result<(), MailboxError> {
        let sub = dir_name(in_new);
        let dir_path = maildir.join(sub);
        let items = Dir::read_from(dir).map_err(|e| MailboxError::io(&dir_path, e))?;
        for item in items {
            let e = item.map_err(|e| MailboxError::io(&dir_path, e))?;
            let name = e.file_name().to_bytes();
            // ".", ".." and hidden files are not messages.
            if name.is_empty() || name.starts_with(b".") {
                continue;
            }
            match kind(dir, name, e.file_type()) {
                Ok(FileType::RegularFile) => {}
                Ok(FileType::Symlink) => {
                    w.push(format!("{sub}/{}: symbolic link, skipped", show(name)));
                    continue;
                }
                Ok(t) => {
                    w.push(format!("{sub}/{}: not a regular file ({t:?}), skipped", show(name)));
                    continue;
                }
                Err(Errno::NOENT) => continue,
                Err(err) => {
                    w.push(format!("{sub}/{}: {err}, skipped", show(name)));
                    continue;
                }
            }
            if self.listed.len() >= MAILDROP_MESSAGES_MAX {
                self.not_listed += 1;
                continue;
            }
            let size = match virtual_size(name) {
                Some(s) => s,
                None => match crlf_size_of(dir, name, &mut self.buf) {
                    Ok(s) => s,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => {
                        w.push(format!("{sub}/{}: unreadable ({err}), skipped", show(name)));
                        continue;
                    }
                },
            };
            // A name is at most NAME_MAX (255) bytes, and the listing is capped well below 4 GiB.
            let (Ok(start), Ok(len)) = (u32::try_from(self.names.len()), u16::try_from(name.len())) else {
                self.not_listed += 1;
                continue;
            };
            let (secs, micros) = delivery_time(name);
            self.names.extend_from_slice(name);
            self.listed.push(Found {
                secs,
                micros,
                start,
                len,
                in_new,
                size,
            });
        }
        Ok(())
    }

    fn finish(mut self, w: &mut Warnings) -> Listing {
        if self.not_listed > 0 {
            w.push(format!(
                "{} messages beyond the first {MAILDROP_MESSAGES_MAX} are not listed this session",
                self.not_listed
            ));
        }
        let names = &self.names[..];
        // Sorted by the name in cur/, so a message keeps its number's order across the move;
        // the same name twice (a copy in new/ and cur/) lists the cur/ one first.
        self.listed.sort_unstable_by(|a, b| {
            let (na, nb) = (a.name(names), b.name(names));
            (a.secs, a.micros)
                .cmp(&(b.secs, b.micros))
                .then_with(|| name_in_cur(na, a.in_new).cmp(name_in_cur(nb, b.in_new)))
                .then_with(|| a.in_new.cmp(&b.in_new))
                .then_with(|| na.cmp(nb))
        });
        let (hashed, skipped) = assign_uids(&self.listed, names, w);
        // Exactly the room needed: the session keeps the listing as it is.
        let bytes = names.len() + hashed.values().map(String::len).sum::<usize>();
        let mut listing = Listing::with_capacity(self.listed.len() - skipped.len(), bytes);
        for (i, f) in self.listed.iter().enumerate() {
            if skipped.binary_search(&i).is_ok() {
                continue;
            }
            let name = f.name(names);
            let uid = match hashed.get(&i) {
                Some(h) => UidAt::Own(h),
                None => UidAt::Prefix(unique_part(name).len()),
            };
            listing.push(name, uid, f.size, f.in_new);
        }
        listing
    }
}

/// FNV-1a (64 bits) for the duplicate check: SipHash was a tenth of a big login's listing.
/// The ids are file names in the user's own Maildir, made by delivery agents; collisions
/// would only slow that user's own login.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325) // the offset basis
    }
}

impl std::hash::Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Indexes of messages whose uid an earlier one already has, in increasing order.
fn duplicate_uids<'a>(count: usize, uid: impl Fn(usize) -> &'a str) -> Vec<usize> {
    let mut seen: HashSet<&str, std::hash::BuildHasherDefault<Fnv64>> =
        HashSet::with_capacity_and_hasher(count, Default::default());
    (0..count).filter(|&i| !seen.insert(uid(i))).collect()
}

/// RFC 1939 §7: ids unique within the maildrop (see the module doc). Returns the ids that
/// are not the name's unique part (by index in `listed`), and the indexes of the messages
/// skipped for a clash (increasing).
fn assign_uids(listed: &[Found], names: &[u8], w: &mut Warnings) -> (HashMap<usize, String>, Vec<usize>) {
    let mut hashed: HashMap<usize, String> = HashMap::new();
    for (i, f) in listed.iter().enumerate() {
        if let Uid::Hashed(h) = uid_for(f.name(names)) {
            hashed.insert(i, h);
        }
    }
    let dups = duplicate_uids(listed.len(), |i| uid_str(&hashed, listed, names, i));
    if dups.is_empty() {
        return (hashed, Vec::new());
    }
    for i in dups {
        let mut marked = b"\0dup\0".to_vec();
        marked.extend_from_slice(listed[i].name(names));
        hashed.insert(i, fnv1a128_hex(&marked));
    }
    let still = duplicate_uids(listed.len(), |i| uid_str(&hashed, listed, names, i));
    for &i in &still {
        let f = &listed[i];
        w.push(format!(
            "{}/{}: unique id clash, skipped",
            dir_name(f.in_new),
            show(f.name(names))
        ));
    }
    (hashed, still)
}

/// Message `i`'s id while listing: its hash when it has one, else its name's unique part
/// (which [`uid_for`] checked is printable ASCII).
fn uid_str<'a>(hashed: &'a HashMap<usize, String>, listed: &[Found], names: &'a [u8], i: usize) -> &'a str {
    match hashed.get(&i) {
        Some(h) => h,
        None => std::str::from_utf8(unique_part(listed[i].name(names))).unwrap_or(""),
    }
}

/// Maildir spec: the unique part is the name before the info (`:`).
fn unique_part(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(i) => &name[..i],
        None => name,
    }
}

/// Where a message's id comes from while listing.
#[derive(Debug)]
enum Uid {
    /// The name's unique part.
    Prefix,
    Hashed(String),
}

fn uid_for(name: &[u8]) -> Uid {
    let unique = unique_part(name);
    // RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E.
    if (1..=UID_BYTES_MAX).contains(&unique.len()) && unique.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Uid::Prefix
    } else {
        Uid::Hashed(fnv1a128_hex(unique))
    }
}

/// FNV-1a, 128 bits, standard parameters, as 32 lower-case hex digits.
fn fnv1a128_hex(bytes: &[u8]) -> String {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = (1 << 88) + 0x13b;
    let mut h = OFFSET_BASIS;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032x}")
}

/// A decimal of 1..=20 digits (no sign, no spaces).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    // By hand: two to three of these per file name, and a login lists every file.
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Dovecot's `,W=<crlf size>` attribute of the unique part, when present and valid.
fn virtual_size(name: &[u8]) -> Option<u64> {
    unique_part(name)
        .split(|&b| b == b',')
        .skip(1)
        .find_map(|attr| attr.strip_prefix(b"W="))
        .and_then(decimal)
}

/// `(secs, micros)` from `{secs}.M{micros}...`; see the module doc for names without them.
fn delivery_time(name: &[u8]) -> (u64, u32) {
    let mut parts = name.splitn(3, |&b| b == b'.');
    let secs = parts.next().and_then(decimal).unwrap_or(u64::MAX);
    let micros = parts
        .next()
        .and_then(|p| p.strip_prefix(b"M"))
        .map(|p| {
            let end = p.iter().position(|b| !b.is_ascii_digit()).unwrap_or(p.len());
            &p[..end]
        })
        .and_then(decimal)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    (secs, micros)
}

/// Read the file once (at most its size at open) and count its CRLF size.
fn crlf_size_of(dir: &OwnedFd, name: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let (file, len) = open_regular(dir, name)?;
    buf.resize(READ_BUFFER_BYTES, 0);
    let mut counter = CrlfCounter::default();
    let mut reader = file.take(len);
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.update(&buf[..n]);
    }
    Ok(counter.crlf_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_is_the_unique_part_when_it_qualifies() {
        let name = b"1700000000.M5P9Q1.mx,S=10,W=12:2,S";
        match uid_for(name) {
            Uid::Prefix => assert_eq!(unique_part(name), b"1700000000.M5P9Q1.mx,S=10,W=12"),
            Uid::Hashed(h) => panic!("hashed: {h}"),
        }
    }

    #[test]
    fn odd_uids_are_hashed_to_32_hex() {
        let long = [b'a'; 71];
        for name in [&long[..], b"has space", b"\xff\xfe", b"", b":2,", b"tab\there:2,"] {
            match uid_for(name) {
                Uid::Hashed(h) => {
                    assert_eq!(h.len(), 32);
                    assert!(
                        h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                        "{h}"
                    );
                }
                Uid::Prefix => panic!("{} kept as its unique part", show(name)),
            }
        }
        assert!(matches!(uid_for(&long[..70]), Uid::Prefix));
        // The info part does not change the id.
        assert_eq!(
            fnv1a128_hex(unique_part(b"x y:2,S")),
            fnv1a128_hex(unique_part(b"x y:2,ST"))
        );
    }

    #[test]
    fn fnv1a128_known_values() {
        // Reference vectors for FNV-1a 128 (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(fnv1a128_hex(b""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(fnv1a128_hex(b"a"), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn decimal_takes_digits_only_and_never_overflows() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"007"), Some(7));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
        assert_eq!(decimal(b"99999999999999999999"), None);
        assert_eq!(decimal(b"123456789012345678901"), None);
        for bad in [&b""[..], b"1a", b" 1", b"+1", b"-1", b"1.5", b"\xd9\xa1"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn virtual_size_parses_w_only() {
        assert_eq!(virtual_size(b"1.M2P3Q4.h,S=10,W=12:2,S"), Some(12));
        assert_eq!(virtual_size(b"1.M2P3Q4.h,W=7,S=5"), Some(7));
        assert_eq!(virtual_size(b"1.M2P3Q4.h,S=10"), None);
        assert_eq!(virtual_size(b"1.M2P3Q4.h,W=-1"), None);
        assert_eq!(virtual_size(b"1.M2P3Q4.h,W=+1"), None);
        assert_eq!(virtual_size(b"1.M2P3Q4.h,W="), None);
        assert_eq!(virtual_size(b"1.M2P3Q4.h,W=99999999999999999999999"), None);
        // In the info part it is not an attribute.
        assert_eq!(virtual_size(b"1.M2P3Q4.h:2,W=5"), None);
        assert_eq!(virtual_size(b"W=5"), None);
    }

    /// A Maildir under the temp dir, removed on drop (the shared test guard).
    struct Tmp(crate::testutil::TempDir);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = crate::testutil::TempDir::new(&format!("poshta-md5-{tag}-{}-{n}", std::process::id()));
            crate::delivery::maildir::create_maildir(&d.join("Maildir")).unwrap();
            Tmp(d)
        }
        fn md(&self) -> PathBuf {
            self.0.join("Maildir")
        }
        fn put(&self, sub: &str, name: &str, body: &[u8]) {
            std::fs::write(self.md().join(sub).join(name), body).unwrap();
        }
        fn names(&self, sub: &str) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(self.md().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }
    }

    fn listing(m: &Maildrop) -> Vec<(String, u64)> {
        m.listing().iter().map(|e| (e.uid().to_string(), e.size())).collect()
    }

    fn read(m: &Maildrop, i: usize) -> Vec<u8> {
        let mut v = Vec::new();
        m.open_message(i).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    /// Issue 5: new/ and cur/ are listed together, in one order; a message keeps its number's
    /// order and its UID when UPDATE moves it from new/ to cur/ (session 1 → session 2), even
    /// where one unique part is a prefix of another (":" sorts after ",").
    #[test]
    fn listing_spans_new_and_cur_and_survives_the_move() {
        let t = Tmp::new("list");
        t.put("cur", "1700000001.M1P1Q1.h,S=2,W=3:2,S", b"a\n");
        t.put("new", "1700000000.M9P1Q1.h,S=2,W=3", b"b\n");
        t.put("new", "1700000002.M5.h", b"c\n");
        t.put("cur", "1700000002.M5.h,S=2:2,", b"d\n");
        t.put("new", "1700000003.M1P1Q1.h:2,F", b"e\n"); // info already there: kept as is
        t.put("new", ".hidden", b"x\n");
        let m = Maildrop::open(&t.md()).unwrap();
        assert!(m.warnings().is_empty(), "{:?}", m.warnings());
        let first = listing(&m);
        let uids: Vec<&str> = first.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            uids,
            [
                "1700000000.M9P1Q1.h,S=2,W=3",
                "1700000001.M1P1Q1.h,S=2,W=3",
                "1700000002.M5.h,S=2",
                "1700000002.M5.h",
                "1700000003.M1P1Q1.h"
            ]
        );
        assert_eq!(read(&m, 0), b"b\n");
        assert_eq!(read(&m, 3), b"c\n");
        assert!(m.listing().get(0).unwrap().in_new && !m.listing().get(1).unwrap().in_new);
        // Nothing moved at open.
        assert_eq!(t.names("new").len(), 4);
        m.update(&[]).unwrap();
        drop(m);
        assert_eq!(t.names("new"), [".hidden"]);
        assert_eq!(
            t.names("cur"),
            [
                "1700000000.M9P1Q1.h,S=2,W=3:2,",
                "1700000001.M1P1Q1.h,S=2,W=3:2,S",
                "1700000002.M5.h,S=2:2,",
                "1700000002.M5.h:2,",
                "1700000003.M1P1Q1.h:2,F"
            ]
        );
        let m = Maildrop::open(&t.md()).unwrap();
        assert_eq!(listing(&m), first, "same order, sizes and UIDs from cur/");
        assert!(m.listing().iter().all(|e| !e.in_new));
    }

    /// RFC 1939 §6: UPDATE unlinks from new/ and from cur/; the survivors still in new/ move
    /// with ":2,"; only the directories changed are touched.
    #[test]
    fn update_deletes_from_both_and_moves_survivors() {
        let t = Tmp::new("del");
        t.put("new", "1700000000.M1P1Q1.h", b"n0\n");
        t.put("cur", "1700000001.M1P1Q1.h:2,S", b"c1\n");
        t.put("new", "1700000002.M1P1Q1.h", b"n2\n");
        t.put("cur", "1700000003.M1P1Q1.h:2,", b"c3\n");
        let m = Maildrop::open(&t.md()).unwrap();
        let r = m.update(&[0, 1]).unwrap();
        assert_eq!((r.deleted, r.already_gone, r.failed.len()), (2, 0, 0));
        drop(m);
        assert!(t.names("new").is_empty());
        assert_eq!(t.names("cur"), ["1700000002.M1P1Q1.h:2,", "1700000003.M1P1Q1.h:2,"]);
        // Download-and-delete of everything in new/: cur/ is not touched at all.
        t.put("new", "1700000004.M1P1Q1.h", b"n4\n");
        let cur_before = std::fs::metadata(t.md().join("cur")).unwrap();
        let m = Maildrop::open(&t.md()).unwrap();
        let r = m.update(&[2]).unwrap();
        assert_eq!((r.deleted, r.already_gone), (1, 0));
        drop(m);
        let cur_after = std::fs::metadata(t.md().join("cur")).unwrap();
        assert_eq!(cur_before.modified().unwrap(), cur_after.modified().unwrap());
        assert!(t.names("new").is_empty());
        assert_eq!(t.names("cur").len(), 2);
    }

    /// A file delivered after the listing is not part of the session: UPDATE leaves it in new/.
    #[test]
    fn update_leaves_later_arrivals_in_new() {
        let t = Tmp::new("late");
        t.put("new", "1700000000.M1P1Q1.h", b"early\n");
        let m = Maildrop::open(&t.md()).unwrap();
        t.put("new", "1600000000.M1P1Q1.h", b"late\n");
        m.update(&[]).unwrap();
        drop(m);
        assert_eq!(t.names("new"), ["1600000000.M1P1Q1.h"]);
        assert_eq!(t.names("cur"), ["1700000000.M1P1Q1.h:2,"]);
    }

    /// Another program (a mail reader) moves a listed message from new/ to cur/ between the
    /// listing and RETR: it is still served, and DELE removes the moved file at UPDATE.
    #[test]
    fn a_message_moved_by_another_program_is_still_served_and_deleted() {
        let t = Tmp::new("moved");
        t.put("new", "1700000000.M1P1Q1.h", b"zero\n");
        t.put("new", "1700000001.M1P1Q1.h", b"one\n");
        t.put("new", "1700000002.M1P1Q1.h", b"two\n");
        let m = Maildrop::open(&t.md()).unwrap();
        let md = t.md();
        for (n, info) in [("1700000000.M1P1Q1.h", ":2,S"), ("1700000001.M1P1Q1.h", ":2,RS")] {
            std::fs::rename(md.join("new").join(n), md.join("cur").join(format!("{n}{info}"))).unwrap();
        }
        assert_eq!(read(&m, 0), b"zero\n");
        assert_eq!(read(&m, 1), b"one\n");
        // Gone for good (removed, not moved): Gone.
        std::fs::remove_file(md.join("new").join("1700000002.M1P1Q1.h")).unwrap();
        assert!(matches!(m.open_message(2), Err(MailboxError::Gone)));
        let r = m.update(&[0, 2]).unwrap();
        assert_eq!((r.deleted, r.already_gone, r.failed.len()), (1, 1, 0));
        drop(m);
        // The kept one stays as the other program left it.
        assert_eq!(t.names("cur"), ["1700000001.M1P1Q1.h:2,RS"]);
        assert!(t.names("new").is_empty());
    }

    /// A message missing from new/ whose unique part a kept message shares is not removed from
    /// cur/ on its behalf: that file is the kept one.
    #[test]
    fn a_deleted_copy_never_removes_the_kept_one() {
        let t = Tmp::new("copy");
        t.put("cur", "1700000000.M1P1Q1.h:2,", b"old\n");
        t.put("new", "1700000000.M1P1Q1.h", b"new\n");
        let m = Maildrop::open(&t.md()).unwrap();
        assert_eq!(read(&m, 1), b"new\n");
        std::fs::remove_file(t.md().join("new").join("1700000000.M1P1Q1.h")).unwrap();
        let r = m.update(&[1]).unwrap();
        assert_eq!((r.deleted, r.already_gone), (0, 1));
        drop(m);
        assert_eq!(t.names("cur"), ["1700000000.M1P1Q1.h:2,"]);
    }

    /// RFC 1939 §6: a session that ends without QUIT (the maildrop dropped, no UPDATE)
    /// changes nothing on disk.
    #[test]
    fn a_dropped_session_changes_nothing() {
        let t = Tmp::new("drop");
        t.put("new", "1700000000.M1P1Q1.h", b"a\n");
        t.put("cur", "1700000001.M1P1Q1.h:2,", b"b\n");
        let (new0, cur0) = (t.names("new"), t.names("cur"));
        let m = Maildrop::open(&t.md()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(read(&m, 0), b"a\n");
        drop(m);
        assert_eq!((t.names("new"), t.names("cur")), (new0, cur0));
    }

    /// The same unique part in new/ and cur/ after a crash: both listed, distinct UIDs (the
    /// cur/ one keeps the plain id), stable across sessions; the new/ copy stays in new/.
    #[test]
    fn crash_duplicate_in_new_and_cur() {
        let t = Tmp::new("crash");
        t.put("new", "1700000000.M1P1Q1.h,W=4", b"abc\n");
        t.put("cur", "1700000000.M1P1Q1.h,W=4:2,S", b"abc\n");
        let m = Maildrop::open(&t.md()).unwrap();
        let first = listing(&m);
        assert_eq!(first.len(), 2);
        // ":2," < ":2,S": the new/ one (":2," once moved) comes first and keeps the plain id.
        assert_eq!(first[0].0, "1700000000.M1P1Q1.h,W=4");
        assert!(m.listing().get(0).unwrap().in_new);
        assert_eq!(first[1].0.len(), 32);
        m.update(&[]).unwrap();
        drop(m);
        // No clash for this name: it moved, and keeps its id and place.
        assert!(t.names("new").is_empty());
        let m = Maildrop::open(&t.md()).unwrap();
        assert_eq!(listing(&m), first);
    }

    #[test]
    fn delivery_time_orders_names() {
        assert_eq!(delivery_time(b"1700000000.M123456P1Q2.h,S=1"), (1_700_000_000, 123_456));
        assert_eq!(delivery_time(b"1700000000.4242_1.h"), (1_700_000_000, 0));
        assert_eq!(delivery_time(b"garbage"), (u64::MAX, 0));
        assert_eq!(delivery_time(b"12.M99999999999P1"), (12, 0));
        assert_eq!(delivery_time(b""), (u64::MAX, 0));
    }
}
