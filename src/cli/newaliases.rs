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

use super::queue::CtlError;
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
    match super::queue::reload(&sock) {
        Ok(()) => 0,
        Err(CtlError::Down) => {
            eprintln!(
                "{prog}: the mail system is not running (no daemon at {}); it reads the aliases when it starts",
                sock.display()
            );
            0
        }
        Err(CtlError::Refused(why) | CtlError::Broken(why)) => {
            eprintln!("{prog}: fatal: could not ask the mail system to reload: {why}");
            75
        }
    }
}
