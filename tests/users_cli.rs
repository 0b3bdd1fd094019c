//! `poshta user` operations end to end on real files (through the library: the config
//! loader is another module; these call the functions `poshta user` runs after it).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use poshta::auth::users::{self, Users};
use poshta::cli::user;
use poshta::delivery::maildir::{self, MaildirDelivery};
use poshta::policy::{RcptClass, Router};

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        let p = std::env::temp_dir().join(format!("poshta-it-{tag}-{}", std::process::id()));
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

/// Add a user, log in, change the password, route and deliver to them, then remove them:
/// the Maildir and its mail stay.
#[test]
fn add_passwd_route_deliver_del() {
    let t = TmpDir::new("life");
    let users_file = t.0.join("etc").join("users");
    std::fs::create_dir_all(users_file.parent().unwrap()).unwrap();
    let base = t.0.join("mail");

    user::add(&users_file, &base, "alice", "first pw").unwrap();
    let e = user::add(&users_file, &base, "alice", "other").unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    assert!(user::add(&users_file, &base, "Bob", "pw")
        .unwrap_err()
        .contains("lowercase"));
    assert!(user::add(&users_file, &base, "bob", "").is_err());

    for sub in ["", "cur", "new", "tmp"] {
        let m = std::fs::metadata(base.join("alice").join(sub)).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o777, 0o700, "{sub}");
    }
    let m = std::fs::metadata(&users_file).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);

    let u = Users::load(&users_file).unwrap();
    assert!(u.verify("alice", "first pw"));
    assert!(!u.verify("alice", "first pw "));

    user::passwd(&users_file, "alice", "second pw").unwrap();
    assert!(user::passwd(&users_file, "nobody", "x").is_err());
    let u = Users::load(&users_file).unwrap();
    assert!(u.verify("alice", "second pw") && !u.verify("alice", "first pw"));

    let router = Router::new(vec!["example.org".into()], "+".into(), u);
    let RcptClass::Local { user: name } = router.classify("Alice+lists@Example.org.") else {
        panic!("not local");
    };
    let md = maildir::virtual_maildir(&base, &name).unwrap();
    let body = b"Subject: t\n\nbody\n";
    let d = MaildirDelivery {
        maildir: &md,
        hostname: "mx.example.org",
        prepend: b"Delivered-To: alice@example.org\n",
        body_size: body.len() as u64,
        now_secs: 1,
        now_micros: 2,
        seq: 3,
    };
    let delivered = maildir::deliver(&d, &mut &body[..]).unwrap();

    assert_eq!(users::list(&users_file).unwrap(), vec!["alice"]);
    user::del(&users_file, "alice").unwrap();
    assert!(user::del(&users_file, "alice").is_err());
    assert!(users::list(&users_file).unwrap().is_empty());
    assert!(delivered.exists(), "deleting a user keeps the mail");
    let router = Router::new(
        vec!["example.org".into()],
        "+".into(),
        Users::load(&users_file).unwrap(),
    );
    assert_eq!(router.classify("alice@example.org"), RcptClass::UnknownLocal);
}

/// A users file edited by hand with a mistake is never rewritten by `poshta user`.
#[test]
fn broken_file_is_left_alone() {
    let t = TmpDir::new("broken");
    let users_file = t.0.join("users");
    std::fs::write(&users_file, "# mine\nalice:not-a-hash\n").unwrap();
    let e = user::add(&users_file, &t.0.join("mail"), "bob", "pw").unwrap_err();
    assert!(e.contains(":2:"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&users_file).unwrap(),
        "# mine\nalice:not-a-hash\n"
    );
    assert!(!t.0.join("mail").exists());
}
