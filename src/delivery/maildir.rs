//! Maildir delivery (<https://cr.yp.to/proto/maildir.html>).
//!
//! A Maildir is a directory holding `tmp/`, `new/` and `cur/`. A message is written to
//! `tmp/NAME` (created exclusively), made durable (fsync, or one syncfs for a batch: see
//! [`deliver_batch`]), then renamed into `new/` — readers only ever see complete files. As in OpenSMTPD (see STYLE.md) and beyond it, poshta also fsyncs
//! `new/` after the rename, because the rename is only durable once the directory is: only
//! then may the queue record the recipient as delivered.
//!
//! # File names
//!
//! `{secs}.M{micros}P{pid}Q{seq}.{host},S={size},W={crlf size}` — the spec's "modern" unique
//! name (time, microseconds, process id, per-process delivery counter) plus Dovecot's `,S=`
//! size attribute (the file's exact size in bytes, which lets POP3 and IMAP servers skip a
//! stat) and `,W=` virtual size (the size with every LF not already preceded by CR counted as
//! CRLF: what POP3 reports, RFC 1939 §11, without reading the file). `host` is the hostname
//! with every byte outside `[A-Za-z0-9._-]` written as a backslash and three octal digits
//! (so `/` is `\057` and `:` is `\072`, as Dovecot does): the unique part never contains `/`
//! or `:` (`:` starts the info part in `cur/`).
//!
//! # Symlinks
//!
//! The Maildir path itself may be a symlink (an admin's choice), but `tmp/` and `new/` are
//! opened with O_NOFOLLOW|O_DIRECTORY and the message with O_NOFOLLOW|O_EXCL relative to
//! those directory handles, so nothing is ever written through a planted link.
//!
//! # Errors
//!
//! Like chasquid and Postfix, local failures are temporary so mail is not lost: a full or
//! over-quota disk (ENOSPC, EDQUOT), I/O errors, permission problems, a missing or
//! symlinked `tmp/`/`new/` (an admin can fix it; the queue's lifetime bounds the retries).
//! The only permanent error is EFBIG (the file exceeds the filesystem's or the process's
//! file size limit): the same message will never fit.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use super::DeliveryError;
use crate::mailbox::CrlfCounter;

/// Body copy buffer.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

thread_local! {
    static COPY_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Batches of at least this many messages are made durable with one syncfs(2) per
/// filesystem instead of one fsync per message (see [`deliver_batch`]).
pub const SYNCFS_BATCH_MIN: usize = 4;
/// Hostname bytes kept in a file name (after escaping), so the name stays under NAME_MAX.
const HOST_IN_NAME_BYTES_MAX: usize = 128;

/// What to prepend and how to name the file.
pub struct MaildirDelivery<'a> {
    /// The Maildir (containing cur/ new/ tmp/; created when missing).
    pub maildir: &'a Path,
    /// Our host name, for the unique file name.
    pub hostname: &'a str,
    /// Header lines to prepend (Return-Path:, Delivered-To:), LF-ended.
    pub prepend: &'a [u8],
    /// Body size in bytes (LF-ended lines as stored in the queue). Informational: the
    /// `,S=` attribute is the count of bytes actually written.
    pub body_size: u64,
    /// Seconds and microseconds now (injected), and a per-process sequence number.
    pub now_secs: u64,
    pub now_micros: u32,
    pub seq: u64,
}

/// The Maildir of a mailbox user: `$virtual_mailbox_base/NAME/`. None when `user` is not a
/// valid users-file name (so it can never be `..` or contain `/`).
pub fn virtual_maildir(base: &Path, user: &str) -> Option<PathBuf> {
    crate::auth::users::valid_name(user).then(|| base.join(user))
}

/// Escape a hostname for the unique part of a file name (see the module doc).
pub fn sanitize_hostname(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    push_sanitized_hostname(&mut out, host);
    out
}

