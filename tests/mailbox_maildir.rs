//! The POP3 maildrop over real Maildirs: messages made by poshta's own delivery, plus
//! hand-made hostile ones (symlinks, FIFOs, odd names, planted lock files).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use poshta::delivery::maildir::{deliver, MaildirDelivery};
use poshta::mailbox::maildir::{Maildrop, LOCK_FILE};
use poshta::mailbox::{Mailbox, MailboxError};

#[path = "common/tempdir.rs"]
mod tempdir;
use tempdir::TempDir;

/// Removed when the test ends, pass or fail.
fn tmp(tag: &str) -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    TempDir::new(&format!("poshta-mailbox-{tag}-{}-{n}", std::process::id()))
}

fn put(md: &Path, secs: u64, seq: u64, body: &[u8]) -> PathBuf {
    let d = MaildirDelivery {
        maildir: md,
        hostname: "mx.example.org",
        prepend: b"Return-Path: <a@example.org>\n",
        body_size: body.len() as u64,
        now_secs: secs,
        now_micros: 500,
        seq,
    };
    deliver(&d, &mut &body[..]).unwrap()
}

/// The bytes as a POP3 server sends them: every LF not already after a CR becomes CRLF.
fn to_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn read_all(m: &Maildrop, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    m.open_message(i).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn uids(m: &Maildrop) -> Vec<String> {
    m.listing().iter().map(|e| e.uid().to_string()).collect()
}

fn assert_valid_uids(m: &Maildrop) {
    let u = uids(m);
    let set: HashSet<&String> = u.iter().collect();
    assert_eq!(set.len(), u.len(), "duplicate uids: {u:?}");
    for uid in &u {
        // RFC 1939 §7: 1 to 70 characters in 0x21..=0x7E.
        assert!((1..=70).contains(&uid.len()), "{uid}");
        assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uid:?}");
    }
}

/// Delivered messages are listed oldest first, with sizes exactly those of the CRLF
/// transmission, and moved from new/ to cur/ with ":2," at UPDATE (not at open).
#[test]
fn lists_delivered_messages_with_exact_crlf_sizes() {
    let t = tmp("list");
    let md = t.join("Maildir");
    let bodies: [&[u8]; 4] = [
        b"Subject: b\n\nsecond\n",
        b"Subject: a\r\n\r\nfirst, already CRLF\r\n",
        b"Subject: c\n\nmixed\r\nbare\rcr\n\n\nno final newline",
        b"",
    ];
    // Delivered out of order: the listing sorts by delivery time.
    put(&md, 1_700_000_002, 1, bodies[0]);
    put(&md, 1_700_000_001, 2, bodies[1]);
    put(&md, 1_700_000_003, 3, bodies[2]);
    put(&md, 1_700_000_004, 4, bodies[3]);

    let m = Maildrop::open(&md).unwrap();
    assert!(m.warnings().is_empty(), "{:?}", m.warnings());
    assert_eq!(m.len(), 4);
    let prepend = b"Return-Path: <a@example.org>\n";
    for (i, body) in [bodies[1], bodies[0], bodies[2], bodies[3]].iter().enumerate() {
        let stored = read_all(&m, i);
        assert_eq!(stored, [&prepend[..], body].concat(), "message {i}");
        assert_eq!(
            m.listing().get(i).unwrap().size(),
            to_crlf(&stored).len() as u64,
            "message {i}"
        );
    }
    assert_eq!(names(&md.join("new")).len(), 4, "nothing moves at open");
    assert!(names(&md.join("cur")).is_empty());
    assert_valid_uids(&m);
    let r = m.update(&[]).unwrap();
    assert_eq!((r.deleted, r.already_gone, r.failed.len()), (0, 0, 0));
    assert!(names(&md.join("new")).is_empty());
    let cur = names(&md.join("cur"));
    assert_eq!(cur.len(), 4);
    assert!(cur.iter().all(|n| n.ends_with(":2,") && n.contains(",W=")), "{cur:?}");

    // The backend-neutral face gives the same listing.
    drop(m);
    let mb = Mailbox::open_maildir(&md).unwrap();
    assert_eq!(mb.len(), 4);
    let mut first = Vec::new();
    mb.open_message(0).unwrap().read_to_end(&mut first).unwrap();
    assert_eq!(first, [&prepend[..], bodies[1]].concat());
}

