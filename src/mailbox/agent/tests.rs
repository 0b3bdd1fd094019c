//! The maildrop agent protocol: a real agent (on a thread, as this user) serving real
//! Maildirs and mboxes, and fake agents giving hostile answers to the daemon's side.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::limits::PRIVSEP_FRAME_BYTES_MAX;
use crate::testutil::TempDir;

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Removed when the test ends, pass or fail.
fn tmp(tag: &str) -> TempDir {
    TempDir::new(&format!("poshta-agent-{tag}-{}", std::process::id()))
}

/// A real agent on a thread, with the job already written (as the helper does).
fn agent(place: Place, uid: u32) -> (UnixStream, JoinHandle<i32>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut w = &ours;
    write_frame(
        &mut w,
        &Job {
            place,
            uid,
            idle_secs: 30,
        },
    )
    .unwrap();
    (ours, std::thread::spawn(move || serve(theirs)))
}

fn open(place: Place) -> (Result<RemoteDrop, MailboxError>, JoinHandle<i32>) {
    let (ours, t) = agent(place.clone(), me());
    (
        RemoteDrop::connect_with(ours, Path::new("/test"), Duration::from_secs(20)),
        t,
    )
}

/// The guard and the Maildir in it; keep the guard alive for the whole test.
fn maildir_with(tag: &str, msgs: &[&[u8]]) -> (TempDir, PathBuf) {
    let dir = tmp(tag);
    let md = dir.join("Maildir");
    crate::delivery::maildir::create_maildir(&md).unwrap();
    for (i, m) in msgs.iter().enumerate() {
        std::fs::write(md.join("new").join(format!("{}.M{i}P1Q{i}.host", 1_700_000_000 + i)), m).unwrap();
    }
    (dir, md)
}

fn read_all(mb: &Mailbox, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    mb.open_message(i).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn listing(mb: &Mailbox) -> Vec<(u64, String)> {
    mb.listing().iter().map(|e| (e.size(), e.uid().to_string())).collect()
}

#[test]
fn agent_serves_a_maildir_exactly_like_the_local_backend() {
    let big: Vec<u8> = (0..3 * CHUNK_BYTES + 17)
        .map(|i| if i % 77 == 76 { b'\n' } else { b'a' + (i % 26) as u8 })
        .collect();
    let (_dir, md) = maildir_with("md", &[b"Subject: one\n\nx\n", &big, b"Subject: three\n\nz\n"]);
    // The local backend's view first (dropped without UPDATE: nothing moves).
    let local = Mailbox::open_maildir(&md).unwrap();
    let want = listing(&local);
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| read_all(&local, i)).collect();
    drop(local);
    let (remote, t) = open(Place::Maildir(md.clone()));
    let mb = Mailbox::Agent(remote.unwrap());
    assert_eq!(listing(&mb), want);
    assert_eq!(bodies[1], big);
    // Out of order, twice, and a message left half-read: each read is whole.
    for i in [1, 0, 2, 1] {
        assert_eq!(read_all(&mb, i), bodies[i], "message {i}");
    }
    let mut half = mb.open_message(1).unwrap();
    let mut buf = vec![0u8; 1000];
    half.read_exact(&mut buf).unwrap();
    assert_eq!(read_all(&mb, 2), bodies[2]);
    // The stale reader may not steal the next message's data: it ends in an error.
    let mut rest = Vec::new();
    assert!(half.read_to_end(&mut rest).is_err());
    assert!(rest.len() < CHUNK_BYTES);
    assert!(matches!(mb.open_message(3), Err(MailboxError::Gone)));
    // RFC 1939 §6: UPDATE removes the marked ones, then the agent ends.
    let r = mb.update(&[0, 2]).unwrap();
    assert_eq!((r.deleted, r.already_gone, r.failed.len()), (2, 0, 0));
    assert_eq!(t.join().unwrap(), 0);
    // The survivor moved from new/ to cur/ in the agent (issue 5).
    assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 0);
    let cur: Vec<String> = std::fs::read_dir(md.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cur, vec![format!("{}:2,", want[1].1)]);
    drop(mb);
    // The lock went with the agent: a new session opens it at once.
    let (again, t) = open(Place::Maildir(md.clone()));
    let again = Mailbox::Agent(again.unwrap());
    assert_eq!(listing(&again), vec![want[1].clone()]);
    crate::mailbox::system::drop_blocking(again);
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn agent_serves_an_mbox_and_cuts_deleted_messages() {
    let dir = tmp("mbox");
    let path = dir.join("Mailbox");
    std::fs::write(
        &path,
        b"From a@x Sat Nov 28 01:59:01 2026\nSubject: one\n\n>From quoted\n\nFrom b@x Sat Nov 28 01:59:02 2026\nSubject: two\n\ny\n\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (remote, t) = open(Place::Mbox(path.clone()));
    let mb = Mailbox::Agent(remote.unwrap());
    assert_eq!(mb.len(), 2);
    assert_eq!(read_all(&mb, 0), b"Subject: one\n\nFrom quoted\n");
    let uid1 = mb.listing().get(1).unwrap().uid().to_string();
    // While the agent holds the mailbox, a second one is refused: RFC 1939 §8.
    let (second, t2) = open(Place::Mbox(path.clone()));
    assert!(matches!(second, Err(MailboxError::InUse)), "{second:?}");
    assert_eq!(t2.join().unwrap(), 0);
    mb.update(&[0]).unwrap();
    assert_eq!(t.join().unwrap(), 0);
    drop(mb);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("From b@x") && !text.contains("one"), "{text}");
    let (remote, t) = open(Place::Mbox(path.clone()));
    let mb = Mailbox::Agent(remote.unwrap());
    assert_eq!(
        mb.listing().get(0).unwrap().uid(),
        uid1,
        "unique ids survive the rewrite"
    );
    drop(mb); // on a thread that may not block: the socket just closes
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn second_maildir_session_is_in_use_and_a_dropped_one_deletes_nothing() {
    let (_dir, md) = maildir_with("inuse", &[b"Subject: a\n\n1\n", b"Subject: b\n\n2\n"]);
    let (first, t1) = open(Place::Maildir(md.clone()));
    let first = first.unwrap();
    let (second, t2) = open(Place::Maildir(md.clone()));
    assert!(matches!(second, Err(MailboxError::InUse)), "{second:?}");
    assert_eq!(t2.join().unwrap(), 0);
    // Marks sent, then the connection drops without Commit.
    {
        let mut c = lock(&first.conn);
        c.send(&Ask::Mark(vec![0, 1])).unwrap();
    }
    drop(first);
    assert_eq!(t1.join().unwrap(), 0);
    // Nothing deleted, nothing moved: both still in new/.
    assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 0);
}

