//! `poshta check` and `poshta postconf` run as the built binary on files in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("poshta-config-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn poshta(args: &[&str], cfg: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poshta"))
        .args(args)
        .arg("-c")
        .arg(cfg)
        .env_remove("POSHTA_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_clean_file() {
    let d = TempDir::new("clean");
    let cf = d.write(
        "main.cf",
        "# test\nmyhostname = mx.example.org\nsmtpd_listen = 127.0.0.1:2525\n",
    );
    let o = poshta(&["check"], &cf);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    assert!(!d.0.join("spool").exists(), "check must not create the queue");
}

#[test]
fn check_unknown_key_warns_and_passes() {
    let d = TempDir::new("unknown");
    let cf = d.write("main.cf", "myhostname = mx.example.org\nfrobnicate = yes\n");
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "poshta: {}:2: warning: unknown parameter: frobnicate=yes",
            cf.display()
        )),
        "{err}"
    );
}

#[test]
fn check_bad_value_fails_with_file_and_line() {
    let d = TempDir::new("bad");
    let cf = d.write("main.cf", "myhostname = mx.example.org\n\nmessage_size_limit = lots\n");
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:3: error: message_size_limit", cf.display())),
        "{err}"
    );
}

#[test]
fn check_unusable_directories_and_users_file() {
    let d = TempDir::new("dirs");
    d.write("notadir", "x");
    std::fs::create_dir_all(d.0.join("users")).unwrap();
    let cf = d.write("main.cf", "queue_directory = notadir/spool\n");
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(":1: error: queue_directory:"), "{err}");
    assert!(err.contains("notadir is not a directory"), "{err}");
    assert!(err.contains("error: mailbox_users_file:"), "{err}");
}

#[test]
fn check_loads_the_access_tables_with_file_and_line() {
    let d = TempDir::new("tables");
    let access = d.write("access", "# ok\n127.0.0.4 OK\n127.0.0.0/24 REJECT\nnot-an-address OK\n");
    let senders = d.write("senders", "good.example OK\nbad.example\n");
    let re = d.write("senders.re", "/unclosed( REJECT\n");
    let cf = d.write(
        "main.cf",
        &format!(
            "smtpd_client_restrictions = check_client_access cidr:{}\n\
             smtpd_sender_restrictions = check_sender_access hash:{}, check_sender_access regexp:{}\n",
            access.display(),
            senders.display(),
            re.display()
        ),
    );
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}:4: error:", access.display())), "{err}");
    assert!(err.contains(&format!("{}:2: error:", senders.display())), "{err}");
    assert!(err.contains(&format!("{}:1: error:", re.display())), "{err}");

    // A CIDR entry with host bits set only warns, as Postfix does; an unknown restriction
    // name is an error naming the key and its line.
    std::fs::write(&access, "127.0.0.4/24 OK\n").unwrap();
    std::fs::write(&senders, "good.example OK\n").unwrap();
    std::fs::write(&re, "/^x/ REJECT\n").unwrap();
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("{}:1: warning:", access.display())), "{err}");
    let cf2 = d.write("main2.cf", "\nsmtpd_helo_restrictions = reject_everything_now\n");
    let o = poshta(&["check"], &cf2);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}:2: error:", cf2.display())), "{err}");
    assert!(err.contains("reject_everything_now"), "{err}");
}

#[test]
fn check_reports_bad_sasl_passwd_and_transport_lines() {
    let d = TempDir::new("relaymaps");
    let sasl = d.write(
        "sasl_passwd",
        "# smarthost credentials\n[smtp.provider.example]:587 user:secret\n[smtp.other.example]:587\n",
    );
    let transport = d.write("transport", "lab.lan smtp:[mailhost.lab.lan]:25\nbroken.lan\n");
    let cf = d.write(
        "main.cf",
        &format!(
            "relayhost = [smtp.provider.example]:587\nsmtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = hash:{}\ntransport_maps = texthash:{}\n",
            sasl.display(),
            transport.display()
        ),
    );
    let o = poshta(&["check"], &cf);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}:3: error:", sasl.display())), "{err}");
    assert!(err.contains(&format!("{}:2: error:", transport.display())), "{err}");
    assert!(!err.contains("secret"), "a password must never be printed: {err}");
}

#[test]
fn check_missing_file_uses_defaults() {
    let d = TempDir::new("missing");
    let o = poshta(&["check"], &d.0.join("main.cf"));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("warning: file not found"), "{err}");
}

#[test]
fn postconf_n_shows_only_set_values_unexpanded() {
    let d = TempDir::new("pn");
    let cf = d.write(
        "main.cf",
        "myorigin = $mydomain\nmydomain = example.org\nmessage_size_limit = 1000\nhome_mailbox =\n",
    );
    let o = poshta(&["postconf", "-n"], &cf);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o.stdout),
        "home_mailbox =\nmessage_size_limit = 1000\nmydomain = example.org\nmyorigin = $mydomain\n"
    );
    let o = poshta(&["postconf", "-n", "-x", "myorigin"], &cf);
    assert_eq!(text(&o.stdout), "myorigin = example.org\n");
}

#[test]
fn postconf_defaults_and_named_keys() {
    let d = TempDir::new("pd");
    let cf = d.write("main.cf", "message_size_limit = 2048\n");
    let o = poshta(&["postconf", "-d", "message_size_limit", "mydestination"], &cf);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o.stdout),
        "message_size_limit = 10240000\nmydestination = $myhostname, localhost.$mydomain, localhost\n"
    );
    let o = poshta(&["postconf", "message_size_limit"], &cf);
    assert_eq!(text(&o.stdout), "message_size_limit = 2048\n");

    let o = poshta(&["postconf", "-d", "myhostname"], &cf);
    let out = text(&o.stdout);
    assert!(
        out.starts_with("myhostname = ") && out.ends_with('\n') && out.len() > "myhostname = \n".len(),
        "{out}"
    );

    let o = poshta(&["postconf", "no_such_key", "message_size_limit"], &cf);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stderr), "postconf: warning: no_such_key: unknown parameter\n");
    assert_eq!(text(&o.stdout), "message_size_limit = 2048\n");
}

#[test]
fn postconf_all_is_sorted_and_complete() {
    let d = TempDir::new("pall");
    let cf = d.write("main.cf", "zz_custom = 1\nmydestination = $zz_custom.test\n");
    let o = poshta(&["postconf"], &cf);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    let names: Vec<&str> = out.lines().map(|l| l.split(" =").next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for k in [
        "config_directory",
        "message_size_limit",
        "smtpd_listen",
        "queue_directory",
        "zz_custom",
    ] {
        assert!(names.contains(&k), "{k} missing");
    }
    assert!(out.contains("mydestination = $zz_custom.test\n"));
    assert!(out.contains(&format!("config_directory = {}\n", d.0.display())));
}

/// The privileged helper reads main.cf only when the daemon first asks it something
/// (docs/decisions.md, "The helper reads its configuration at its first request"): with a
/// main.cf that has errors it keeps waiting, and reports them when its socket wakes it
/// (here: end of file, the daemon gone) instead of at start.
#[test]
fn the_delivery_helper_reads_main_cf_at_its_first_request() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    let t = TempDir::new("helper-lazy");
    let cfg = t.write("main.cf", "message_size_limit = lots\n");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_poshta"))
        .args(["delivery-helper", "-c"])
        .arg(&cfg)
        .env_remove("POSHTA_CONFIG")
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let waiting = child.try_wait().unwrap().is_none();
    drop(ours);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the helper did not end at end of file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(waiting, "the helper read main.cf at start: {err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("configuration errors"), "{err}");
}