/// [`sanitize_hostname`], appended to `out`.
fn push_sanitized_hostname(out: &mut String, host: &str) {
    let start = out.len();
    for &b in host.as_bytes() {
        if out.len() - start >= HOST_IN_NAME_BYTES_MAX {
            break;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    if out.len() == start {
        out.push_str("localhost");
    }
}

/// `MAILDIR/SUB/NAME` in one allocation.
fn in_maildir(maildir: &Path, sub: &str, name: &str) -> PathBuf {
    let mut p = PathBuf::with_capacity(maildir.as_os_str().len() + sub.len() + name.len() + 2);
    p.push(maildir);
    p.push(sub);
    p.push(name);
    p
}

fn classify(what: &str, path: &Path, e: std::io::Error) -> DeliveryError {
    let reason = format!("maildir {}: {what}: {e}", path.display());
    if e.raw_os_error() == Some(Errno::FBIG.raw_os_error()) {
        DeliveryError::permanent(reason)
    } else {
        DeliveryError::temporary(reason)
    }
}

fn mkdir_700(dir: &OwnedFd, name: &str) -> std::io::Result<bool> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open_dir(at: impl AsFd, name: &Path, nofollow: bool) -> std::io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(rustix::fs::openat(at, name, flags, Mode::empty())?)
}

/// The open directory handles of a Maildir.
struct Dirs {
    tmp: OwnedFd,
    new: OwnedFd,
}

/// Open `tmp/` and `new/` of a Maildir to deliver into. An existing Maildir (every delivery
/// after a user's first) costs no stat and no mkdir attempts (three failing syscalls a
/// batch); anything unexpected (missing, a symlink, not a directory) goes through
/// [`create_and_open`], which creates what is missing and reports the rest. A missing
/// `cur/` is not delivery's concern: the POP3 side creates it ([`create_maildir`]).
fn open_maildir(maildir: &Path) -> std::io::Result<Dirs> {
    if let Ok(md) = open_dir(CWD, maildir, false) {
        if let (Ok(tmp), Ok(new)) = (
            open_dir(&md, Path::new("tmp"), true),
            open_dir(&md, Path::new("new"), true),
        ) {
            return Ok(Dirs { tmp, new });
        }
    }
    create_and_open(maildir)
}

/// Create the Maildir and its `cur/ new/ tmp/` (mode 0700) where missing, fsyncing each
/// directory that gained an entry, and open `tmp/` and `new/` without following links.
fn create_and_open(maildir: &Path) -> std::io::Result<Dirs> {
    if std::fs::symlink_metadata(maildir).is_err() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(maildir)?;
        if let Some(parent) = maildir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    let md = open_dir(CWD, maildir, false)?;
    let mut created = false;
    for sub in ["tmp", "new", "cur"] {
        created |= mkdir_700(&md, sub)?;
    }
    if created {
        rustix::fs::fsync(&md)?;
    }
    Ok(Dirs {
        tmp: open_dir(&md, Path::new("tmp"), true)?,
        new: open_dir(&md, Path::new("new"), true)?,
    })
}

/// Create `maildir` with `cur/ new/ tmp/` (mode 0700) where missing; error if `tmp/` or
/// `new/` is a symlink or not a directory. Used by `poshta user add` and at POP3 login.
pub fn create_maildir(maildir: &Path) -> std::io::Result<()> {
    create_and_open(maildir).map(drop)
}

/// Blocking: write tmp/NAME (O_EXCL), fsync, rename to new/NAME, fsync new/.
/// Returns the final path.
pub fn deliver(d: &MaildirDelivery<'_>, body: &mut dyn Read) -> Result<PathBuf, DeliveryError> {
    let dirs = open_maildir(d.maildir).map_err(|e| classify("open", d.maildir, e))?;
    let (final_path, name) = deliver_unsynced(&dirs, d, body)?;
    sync_new(&dirs, d.maildir, &[name])?;
    Ok(final_path)
}

/// A Maildir a batch delivers into: its path, its open directories, and the (item, name)
/// pairs renamed into its new/.
type Touched<'a> = (&'a Path, Result<Dirs, std::io::Error>, Vec<(usize, String)>);

