//! `newaliases` (also `sendmail -bi` / `-I`): check the alias tables and make the running
//! daemon read them again.
//!
//! poshta reads aliases(5) files as text, so there is nothing to compile (Postfix's
//! newaliases builds aliases.db). What remains of the command is what people rely on it
//! for: every table named by alias_maps is read with the daemon's own parser
//! (`policy::aliases`), each problem is printed as `newaliases: error: FILE:LINE: message`
//! (warnings, such as duplicate names, as `newaliases: warning: ...`), and then the daemon
//! is asked to reload over the control socket (`RELOAD`, the same as SIGHUP).
//!
//! Exit status: 0 when the tables are good (also when the daemon is not running: it reads
//! them when it starts, and this is said on stderr); 1 when a table has errors (the daemon
//! is not asked to reload: it keeps its last good table anyway); 75 when the daemon did
//! not answer the reload request.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::Loaded;
use crate::policy::aliases::Aliases;

/// Validate alias_maps of `loaded`, then ask the daemon to reload.
pub fn run(prog: &str, loaded: &Loaded) -> i32 {
    let specs = loaded
        .param("alias_maps")
        .map(|p| crate::config::value::split_list(&p.expanded))
        .unwrap_or_default();
    if specs.is_empty() {
        return 0;
    }
    match Aliases::load_maps(&specs) {
        Ok((aliases, warnings)) => {
            for w in &warnings {
                eprintln!("{prog}: warning: {w}");
            }
            if aliases.is_empty() {
                eprintln!("{prog}: warning: {}: no aliases", specs.join(", "));
            }
        }
        Err(e) => {
            for d in &e.errors {
                eprintln!("{prog}: error: {d}");
            }
            eprintln!(
                "{prog}: fatal: {} has errors; the mail system keeps using its last good aliases",
                specs.join(", ")
            );
            return 1;
        }
    }
    let sock = crate::net::control::socket_path(&loaded.settings.queue_directory);
    match reload(&sock) {
        Ok(()) => 0,
        Err(Down) => {
            eprintln!(
                "{prog}: the mail system is not running (no daemon at {}); it reads the aliases when it starts",
                sock.display()
            );
            0
        }
        Err(Failed(why)) => {
            eprintln!("{prog}: fatal: could not ask the mail system to reload: {why}");
            75
        }
    }
}

pub(crate) enum ReloadError {
    Down,
    Failed(String),
}
use ReloadError::{Down, Failed};

pub(crate) fn reload(sock: &std::path::Path) -> Result<(), ReloadError> {
    let stream = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Down)
        }
        Err(e) => return Err(Failed(format!("{}: {e}", sock.display()))),
    };
    let t = Some(Duration::from_secs(crate::limits::CONTROL_CLIENT_TIMEOUT_SECS * 2));
    let failed = |e: std::io::Error| Failed(e.to_string());
    stream.set_read_timeout(t).map_err(failed)?;
    stream.set_write_timeout(t).map_err(failed)?;
    (&stream).write_all(b"RELOAD\n").map_err(failed)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(4096)
        .read_line(&mut line)
        .map_err(failed)?;
    if line.starts_with("OK ") {
        Ok(())
    } else {
        Err(Failed(format!("the daemon said: {}", line.trim_end())))
    }
}
