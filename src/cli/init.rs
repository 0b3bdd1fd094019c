//! `poshta init --domain DOMAIN [--hostname NAME] [-c PATH]`: set up a new mail system the
//! way a Postfix newcomer expects to find one.
//!
//! It writes a commented main.cf (never over an existing one), creates the directories
//! the configuration names (config directory; queue_directory and virtual_mailbox_base,
//! mode 0700; the certificate's directory, mode 0700) and a self-signed certificate with its
//! key (ECDSA P-256; SANs myhostname, mydomain and localhost; valid from a day ago for ten
//! years; key 0600, certificate 0644) unless either file exists. Running it again changes
//! nothing. Paths are the ones [`crate::config::load`] resolves from the (new or kept)
//! main.cf, so `poshta serve` with the same `-c` uses exactly what was made here.
//!
//! Output: one `poshta: created …` or `poshta: kept …` line per item on stdout; problems
//! on stderr. Exit status 0, or 1 when something could not be made.
//!
//! myhostname defaults to the system host name when it has a dot (a fully qualified name),
//! else `mail.DOMAIN`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::InitArgs;
use crate::config::keys::{self, DefaultValue};
use crate::config::{self, value, Env, Severity};

/// Lifetime of the self-signed certificate.
const CERT_VALIDITY_DAYS: u64 = 3652;

pub fn run(args: InitArgs) -> i32 {
    let path = config::config_path(args.config.as_deref());
    let env = Env::system();
    let mut out = Vec::new();
    let result = init(
        &path,
        &args.domain,
        args.hostname.as_deref(),
        &env,
        crate::time::now_unix(),
        &mut out,
    );
    let mut stdout = std::io::stdout().lock();
    for line in &out {
        if line.starts_with("poshta: warning:") || line.starts_with("poshta: error:") {
            eprintln!("{line}");
        } else if writeln!(stdout, "{line}").is_err() {
            return 1;
        }
    }
    if let Err(e) = result {
        eprintln!("poshta: fatal: {e}");
        return 1;
    }
    if rustix::process::geteuid().is_root() {
        let mut out = Vec::new();
        let r = root_setup(&path, &mut out);
        for line in &out {
            println!("{line}");
        }
        if let Err(e) = r {
            eprintln!("poshta: fatal: {e}");
            return 1;
        }
    }
    0
}

