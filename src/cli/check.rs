//! `poshta check`: validate main.cf and the files and directories it names, like
//! `postfix check`. Read-only: it creates and changes nothing.
//!
//! Every problem is printed to stderr as `poshta: file:line: warning|error: message`.
//! Exit status 1 when there is an error, else 0 (warnings alone pass).
//!
//! Besides main.cf itself it checks that queue_directory and virtual_mailbox_base exist
//! as writable directories or can be created (the nearest existing ancestor is a
//! writable directory), that maillog_file's directory can be written, and that the
//! mailbox users file, when present, is a readable file.
//!
//! The restriction lists are parsed as the daemon does (unknown names, a missing
//! reject_unauth_destination), and every table they name (`check_*_access type:path`)
//! is read and parsed: each error and warning is reported with the table's file:line,
//! as `postmap` would, so a broken map is found before the daemon keeps its last good
//! version of it.

use crate::config::{self, Diagnostic, Loaded, Severity};
use rustix::fs::Access;
use std::path::Path;

pub fn run(args: super::CheckArgs) -> i32 {
    let path = config::config_path(args.config.as_deref());
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("poshta: {}: error: cannot read: {e}", path.display());
            return 1;
        }
    };
    let mut diags = loaded.diagnostics.clone();
    if !path.exists() {
        diags.insert(
            0,
            diag(
                &loaded,
                None,
                Severity::Warning,
                "file not found; using the built-in defaults".into(),
            ),
        );
    }
    diags.extend(check_files(&loaded));
    diags.extend(check_tables(&loaded));
    diags.extend(check_aliases(&loaded));
    for d in &diags {
        eprintln!("poshta: {d}");
    }
    if diags.iter().any(|d| d.severity == Severity::Error) {
        1
    } else {
        0
    }
}

/// alias_maps: every error with its file:line (as the daemon would log it), warnings, and
/// a warning when `postmaster` reaches nobody (RFC 5321 §4.5.1 requires the mailbox).
/// As root, also that mail_owner exists.
pub fn check_aliases(loaded: &Loaded) -> Vec<Diagnostic> {
    let s = &loaded.settings;
    let mut out = Vec::new();
    let conv = |d: &crate::policy::aliases::Diagnostic, severity| Diagnostic {
        file: d.file.clone(),
        line: d.line,
        severity,
        message: d.message.clone(),
    };
    match crate::net::load_aliases(s) {
        Ok((aliases, warnings)) => {
            for w in warnings {
                out.push(diag(loaded, Some("alias_maps"), Severity::Warning, w));
            }
            let users = crate::auth::users::Users::load(&s.mailbox_users_file).unwrap_or_default();
            let router = crate::policy::Router::new(s.mydestination.clone(), s.recipient_delimiter.clone(), users)
                .with_system_users(crate::policy::router::SystemUsers::All);
            let resolves = aliases.postmaster_resolves(
                |d| router.is_local_domain(d),
                |u| router.user_class(u).is_local_recipient(),
            );
            // RFC 5321 §4.5.1: a server must accept mail for postmaster.
            if !resolves {
                out.push(diag(
                    loaded,
                    Some("alias_maps"),
                    Severity::Warning,
                    "postmaster does not resolve to a mailbox (RFC 5321 §4.5.1 requires one): add `postmaster: root` (and root: a real user) to the aliases file".into(),
                ));
            }
        }
        Err(e) => out.extend(e.errors.iter().map(|d| conv(d, Severity::Error))),
    }
    if rustix::process::geteuid().is_root() && nix::unistd::User::from_name(&s.mail_owner).ok().flatten().is_none() {
        out.push(diag(
            loaded,
            Some("mail_owner"),
            Severity::Error,
            format!("mail_owner {} does not exist (`poshta init` creates it)", s.mail_owner),
        ));
    }
    out
}

/// A diagnostic about key `key` (at its line in main.cf when set there).
fn diag(loaded: &Loaded, key: Option<&str>, severity: Severity, message: String) -> Diagnostic {
    let line = key
        .and_then(|k| loaded.param(k))
        .and_then(|p| p.set.as_ref())
        .map(|(_, l)| *l)
        .unwrap_or(0);
    // Name the file as the other diagnostics do (the path as given), when there are any.
    let file = loaded
        .diagnostics
        .first()
        .map(|d| d.file.clone())
        .unwrap_or_else(|| loaded.settings.config_file.clone());
    Diagnostic {
        file,
        line,
        severity,
        message,
    }
}

