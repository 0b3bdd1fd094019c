//! poshta: a small, complete mail system in one process.
//!
//! Layout (see DESIGN.md in the steering repository and docs/ here):
//! - `proto`    sans-IO protocol cores (bytes in, bytes and events out)
//! - `net`      the only code that touches sockets: event loop, listeners, sessions
//! - `queue`    the append-only log queue (records, segments, recovery, index)
//! - `delivery` local delivery (Maildir) and, later, relay
//! - `policy`   relay decision and recipient classification
//! - `privsep`  the privileged delivery helper (started as root) and its client
//! - `auth`     mailbox users file and password hashes
//! - `config`   main.cf parsing, the key table, `check` and `postconf`
//! - `cli`      subcommands
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod limits;
pub mod log;
pub mod mailbox;
pub mod net;
pub mod policy;
pub mod privsep;
pub mod proto;
pub mod queue;
#[cfg(test)]
pub(crate) mod testutil;
pub mod time;

/// This process's id, asked of the kernel once: getpid is a system call under musl, and
/// log lines and Maildir names want it for every message. poshta's child processes are
/// new programs (exec), never forks that could inherit the value.
pub fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}