/// Files without ,W= (other delivery agents, old poshta) are sized by reading them.
#[test]
fn size_without_w_is_computed_from_the_file() {
    let t = tmp("now");
    let md = t.join("Maildir");
    poshta::delivery::maildir::create_maildir(&md).unwrap();
    let a = b"From: x\n\nbody\r\nline\n";
    let b = b"no newline at all";
    std::fs::write(md.join("cur").join("1600000000.M1P1Q1.other,S=20:2,S"), a).unwrap();
    std::fs::write(md.join("new").join("1600000001.12345_1.oldhost"), b).unwrap();
    // A lying or broken W= is not trusted blindly: only a valid decimal is used.
    std::fs::write(md.join("cur").join("1600000002.M1P1Q2.h,W=x12:2,"), a).unwrap();
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m.listing().get(0).unwrap().size(), to_crlf(a).len() as u64);
    assert_eq!(m.listing().get(1).unwrap().size(), b.len() as u64);
    assert_eq!(m.listing().get(2).unwrap().size(), to_crlf(a).len() as u64);
    m.update(&[]).unwrap();
    assert_eq!(names(&md.join("cur"))[1], "1600000001.12345_1.oldhost:2,");
}

/// RFC 1939 §7: ids are unique and persist across sessions (and across the new/ → cur/ move).
#[test]
fn uids_are_stable_across_opens_and_unique() {
    let t = tmp("uid");
    let md = t.join("Maildir");
    for seq in 0..5 {
        put(&md, 1_700_000_000, seq, b"same body\n");
    }
    let first = uids(&Maildrop::open(&md).unwrap());
    assert_eq!(first.len(), 5);
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(uids(&m), first);
    assert_valid_uids(&m);
    // UPDATE moves them to cur/: same ids, same order from there.
    m.update(&[]).unwrap();
    drop(m);
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(uids(&m), first);
    assert!(names(&md.join("new")).is_empty());
    // poshta's names with a short host are their own ids: the unique part before ":2,".
    let cur = names(&md.join("cur"));
    for uid in &first {
        assert!(cur.contains(&format!("{uid}:2,")), "{uid} not a name in {cur:?}");
    }
}

/// Names that are not valid ids (too long, spaces, non-ASCII, the same unique part twice with
/// different flags) get hashed ids: printable, at most 70, unique, stable.
#[test]
fn odd_names_get_hashed_ids() {
    use std::os::unix::ffi::OsStrExt;
    let t = tmp("odd");
    let md = t.join("Maildir");
    poshta::delivery::maildir::create_maildir(&md).unwrap();
    let cur = md.join("cur");
    let long = format!("1700000000.M1P1Q1.{}", "h".repeat(200));
    std::fs::write(cur.join(format!("{long}:2,")), b"a\n").unwrap();
    std::fs::write(cur.join(format!("{long}x:2,")), b"a\n").unwrap();
    std::fs::write(cur.join("1700000001.M1P1Q1.with space:2,"), b"b\n").unwrap();
    std::fs::write(
        cur.join(std::ffi::OsStr::from_bytes(b"1700000002.M1\xff\xfe:2,")),
        b"c\n",
    )
    .unwrap();
    std::fs::write(cur.join("1700000003.M1P1Q1.dup:2,"), b"d\n").unwrap();
    std::fs::write(cur.join("1700000003.M1P1Q1.dup:2,S"), b"d\n").unwrap();
    std::fs::write(cur.join("1700000004.tab\there\n:2,"), b"e\n").unwrap();
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 7, "{:?}", m.warnings());
    assert_valid_uids(&m);
    let before = uids(&m);
    let names_before: Vec<_> = m.listing().iter().map(|e| e.name().to_owned()).collect();
    drop(m);
    let m = Maildrop::open(&md).unwrap();
    let again = uids(&m);
    assert_eq!(before, again);
    assert_eq!(
        names_before,
        m.listing().iter().map(|e| e.name().to_owned()).collect::<Vec<_>>()
    );
    // The first of the duplicate pair keeps its unique part; the second is hashed.
    assert!(again.contains(&"1700000003.M1P1Q1.dup".to_string()), "{again:?}");
    for (i, e) in m.listing().iter().enumerate() {
        if e.name().as_bytes().starts_with(b"1700000000") {
            assert_eq!(e.uid().len(), 32, "entry {i}");
        }
    }
}