/// Blocking: deliver several messages, then fsync each Maildir's new/ once. Small batches
/// write, fsync and rename each message on its own (Maildir spec). From
/// [`SYNCFS_BATCH_MIN`] messages on, every message is written to tmp/ first, then one
/// syncfs(2) per filesystem makes all of them durable at once (the Maildir rule is only
/// that a message is on disk before it is renamed into new/), then they are renamed: one
/// flush of the filesystem's dirty inodes and blocks instead of one fsync per file, which
/// on ext4 writes each inode-table block once rather than once per message. The directory
/// fsync that makes the renames durable is shared as before. Results are in order.
pub fn deliver_batch(items: &mut [(MaildirDelivery<'_>, &mut dyn Read)]) -> Vec<Result<PathBuf, DeliveryError>> {
    // Maildirs touched, with their open directories and the names renamed into new/.
    let mut opened: Vec<Touched<'_>> = Vec::new();
    let mut results: Vec<Result<PathBuf, DeliveryError>> = Vec::with_capacity(items.len());
    let grouped = items.len() >= SYNCFS_BATCH_MIN;
    // Grouped: (item, Maildir slot, unique name, counts) written but not yet renamed.
    let mut written: Vec<(usize, usize, String, CrlfCounter)> = Vec::new();
    for (i, (d, body)) in items.iter_mut().enumerate() {
        let slot = match opened.iter().position(|(p, _, _)| *p == d.maildir) {
            Some(k) => k,
            None => {
                opened.push((d.maildir, open_maildir(d.maildir), Vec::new()));
                opened.len() - 1
            }
        };
        let (_, dirs, names) = &mut opened[slot];
        let r = match dirs {
            Ok(dirs) if grouped => write_tmp(dirs, d, &mut **body, false).map(|(unique, counted)| {
                written.push((i, slot, unique, counted));
                PathBuf::new()
            }),
            Ok(dirs) => deliver_unsynced(dirs, d, &mut **body).map(|(path, name)| {
                names.push((i, name));
                path
            }),
            Err(e) => Err(classify(
                "open",
                d.maildir,
                std::io::Error::new(e.kind(), e.to_string()),
            )),
        };
        results.push(r);
    }
    if grouped && !written.is_empty() {
        // One syncfs per filesystem (Maildirs may live on several), decided once per Maildir.
        let mut by_dev: Vec<(u64, Result<(), Errno>)> = Vec::new();
        let slot_sync: Vec<Option<Result<(), Errno>>> = opened
            .iter()
            .enumerate()
            .map(|(slot, (_, dirs, _))| {
                let dirs = dirs.as_ref().ok().filter(|_| written.iter().any(|w| w.1 == slot))?;
                // st_dev's type differs between targets (u64 here, narrower on some 32-bit ones).
                #[allow(clippy::unnecessary_cast)]
                let dev = rustix::fs::fstat(&dirs.tmp).map(|st| st.st_dev as u64).unwrap_or(0);
                Some(match by_dev.iter().find(|(d, _)| *d == dev) {
                    Some((_, r)) => *r,
                    None => {
                        let r = rustix::fs::syncfs(&dirs.tmp);
                        by_dev.push((dev, r));
                        r
                    }
                })
            })
            .collect();
        for (i, slot, unique, counted) in written {
            let (maildir, dirs, names) = &mut opened[slot];
            let (Ok(dirs), Some(sync)) = (dirs, slot_sync[slot]) else {
                continue;
            };
            results[i] = match sync {
                Ok(()) => rename_into_new(dirs, &items[i].0, &unique, &counted).map(|(path, name)| {
                    names.push((i, name));
                    path
                }),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&dirs.tmp, unique.as_str(), AtFlags::empty());
                    Err(classify("syncfs", maildir, e.into()))
                }
            };
        }
    }
    for (maildir, dirs, names) in &opened {
        let (Ok(dirs), false) = (dirs, names.is_empty()) else {
            continue;
        };
        let just_names: Vec<String> = names.iter().map(|(_, n)| n.clone()).collect();
        if let Err(e) = sync_new(dirs, maildir, &just_names) {
            for (i, _) in names {
                results[*i] = Err(DeliveryError {
                    permanent: e.permanent,
                    reason: e.reason.clone(),
                });
            }
        }
    }
    results
}

/// Write tmp/NAME, fsync it, rename into new/ (not yet durable: see `sync_new`).
fn deliver_unsynced(
    dirs: &Dirs,
    d: &MaildirDelivery<'_>,
    body: &mut dyn Read,
) -> Result<(PathBuf, String), DeliveryError> {
    let (unique, counted) = write_tmp(dirs, d, body, true)?;
    rename_into_new(dirs, d, &unique, &counted)
}

