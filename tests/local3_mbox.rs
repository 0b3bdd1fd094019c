//! mbox delivery and reading: exact bytes, locking against other programs and threads, the
//! refusals that keep delivery-as-root safe, and rollback on failure.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use poshta::delivery::mbox::{deliver, dotlock_path, MboxDelivery, MboxReader};

#[path = "common/tempdir.rs"]
mod tempdir;
use tempdir::TempDir;

/// Removed when the test ends, pass or fail.
fn tmp(tag: &str) -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    TempDir::new(&format!("poshta-mbox-{tag}-{}-{n}", std::process::id()))
}

const T: u64 = 1_795_831_141; // Sat Nov 28 01:59:01 2026

fn delivery<'a>(path: &'a Path, sender: &'a str, uidl: &'a str) -> MboxDelivery<'a> {
    MboxDelivery {
        path,
        owner: None,
        sender,
        time_secs: T,
        prepend: b"Return-Path: <a@b>\n",
        uidl,
        size_limit_bytes: 0,
        lock_wait: Duration::from_millis(500),
    }
}

fn me() -> (u32, u32) {
    (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
}

#[test]
fn exact_bytes_and_round_trip() {
    let t = tmp("exact");
    let mbox = t.join("nick2");
    let msg1 = b"Subject: one\n\nFrom here\n>From there\nbody\n";
    let d1 = deliver(&delivery(&mbox, "alice@example.org", "u1"), &mut &msg1[..]).unwrap();
    assert_eq!(d1.offset, 0);
    // No final newline: one is added. Null sender: MAILER-DAEMON.
    let msg2 = b"Subject: two\nX-UIDL: forged\n\nFrom";
    let d2 = deliver(&delivery(&mbox, "", "u2"), &mut &msg2[..]).unwrap();
    let got = std::fs::read(&mbox).unwrap();
    let want = b"From alice@example.org Sat Nov 28 01:59:01 2026\n\
Return-Path: <a@b>\n\
X-UIDL: u1\n\
Subject: one\n\
\n\
>From here\n\
>>From there\n\
body\n\
\n\
From MAILER-DAEMON Sat Nov 28 01:59:01 2026\n\
Return-Path: <a@b>\n\
X-UIDL: u2\n\
Subject: two\n\
X-UIDL: forged\n\
\n\
From\n\
\n";
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    assert_eq!(d2.offset, d1.bytes);
    assert_eq!(d1.bytes + d2.bytes, got.len() as u64);
    let meta = std::fs::metadata(&mbox).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!dotlock_path(&mbox).exists());

    let r = MboxReader::open(&mbox).unwrap();
    let entries = r.scan().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].offset, 0);
    assert_eq!(entries[1].offset, d2.offset);
    assert_eq!(entries[0].uidl.as_deref(), Some("u1"));
    assert_eq!(entries[1].uidl.as_deref(), Some("u2"));
    let m1 = r.message_bytes(&entries[0]).unwrap();
    assert_eq!(m1, [&b"Return-Path: <a@b>\nX-UIDL: u1\n"[..], &msg1[..]].concat());
    let m2 = r.message_bytes(&entries[1]).unwrap();
    assert_eq!(
        m2,
        [&b"Return-Path: <a@b>\nX-UIDL: u2\n"[..], &msg2[..], b"\n"].concat()
    );
}

#[test]
fn damaged_mbox_without_final_newline() {
    let t = tmp("damaged");
    let mbox = t.join("u");
    std::fs::write(&mbox, b"From x Thu Jan  1 00:00:00 1970\nSubject: a\n\nno newline").unwrap();
    std::fs::set_permissions(&mbox, std::fs::Permissions::from_mode(0o600)).unwrap();
    deliver(&delivery(&mbox, "s@x", "u9"), &mut &b"Subject: b\n\nhi\n"[..]).unwrap();
    let r = MboxReader::open(&mbox).unwrap();
    let e = r.scan().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(r.message_bytes(&e[0]).unwrap(), b"Subject: a\n\nno newline\n");
    assert!(r.message_bytes(&e[1]).unwrap().ends_with(b"Subject: b\n\nhi\n"));
}