/// As root (see docs/privileges.md): create mail_owner when it is missing (useradd
/// --system, or busybox adduser -S), give it the queue and mail directories, and make a
/// freshly made TLS key `root:mail_owner 0640` in a `root:mail_owner 2750` directory, so the
/// daemon can read a replaced key after dropping root (files copied into the setgid
/// directory get its group).
fn root_setup(path: &Path, out: &mut Vec<String>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let loaded = config::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = &loaded.settings;
    let name = s.mail_owner.as_str();
    if !crate::policy::router::valid_system_name(name) {
        return Err(format!("mail_owner {name:?} is not a valid user name"));
    }
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let useradd = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args([
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "poshta mail system",
            ])
            .arg(name)
            .status();
        let ok = match useradd {
            Ok(st) => st.success(),
            // busybox (the board images): adduser -S (system) -D (no password) -H (no home).
            Err(_) => std::process::Command::new("adduser")
                .args(["-S", "-D", "-H", "-h", "/var/empty", "-s", "/sbin/nologin", name])
                .status()
                .is_ok_and(|st| st.success()),
        };
        if !ok || nix::unistd::User::from_name(name).ok().flatten().is_none() {
            return Err(format!(
                "could not create the mail_owner user {name} (useradd --system {name})"
            ));
        }
        out.push(format!("poshta: created system user {name} (mail_owner)"));
    }
    let u = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("mail_owner {name} does not exist"))?;
    if u.uid.is_root() {
        return Err(format!("mail_owner {name} has uid 0; it must be an unprivileged user"));
    }
    for dir in [&s.queue_directory, &s.virtual_mailbox_base] {
        std::os::unix::fs::lchown(dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    if let Some(key) = &s.smtpd_tls_key_file {
        if let Ok(m) = std::fs::symlink_metadata(key) {
            // Only a key as `poshta init` makes it (root, 0600): an admin's own choice stays.
            if m.is_file() && m.uid() == 0 && m.gid() == 0 && m.mode() & 0o777 == 0o600 {
                std::os::unix::fs::lchown(key, None, Some(u.gid.as_raw()))
                    .and_then(|()| std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o640)))
                    .map_err(|e| format!("chmod {}: {e}", key.display()))?;
                out.push(format!(
                    "poshta: {} is root:{name} 0640 (the daemon runs as {name})",
                    key.display()
                ));
                if let Some(dir) = key.parent() {
                    let dm = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    if dm.is_dir() && dm.uid() == 0 && dm.mode() & 0o777 == 0o700 {
                        std::os::unix::fs::lchown(dir, None, Some(u.gid.as_raw()))
                            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2750)))
                            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
                        out.push(format!("poshta: {}/ is root:{name} 2750", dir.display()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The host name to use: `--hostname`, else the system name if it is fully qualified,
/// else `mail.DOMAIN`.
fn pick_hostname(explicit: Option<&str>, system: &str, domain: &str) -> String {
    match explicit {
        Some(h) => h.trim().trim_end_matches('.').to_ascii_lowercase(),
        None if system.trim_end_matches('.').contains('.')
            && value::check_hostname(system.trim_end_matches('.')).is_ok() =>
        {
            system.trim_end_matches('.').to_ascii_lowercase()
        }
        None => format!("mail.{domain}"),
    }
}

/// Do the work; every step taken or skipped is pushed onto `out`.
pub fn init(
    path: &Path,
    domain: &str,
    hostname: Option<&str>,
    env: &Env,
    now_unix: u64,
    out: &mut Vec<String>,
) -> Result<(), String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    value::check_hostname(&domain).map_err(|e| format!("--domain: {e}"))?;
    let hostname = pick_hostname(hostname, &env.hostname, &domain);
    value::check_hostname(&hostname).map_err(|e| format!("--hostname: {e}"))?;

    let config_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    make_dir(&config_dir, None, out)?;

    // create_new: never overwrite, even if the file appears between a check and the write.
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            let text = main_cf(&hostname, &domain, env, now_unix);
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            out.push(format!(
                "poshta: created {} (myhostname = {hostname}, mydomain = {domain})",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            out.push(format!(
                "poshta: kept {} (it exists; not overwritten; --domain and --hostname are not applied to it)",
                path.display()
            ));
        }
        Err(e) => return Err(format!("create {}: {e}", path.display())),
    }

    let loaded = config::load_env(path, env).map_err(|e| format!("{}: {e}", path.display()))?;
    for d in &loaded.diagnostics {
        let sev = if d.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        out.push(format!("poshta: {sev}: {d}"));
    }
    let s = &loaded.settings;
    make_dir(&s.queue_directory, Some(0o700), out)?;
    make_dir(&s.virtual_mailbox_base, Some(0o700), out)?;

    let (Some(cert), Some(key)) = (&s.smtpd_tls_cert_file, &s.smtpd_tls_key_file) else {
        out.push("poshta: no certificate made: smtpd_tls_cert_file or smtpd_tls_key_file is empty (TLS off)".into());
        return Ok(());
    };
    let (cert_exists, key_exists) = (cert.exists(), key.exists());
    if cert_exists || key_exists {
        for (p, exists) in [(cert, cert_exists), (key, key_exists)] {
            if exists {
                out.push(format!("poshta: kept {} (it exists)", p.display()));
            } else {
                out.push(format!(
                    "poshta: warning: {} is missing but {} exists; no new pair made (it would not match)",
                    p.display(),
                    if p == cert { key.display() } else { cert.display() }
                ));
            }
        }
        return Ok(());
    }
    let mut dirs: Vec<&Path> = key.parent().into_iter().chain(cert.parent()).collect();
    dirs.dedup();
    for dir in dirs {
        make_dir(dir, Some(0o700), out)?;
    }
    let (host, dom) = (hostname_of(&loaded, &hostname), domain_of(&loaded, &domain));
    let (cert_pem, key_pem) = self_signed(&host, &dom, now_unix)?;
    // The key first: a certificate without its key would block the next run from making a pair.
    write_new(key, key_pem.as_bytes(), 0o600)?;
    write_new(cert, cert_pem.as_bytes(), 0o644)?;
    out.push(format!("poshta: created {} (private key, mode 0600)", key.display()));
    out.push(format!(
        "poshta: created {} (self-signed certificate for {}, valid {} days)",
        cert.display(),
        san_list(&host, &dom).join(", "),
        CERT_VALIDITY_DAYS
    ));
    Ok(())
}

/// The effective myhostname (a kept main.cf may name another host than --hostname).
fn hostname_of(loaded: &config::Loaded, fallback: &str) -> String {
    let h = &loaded.settings.myhostname;
    if value::check_hostname(h).is_ok() {
        h.to_ascii_lowercase()
    } else {
        fallback.to_string()
    }
}

fn domain_of(loaded: &config::Loaded, fallback: &str) -> String {
    let d = &loaded.settings.mydomain;
    if value::check_hostname(d).is_ok() {
        d.to_ascii_lowercase()
    } else {
        fallback.to_string()
    }
}

fn san_list(hostname: &str, domain: &str) -> Vec<String> {
    let mut sans: Vec<String> = Vec::new();
    for n in [hostname, domain, "localhost"] {
        if !sans.iter().any(|s| s == n) {
            sans.push(n.to_string());
        }
    }
    sans
}

/// A self-signed ECDSA P-256 certificate and its PKCS#8 key, both PEM.
fn self_signed(hostname: &str, domain: &str, now_unix: u64) -> Result<(String, String), String> {
    let err = |e: rcgen::Error| format!("making the certificate: {e}");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(san_list(hostname, domain)).map_err(err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    // A day of slack for clients whose clock is a little behind.
    params.not_before = epoch + std::time::Duration::from_secs(now_unix.saturating_sub(86_400));
    params.not_after = epoch + std::time::Duration::from_secs(now_unix + CERT_VALIDITY_DAYS * 86_400);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Create `dir` (and its parents) unless it exists; `mode` applies to `dir` itself.
fn make_dir(dir: &Path, mode: Option<u32>, out: &mut Vec<String>) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            out.push(format!("poshta: kept {}/", dir.display()));
            return Ok(());
        }
        Ok(_) => return Err(format!("{} exists and is not a directory", dir.display())),
        Err(_) => {}
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
    }
    let mut b = std::fs::DirBuilder::new();
    if let Some(m) = mode {
        b.mode(m);
    }
    b.create(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if let Some(m) = mode {
        // The umask may have taken bits away; the mode is what we promise.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        out.push(format!("poshta: created {}/ (mode {m:04o})", dir.display()));
    } else {
        out.push(format!("poshta: created {}/", dir.display()));
    }
    Ok(())
}

/// Write a new file (never replacing one) with exactly `mode`, synced to disk.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(data))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        // The new name must survive a crash too (fsync the directory after create).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `# doc` then `#name = default` for a key from the table, as the defaults apply to `env`.
fn commented_default(name: &str, env: &Env) -> String {
    let Some(key) = keys::find(name) else {
        return String::new();
    };
    let default = match key.default {
        DefaultValue::Text(t) => t,
        DefaultValue::Root { root, user } => {
            if env.is_root {
                root
            } else {
                user
            }
        }
        _ => "",
    };
    let doc = key.doc.strip_prefix("poshta: ").unwrap_or(key.doc);
    format!("# {doc}\n#{name} = {default}\n").replace(" \n", "\n")
}

/// The main.cf text for a new system.
fn main_cf(hostname: &str, domain: &str, env: &Env, now_unix: u64) -> String {
    let date = crate::time::rfc5322(now_unix);
    let mut t = format!(
        "\
# poshta main.cf, written by `poshta init` on {date}.
#
# Postfix's syntax and key names: `name = value`; `$name` inserts another key's value;
# a line starting with whitespace continues the one above; `#` starts a comment line
# (not a trailing comment). Relative paths are relative to this file's directory.
#
#   poshta check        validate this file and the paths it names
#   poshta postconf -n  show what this file sets; `poshta postconf` shows every key
#   poshta postconf -d  show the defaults
#
# After editing, send the daemon SIGHUP (listen addresses need a restart).

# The internet host name of this mail system: EHLO, Received: headers, the certificate.
myhostname = {hostname}

# The local internet domain.
mydomain = {domain}

# Domains delivered locally: mail to NAME@ one of these goes to the mailbox of NAME
# (`poshta user add NAME`).
mydestination = $myhostname, $mydomain, localhost.$mydomain, localhost

# Trusted client networks: they may send mail anywhere without authentication. Add your
# LAN so scanners, NAS boxes and cron jobs can send mail, for example:
#mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.1.0/24

# Server certificate chain and private key (PEM). `poshta init` made a self-signed pair.
# Put a real one here (certbot's fullchain.pem and privkey.pem) or copy it over these
# files: poshta notices replaced files within seconds, no restart needed.
smtpd_tls_cert_file = $config_directory/tls/cert.pem
smtpd_tls_key_file = $config_directory/tls/key.pem
"
    );
    t.push_str("\n# The keys below show their defaults; remove the # to change one.\n\n");
    for name in [
        "smtpd_tls_security_level",
        "smtpd_tls_auth_only",
        "inet_interfaces",
        "smtpd_listen",
        "submission_listen",
        "submissions_listen",
        "pop3d_listen",
        "pop3s_listen",
        "message_size_limit",
        "queue_directory",
        "virtual_mailbox_base",
        "maillog_file",
    ] {
        t.push_str(&commented_default(name, env));
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            is_root: false,
            hostname: "pi".into(),
        }
    }

    #[test]
    fn hostname_choice() {
        assert_eq!(pick_hostname(None, "pi", "lab.lan"), "mail.lab.lan");
        assert_eq!(pick_hostname(None, "Box.Lab.Lan.", "lab.lan"), "box.lab.lan");
        assert_eq!(
            pick_hostname(Some("MX.lab.lan"), "box.lab.lan", "lab.lan"),
            "mx.lab.lan"
        );
        assert_eq!(pick_hostname(None, "bad name.lan", "lab.lan"), "mail.lab.lan");
    }

    #[test]
    fn written_main_cf_loads_clean_with_the_given_names() {
        let text = main_cf("mx.lab.lan", "lab.lan", &env(), 1_700_000_000);
        let l = crate::config::load_text(Path::new("/srv/p/main.cf"), Some(text.as_bytes()), &env());
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        let s = &l.settings;
        assert_eq!(s.myhostname, "mx.lab.lan");
        assert_eq!(s.mydomain, "lab.lan");
        assert_eq!(
            s.mydestination,
            vec!["mx.lab.lan", "lab.lan", "localhost.lab.lan", "localhost"]
        );
        assert_eq!(s.smtpd_tls_cert_file, Some(PathBuf::from("/srv/p/tls/cert.pem")));
        assert!(text.contains("\n#smtpd_listen = 2525\n"), "{text}");
        assert!(text.contains("\n#mynetworks = "), "{text}");
        assert!(text.contains("# Inbound TLS policy"), "{text}");
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let tmp = crate::testutil::TempDir::new(&format!("poshta-init-unit-{}", std::process::id()));
        // Not created by the guard: the test checks that nothing is written.
        let dir = tmp.join("conf");
        let mut out = Vec::new();
        let e = init(&dir.join("main.cf"), "bad domain", None, &env(), 0, &mut out).unwrap_err();
        assert!(e.contains("--domain"), "{e}");
        let e = init(&dir.join("main.cf"), "lab.lan", Some("-x.lab.lan"), &env(), 0, &mut out).unwrap_err();
        assert!(e.contains("--hostname"), "{e}");
        assert!(out.is_empty());
        assert!(!dir.exists());
    }
}
