//! `poshta user add|passwd|del|list`: manage the mailbox users file
//! (`mailbox_users_file`, format in [`crate::auth::users`]).
//!
//! Passwords come from the terminal (asked twice on stderr with echo off) or, with
//! `--password-stdin`, from the first line of standard input (the trailing LF or CRLF is
//! removed; everything else, spaces included, is part of the password). They never appear
//! on the command line, where `ps` would show them. Adding a user also creates their
//! Maildir `$virtual_mailbox_base/NAME/{cur,new,tmp}` (mode 0700); deleting a user keeps it.
//!
//! `user add --system NAME` adds a system user: NAME must have a passwd entry (getpwnam);
//! the line gets the `system` marker (field 3, see [`crate::auth::users`]) and no Maildir
//! is made: the user's mail is the system mailbox (`mail_spool_directory/NAME` or
//! `home_mailbox`). The password is poshta's own (argon2id), not the login password.
//!
//! Exit status: 0 done, 1 error (one line on stderr saying why).

use std::io::{BufRead, Read, Write};
use std::path::Path;

use super::{UserArgs, UserCmd};
use crate::auth::users::{self, PASSWORD_BYTES_MAX};
use crate::delivery::maildir;

pub fn run(args: UserArgs) -> i32 {
    match run_cmd(args.cmd) {
        Ok(lines) => {
            let mut out = std::io::stdout().lock();
            for l in lines {
                if writeln!(out, "{l}").is_err() {
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            eprintln!("poshta: {e}");
            1
        }
    }
}

/// The two settings this command needs.
struct Paths {
    users_file: std::path::PathBuf,
    mailbox_base: std::path::PathBuf,
    queue_directory: std::path::PathBuf,
}

fn paths(config: Option<&Path>) -> Result<Paths, String> {
    let path = crate::config::config_path(config);
    let loaded = crate::config::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(d) = loaded
        .diagnostics
        .iter()
        .find(|d| d.severity == crate::config::Severity::Error)
    {
        return Err(d.to_string());
    }
    Ok(Paths {
        users_file: loaded.settings.mailbox_users_file,
        mailbox_base: loaded.settings.virtual_mailbox_base,
        queue_directory: loaded.settings.queue_directory,
    })
}

fn run_cmd(cmd: UserCmd) -> Result<Vec<String>, String> {
    match cmd {
        UserCmd::Add(a) => {
            let p = paths(a.config.as_deref())?;
            check_name(&a.name)?;
            // Fail before asking for a password (add checks again under the lock).
            if users::list(&p.users_file).map_err(|e| e.to_string())?.contains(&a.name) {
                return Err(format!("user {} already exists", a.name));
            }
            if a.system {
                check_system_user(&a.name)?;
            }
            let password = get_password(a.password_stdin)?;
            if a.system {
                add_system(&p.users_file, &a.name, &password)?;
                return Ok(with_reload(&p, format!("poshta: added system user {}", a.name)));
            }
            add(&p.users_file, &p.mailbox_base, &a.name, &password)?;
            Ok(with_reload(&p, format!("poshta: added user {}", a.name)))
        }
        UserCmd::Passwd(a) => {
            let p = paths(a.config.as_deref())?;
            check_name(&a.name)?;
            if !users::list(&p.users_file).map_err(|e| e.to_string())?.contains(&a.name) {
                return Err(format!("no such user {}", a.name));
            }
            let password = get_password(a.password_stdin)?;
            passwd(&p.users_file, &a.name, &password)?;
            Ok(with_reload(&p, format!("poshta: changed password of user {}", a.name)))
        }
        UserCmd::Del(a) => {
            let p = paths(a.config.as_deref())?;
            check_name(&a.name)?;
            del(&p.users_file, &a.name)?;
            Ok(with_reload(
                &p,
                format!("poshta: removed user {} (Maildir kept)", a.name),
            ))
        }
        UserCmd::List(a) => {
            let p = paths(a.config.as_deref())?;
            users::list(&p.users_file).map_err(|e| e.to_string())
        }
    }
}

/// The running daemon reads the users file at start and on reload: ask it to reload now
/// (control socket `RELOAD`, the same as SIGHUP), so a new user, password or removal counts
/// at once. Not running: nothing to do (it reads the file when it starts).
fn with_reload(p: &Paths, done: String) -> Vec<String> {
    use super::queue::{reload, CtlError};
    let mut out = vec![done];
    match reload(&crate::net::control::socket_path(&p.queue_directory)) {
        Ok(()) | Err(CtlError::Down) => {}
        Err(CtlError::Refused(why) | CtlError::Broken(why)) => {
            out.push(format!("poshta: warning: the running daemon did not reload ({why})"))
        }
    }
    out
}

/// A clear message for a bad name (the users-file rules).
pub fn check_name(name: &str) -> Result<(), String> {
    if users::valid_name(name) {
        return Ok(());
    }
    if users::valid_name(&name.to_ascii_lowercase()) {
        return Err(format!(
            "bad user name {name:?}: user names are lowercase (try {:?})",
            name.to_ascii_lowercase()
        ));
    }
    Err(format!(
        "bad user name {name:?}: use 1 to 64 of a-z 0-9 . _ -, not starting with . or -"
    ))
}

/// Add `name` with `password` to `users_file` and create its Maildir under `mailbox_base`.
pub fn add(users_file: &Path, mailbox_base: &Path, name: &str, password: &str) -> Result<(), String> {
    check_name(name)?;
    let hash = users::hash_password(password).map_err(|e| e.to_string())?;
    users::add_user(users_file, name, &hash).map_err(|e| e.to_string())?;
    let md = maildir::virtual_maildir(mailbox_base, name).ok_or_else(|| format!("bad user name {name:?}"))?;
    maildir::create_maildir(&md).map_err(|e| {
        format!(
            "added user {name}, but could not create the Maildir {}: {e}",
            md.display()
        )
    })?;
    give_to_base_owner(mailbox_base, &md).map_err(|e| format!("added user {name}, but chown {}: {e}", md.display()))
}

/// As root, the new Maildir belongs to whoever owns virtual_mailbox_base (mail_owner: the
/// daemon delivers as that user after dropping root; docs/privileges.md).
fn give_to_base_owner(base: &Path, md: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let b = std::fs::metadata(base)?;
    if b.uid() == 0 {
        return Ok(());
    }
    for p in [md.to_path_buf(), md.join("cur"), md.join("new"), md.join("tmp")] {
        std::os::unix::fs::lchown(&p, Some(b.uid()), Some(b.gid()))?;
    }
    Ok(())
}

/// `name` must be a system user: a passwd entry (getpwnam).
pub fn check_system_user(name: &str) -> Result<(), String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("no system user {name} (no passwd entry)")),
        Err(e) => Err(format!("looking up system user {name}: {e}")),
    }
}