/// Create tmp/NAME exclusively and write the message; fsync it when `sync` (a batch
/// that syncs the whole filesystem once does not). Returns the unique name and the counts.
fn write_tmp(
    dirs: &Dirs,
    d: &MaildirDelivery<'_>,
    body: &mut dyn Read,
    sync: bool,
) -> Result<(String, CrlfCounter), DeliveryError> {
    let pid = crate::pid();
    // Maildir spec, "modern" unique names: time, M microseconds, P pid, Q delivery count.
    // Written into one string with room for the ",S=...,W=..." rename_into_new appends:
    // a name is made for every message, on the delivery threads.
    let mut unique = String::with_capacity(96 + HOST_IN_NAME_BYTES_MAX);
    let _ = write!(unique, "{}.M{}P{}Q{}.", d.now_secs, d.now_micros, pid, d.seq);
    push_sanitized_hostname(&mut unique, d.hostname);
    // Maildir spec: create in tmp/ exclusively; never through a link.
    let fd = rustix::fs::openat(
        &dirs.tmp,
        unique.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| classify("create", &in_maildir(d.maildir, "tmp", &unique), e.into()))?;
    let mut file = File::from(fd);
    match write_and_sync(&mut file, d.prepend, body, sync) {
        Ok(c) => Ok((unique, c)),
        Err((what, e)) => {
            drop(file);
            let _ = rustix::fs::unlinkat(&dirs.tmp, unique.as_str(), AtFlags::empty());
            Err(classify(what, &in_maildir(d.maildir, "tmp", &unique), e))
        }
    }
}

/// Rename tmp/UNIQUE into new/ under its final name (with the size attributes).
fn rename_into_new(
    dirs: &Dirs,
    d: &MaildirDelivery<'_>,
    unique: &str,
    counted: &CrlfCounter,
) -> Result<(PathBuf, String), DeliveryError> {
    // Dovecot's ,S= attribute: the real size of the file; ,W=: its size with CRLF line ends.
    let mut name = String::with_capacity(unique.len() + 48);
    let _ = write!(name, "{unique},S={},W={}", counted.bytes(), counted.crlf_bytes());
    let final_path = in_maildir(d.maildir, "new", &name);
    // Maildir spec: rename into new/. NOREPLACE so a (theoretical) name clash never
    // overwrites a delivered message; filesystems without renameat2 flags get a plain
    // rename (the unique name makes a clash practically impossible).
    let renamed = match rustix::fs::renameat_with(&dirs.tmp, unique, &dirs.new, name.as_str(), RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) | Err(Errno::NOSYS) => rustix::fs::renameat(&dirs.tmp, unique, &dirs.new, name.as_str()),
        other => other,
    };
    if let Err(e) = renamed {
        let _ = rustix::fs::unlinkat(&dirs.tmp, unique, AtFlags::empty());
        return Err(classify("rename into new/", &final_path, e.into()));
    }
    Ok((final_path, name))
}

/// STYLE.md: fsync the directory so the renames are durable before we say "delivered".
fn sync_new(dirs: &Dirs, maildir: &Path, names: &[String]) -> Result<(), DeliveryError> {
    if let Err(e) = rustix::fs::fsync(&dirs.new) {
        // Not known durable: take them back so the retry does not make duplicates (best
        // effort; if this fails too, the retry may deliver twice — at-least-once).
        for name in names {
            let _ = rustix::fs::unlinkat(&dirs.new, name.as_str(), AtFlags::empty());
        }
        return Err(classify("fsync new/", maildir, e.into()));
    }
    Ok(())
}