#[test]
fn reader_round_trip_1000_messages() {
    let t = tmp("thousand");
    let mbox = t.join("u");
    let mut sent = Vec::new();
    for i in 0..1000u32 {
        // Tricky bodies: From lines, quoted From lines, CRLF, no final newline, blank ends.
        let body = match i % 5 {
            0 => format!("Subject: {i}\n\nFrom me\n>From you\n>>From them\n"),
            1 => format!("Subject: {i}\r\n\r\nline\r\nFrom \r\n"),
            2 => format!("Subject: {i}\n\n\n\n"),
            3 => format!("Subject: {i}\n\nFrom"),
            _ => format!("Subject: {i}\n\n{}\n", "x".repeat(i as usize * 7)),
        };
        let uidl = format!("uid{i}");
        let mut d = delivery(&mbox, "s@example.org", &uidl);
        d.prepend = b"";
        deliver(&d, &mut body.as_bytes()).unwrap();
        let mut stored = format!("X-UIDL: uid{i}\n").into_bytes();
        stored.extend_from_slice(body.as_bytes());
        if !stored.ends_with(b"\n") {
            stored.push(b'\n');
        }
        sent.push(stored);
    }
    let start = Instant::now();
    let r = MboxReader::open(&mbox).unwrap();
    let entries = r.scan().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(entries.len(), 1000);
    for (i, (e, want)) in entries.iter().zip(&sent).enumerate() {
        assert_eq!(e.uidl.as_deref(), Some(format!("uid{i}").as_str()));
        assert_eq!(r.message_bytes(e).unwrap(), *want, "message {i}");
    }
}

#[test]
fn reader_refuses_non_mbox() {
    let t = tmp("notmbox");
    let p = t.join("x");
    std::fs::write(&p, b"Subject: not an mbox\n\nFrom x\n").unwrap();
    assert!(MboxReader::open(&p).unwrap().scan().is_err());
    std::fs::write(&p, b"").unwrap();
    assert!(MboxReader::open(&p).unwrap().scan().unwrap().is_empty());
    std::os::unix::fs::symlink(&p, t.join("link")).unwrap();
    assert!(MboxReader::open(&t.join("link")).is_err());
}

#[test]
fn concurrent_appends_do_not_interleave() {
    let t = tmp("threads");
    let mbox = t.join("u");
    let threads = 6;
    let per = 20;
    std::thread::scope(|s| {
        for th in 0..threads {
            let mbox = &mbox;
            s.spawn(move || {
                for k in 0..per {
                    // Big enough to need several writes.
                    let body = format!(
                        "Subject: t{th}m{k}\n\n{}\nend t{th}m{k}\n",
                        format!("t{th}m{k} line\n").repeat(20_000)
                    );
                    let uidl = format!("t{th}m{k}");
                    let mut d = delivery(mbox, "s@x", &uidl);
                    d.lock_wait = Duration::from_secs(60);
                    deliver(&d, &mut body.as_bytes()).unwrap();
                }
            });
        }
    });
    let r = MboxReader::open(&mbox).unwrap();
    let entries = r.scan().unwrap();
    assert_eq!(entries.len(), threads * per);
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        let m = String::from_utf8(r.message_bytes(e).unwrap()).unwrap();
        let id = e.uidl.clone().unwrap();
        let want = format!(
            "Return-Path: <a@b>\nX-UIDL: {id}\nSubject: {id}\n\n{}\nend {id}\n",
            format!("{id} line\n").repeat(20_000)
        );
        assert!(m == want, "message {id} damaged");
        assert!(seen.insert(id));
    }
}

#[test]
fn stale_dotlock_is_removed() {
    let t = tmp("stale");
    let mbox = t.join("u");
    let lock = dotlock_path(&mbox);
    std::fs::write(&lock, b"99999\n").unwrap();
    let old = SystemTime::now() - Duration::from_secs(poshta::limits::MBOX_DOTLOCK_STALE_SECS + 60);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let start = Instant::now();
    deliver(&delivery(&mbox, "s@x", "u1"), &mut &b"x\n"[..]).unwrap();
    assert!(start.elapsed() < Duration::from_millis(400));
    assert!(!lock.exists());
}

#[test]
fn fresh_dotlock_makes_delivery_wait_then_defer() {
    let t = tmp("fresh");
    let mbox = t.join("u");
    std::fs::write(&mbox, b"").unwrap();
    std::fs::set_permissions(&mbox, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lock = dotlock_path(&mbox);
    // What `dotlockfile` (liblockfile) leaves: the holder's pid.
    std::fs::write(&lock, b"12345\n").unwrap();
    let start = Instant::now();
    let e = deliver(&delivery(&mbox, "s@x", "u1"), &mut &b"x\n"[..]).unwrap_err();
    let took = start.elapsed();
    assert!(!e.permanent);
    assert!(e.reason.contains("locked"), "{e}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(std::fs::read(&mbox).unwrap(), b"");
    // Their lock is theirs: kept.
    assert!(lock.exists());
    // Released while we wait: delivered.
    let lock2 = lock.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::remove_file(lock2).unwrap();
    });
    let mut d = delivery(&mbox, "s@x", "u2");
    d.lock_wait = Duration::from_secs(5);
    deliver(&d, &mut &b"x\n"[..]).unwrap();
    h.join().unwrap();
    assert_eq!(MboxReader::open(&mbox).unwrap().scan().unwrap().len(), 1);
}

