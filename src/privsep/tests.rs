use super::*;
use crate::delivery::mbox::{dotlock_path, MboxReader};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

#[test]
fn frames_round_trip_and_are_bounded() {
    let mut buf = Vec::new();
    write_frame(&mut buf, &Request::OpenMbox { user: "nick".into() }).unwrap();
    let back: Request = read_frame(&mut &buf[..]).unwrap();
    assert_eq!(back, Request::OpenMbox { user: "nick".into() });
    // Truncated, empty, oversized and garbage frames are errors, never panics.
    assert!(read_frame::<Request>(&mut &buf[..buf.len() - 1]).is_err());
    assert_eq!(read_frame::<Request>(&mut &b""[..]).unwrap_err(), EOF);
    let huge = ((PRIVSEP_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(read_frame::<Request>(&mut &huge[..]).is_err());
    assert!(read_frame::<Request>(&mut &[0, 0, 0, 0][..]).is_err());
    assert!(read_frame::<Request>(&mut &[0, 0, 0, 2, 0xff, 0xff][..]).is_err());
    assert!(write_frame(&mut Vec::new(), &Request::Data(vec![0; PRIVSEP_FRAME_BYTES_MAX])).is_err());
}

struct Fixture {
    dir: PathBuf,
    user: String,
    client: Arc<Client>,
    thread: Option<std::thread::JoinHandle<i32>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Closing our end ends the helper.
        *self.client.sock.lock().unwrap() = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A helper on a thread, running as whoever runs the tests, for the current user.
fn fixture(tag: &str, aliases: &str) -> Option<Fixture> {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
    if !crate::policy::router::valid_system_name(&me.name) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("poshta-privsep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    std::fs::write(dir.join("aliases"), aliases).unwrap();
    let cf = dir.join("main.cf");
    std::fs::write(
        &cf,
        format!(
            "myhostname = mx.example.org\nmydestination = example.org\nmail_spool_directory = {0}/spool\n\
             alias_maps = {0}/aliases\nqueue_directory = {0}/q\nvirtual_mailbox_base = {0}/m\n",
            dir.display()
        ),
    )
    .unwrap();
    let settings = crate::config::load(&cf).unwrap().settings;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let st = helper::State::new(settings);
    let thread = std::thread::spawn(move || helper::serve(theirs, st, None));
    Some(Fixture {
        dir,
        user: me.name,
        client: Arc::new(Client::new(ours)),
        thread: Some(thread),
    })
}

fn meta(seq: u64) -> Meta {
    Meta {
        sender: "a@example.org".into(),
        recipient: "me@example.org".into(),
        time_secs: 1_700_000_000,
        time_micros: 0,
        uidl: format!("1700000000.M0P1Q{seq}"),
        seq,
        size: 0,
    }
}

#[test]
fn mailbox_delivery_and_pop3_open_close() {
    let Some(f) = fixture("mbox", "") else { return };
    let work = Work::Mailbox { user: f.user.clone() };
    let r = f
        .client
        .deliver(&work, &meta(1), &mut &b"Subject: one\n\nFrom here\n"[..]);
    assert!(r.as_ref().is_ok_and(|d| d.contains("delivered to mailbox")), "{r:?}");
    let path = f.dir.join("spool").join(&f.user);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("From a@example.org "), "{text}");
    assert!(text.contains("Delivered-To: me@example.org\nX-UIDL: 1700000000.M0P1Q1\nSubject: one\n\n>From here\n"));

    // The POP3 side: the helper opens and locks the mailbox and passes the descriptor.
    let (mut file, handle) = smol::block_on(f.client.open_mbox_async(&f.user)).unwrap();
    assert!(dotlock_path(&path).exists(), "the helper holds the dot-lock");
    let mut got = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut got).unwrap();
    assert_eq!(got, text);
    // While it is open, a delivery to it defers at once, and a second open is refused.
    let e = f
        .client
        .deliver(&work, &meta(2), &mut &b"Subject: two\n\nx\n"[..])
        .unwrap_err();
    assert!(!e.permanent && e.reason.contains("locked"), "{e}");
    assert!(f.client.open_mbox(&f.user).unwrap_err().contains("locked"));
    smol::block_on(f.client.close_mbox_async(handle)).unwrap();
    assert!(!dotlock_path(&path).exists());
    assert!(f.client.close_mbox(handle).is_err(), "a handle closes once");
    f.client
        .deliver(&work, &meta(3), &mut &b"Subject: three\n\nx\n"[..])
        .unwrap();
    let r = MboxReader::open(&path).unwrap();
    assert_eq!(r.scan().unwrap().len(), 2);
}

#[test]
fn the_helper_refuses_what_root_did_not_configure() {
    let Some(f) = fixture("refuse", "staff: |/bin/true\nlog: /tmp/poshta-privsep-never\n") else {
        return;
    };
    // Not an alias, or a target the alias does not have: refused (nothing runs).
    for work in [
        Work::AliasCommand {
            alias: "nosuch".into(),
            command: "/bin/true".into(),
        },
        Work::AliasCommand {
            alias: "staff".into(),
            command: "touch /tmp/poshta-privsep-pwned".into(),
        },
        Work::AliasFile {
            alias: "staff".into(),
            path: "/etc/passwd".into(),
        },
    ] {
        let e = f.client.deliver(&work, &meta(1), &mut &b"x\n"[..]).unwrap_err();
        assert!(e.reason.contains("alias"), "{e}");
    }
    assert!(!Path::new("/tmp/poshta-privsep-pwned").exists());
    // Unknown users, bad names and header injection are refused too; the helper keeps
    // serving after each.
    for user in ["no-such-user-xyz", "../etc", "", "a/b"] {
        let e = f
            .client
            .deliver(&Work::Mailbox { user: user.into() }, &meta(1), &mut &b"x\n"[..])
            .unwrap_err();
        assert!(e.permanent, "{user}: {e}");
    }
    let mut bad = meta(1);
    bad.recipient = "x\nBcc: y".into();
    assert!(f
        .client
        .deliver(&Work::Mailbox { user: f.user.clone() }, &bad, &mut &b"x\n"[..])
        .is_err());
    assert!(f.client.open_mbox("no-such-user-xyz").is_err());
    f.client
        .deliver(&Work::Mailbox { user: f.user.clone() }, &meta(2), &mut &b"ok\n"[..])
        .unwrap();
}

#[test]
fn a_body_read_error_aborts_without_a_partial_message() {
    let Some(f) = fixture("abort", "") else { return };
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk went away"));
            }
            self.0 -= 1;
            let n = buf.len().min(1000);
            buf[..n].fill(b'x');
            Ok(n)
        }
    }
    let work = Work::Mailbox { user: f.user.clone() };
    let e = f.client.deliver(&work, &meta(1), &mut Failing(3)).unwrap_err();
    assert!(!e.permanent && e.reason.contains("disk went away"), "{e}");
    let path = f.dir.join("spool").join(&f.user);
    assert_eq!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0), 0);
    // The protocol is still in step.
    f.client.deliver(&work, &meta(2), &mut &b"ok\n"[..]).unwrap();
}

#[test]
fn open_home_refusals_keep_the_helper_serving() {
    let Some(f) = fixture("home", "") else { return };
    // Unknown users, root, and a configuration without home_mailbox get no agent.
    let e = f.client.open_home("no-such-user-poshta-x").unwrap_err();
    assert!(e.contains("unknown user"), "{e}");
    let e = f.client.open_home(&f.user).unwrap_err();
    let root = nix::unistd::geteuid().is_root();
    assert!(
        e.contains(if root { "as root" } else { "home_mailbox is not set" }),
        "{e}"
    );
    let e = f.client.open_home("root").unwrap_err();
    assert!(e.contains("as root"), "{e}");
    // The helper still answers.
    f.client.reload().unwrap();
}