/// Write prepend + body, fsync when `sync`; returns the count of the bytes written.
fn write_and_sync(
    file: &mut File,
    prepend: &[u8],
    body: &mut dyn Read,
    sync: bool,
) -> Result<CrlfCounter, (&'static str, std::io::Error)> {
    file.write_all(prepend).map_err(|e| ("write", e))?;
    let mut written = CrlfCounter::default();
    written.update(prepend);
    COPY_BUFFER.with_borrow_mut(|buf| {
        // One buffer per thread for its life: allocated per message, musl's allocator
        // mapped and unmapped it every time, and each munmap of a multi-threaded process
        // interrupts the other cores to flush their TLBs (bench/smtp-deliver.sh).
        buf.resize(COPY_BUFFER_BYTES, 0);
        loop {
            let n = match body.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(("read message body", e)),
            };
            file.write_all(&buf[..n]).map_err(|e| ("write", e))?;
            written.update(&buf[..n]);
        }
        Ok(())
    })?;
    if sync {
        file.sync_all().map_err(|e| ("fsync", e))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct TmpDir(PathBuf);
    impl TmpDir {
        fn new(tag: &str) -> TmpDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("poshta-maildir-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TmpDir(p)
        }
    }
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn delivery<'a>(maildir: &'a Path, prepend: &'a [u8], seq: u64) -> MaildirDelivery<'a> {
        MaildirDelivery {
            maildir,
            hostname: "mx/1:a",
            prepend,
            body_size: 0,
            now_secs: 1_700_000_000,
            now_micros: 123_456,
            seq,
        }
    }

    #[test]
    fn delivers_exact_bytes_into_new() {
        let t = TmpDir::new("ok");
        let md = t.0.join("mail").join("alice");
        let prepend = b"Return-Path: <a@b>\nDelivered-To: alice@example.org\n";
        let body = b"Subject: hi\n\nhello\n";
        let mut d = delivery(&md, prepend, 1);
        d.body_size = body.len() as u64;
        let path = deliver(&d, &mut &body[..]).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got, [&prepend[..], &body[..]].concat());
        assert_eq!(path.parent().unwrap(), md.join("new"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.contains(&format!(",S={},", got.len())), "{name}");
        let unique = name.split(',').next().unwrap();
        assert!(!unique.contains(':') && !unique.contains('/'), "{unique}");
        assert!(unique.contains("mx\\0571\\072a"), "{unique}");
        assert!(unique.starts_with("1700000000.M123456P"), "{unique}");
        assert!(entries(&md.join("tmp")).is_empty());
        assert!(entries(&md.join("cur")).is_empty());
        for sub in ["", "tmp", "new", "cur"] {
            let m = std::fs::metadata(md.join(sub)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{sub}");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    /// Small batches sync each file; from SYNCFS_BATCH_MIN on, one syncfs covers them all.
    /// Either way every message lands in new/ whole, with its own name, in order, and tmp/
    /// is empty; a failing message in a grouped batch leaves the others delivered.
    #[test]
    fn batches_small_and_grouped_deliver_every_message() {
        for n in [1, SYNCFS_BATCH_MIN - 1, SYNCFS_BATCH_MIN, 40] {
            let t = TmpDir::new("batch");
            let a = t.0.join("alice");
            let b = t.0.join("bob");
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|i| format!("Subject: {i}\n\nbody {i}\n").into_bytes())
                .collect();
            let mut readers: Vec<Box<dyn Read>> = (0..n)
                .map(|i| -> Box<dyn Read> {
                    if n > SYNCFS_BATCH_MIN && i == 3 {
                        Box::new(Failing(1))
                    } else {
                        Box::new(std::io::Cursor::new(bodies[i].clone()))
                    }
                })
                .collect();
            let mut items: Vec<(MaildirDelivery<'_>, &mut dyn Read)> = readers
                .iter_mut()
                .enumerate()
                .map(|(i, r)| {
                    let md = if i % 2 == 0 { &a } else { &b };
                    (delivery(md, b"X-Seq: x\n", i as u64), &mut **r as &mut dyn Read)
                })
                .collect();
            let results = deliver_batch(&mut items);
            assert_eq!(results.len(), n);
            for (i, r) in results.iter().enumerate() {
                if n > SYNCFS_BATCH_MIN && i == 3 {
                    assert!(r.is_err(), "the failing body is reported");
                    continue;
                }
                let path = r.as_ref().expect("delivered");
                let mut want = b"X-Seq: x\n".to_vec();
                want.extend_from_slice(&bodies[i]);
                assert_eq!(std::fs::read(path).expect("read"), want, "message {i} of {n}");
            }
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let delivered = entries(&a.join("new")).len() + entries(&b.join("new")).len();
            assert_eq!(delivered, ok);
            assert!(entries(&a.join("tmp")).is_empty() && entries(&b.join("tmp")).is_empty());
        }
    }

    #[test]
    fn size_is_what_was_written_not_what_was_claimed() {
        let t = TmpDir::new("size");
        let mut d = delivery(&t.0, b"X: y\n", 1);
        d.body_size = 1_000_000;
        let path = deliver(&d, &mut &b"short\n"[..]).unwrap();
        assert!(path.to_str().unwrap().ends_with(",S=11,W=13"), "{path:?}");
    }

    #[test]
    fn w_is_the_size_with_crlf_line_ends() {
        let t = TmpDir::new("w");
        // Bare LFs (3 in the prepend and body), one CRLF already, a CR alone, no final LF.
        let body = b"Subject: x\r\n\nline\rmore\nlast";
        let path = deliver(&delivery(&t.0, b"X: y\n", 1), &mut &body[..]).unwrap();
        let got = std::fs::read(&path).unwrap();
        let mut crlf = Vec::new();
        for (i, &b) in got.iter().enumerate() {
            if b == b'\n' && (i == 0 || got[i - 1] != b'\r') {
                crlf.push(b'\r');
            }
            crlf.push(b);
        }
        assert_eq!(crlf.len(), got.len() + 3);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(&format!(",S={},W={}", got.len(), crlf.len())), "{name}");
    }

    #[test]
    fn two_deliveries_get_different_names() {
        let t = TmpDir::new("two");
        let a = deliver(&delivery(&t.0, b"", 1), &mut &b"a\n"[..]).unwrap();
        let b = deliver(&delivery(&t.0, b"", 2), &mut &b"a\n"[..]).unwrap();
        assert_ne!(a, b);
        assert_eq!(entries(&t.0.join("new")).len(), 2);
        // Same time, seq and size again (a clock step back): the rename must not replace
        // the delivered message.
        let e = deliver(&delivery(&t.0, b"", 2), &mut &b"b\n"[..]).unwrap_err();
        assert!(!e.permanent, "{e}");
        assert_eq!(std::fs::read(&b).unwrap(), b"a\n");
        assert!(entries(&t.0.join("tmp")).is_empty());
    }

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("queue segment unreadable"));
            }
            self.0 -= 1;
            let n = buf.len().min(1000);
            buf[..n].fill(b'x');
            Ok(n)
        }
    }

    #[test]
    fn failing_reader_leaves_nothing() {
        let t = TmpDir::new("fail");
        let e = deliver(&delivery(&t.0, b"H: v\n", 1), &mut Failing(3)).unwrap_err();
        assert!(!e.permanent, "{e}");
        assert!(e.reason.contains("queue segment unreadable"), "{e}");
        assert!(entries(&t.0.join("tmp")).is_empty());
        assert!(entries(&t.0.join("new")).is_empty());
    }

    /// Delivery opens an existing Maildir without trying to create anything, but the POP3
    /// side's `create_maildir` still restores a missing `cur/`.
    #[test]
    fn a_missing_cur_is_restored_by_create_maildir() {
        let t = TmpDir::new("nocur");
        let md = t.0.join("md");
        create_maildir(&md).unwrap();
        std::fs::remove_dir(md.join("cur")).unwrap();
        deliver(&delivery(&md, b"", 1), &mut &b"x\n"[..]).unwrap();
        assert_eq!(entries(&md.join("new")).len(), 1);
        create_maildir(&md).unwrap();
        assert!(md.join("cur").is_dir());
    }

    #[test]
    fn symlinked_subdirs_are_refused() {
        for sub in ["tmp", "new"] {
            let t = TmpDir::new("link");
            let md = t.0.join("md");
            let elsewhere = t.0.join("elsewhere");
            std::fs::create_dir_all(&md).unwrap();
            std::fs::create_dir_all(&elsewhere).unwrap();
            for other in ["tmp", "new", "cur"] {
                if other != sub {
                    std::fs::create_dir(md.join(other)).unwrap();
                }
            }
            std::os::unix::fs::symlink(&elsewhere, md.join(sub)).unwrap();
            let e = deliver(&delivery(&md, b"", 1), &mut &b"x\n"[..]).unwrap_err();
            assert!(!e.permanent, "{e}");
            assert!(entries(&elsewhere).is_empty(), "{sub}: wrote through the link");
            assert!(create_maildir(&md).is_err());
        }
    }

    #[test]
    fn subdir_that_is_a_file_is_refused() {
        let t = TmpDir::new("file");
        std::fs::create_dir_all(t.0.join("new")).unwrap();
        std::fs::create_dir_all(t.0.join("cur")).unwrap();
        std::fs::write(t.0.join("tmp"), b"").unwrap();
        assert!(deliver(&delivery(&t.0, b"", 1), &mut &b"x\n"[..]).is_err());
    }

    #[test]
    fn hostnames_are_escaped() {
        assert_eq!(sanitize_hostname("mx.example.org"), "mx.example.org");
        assert_eq!(sanitize_hostname("a/b:c"), "a\\057b\\072c");
        assert_eq!(sanitize_hostname("a,b c\n"), "a\\054b\\040c\\012");
        assert_eq!(sanitize_hostname(""), "localhost");
        assert_eq!(sanitize_hostname("é"), "\\303\\251");
        assert!(sanitize_hostname(&"/".repeat(1000)).len() <= HOST_IN_NAME_BYTES_MAX + 4);
    }

    #[test]
    fn virtual_maildir_refuses_traversal() {
        let base = Path::new("/var/mail/vhosts");
        assert_eq!(
            virtual_maildir(base, "alice"),
            Some(PathBuf::from("/var/mail/vhosts/alice"))
        );
        for bad in ["..", ".", "a/b", "", "../etc", "Alice"] {
            assert_eq!(virtual_maildir(base, bad), None, "{bad}");
        }
    }
}