/// RFC 1939 §8: one session per maildrop, in this process and across processes (flock).
#[test]
fn second_open_is_in_use() {
    let t = tmp("lock");
    let md = t.join("Maildir");
    put(&md, 1_700_000_000, 1, b"x\n");
    let m = Maildrop::open(&md).unwrap();
    assert!(matches!(Maildrop::open(&md), Err(MailboxError::InUse)));
    // Through another spelling of the same path.
    let other = md.join("cur").join("..");
    assert!(matches!(Maildrop::open(&other), Err(MailboxError::InUse)));
    drop(m);
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 1);
    drop(m);

    // A lock held by another open file description (as another process would hold it).
    let f = std::fs::File::open(md.join(LOCK_FILE)).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
    assert!(matches!(Maildrop::open(&md), Err(MailboxError::InUse)));
    // The failed attempt left no registry entry behind.
    rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock).unwrap();
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 1);
    let st = std::fs::metadata(md.join(LOCK_FILE)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&st.permissions()) & 0o777,
        0o600
    );
}

/// RFC 1939 §6: UPDATE removes exactly the marked messages; a message already gone is fine.
#[test]
fn delete_removes_exactly_the_chosen_files() {
    let t = tmp("del");
    let md = t.join("Maildir");
    for seq in 0..4 {
        put(&md, 1_700_000_000 + seq, seq, format!("m{seq}\n").as_bytes());
    }
    let m = Maildrop::open(&md).unwrap();
    let all: Vec<String> = m
        .listing()
        .iter()
        .map(|e| e.name().to_str().unwrap().to_string())
        .collect();
    // Another client removed message 3 meanwhile.
    std::fs::remove_file(md.join("new").join(&all[3])).unwrap();
    assert!(matches!(m.open_message(3), Err(MailboxError::Gone)));
    assert!(matches!(m.open_message(99), Err(MailboxError::Gone)));
    let r = m.update(&[0, 2, 3]).unwrap();
    assert_eq!((r.deleted, r.already_gone), (2, 1));
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    // The survivor moved to cur/ (issue 5).
    assert_eq!(names(&md.join("cur")), vec![format!("{}:2,", all[1])]);
    assert!(names(&md.join("new")).is_empty());
    let r = m.update(&[7]).unwrap();
    assert_eq!(r.failed.len(), 1);
    assert!(matches!(m.open_message(0), Err(MailboxError::Gone)));
    drop(m);
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(read_all(&m, 0), b"Return-Path: <a@example.org>\nm1\n");
}

/// A message delivered during a session is not part of it; the next session lists it.
#[test]
fn message_delivered_after_open_waits_for_the_next_session() {
    let t = tmp("late");
    let md = t.join("Maildir");
    put(&md, 1_700_000_000, 1, b"early\n");
    let m = Maildrop::open(&md).unwrap();
    let late = put(&md, 1_600_000_000, 2, b"late\n");
    assert_eq!(m.len(), 1);
    assert!(late.exists(), "the late message stays in new/ during the session");
    drop(m);
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 2);
    // Its (older) timestamp puts it first now.
    assert_eq!(read_all(&m, 0), b"Return-Path: <a@example.org>\nlate\n");
}