/// Problems with the files and directories the settings name.
pub fn check_files(loaded: &Loaded) -> Vec<Diagnostic> {
    let s = &loaded.settings;
    let mut out = Vec::new();
    for (key, dir) in [
        ("queue_directory", &s.queue_directory),
        ("virtual_mailbox_base", &s.virtual_mailbox_base),
    ] {
        if let Err(msg) = dir_usable(dir) {
            out.push(diag(loaded, Some(key), Severity::Error, format!("{key}: {msg}")));
        }
    }
    if let Some(log) = &s.maillog_file {
        let problem = match std::fs::metadata(log) {
            Ok(m) if m.is_dir() => Some(format!("{} is a directory", log.display())),
            Ok(_) => rustix::fs::access(log, Access::WRITE_OK)
                .err()
                .map(|e| format!("{} is not writable: {e}", log.display())),
            Err(_) => log.parent().and_then(|p| dir_usable(p).err()),
        };
        if let Some(msg) = problem {
            out.push(diag(
                loaded,
                Some("maillog_file"),
                Severity::Error,
                format!("maillog_file: {msg}"),
            ));
        }
    }
    let users = &s.mailbox_users_file;
    match std::fs::metadata(users) {
        Ok(m) if m.is_dir() => out.push(diag(
            loaded,
            Some("mailbox_users_file"),
            Severity::Error,
            format!("mailbox_users_file: {} is a directory", users.display()),
        )),
        Ok(_) => {
            if let Err(e) = std::fs::File::open(users) {
                out.push(diag(
                    loaded,
                    Some("mailbox_users_file"),
                    Severity::Error,
                    format!("mailbox_users_file: cannot read {}: {e}", users.display()),
                ));
            }
        }
        // Absent is fine: no mailbox users yet.
        Err(_) => {}
    }
    out
}

/// Ok when `dir` is a writable directory, or does not exist and its nearest existing
/// ancestor is a writable directory (so it can be created).
fn dir_usable(dir: &Path) -> Result<(), String> {
    let mut cur = dir;
    // Bounded by the number of components of the path.
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => {
                return rustix::fs::access(cur, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
                    if cur == dir {
                        format!("{} is not writable: {e}", dir.display())
                    } else {
                        format!(
                            "{} cannot be created: {} is not writable: {e}",
                            dir.display(),
                            cur.display()
                        )
                    }
                });
            }
            Ok(_) => {
                return Err(if cur == dir {
                    format!("{} is not a directory", dir.display())
                } else {
                    format!(
                        "{} cannot be created: {} is not a directory",
                        dir.display(),
                        cur.display()
                    )
                });
            }
            // A missing component, or a file where a directory should be: look further up.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => {
                        return Err(format!(
                            "{} cannot be created: no existing parent directory",
                            dir.display()
                        ))
                    }
                }
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", cur.display())),
        }
    }
}

/// The restriction lists and every table they name: parse errors and warnings with the
/// table's own file:line.
pub fn check_tables(loaded: &Loaded) -> Vec<Diagnostic> {
    use crate::policy::table::{parse_spec, read_text, Table};
    let s = &loaded.settings;
    let mut out = Vec::new();
    let lists = match crate::policy::restrictions::RestrictionLists::from_settings(s) {
        Ok(l) => l,
        Err(e) => {
            // The message names the key; point at the first restriction key set.
            let key = [
                "smtpd_client_restrictions",
                "smtpd_helo_restrictions",
                "smtpd_sender_restrictions",
                "smtpd_relay_restrictions",
                "smtpd_recipient_restrictions",
                "smtpd_data_restrictions",
            ]
            .into_iter()
            .find(|k| e.contains(k));
            out.push(diag(loaded, key, Severity::Error, e));
            return out;
        }
    };
    let as_diag = |e: &crate::policy::table::TableError, severity: Severity| Diagnostic {
        file: e.file.clone(),
        line: e.line,
        severity,
        message: e.msg.clone(),
    };
    for spec in lists.table_specs() {
        let (ty, path) = match parse_spec(&spec, &s.config_directory) {
            Ok(x) => x,
            Err(e) => {
                out.push(as_diag(&e, Severity::Error));
                continue;
            }
        };
        // The text, not a compiled index: the index is only as good as its source.
        match read_text(&path)
            .map_err(|e| vec![e])
            .and_then(|text| Table::parse_all(ty, &path, &text))
        {
            Ok(t) => out.extend(t.warnings.iter().map(|w| as_diag(w, Severity::Warning))),
            Err(errs) => out.extend(errs.iter().map(|e| as_diag(e, Severity::Error))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_checks() {
        let base = crate::testutil::TempDir::new(&format!("poshta-check-test-{}", std::process::id()));
        assert!(dir_usable(&base).is_ok());
        assert!(dir_usable(&base.join("a/b/c")).is_ok());
        let file = base.join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(dir_usable(&file).unwrap_err().contains("not a directory"));
        assert!(dir_usable(&file.join("sub")).unwrap_err().contains("cannot be created"));
        assert!(!base.join("a").exists(), "check must not create anything");
    }
}