#[test]
fn fcntl_lock_of_another_process_is_respected() {
    let Ok(python) = which("python3") else {
        eprintln!("skipped: no python3 to hold an fcntl lock");
        return;
    };
    let t = tmp("fcntl");
    let mbox = t.join("u");
    std::fs::write(&mbox, b"").unwrap();
    std::fs::set_permissions(&mbox, std::fs::Permissions::from_mode(0o600)).unwrap();
    // lockf(3) is a POSIX record lock, what mail readers take with fcntl.
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg("import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(float(sys.argv[2]))\n")
        .arg(&mbox)
        .arg("1.0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 7];
    child.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"locked\n");
    let mut d = delivery(&mbox, "s@x", "u1");
    d.lock_wait = Duration::from_millis(300);
    let e = deliver(&d, &mut &b"x\n"[..]).unwrap_err();
    assert!(!e.permanent && e.reason.contains("fcntl"), "{e}");
    // Our dot-lock was not left behind while we waited.
    assert!(!dotlock_path(&mbox).exists());
    d.lock_wait = Duration::from_secs(10);
    deliver(&d, &mut &b"x\n"[..]).unwrap();
    child.wait().unwrap();
    assert_eq!(MboxReader::open(&mbox).unwrap().scan().unwrap().len(), 1);
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn unsafe_mailboxes_are_refused() {
    let t = tmp("refuse");
    let target = t.join("victim");
    std::fs::write(&target, b"secret\n").unwrap();

    // A symlink.
    let link = t.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = deliver(&delivery(&link, "s@x", "u1"), &mut &b"x\n"[..]).unwrap_err();
    assert!(!e.permanent && e.reason.contains("symbolic link"), "{e}");
    // A dangling symlink: not created through.
    let dangling = t.join("dangling");
    std::os::unix::fs::symlink(t.join("nowhere"), &dangling).unwrap();
    assert!(deliver(&delivery(&dangling, "s@x", "u1"), &mut &b"x\n"[..]).is_err());
    assert!(!t.join("nowhere").exists());

    // A hard link.
    let hard = t.join("hard");
    std::fs::hard_link(&target, &hard).unwrap();
    let e = deliver(&delivery(&hard, "s@x", "u1"), &mut &b"x\n"[..]).unwrap_err();
    assert!(!e.permanent && e.reason.contains("hard links"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"secret\n");

    // A FIFO (without a reader: must not block) and a directory.
    let fifo = t.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let e = deliver(&delivery(&fifo, "s@x", "u1"), &mut &b"x\n"[..]).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!e.permanent && e.reason.contains("regular file"), "{e}");
    std::fs::create_dir(t.join("dir")).unwrap();
    assert!(deliver(&delivery(&t.join("dir"), "s@x", "u1"), &mut &b"x\n"[..]).is_err());

    // Owned by someone else than expected.
    let other = t.join("other");
    std::fs::write(&other, b"").unwrap();
    let mut d = delivery(&other, "s@x", "u1");
    let (uid, gid) = me();
    d.owner = Some((uid.wrapping_add(1), gid));
    let e = deliver(&d, &mut &b"x\n"[..]).unwrap_err();
    assert!(!e.permanent && e.reason.contains("owned by"), "{e}");
    assert_eq!(std::fs::read(&other).unwrap(), b"");

    // A bad UIDL is a caller error, refused before touching anything.
    assert!(deliver(&delivery(&t.join("new"), "s@x", "has space"), &mut &b"x\n"[..]).is_err());
    assert!(!t.join("new").exists());
}

#[test]
fn new_mailbox_gets_owner_and_mode() {
    let t = tmp("owner");
    let mbox = t.join("nick2");
    let (uid, gid) = me();
    // As root: give it to another user and group (Debian: user, group mail).
    let owner = if uid == 0 { (4242, 8) } else { (uid, gid) };
    let mut d = delivery(&mbox, "s@x", "u1");
    d.owner = Some(owner);
    deliver(&d, &mut &b"x\n"[..]).unwrap();
    let m = std::fs::metadata(&mbox).unwrap();
    assert_eq!((m.uid(), m.gid()), owner);
    assert_eq!(m.mode() & 0o777, 0o600);
    // Delivering again with the same expectation works.
    deliver(&d, &mut &b"y\n"[..]).unwrap();
}

struct FailingReader {
    left: usize,
}
impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("queue file read error"));
        }
        let n = buf.len().min(self.left).min(10_000);
        buf[..n].fill(b'z');
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn failure_leaves_the_mailbox_unchanged() {
    let t = tmp("fail");
    let mbox = t.join("u");
    deliver(&delivery(&mbox, "s@x", "u1"), &mut &b"first\n"[..]).unwrap();
    let before = std::fs::read(&mbox).unwrap();

    // The body fails after 300 kB were written.
    let e = deliver(&delivery(&mbox, "s@x", "u2"), &mut FailingReader { left: 300_000 }).unwrap_err();
    assert!(!e.permanent, "{e}");
    assert_eq!(std::fs::read(&mbox).unwrap(), before);
    assert!(!dotlock_path(&mbox).exists());

    // mailbox_size_limit: permanent, cut back.
    let mut d = delivery(&mbox, "s@x", "u3");
    d.size_limit_bytes = before.len() as u64 + 1000;
    let big = vec![b'a'; 200_000];
    let e = deliver(&d, &mut &big[..]).unwrap_err();
    assert!(e.permanent && e.reason.contains("mailbox_size_limit"), "{e}");
    assert_eq!(std::fs::read(&mbox).unwrap(), before);
    // A small one still fits.
    deliver(&d, &mut &b"small\n"[..]).unwrap();
}