/// A symlink or FIFO in cur/ or new/ is never followed or opened: skipped with a warning,
/// and the rest is served.
#[test]
fn symlinks_fifos_and_dirs_are_skipped() {
    let t = tmp("hostile");
    let md = t.join("Maildir");
    put(&md, 1_700_000_000, 1, b"good\n");
    let secret = t.join("secret");
    std::fs::write(&secret, b"root's secret\n").unwrap();
    let cur = md.join("cur");
    std::os::unix::fs::symlink(&secret, cur.join("1600000000.M1P1Q1.link,S=14,W=15:2,")).unwrap();
    std::os::unix::fs::symlink(&secret, cur.join("1600000000.M1P1Q2.link2:2,")).unwrap();
    std::os::unix::fs::symlink(&secret, md.join("new").join("1600000000.M1P1Q3.link3")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        cur.join("1600000001.M1P1Q1.fifo:2,"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        md.join("new").join("1600000001.M1P1Q2.fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::create_dir(cur.join("1600000002.M1P1Q1.dir:2,")).unwrap();
    std::fs::write(cur.join(".hidden"), b"x\n").unwrap();

    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 1, "{:?}", m.warnings());
    assert_eq!(read_all(&m, 0), b"Return-Path: <a@example.org>\ngood\n");
    let w = m.warnings().join("\n");
    assert!(w.contains("link,S=14,W=15:2,: symbolic link"), "{w}");
    assert!(w.contains("link2:2,: symbolic link"), "{w}");
    assert!(w.contains("new/1600000000.M1P1Q3.link3: symbolic link"), "{w}");
    assert!(w.contains("fifo:2,: not a regular file"), "{w}");
    assert!(w.contains("new/1600000001.M1P1Q2.fifo: not a regular file"), "{w}");
    assert!(w.contains("dir:2,: not a regular file"), "{w}");
    assert!(!w.contains("hidden"), "{w}");
    // Left where they were.
    assert!(md
        .join("new")
        .join("1600000000.M1P1Q3.link3")
        .symlink_metadata()
        .is_ok());
    assert_eq!(std::fs::read(&secret).unwrap(), b"root's secret\n");

    // A message swapped for a symlink after the listing is not followed either.
    let name = m.listing().get(0).unwrap().name().to_owned();
    // (It was listed from new/; the planted link goes where poshta will open it.)
    let cur = md.join("new");
    std::fs::remove_file(cur.join(&name)).unwrap();
    std::os::unix::fs::symlink(&secret, cur.join(&name)).unwrap();
    match m.open_message(0) {
        Err(MailboxError::Io { .. }) => {}
        other => panic!("followed a planted link: {other:?}"),
    }
    // ... nor is a FIFO opened (it would block).
    std::fs::remove_file(cur.join(&name)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        cur.join(&name),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(matches!(m.open_message(0), Err(MailboxError::Io { .. })));
}

/// Planted symlinks at the lock file or at cur/ make the open fail; nothing is followed.
#[test]
fn symlinked_lock_or_cur_is_refused() {
    let t = tmp("plant");
    let md = t.join("Maildir");
    put(&md, 1_700_000_000, 1, b"x\n");
    let target = t.join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, md.join(LOCK_FILE)).unwrap();
    assert!(matches!(Maildrop::open(&md), Err(MailboxError::Io { .. })));
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    std::fs::remove_file(md.join(LOCK_FILE)).unwrap();

    let elsewhere = t.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(md.join("cur"), t.join("oldcur")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, md.join("cur")).unwrap();
    assert!(matches!(Maildrop::open(&md), Err(MailboxError::Io { .. })));
    assert!(names(&elsewhere).is_empty());
    // The failures left no lock or registry entry behind.
    std::fs::remove_file(md.join("cur")).unwrap();
    std::fs::rename(t.join("oldcur"), md.join("cur")).unwrap();
    assert_eq!(Maildrop::open(&md).unwrap().len(), 1);
}

/// A missing Maildir (a user with no mail yet) is created and is empty.
#[test]
fn missing_maildir_is_an_empty_maildrop() {
    let t = tmp("empty");
    let m = Maildrop::open(&t.join("Maildir")).unwrap();
    assert!(m.is_empty());
    assert!(t.join("Maildir").join("new").is_dir() && t.join("Maildir").join("cur").is_dir());
}

/// The same unique name in new/ and cur/ (a copy left by a crash): both are listed, the cur/
/// one first with the plain id, the new/ one with the duplicate hash; the move at UPDATE
/// never replaces the cur/ file, so the copy stays in new/ and keeps its id.
#[test]
fn move_never_replaces_a_cur_message() {
    let t = tmp("clash");
    let md = t.join("Maildir");
    poshta::delivery::maildir::create_maildir(&md).unwrap();
    std::fs::write(md.join("cur").join("1700000000.M1P1Q1.h:2,"), b"old\n").unwrap();
    std::fs::write(md.join("new").join("1700000000.M1P1Q1.h"), b"new\n").unwrap();
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(m.len(), 2, "{:?}", m.warnings());
    assert_eq!(read_all(&m, 0), b"old\n");
    assert_eq!(read_all(&m, 1), b"new\n");
    assert_valid_uids(&m);
    let ids = uids(&m);
    assert_eq!(ids[0], "1700000000.M1P1Q1.h");
    assert_eq!(ids[1].len(), 32);
    let r = m.update(&[]).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    drop(m);
    assert_eq!(
        std::fs::read(md.join("cur").join("1700000000.M1P1Q1.h:2,")).unwrap(),
        b"old\n"
    );
    assert_eq!(
        std::fs::read(md.join("new").join("1700000000.M1P1Q1.h")).unwrap(),
        b"new\n"
    );
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(uids(&m), ids);
    // Deleting the cur/ one lets the copy move at last; it then has the plain id.
    m.update(&[0]).unwrap();
    drop(m);
    assert!(names(&md.join("new")).is_empty());
    let m = Maildrop::open(&md).unwrap();
    assert_eq!(uids(&m), vec![ids[0].clone()]);
    assert_eq!(read_all(&m, 0), b"new\n");
}

/// Release-mode measurement (run with `cargo test --release --test mailbox_maildir -- --ignored
/// --nocapture`): 50,000 messages named with S= and W= must list well under 0.5 s, without
/// reading message contents.
#[test]
#[ignore]
fn fifty_thousand_messages_list_fast() {
    const N: u64 = 50_000;
    let t = tmp("big");
    let md = t.join("Maildir");
    poshta::delivery::maildir::create_maildir(&md).unwrap();
    let new = md.join("new");
    let started = std::time::Instant::now();
    for i in 0..N {
        // Pseudo-random times so the sort has work to do.
        let secs = 1_700_000_000 + (i * 7919) % N;
        let name = format!("{secs}.M{}P4242Q{i}.mx.example.org,S=3,W=4", i % 1_000_000);
        std::fs::write(new.join(name), b"ab\n").unwrap();
    }
    println!("created {N} files in {:?}", started.elapsed());

    let started = std::time::Instant::now();
    let m = Maildrop::open(&md).unwrap();
    let first = started.elapsed();
    assert_eq!(m.len() as u64, N);
    let started = std::time::Instant::now();
    m.update(&[]).unwrap();
    let update = started.elapsed();
    drop(m);
    let started = std::time::Instant::now();
    let m = Maildrop::open(&md).unwrap();
    let second = started.elapsed();
    assert_eq!(m.len() as u64, N);
    assert!(m.listing().iter().all(|e| e.size() == 4));
    assert!(m.warnings().is_empty());
    println!(
        "open with {N} in new/: {first:?}; UPDATE moving them to cur/: {update:?}; open with {N} in cur/: {second:?}"
    );
}