#[test]
fn missing_maildir_is_empty_and_a_foreign_one_is_refused() {
    let dir = tmp("missing");
    let md = dir.join("Maildir");
    let (remote, t) = open(Place::Maildir(md.clone()));
    assert!(remote.unwrap().listing().is_empty());
    assert_eq!(t.join().unwrap(), 0);
    assert!(!md.exists(), "nothing created in a home");
    crate::delivery::maildir::create_maildir(&md).unwrap();
    let (ours, t) = agent(Place::Maildir(md.clone()), me().wrapping_add(1));
    match RemoteDrop::connect_with(ours, &md, Duration::from_secs(20)) {
        Err(e @ MailboxError::Io { .. }) => assert!(e.to_string().contains("belongs to uid"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.join().unwrap(), 0);
    // An mbox that is a symbolic link is refused by the agent too.
    std::fs::write(dir.join("real"), b"").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let (r, t) = open(Place::Mbox(dir.join("link")));
    assert!(r.unwrap_err().to_string().contains("symbolic link"));
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn a_commit_with_an_index_out_of_range_deletes_nothing() {
    let (_dir, md) = maildir_with("badmark", &[b"Subject: a\n\n1\n"]);
    let (remote, t) = open(Place::Maildir(md.clone()));
    let remote = remote.unwrap();
    let answer = {
        let mut c = lock(&remote.conn);
        c.send(&Ask::Mark(vec![0, 5])).unwrap();
        c.call(&Ask::Commit).unwrap()
    };
    assert!(
        matches!(&answer, Answer::Failed(w) if w.contains("index 5")),
        "{answer:?}"
    );
    assert_eq!(t.join().unwrap(), 0);
    // Nothing deleted, nothing moved.
    assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 0);
}

/// RFC 1939 §6: QUIT with nothing deleted still commits: the agent moves the listed messages
/// from new/ to cur/ (issue 5); the ids stay the same.
#[test]
fn a_commit_with_no_marks_moves_survivors_to_cur() {
    let (_dir, md) = maildir_with("nomarks", &[b"Subject: a\n\n1\n", b"Subject: b\n\n2\n"]);
    let (remote, t) = open(Place::Maildir(md.clone()));
    let mb = Mailbox::Agent(remote.unwrap());
    let want = listing(&mb);
    let r = mb.update(&[]).unwrap();
    assert_eq!((r.deleted, r.already_gone, r.failed.len()), (0, 0, 0));
    assert_eq!(t.join().unwrap(), 0);
    drop(mb);
    assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 0);
    let mut cur: Vec<String> = std::fs::read_dir(md.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    cur.sort();
    assert_eq!(cur, want.iter().map(|(_, u)| format!("{u}:2,")).collect::<Vec<_>>());
    let (again, t) = open(Place::Maildir(md.clone()));
    let again = Mailbox::Agent(again.unwrap());
    assert_eq!(listing(&again), want);
    crate::mailbox::system::drop_blocking(again);
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn agent_exits_when_the_daemon_is_idle_too_long() {
    let (_dir, md) = maildir_with("idle", &[]);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut w = &ours;
    let job = Job {
        place: Place::Maildir(md.clone()),
        uid: me(),
        idle_secs: 1,
    };
    write_frame(&mut w, &job).unwrap();
    let t = std::thread::spawn(move || serve(theirs));
    let started = Instant::now();
    assert_eq!(t.join().unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(ours);
}

// ------------------------------------------------------------------ frames and bounds

fn frame(a: &Answer) -> Vec<u8> {
    let mut v = Vec::new();
    write_frame(&mut v, a).unwrap();
    v
}

#[test]
fn the_largest_frames_fit_the_frame_bound() {
    let listing = Answer::Listing(
        (0..ENTRIES_PER_FRAME)
            .map(|_| Listed {
                size: u64::MAX,
                uid: "~".repeat(UID_BYTES_MAX),
            })
            .collect(),
    );
    let chunk = Answer::Chunk {
        data: vec![0xff; CHUNK_BYTES],
        last: false,
    };
    let committed = Answer::Committed {
        deleted: u32::MAX,
        already_gone: u32::MAX,
        failed: vec!["x".repeat(TEXT_BYTES_MAX); MAILDROP_WARNINGS_MAX + 1],
    };
    for a in [listing, chunk, committed, Answer::Warning("w".repeat(TEXT_BYTES_MAX))] {
        let f = frame(&a);
        assert!(f.len() - 4 <= PRIVSEP_FRAME_BYTES_MAX, "{} bytes", f.len());
        let back: Answer = read_frame(&mut &f[..]).unwrap();
        assert_eq!(back, a);
    }
    let mut v = Vec::new();
    write_frame(&mut v, &Ask::Mark(vec![u32::MAX; MARKS_PER_FRAME])).unwrap();
    assert!(v.len() - 4 <= PRIVSEP_FRAME_BYTES_MAX);
    assert_eq!(
        read_frame::<Ask>(&mut &v[..]).unwrap(),
        Ask::Mark(vec![u32::MAX; MARKS_PER_FRAME])
    );
}

/// A fake agent: writes `first`, then answers each request (Marks get none) with the next of
/// `replies`; then holds the socket until the daemon closes it.
fn fake(first: Vec<Vec<u8>>, replies: Vec<Vec<u8>>) -> (UnixStream, JoinHandle<Vec<Ask>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = &theirs;
        for f in first {
            if s.write_all(&f).is_err() {
                return Vec::new();
            }
        }
        let mut replies = replies.into_iter();
        let mut asked = Vec::new();
        while let Ok(a) = read_frame::<Ask>(&mut s) {
            let mark = matches!(a, Ask::Mark(_));
            asked.push(a);
            if mark {
                continue;
            }
            match replies.next() {
                Some(r) => {
                    if s.write_all(&r).is_err() {
                        break;
                    }
                }
                None => {
                    // Silent: the daemon's time limit must end the wait.
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                    break;
                }
            }
        }
        asked
    });
    (ours, t)
}

fn connect(sock: UnixStream) -> Result<RemoteDrop, MailboxError> {
    RemoteDrop::connect_with(sock, Path::new("/fake"), Duration::from_millis(500))
}

fn ready(messages: u32, warnings: u32) -> Vec<u8> {
    frame(&Answer::Ready { messages, warnings })
}

fn entries(uids: &[&str], size: u64) -> Vec<u8> {
    frame(&Answer::Listing(
        uids.iter()
            .map(|u| Listed {
                size,
                uid: u.to_string(),
            })
            .collect(),
    ))
}

fn refused_listing(first: Vec<Vec<u8>>, why: &str) {
    let (sock, t) = fake(first, vec![]);
    let started = Instant::now();
    match connect(sock) {
        Err(e @ MailboxError::Io { .. }) => assert!(e.to_string().contains(why), "{e} (wanted {why:?})"),
        other => panic!("{other:?} (wanted {why:?})"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The daemon hung up: the fake sees end of file.
    t.join().unwrap();
}

#[test]
fn hostile_listings_are_refused() {
    refused_listing(vec![ready(MAILDROP_MESSAGES_MAX as u32 + 1, 0)], "announces");
    refused_listing(vec![ready(u32::MAX, 0)], "announces");
    refused_listing(vec![ready(0, MAILDROP_WARNINGS_MAX as u32 + 1)], "announces");
    refused_listing(vec![ready(2, 0), entries(&["a", "b", "c"], 1)], "listing frame of 3");
    refused_listing(vec![ready(2, 0), entries(&[], 1)], "listing frame of 0");
    refused_listing(vec![ready(1, 0), entries(&["has space"], 1)], "invalid unique id");
    refused_listing(vec![ready(1, 0), entries(&[""], 1)], "invalid unique id");
    refused_listing(vec![ready(1, 0), entries(&[&"x".repeat(71)], 1)], "invalid unique id");
    refused_listing(vec![ready(1, 0), entries(&["caf\u{e9}"], 1)], "invalid unique id");
    refused_listing(
        vec![ready(2, 0), entries(&["same"], 1), entries(&["same"], 1)],
        "listed twice",
    );
    refused_listing(
        vec![ready(1, 1), entries(&["a"], 1), frame(&Answer::Gone)],
        "among warnings",
    );
    refused_listing(vec![frame(&Answer::Closed)], "unexpected Closed before Ready");
    refused_listing(
        vec![ready(1, 0), frame(&Answer::Closed)],
        "unexpected Closed in the listing",
    );
    // Silence: the time limit, not a hang.
    refused_listing(vec![], "maildrop agent");
    refused_listing(vec![ready(3, 0), entries(&["a"], 1)], "maildrop agent");
    // A frame length over the bound is refused before anything is allocated.
    refused_listing(vec![u32::MAX.to_be_bytes().to_vec()], "bad frame length");
    refused_listing(vec![0u32.to_be_bytes().to_vec()], "bad frame length");
    // An undecodable frame.
    refused_listing(vec![vec![0, 0, 0, 3, 0xff, 0xff, 0xff]], "bad frame");
    // The refusal text is cut and escaped for the log.
    let long = format!("evil\n{}", "y".repeat(10_000));
    let (sock, t) = fake(vec![frame(&Answer::Failed(long))], vec![]);
    let e = connect(sock).unwrap_err().to_string();
    assert!(e.contains("evil\\n") && e.len() < TEXT_BYTES_MAX + 100, "{e}");
    t.join().unwrap();
    let (sock, t) = fake(vec![frame(&Answer::InUse)], vec![]);
    assert!(matches!(connect(sock), Err(MailboxError::InUse)));
    t.join().unwrap();
}

fn chunk(data: &[u8], last: bool) -> Vec<u8> {
    frame(&Answer::Chunk {
        data: data.to_vec(),
        last,
    })
}

/// A listed message of `size` bytes, read through `replies`: the result of reading it whole.
fn read_through(size: u64, replies: Vec<Vec<u8>>) -> (Result<Vec<u8>, String>, Vec<Ask>) {
    let (sock, t) = fake(vec![ready(1, 0), entries(&["m1"], size)], replies);
    let mb = Mailbox::Agent(connect(sock).unwrap());
    let r = mb.open_message(0).map_err(|e| e.to_string()).and_then(|mut m| {
        let mut v = Vec::new();
        m.read_to_end(&mut v).map(|_| v).map_err(|e| e.to_string())
    });
    drop(mb);
    (r, t.join().unwrap())
}

#[test]
fn hostile_message_data_is_bounded() {
    // Honest: two chunks, then the last.
    let (r, asked) = read_through(10, vec![chunk(b"abcd", false), chunk(b"efg", false), chunk(b"", true)]);
    assert_eq!(r.unwrap(), b"abcdefg");
    assert_eq!(asked, vec![Ask::Open { index: 0 }, Ask::Next, Ask::Next]);
    // More than the listed size.
    let (r, _) = read_through(5, vec![chunk(b"abcd", false), chunk(b"ef", true)]);
    assert!(r.unwrap_err().contains("listed size"));
    let (r, _) = read_through(3, vec![chunk(b"abcd", true)]);
    assert!(r.unwrap_err().contains("listed size"));
    // Endless empty chunks: refused at the first.
    let (r, asked) = read_through(10, vec![chunk(b"a", false), chunk(b"", false), chunk(b"", false)]);
    assert!(r.unwrap_err().contains("empty chunk"));
    assert_eq!(asked.len(), 2, "{asked:?}");
    // Endless small chunks stop at the listed size.
    let many: Vec<Vec<u8>> = (0..100).map(|_| chunk(b"x", false)).collect();
    let (r, asked) = read_through(10, many);
    assert!(r.unwrap_err().contains("listed size"));
    assert_eq!(asked.len(), 11);
    // The wrong answer, a failure, silence.
    let (r, _) = read_through(10, vec![frame(&Answer::Closed)]);
    assert!(r.unwrap_err().contains("unexpected Closed"));
    let (r, _) = read_through(10, vec![frame(&Answer::Gone)]);
    assert!(r.unwrap_err().contains("no longer exists"));
    let (r, _) = read_through(10, vec![chunk(b"ab", false), frame(&Answer::Failed("disk".into()))]);
    assert!(r.unwrap_err().contains("disk"));
    let (r, _) = read_through(10, vec![chunk(b"ab", false)]);
    assert!(r.is_err());
}

#[test]
fn after_a_violation_the_connection_is_broken() {
    let (sock, t) = fake(
        vec![ready(2, 0), entries(&["m1", "m2"], 3)],
        vec![chunk(b"toolong", true), chunk(b"ok", true)],
    );
    let mb = Mailbox::Agent(connect(sock).unwrap());
    assert!(mb.open_message(0).is_err());
    // Nothing more is asked of that agent; deletions fail (nothing deleted).
    assert!(mb.open_message(1).is_err());
    assert!(mb.update(&[1]).is_err());
    drop(mb);
    assert_eq!(t.join().unwrap(), vec![Ask::Open { index: 0 }]);
}

#[test]
fn hostile_commit_answers() {
    let run = |reply: Answer| {
        let (sock, t) = fake(vec![ready(2, 0), entries(&["m1", "m2"], 3)], vec![frame(&reply)]);
        let mb = Mailbox::Agent(connect(sock).unwrap());
        let r = mb.update(&[0, 1]);
        drop(mb);
        (r, t.join().unwrap())
    };
    let (r, asked) = run(Answer::Committed {
        deleted: 2,
        already_gone: 0,
        failed: vec![],
    });
    assert_eq!(r.unwrap().deleted, 2);
    assert_eq!(asked, vec![Ask::Mark(vec![0, 1]), Ask::Commit]);
    let (r, _) = run(Answer::Committed {
        deleted: u32::MAX,
        already_gone: u32::MAX,
        failed: vec![],
    });
    assert!(r.unwrap_err().to_string().contains("more deletions"));
    let (r, _) = run(Answer::Chunk {
        data: vec![],
        last: true,
    });
    assert!(r.unwrap_err().to_string().contains("unexpected Chunk"));
    // Marks beyond the listing never reach the agent.
    let (sock, t) = fake(vec![ready(1, 0), entries(&["m1"], 3)], vec![]);
    let mb = Mailbox::Agent(connect(sock).unwrap());
    assert!(matches!(mb.update(&[1]), Err(MailboxError::Gone)));
    drop(mb);
    assert!(t.join().unwrap().is_empty());
}

#[test]
fn many_marks_go_in_bounded_frames() {
    let n = MARKS_PER_FRAME * 2 + 3;
    let uids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let mut first = vec![ready(n as u32, 0)];
    for part in uids.chunks(ENTRIES_PER_FRAME) {
        let refs: Vec<&str> = part.iter().map(String::as_str).collect();
        first.push(entries(&refs, 1));
    }
    let reply = frame(&Answer::Committed {
        deleted: n as u32,
        already_gone: 0,
        failed: vec![],
    });
    let (sock, t) = fake(first, vec![reply]);
    let mb = Mailbox::Agent(connect(sock).unwrap());
    assert_eq!(mb.len(), n);
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(mb.update(&all).unwrap().deleted, n);
    drop(mb);
    let asked = t.join().unwrap();
    let sizes: Vec<usize> = asked
        .iter()
        .filter_map(|a| match a {
            Ask::Mark(v) => Some(v.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![MARKS_PER_FRAME, MARKS_PER_FRAME, 3]);
    assert_eq!(asked.last(), Some(&Ask::Commit));
}