#[test]
fn full_disk_defers_and_leaves_mailbox_unchanged() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("skipped: mounting a tiny tmpfs needs root");
        return;
    }
    let t = tmp("tmpfs");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "poshta-test"])
        .arg(t.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(t.path());
    let mbox = t.join("u");
    deliver(&delivery(&mbox, "s@x", "u1"), &mut &b"first\n"[..]).unwrap();
    let before = std::fs::read(&mbox).unwrap();
    let big = vec![b'a'; 1024 * 1024];
    let e = deliver(&delivery(&mbox, "s@x", "u2"), &mut &big[..]).unwrap_err();
    assert!(!e.permanent, "{e}");
    assert_eq!(std::fs::read(&mbox).unwrap(), before);
}

#[test]
fn a_reader_holding_the_lock_in_this_process_keeps_it() {
    use poshta::delivery::mbox::MboxLock;
    let t = tmp("reader");
    let mbox = t.join("u");
    deliver(&delivery(&mbox, "s@x", "u1"), &mut &b"Subject: one\n\nhi\n"[..]).unwrap();
    let open = || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&mbox)
            .map_err(|e| e.to_string())
    };
    let lock = MboxLock::acquire(&mbox, Instant::now() + Duration::from_secs(1), open).unwrap();
    assert!(dotlock_path(&mbox).exists());
    // A delivery thread gives up while the "POP3 session" holds the mailbox...
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut d = delivery(&mbox, "s@x", "u2");
            d.lock_wait = Duration::from_millis(200);
            let e = deliver(&d, &mut &b"x\n"[..]).unwrap_err();
            assert!(!e.permanent && e.reason.contains("locked"), "{e}");
        });
    });
    // ... and giving up did not release our locks.
    assert!(dotlock_path(&mbox).exists());
    if let Ok(python) = which("python3") {
        let st = std::process::Command::new(python)
            .arg("-c")
            .arg("import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n  fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n  sys.exit(1)\nexcept OSError:\n  sys.exit(0)\n")
            .arg(&mbox)
            .status()
            .unwrap();
        assert!(st.success(), "the fcntl lock was lost");
    }
    let r = poshta::delivery::mbox::MboxReader::locked(&lock);
    let entries = r.scan().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        r.message_bytes(&entries[0]).unwrap(),
        b"Return-Path: <a@b>\nX-UIDL: u1\nSubject: one\n\nhi\n"
    );
    drop(lock);
    assert!(!dotlock_path(&mbox).exists());
    deliver(&delivery(&mbox, "s@x", "u3"), &mut &b"x\n"[..]).unwrap();
}

#[test]
fn reader_survives_random_mailboxes() {
    let t = tmp("noise");
    let p = t.join("u");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"From >\n\r\nX-UIDL: a\0";
    for _ in 0..100 {
        let mut data = b"From ".to_vec();
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        std::fs::write(&p, &data).unwrap();
        let r = MboxReader::open(&p).unwrap();
        let entries = r.scan().unwrap();
        assert!(!entries.is_empty());
        let mut end = 0;
        for e in &entries {
            assert!(e.offset >= end && e.from_line_len <= e.len);
            end = e.offset + e.len;
            assert!(end <= data.len() as u64);
            let m = r.message_bytes(e).unwrap();
            assert!(m.len() as u64 <= e.len - e.from_line_len);
        }
    }
}