/// Add system user `name` with `password` (the `system` marker; no Maildir).
pub fn add_system(users_file: &Path, name: &str, password: &str) -> Result<(), String> {
    check_name(name)?;
    check_system_user(name)?;
    let hash = users::hash_password(password).map_err(|e| e.to_string())?;
    users::add_system_user(users_file, name, &hash).map_err(|e| e.to_string())
}

/// Set `name`'s password.
pub fn passwd(users_file: &Path, name: &str, password: &str) -> Result<(), String> {
    check_name(name)?;
    let hash = users::hash_password(password).map_err(|e| e.to_string())?;
    users::set_password(users_file, name, &hash).map_err(|e| e.to_string())
}

/// Remove `name` (its Maildir is kept: mail is never deleted by a typo).
pub fn del(users_file: &Path, name: &str) -> Result<(), String> {
    check_name(name)?;
    users::remove_user(users_file, name).map_err(|e| e.to_string())
}

/// Read one password line (at most PASSWORD_BYTES_MAX bytes before the newline); the LF
/// and a CR before it are removed. Empty, over-long or non-UTF-8 input is refused.
pub fn read_password_line(r: &mut dyn BufRead) -> Result<String, String> {
    let mut buf = Vec::new();
    let cap = (PASSWORD_BYTES_MAX + 2) as u64;
    let n = r
        .take(cap)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading password: {e}"))?;
    if n == 0 {
        return Err("no password given (end of input)".into());
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > PASSWORD_BYTES_MAX {
        return Err(format!("password longer than {PASSWORD_BYTES_MAX} bytes"));
    }
    if buf.is_empty() {
        return Err("empty password refused".into());
    }
    String::from_utf8(buf).map_err(|_| "password is not UTF-8".into())
}

fn get_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        return read_password_line(&mut std::io::stdin().lock());
    }
    let stdin = std::io::stdin();
    if !rustix::termios::isatty(&stdin) {
        return Err("standard input is not a terminal: use --password-stdin".into());
    }
    let first = prompt("Password: ")?;
    let second = prompt("Retype password: ")?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// Terminal echo off for as long as this lives (restored on drop, also on error paths).
struct EchoOff {
    stdin: std::io::Stdin,
    saved: rustix::termios::Termios,
}

impl EchoOff {
    fn new() -> Result<EchoOff, String> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).map_err(|e| format!("terminal: {e}"))?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        // Still echo the newline so the next prompt starts on its own line.
        quiet.local_modes.insert(rustix::termios::LocalModes::ECHONL);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
            .map_err(|e| format!("terminal: {e}"))?;
        Ok(EchoOff { stdin, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(&self.stdin, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

fn prompt(text: &str) -> Result<String, String> {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
    drop(err);
    let guard = EchoOff::new()?;
    let line = read_password_line(&mut guard.stdin.lock());
    drop(guard);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines() {
        let ok = |s: &[u8]| read_password_line(&mut &s[..]);
        assert_eq!(ok(b"secret\n").unwrap(), "secret");
        assert_eq!(ok(b"secret\r\n").unwrap(), "secret");
        assert_eq!(ok(b"secret").unwrap(), "secret");
        assert_eq!(ok(b" sp ace \nsecond line\n").unwrap(), " sp ace ");
        assert!(ok(b"").is_err());
        assert!(ok(b"\n").is_err());
        assert!(ok(b"\r\n").is_err());
        assert!(ok(b"\xff\xfe\n").is_err());
        let long = vec![b'x'; PASSWORD_BYTES_MAX];
        assert_eq!(ok(&long).unwrap().len(), PASSWORD_BYTES_MAX);
        let mut longer = vec![b'x'; PASSWORD_BYTES_MAX + 1];
        assert!(ok(&longer).is_err());
        longer.push(b'\n');
        assert!(ok(&longer).is_err());
        // A huge line without newline is not read into memory whole.
        let mut endless = std::io::repeat(b'x');
        assert!(read_password_line(&mut std::io::BufReader::new(&mut endless)).is_err());
    }

    #[test]
    fn system_users_need_a_passwd_entry() {
        assert!(check_system_user("root").is_ok());
        let e = check_system_user("no-such-user-poshta-x").unwrap_err();
        assert!(e.contains("no passwd entry"), "{e}");
    }

    #[test]
    fn names() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("Alice").unwrap_err().contains("lowercase"));
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
    }
}
