//! main.cf: parsing, the key table, typed settings, `check` and `postconf`.
//!
//! The config helper documents the accepted main.cf subset here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A problem found in main.cf, reported as `file:line: severity: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line number; 0 when the problem is not tied to a line.
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.line > 0 {
            write!(f, "{}:{}: {}: {}", self.file.display(), self.line, sev, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), sev, self.message)
        }
    }
}

/// inet_protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InetProtocols {
    All,
    Ipv4,
    Ipv6,
}

/// The typed settings the rest of poshta uses. Built from main.cf + embedded defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The main.cf this came from (may not exist: then everything is default).
    pub config_file: PathBuf,
    /// Directory of main.cf; relative paths in values are resolved against it.
    pub config_directory: PathBuf,
    pub myhostname: String,
    pub mydomain: String,
    pub myorigin: String,
    /// Lowercased domains (mydestination after expansion).
    pub mydestination: Vec<String>,
    /// mynetworks entries as written (`127.0.0.0/8`, `[::1]/128`, `10.1.2.3`).
    pub mynetworks: Vec<String>,
    /// smtpd_forbid_bare_newline_exclusions (default $mynetworks), entries as written.
    pub smtpd_forbid_bare_newline_exclusions: Vec<String>,
    /// Addresses to bind for listeners without an address (from inet_interfaces +
    /// inet_protocols): `all` gives 0.0.0.0 and/or ::, `loopback-only` 127.0.0.1 and/or ::1.
    pub inet_interfaces: Vec<std::net::IpAddr>,
    pub inet_protocols: InetProtocols,
    /// smtpd_listen resolved to socket addresses (empty: SMTP service off).
    pub smtpd_listen: Vec<SocketAddr>,
    pub message_size_limit: u64,
    pub queue_directory: PathBuf,
    pub home_mailbox: String,
    pub virtual_mailbox_base: PathBuf,
    pub mailbox_users_file: PathBuf,
    pub smtpd_recipient_limit: usize,
    pub smtpd_timeout_secs: u64,
    /// smtpd_client_connection_limit-like global cap (poshta: smtpd_sessions_max).
    pub smtpd_sessions_max: usize,
    /// recipient_delimiter (Postfix; empty = none).
    pub recipient_delimiter: String,
    pub minimal_backoff_time_secs: u64,
    pub maximal_backoff_time_secs: u64,
    pub maximal_queue_lifetime_secs: u64,
    /// maillog_file (Postfix 3.4+): also log to this file; None = stderr only.
    pub maillog_file: Option<PathBuf>,
    /// poshta's own: hold local delivery (tests of restart/recovery). Default no.
    pub delivery_paused: bool,
}

/// Result of loading: settings (always, falling back to defaults for bad values) plus
/// every problem found.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The main.cf path to use: an explicit `-c PATH`, else $POSHTA_CONFIG, else
/// /etc/poshta/main.cf as root, ./poshta/main.cf otherwise.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    let _ = explicit;
    todo!("config helper")
}

/// Load main.cf at `path` (missing file: embedded defaults, no error).
pub fn load(path: &Path) -> Result<Loaded, std::io::Error> {
    let _ = path;
    todo!("config helper")
}
