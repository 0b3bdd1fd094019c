//! `poshta init` as the built binary in a temp dir: what it creates, with which modes, a
//! certificate that a TLS client accepts for the host name, and a second run that changes
//! nothing.
//!
//! As root the defaults are system paths (/var/spool/poshta, ...), which a test must not
//! touch: then the binary runs as `nobody` (uid 65534), which gives the first-run layout
//! beside main.cf, the same as for a normal user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("poshta-init-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn poshta(args: &[&str], cfg: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_poshta"));
    c.args(args).arg("-c").arg(cfg).env_remove("POSHTA_CONFIG");
    if is_root() {
        c.uid(NOBODY).gid(NOBODY);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file and directory under `dir` with its size, mode and mtime.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, i64, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, m.len(), m.mode(), m.mtime(), m.mtime_nsec()));
        }
        assert!(out.len() < 1000);
    }
    out.sort();
    out
}

/// `name = value` from main.cf.
fn setting(cf: &str, name: &str) -> String {
    cf.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("{name} not in main.cf"))
        .to_string()
}

fn read_cert(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap()
}

/// Verify `cert` as a TLS client would for `name`, trusting the certificate itself.
fn verify(cert: &CertificateDer<'static>, name: &str, at: UnixTime) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    v.verify_server_cert(cert, &[], &ServerName::try_from(name.to_string()).unwrap(), &[], at)
        .map(|_| ())
}

#[test]
fn init_creates_a_working_setup_and_a_second_run_changes_nothing() {
    let d = TempDir::new("fresh");
    let cf = d.0.join("etc/main.cf");
    let o = poshta(&["init", "--domain", "lab.lan"], &cf);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");

    let etc = d.0.join("etc");
    let (cert, key) = (etc.join("tls/cert.pem"), etc.join("tls/key.pem"));
    for p in [&cf, &etc.join("spool"), &etc.join("mail"), &cert, &key] {
        assert!(p.exists(), "{} missing; output:\n{out}", p.display());
        assert!(out.contains(&format!("created {}", p.display())), "{out}");
    }
    assert_eq!(mode(&etc.join("tls")), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(mode(&etc.join("spool")), 0o700);
    assert_eq!(mode(&etc.join("mail")), 0o700);

    let main_cf = std::fs::read_to_string(&cf).unwrap();
    let hostname = setting(&main_cf, "myhostname");
    assert!(hostname.contains('.'), "{hostname}");
    if !hostname.starts_with("mail.") {
        // The system's own fully qualified name was used.
        assert_eq!(
            hostname,
            rustix::system::uname().nodename().to_string_lossy().to_lowercase()
        );
    } else {
        assert_eq!(hostname, "mail.lab.lan");
    }
    assert_eq!(setting(&main_cf, "mydomain"), "lab.lan");
    assert_eq!(
        setting(&main_cf, "mydestination"),
        "$myhostname, $mydomain, localhost.$mydomain, localhost"
    );
    assert!(main_cf.contains("\n#mynetworks = "), "{main_cf}");
    assert_eq!(
        setting(&main_cf, "smtpd_tls_cert_file"),
        "$config_directory/tls/cert.pem"
    );
    assert_eq!(setting(&main_cf, "smtpd_tls_key_file"), "$config_directory/tls/key.pem");

    // The certificate is good for the host name, the domain and localhost, now and for
    // years, and not for other names; poshta's own loader takes the pair.
    let der = read_cert(&cert);
    let now = UnixTime::now();
    for name in [hostname.as_str(), "lab.lan", "localhost"] {
        verify(&der, name, now).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify(&der, "other.example", now).is_err());
    let in_9_years =
        UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + Duration::from_secs(9 * 366 * 86_400));
    assert!(verify(&der, "lab.lan", in_9_years).is_ok());
    let in_11_years =
        UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + Duration::from_secs(11 * 366 * 86_400));
    assert!(verify(&der, "lab.lan", in_11_years).is_err());
    let hours_ago = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) - Duration::from_secs(12 * 3600));
    assert!(
        verify(&der, "lab.lan", hours_ago).is_ok(),
        "a slow client clock is tolerated"
    );
    poshta::net::tls::load_server_config(&cert, &key).unwrap();

    // `poshta check` is content.
    let o = poshta(&["check"], &cf);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("error"), "{}", text(&o.stderr));

    // Again: everything is kept, nothing changes.
    let before = snapshot(&d.0);
    std::thread::sleep(Duration::from_millis(20));
    let o = poshta(&["init", "--domain", "other.lan", "--hostname", "mx.other.lan"], &cf);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(!out.contains("created"), "{out}");
    assert!(out.contains(&format!("kept {}", cf.display())), "{out}");
    assert!(out.contains(&format!("kept {}", cert.display())), "{out}");
    assert!(out.contains(&format!("kept {}", key.display())), "{out}");
    assert_eq!(snapshot(&d.0), before);
}

#[test]
fn explicit_hostname_and_kept_files() {
    let d = TempDir::new("kept");
    let cf = d.0.join("main.cf");
    // A main.cf of the user's own, and a key without a certificate: both are left alone.
    std::fs::write(&cf, "myhostname = box.home.arpa\nmydomain = home.arpa\n").unwrap();
    let o = poshta(&["init", "--domain", "lab.lan", "--hostname", "mx.lab.lan"], &cf);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(&cf).unwrap(),
        "myhostname = box.home.arpa\nmydomain = home.arpa\n"
    );
    // The certificate follows the kept main.cf (its myhostname), not --hostname.
    let der = read_cert(&d.0.join("tls/cert.pem"));
    verify(&der, "box.home.arpa", UnixTime::now()).unwrap();
    verify(&der, "home.arpa", UnixTime::now()).unwrap();
    assert!(verify(&der, "mx.lab.lan", UnixTime::now()).is_err());

    let d2 = TempDir::new("half");
    let cf2 = d2.0.join("main.cf");
    let o = poshta(&["init", "--domain", "lab.lan", "--hostname", "mx.lab.lan"], &cf2);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        setting(&std::fs::read_to_string(&cf2).unwrap(), "myhostname"),
        "mx.lab.lan"
    );
    let der = read_cert(&d2.0.join("tls/cert.pem"));
    verify(&der, "mx.lab.lan", UnixTime::now()).unwrap();
    // Lose the certificate: init does not make a new pair that would not match the key.
    std::fs::remove_file(d2.0.join("tls/cert.pem")).unwrap();
    let o = poshta(&["init", "--domain", "lab.lan"], &cf2);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!d2.0.join("tls/cert.pem").exists());
    assert!(text(&o.stderr).contains("is missing"), "{}", text(&o.stderr));
}

#[test]
fn bad_domain_is_refused_and_nothing_is_written() {
    let d = TempDir::new("bad");
    let cf = d.0.join("sub/main.cf");
    let o = poshta(&["init", "--domain", "not a domain"], &cf);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--domain"), "{}", text(&o.stderr));
    assert!(!d.0.join("sub").exists());
}
