//! main.cf: parsing, the key table, typed settings, `check` and `postconf`.
//!
//! # Accepted main.cf subset (Postfix postconf(5) syntax)
//!
//! ```text
//! file     = *( logical | comment | blank )
//! logical  = name *WSP "=" value  *( continuation )   ; joined with one space
//! name     = 1*( ALPHA / DIGIT / "_" )
//! comment  = *WSP "#" text        ; whole lines only
//! blank    = *WSP
//! continuation = 1*WSP text       ; a line starting with whitespace
//! ```
//!
//! - Leading and trailing whitespace around names and values is removed. A `#` after a
//!   value is part of the value: like Postfix, there are no trailing comments.
//! - Comment and blank lines do not end a logical line (as in Postfix's readlline): an
//!   indented line after them still continues the parameter above.
//! - A continuation line with no parameter to continue, a line without `=`, a bad name,
//!   a line that is not UTF-8, and a logical line over `CONFIG_LINE_BYTES_MAX` bytes are
//!   errors; that logical line is skipped. CR before LF is ignored.
//! - A later assignment overrides an earlier one (as Postfix); poshta also warns, since
//!   a duplicate is usually an edit that went to the wrong place.
//! - Files over [`CONFIG_FILE_BYTES_MAX`] are refused (error; defaults are used).
//!
//! # Expansion
//!
//! Values are expanded when used; `postconf` prints them unexpanded (`-x` expands).
//! `$name`, `${name}` and `$(name)` insert the value of parameter `name` (set in the
//! file, else its default), recursively. `$$` is a literal `$`. `${name?value}` gives
//! `value` when `$name` is non-empty, `${name:value}` when it is empty; the Postfix 3
//! forms `${name?{value}}`, `${name:{value}}` and `${name?{value1}:{value2}}` work too.
//! Undefined `$name` expands to nothing with a warning (no warning inside a
//! conditional). A loop, nesting deeper than `CONFIG_EXPANSION_DEPTH_MAX`, a `$` not
//! followed by a name, or an expanded value over `CONFIG_LINE_BYTES_MAX` bytes is an
//! error. Parameters not in the key table are allowed when some value references them
//! (as Postfix's user-defined parameters); otherwise they get an "unknown parameter"
//! warning.
//!
//! # Values
//!
//! Lists are comma and/or whitespace separated. Booleans are `yes`/`no`. Integers and
//! sizes are plain decimals (no suffixes). Times are a decimal with an optional unit
//! `s`, `m`, `h`, `d` or `w`; without one, the key's default unit applies
//! (`smtpd_timeout = 300` is 300s, `maximal_queue_lifetime = 5` is 5d). Relative paths
//! are resolved against config_directory (the directory main.cf is in; read-only).
//! Network lists take `addr` or `addr/len`, IPv6 bracketed (`[::1]/128`) or bare.
//! `*_listen` keys (poshta's own) take `port`, `ipv4:port` or `[ipv6]:port`.
//!
//! A bad value is an error diagnostic with file:line, and the key keeps its default, so
//! [`load`] always returns usable [`Settings`]. The key table is [`keys::KEYS`].

pub mod keys;
pub mod value;

mod expand;
mod parse;

use expand::{FileValues, Resolver};
use keys::Kind;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// main.cf larger than this is refused: a mail server's config is a few KiB.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

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
    /// mynetworks entries as written (`127.0.0.0/8`, `[::1]/128`, `10.1.2.3`); each
    /// parses with [`value::parse_network`].
    pub mynetworks: Vec<String>,
    /// smtpd_forbid_bare_newline_exclusions (default $mynetworks), entries as written.
    pub smtpd_forbid_bare_newline_exclusions: Vec<String>,
    /// Addresses to bind for listeners without an address (from inet_interfaces +
    /// inet_protocols): `all` gives 0.0.0.0 and/or ::, `loopback-only` 127.0.0.1 and/or ::1.
    pub inet_interfaces: Vec<std::net::IpAddr>,
    pub inet_protocols: InetProtocols,
    /// smtpd_listen resolved to socket addresses (empty: SMTP service off). Binding both
    /// `0.0.0.0:p` and `[::]:p` needs IPV6_V6ONLY on the IPv6 socket.
    pub smtpd_listen: Vec<SocketAddr>,
    /// Bytes; 0 means no limit (Postfix).
    pub message_size_limit: u64,
    pub queue_directory: PathBuf,
    /// Bytes the queue's file system keeps free (Postfix's queue_minfree; net::smtp).
    pub queue_minfree: u64,
    pub home_mailbox: String,
    pub virtual_mailbox_base: PathBuf,
    pub mailbox_users_file: PathBuf,
    /// At least limits::SMTP_RECIPIENTS_MIN.
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
    /// submission_listen (STARTTLS, port 587 / 2587), resolved like smtpd_listen.
    pub submission_listen: Vec<SocketAddr>,
    /// submissions_listen (implicit TLS, RFC 8314 §3.3; port 465 / 2465).
    pub submissions_listen: Vec<SocketAddr>,
    /// pop3d_listen (POP3 with STLS, port 110 / 2110).
    pub pop3d_listen: Vec<SocketAddr>,
    /// pop3s_listen (POP3 over implicit TLS, port 995 / 2995).
    pub pop3s_listen: Vec<SocketAddr>,
    /// smtpd_tls_cert_file, absolute; None when empty (TLS off: no STARTTLS/STLS offered,
    /// implicit-TLS listeners cannot serve).
    pub smtpd_tls_cert_file: Option<PathBuf>,
    /// smtpd_tls_key_file, absolute; None when empty.
    pub smtpd_tls_key_file: Option<PathBuf>,
    pub smtpd_tls_security_level: TlsSecurityLevel,
    /// Offer AUTH only on TLS-protected sessions.
    pub smtpd_tls_auth_only: bool,
    /// smtpd_starttls_timeout: bound on one TLS handshake.
    pub smtpd_starttls_timeout_secs: u64,
    /// smtpd_sasl_auth_enable: AUTH on the smtpd_listen port (submission ports always).
    pub smtpd_sasl_auth_enable: bool,
    /// reject_authenticated_sender_login_mismatch (poshta's switch for Postfix's restriction).
    pub reject_authenticated_sender_login_mismatch: bool,
    /// auth_cache_ttl (0: no cache).
    pub auth_cache_ttl_secs: u64,
    pub auth_failure_limit: u32,
    pub auth_failure_window_secs: u64,
    pub auth_failure_penalty_secs: u64,
    pub pop3d_autologout_secs: u64,
    /// anvil-style client limits (0: no limit) and who is exempt.
    pub smtpd_client_connection_count_limit: u32,
    pub smtpd_client_connection_rate_limit: u32,
    pub smtpd_client_message_rate_limit: u32,
    pub smtpd_client_recipient_rate_limit: u32,
    pub smtpd_client_event_limit_exceptions: Vec<String>,
    pub anvil_rate_time_unit_secs: u64,
    pub pop3d_disable_plaintext_auth: bool,
    /// syslog_name: the log tag (`postfix-poshta/smtpd[pid]: ...`).
    pub syslog_name: String,
    /// bounce_queue_lifetime: how long a bounce (null sender) is retried.
    pub bounce_queue_lifetime_secs: u64,
    /// delay_warning_time; 0 means no delay warnings.
    pub delay_warning_time_secs: u64,
    /// relayhost as written (`[host]:port`, `host:port`, ...; empty: MX delivery). Checked
    /// at load; parse with `delivery::route::RouteConfig::parse_relayhost`.
    pub relayhost: String,
    /// transport_maps table references (`hash:/etc/poshta/transport`); files checked at load.
    pub transport_maps: Vec<String>,
    pub smtp_sasl_auth_enable: bool,
    /// smtp_sasl_password_maps table references; files checked at load (file:line errors).
    pub smtp_sasl_password_maps: Vec<String>,
    /// smtp_sasl_auth_soft_bounce: a refused AUTH defers instead of bouncing.
    pub smtp_sasl_auth_soft_bounce: bool,
    pub smtp_sender_dependent_authentication: bool,
    pub smtp_tls_security_level: ClientTlsLevel,
    /// smtp_tls_wrappermode: implicit TLS (port 465) instead of STARTTLS.
    pub smtp_tls_wrappermode: bool,
    /// smtp_tls_CAfile, absolute; None: the system's roots.
    pub smtp_tls_ca_file: Option<PathBuf>,
    pub smtp_helo_name: String,
    /// No DNS for outbound mail: disable_dns_lookups = yes or smtp_dns_support_level =
    /// disabled (hosts file only).
    pub disable_dns_lookups: bool,
    /// dns_resolver: the DNS servers to ask (empty: /etc/resolv.conf). Checked at load.
    pub dns_resolver: Vec<String>,
    /// smtp_mx_address_limit (0: poshta's own bound, limits::DNS_MX_RECORDS_MAX).
    pub smtp_mx_address_limit: usize,
    /// smtp_mx_session_limit (0: no limit but the address limit).
    pub smtp_mx_session_limit: usize,
    pub smtp_connect_timeout_secs: u64,
    pub smtp_helo_timeout_secs: u64,
    pub smtp_starttls_timeout_secs: u64,
    pub smtp_mail_timeout_secs: u64,
    pub smtp_rcpt_timeout_secs: u64,
    pub smtp_data_init_timeout_secs: u64,
    pub smtp_data_xfer_timeout_secs: u64,
    pub smtp_data_done_timeout_secs: u64,
    pub smtp_rset_timeout_secs: u64,
    pub smtp_quit_timeout_secs: u64,
    /// smtp_destination_concurrency_limit (default $default_destination_concurrency_limit, 20).
    pub smtp_destination_concurrency_limit: usize,
    /// smtp_destination_recipient_limit (default $default_destination_recipient_limit, 50).
    pub smtp_destination_recipient_limit: usize,
    /// smtpd_*_restrictions, expanded, as written (each validated by
    /// policy::restrictions::parse_list; build them with RestrictionLists::from_settings).
    pub smtpd_client_restrictions: String,
    pub smtpd_helo_restrictions: String,
    pub smtpd_sender_restrictions: String,
    pub smtpd_relay_restrictions: String,
    pub smtpd_recipient_restrictions: String,
    pub smtpd_data_restrictions: String,
    /// smtpd_delay_reject (default yes).
    pub smtpd_delay_reject: bool,
    /// parent_domain_matches_subdomains entries (lowercased feature names).
    pub parent_domain_matches_subdomains: Vec<String>,
    /// alias_maps entries as written (`hash:/etc/aliases`); see policy::aliases.
    pub alias_maps: Vec<String>,
    /// alias_database as written (what `newaliases` checks).
    pub alias_database: String,
    /// allow_mail_to_commands / allow_mail_to_files classes (lowercased: alias, forward,
    /// include).
    pub allow_mail_to_commands: Vec<String>,
    pub allow_mail_to_files: Vec<String>,
    /// hopcount_limit: more Received: headers than this bounce as a mail loop (5.4.6).
    pub hopcount_limit: usize,
    /// mail_owner: the user the daemon runs as after binding its ports (as root).
    pub mail_owner: String,
    /// mail_spool_directory: mbox mailboxes of system users (`/var/mail`).
    pub mail_spool_directory: PathBuf,
    /// mailbox_size_limit (bytes; 0: no limit).
    pub mailbox_size_limit: u64,
}

/// smtp_tls_security_level (Postfix names; empty means `none`, as Postfix where empty falls
/// back to the legacy smtp_use_tls = no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsLevel {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered; no certificate check; plaintext otherwise.
    May,
    /// TLS or defer. poshta also verifies the certificate here (stricter than Postfix's
    /// encrypt, see net/relay.rs): never send to a peer it cannot authenticate.
    Encrypt,
    /// TLS with a certificate that verifies and matches the next-hop name (Postfix: verify).
    Verify,
    /// Like Verify; Postfix's secure does not trust MX names from DNS.
    Secure,
}

impl ClientTlsLevel {
    fn parse(s: &str) -> ClientTlsLevel {
        match s.trim().to_ascii_lowercase().as_str() {
            "may" => ClientTlsLevel::May,
            "encrypt" => ClientTlsLevel::Encrypt,
            "verify" => ClientTlsLevel::Verify,
            "secure" => ClientTlsLevel::Secure,
            _ => ClientTlsLevel::None,
        }
    }
}

/// smtpd_tls_security_level (Postfix names). Empty in main.cf means `none`, as Postfix
/// (where empty falls back to the legacy smtpd_use_tls = no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSecurityLevel {
    /// No STARTTLS offered.
    None,
    /// STARTTLS offered, plaintext allowed (RFC 3207 opportunistic TLS).
    May,
    /// Mail commands refused until STARTTLS (RFC 3207 §4: `530 5.7.0 Must issue a STARTTLS
    /// command first`).
    Encrypt,
}

impl TlsSecurityLevel {
    fn parse(s: &str) -> TlsSecurityLevel {
        match s.trim().to_ascii_lowercase().as_str() {
            "may" => TlsSecurityLevel::May,
            "encrypt" => TlsSecurityLevel::Encrypt,
            _ => TlsSecurityLevel::None,
        }
    }
}

/// One parameter as `postconf` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// In the key table (false: a user-defined parameter set in main.cf).
    pub known: bool,
    /// Default text as `postconf -d` prints it ("" for unknown parameters).
    pub default: String,
    /// Default, expanded (`postconf -d -x`).
    pub default_expanded: String,
    /// Raw value as set in main.cf (the last assignment), and its line.
    pub set: Option<(String, usize)>,
    /// Effective value, expanded (`postconf -x`); the default when the set value is bad.
    pub expanded: String,
}

impl Param {
    /// The effective unexpanded value: as set in main.cf, else the default text.
    pub fn value(&self) -> &str {
        match &self.set {
            Some((v, _)) => v,
            None => &self.default,
        }
    }
}

/// Result of loading: settings (always, falling back to defaults for bad values) plus
/// every problem found.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub diagnostics: Vec<Diagnostic>,
    /// Every known key plus every parameter set in main.cf, sorted by name.
    pub params: Vec<Param>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.params.get(i))
    }
}

/// What the defaults depend on besides main.cf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// Root gets appliance defaults (ports 25..., /var/spool/poshta); others get the
    /// first-run defaults under config_directory.
    pub is_root: bool,
    /// The system host name (myhostname default).
    pub hostname: String,
}

impl Env {
    /// The running process: effective uid and uname's node name.
    pub fn system() -> Env {
        let uts = rustix::system::uname();
        let name = uts.nodename().to_string_lossy().trim().to_string();
        // uname gives "(none)" or "" when nothing is set; Postfix would refuse to start.
        let hostname = if name.is_empty() || name == "(none)" {
            "localhost".to_string()
        } else {
            name
        };
        Env {
            is_root: rustix::process::geteuid().is_root(),
            hostname,
        }
    }
}

/// The main.cf path to use: an explicit `-c PATH`, else $POSHTA_CONFIG, else
/// /etc/poshta/main.cf as root, ./poshta/main.cf otherwise.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    config_path_with(
        explicit,
        std::env::var_os("POSHTA_CONFIG"),
        rustix::process::geteuid().is_root(),
    )
}

fn config_path_with(explicit: Option<&Path>, env_var: Option<std::ffi::OsString>, is_root: bool) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match env_var {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ if is_root => PathBuf::from("/etc/poshta/main.cf"),
        _ => PathBuf::from("poshta/main.cf"),
    }
}

/// Load main.cf at `path` (missing file: embedded defaults, no error).
pub fn load(path: &Path) -> Result<Loaded, std::io::Error> {
    load_env(path, &Env::system())
}

/// [`load`] with explicit root-ness and host name.
pub fn load_env(path: &Path, env: &Env) -> Result<Loaded, std::io::Error> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(load_text(path, None, env)),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    (&mut f).take(CONFIG_FILE_BYTES_MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > CONFIG_FILE_BYTES_MAX {
        let mut l = load_text(path, None, env);
        l.diagnostics.push(Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            severity: Severity::Error,
            message: format!("file is larger than {CONFIG_FILE_BYTES_MAX} bytes; using the defaults"),
        });
        return Ok(l);
    }
    Ok(load_text(path, Some(&buf), env))
}

/// The settings of an empty main.cf at `path` (what `postconf -d` shows).
pub fn load_defaults(path: &Path, env: &Env) -> Loaded {
    load_text(path, None, env)
}

/// Diagnostics collector for one file.
struct Diags {
    file: PathBuf,
    list: Vec<Diagnostic>,
}

impl Diags {
    fn push(&mut self, line: usize, severity: Severity, message: String) {
        let d = Diagnostic {
            file: self.file.clone(),
            line,
            severity,
            message,
        };
        if !self.list.contains(&d) {
            self.list.push(d);
        }
    }
    fn warn(&mut self, line: usize, message: String) {
        self.push(line, Severity::Warning, message);
    }
    fn error(&mut self, line: usize, message: String) {
        self.push(line, Severity::Error, message);
    }
}

/// Check an expanded value against its key's kind. Ok carries warnings.
fn validate(kind: Kind, v: &str) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    match kind {
        Kind::Str | Kind::List | Kind::OptPath | Kind::ReadOnly => {}
        Kind::Bool => {
            value::parse_bool(v)?;
        }
        Kind::Int { min } => {
            let n = value::parse_u64(v)?;
            if n < min {
                return Err(format!("value {n} is below the minimum {min}"));
            }
            // Postfix keeps these in a C int; poshta in usize, which may be 32 bits.
            if n > u64::from(i32::MAX as u32) {
                return Err(format!("value {n} is too large"));
            }
        }
        Kind::Size => {
            value::parse_u64(v)?;
        }
        Kind::Time { unit } => {
            value::parse_time(v, unit)?;
        }
        Kind::Path => {
            if v.is_empty() {
                return Err("empty path".into());
            }
        }
        Kind::Hostname => value::check_hostname(v)?,
        Kind::DomainList => {
            for d in value::split_list(v) {
                value::check_hostname(&d).map_err(|e| format!("{e} (poshta accepts only domain names here)"))?;
            }
        }
        Kind::Networks => {
            for n in value::split_list(v) {
                let (ip, len) = value::parse_network(&n)?;
                if value::has_host_bits(ip, len) {
                    warnings.push(format!(
                        "non-null host address bits in \"{n}\", perhaps you should use \"{}\" instead",
                        masked(ip, len)
                    ));
                }
            }
        }
        Kind::Interfaces => {
            interfaces_of(v, InetProtocols::All)?;
        }
        Kind::Protocols => {
            protocols_of(v)?;
        }
        Kind::Listen => {
            for e in value::split_list(v) {
                value::parse_listen(&e)?;
            }
        }
        Kind::Restrictions => {
            crate::policy::restrictions::parse_list("restrictions", v)
                .map_err(|e| e.strip_prefix("restrictions: ").map(str::to_string).unwrap_or(e))?;
        }
        Kind::OneOf(words) => {
            if !words.contains(&v) {
                let shown: Vec<&str> = words.iter().copied().filter(|w| !w.is_empty()).collect();
                return Err(format!("bad value \"{v}\" (use one of: {})", shown.join(", ")));
            }
        }
    }
    Ok(warnings)
}

/// `ip/len` with the host bits cleared, written the mynetworks way.
fn masked(ip: IpAddr, len: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            format!("{}/{len}", Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            format!("[{}]/{len}", Ipv6Addr::from(bits & m))
        }
    }
}

fn protocols_of(v: &str) -> Result<InetProtocols, String> {
    let mut v4 = false;
    let mut v6 = false;
    let list = value::split_list(v);
    for p in &list {
        match p.to_ascii_lowercase().as_str() {
            "all" => {
                v4 = true;
                v6 = true;
            }
            "ipv4" => v4 = true,
            "ipv6" => v6 = true,
            _ => return Err(format!("bad inet_protocols entry \"{p}\" (use all, ipv4, ipv6)")),
        }
    }
    match (v4, v6) {
        (true, true) => Ok(InetProtocols::All),
        (true, false) => Ok(InetProtocols::Ipv4),
        (false, true) => Ok(InetProtocols::Ipv6),
        (false, false) => Err("inet_protocols is empty (use all, ipv4, ipv6)".into()),
    }
}

/// inet_interfaces for the enabled protocols. Err when syntax is bad or nothing is left.
/// The second value lists addresses dropped because their protocol is disabled.
fn interfaces_of(v: &str, protos: InetProtocols) -> Result<(Vec<IpAddr>, Vec<IpAddr>), String> {
    let want4 = protos != InetProtocols::Ipv6;
    let want6 = protos != InetProtocols::Ipv4;
    let pick = |a4: Ipv4Addr, a6: Ipv6Addr| {
        let mut out = Vec::new();
        if want4 {
            out.push(IpAddr::V4(a4));
        }
        if want6 {
            out.push(IpAddr::V6(a6));
        }
        out
    };
    let t = v.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok((pick(Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED), Vec::new()));
    }
    if t.eq_ignore_ascii_case("loopback-only") {
        return Ok((pick(Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST), Vec::new()));
    }
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    for e in value::split_list(t) {
        let ip = value::parse_ip(&e)
            .ok_or_else(|| format!("bad inet_interfaces entry \"{e}\" (use all, loopback-only or IP addresses)"))?;
        if (ip.is_ipv4() && want4) || (ip.is_ipv6() && want6) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        } else {
            dropped.push(ip);
        }
    }
    if out.is_empty() && dropped.is_empty() {
        return Err("inet_interfaces is empty (use all, loopback-only or IP addresses)".into());
    }
    Ok((out, dropped))
}

/// Parse main.cf text (None: no file) into settings, params and diagnostics.
pub(crate) fn load_text(path: &Path, text: Option<&[u8]>, env: &Env) -> Loaded {
    let config_file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let config_directory = match config_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let cfg_dir_str = config_directory.to_string_lossy().into_owned();
    let mut diags = Diags {
        file: path.to_path_buf(),
        list: Vec::new(),
    };

    // Lex, then keep the last assignment of each name.
    let parsed = parse::parse(text.unwrap_or_default());
    for (line, sev, msg) in parsed.problems {
        diags.push(line, sev, msg);
    }
    let mut file: FileValues = HashMap::new();
    for e in parsed.entries {
        if e.name == "config_directory" {
            diags.warn(
                e.line,
                "config_directory is read-only (it is the directory of main.cf); ignored".into(),
            );
            continue;
        }
        if let Some((_, prev)) = file.get(&e.name) {
            diags.warn(
                e.line,
                format!("{} is also set on line {prev}; this later value wins", e.name),
            );
        }
        file.insert(e.name, (e.value, e.line));
    }
    let set_in_file = file.clone();

    // Pass 1: expand and validate every value set in the file; drop the bad ones so
    // they fall back to their defaults (also where other values reference them).
    let mut by_line: Vec<(&String, &(String, usize))> = set_in_file.iter().collect();
    by_line.sort_by_key(|(_, (_, line))| *line);
    let mut referenced = HashSet::new();
    {
        let mut r = Resolver::new(&set_in_file, env, &cfg_dir_str);
        for (name, (_, line)) in &by_line {
            let result = r
                .expand_key(name)
                .map_err(|e| e.0)
                .and_then(|v| match keys::find(name) {
                    Some(key) => validate(key.kind, &v).map_err(|e| format!("{name}: {e}")),
                    None => Ok(Vec::new()),
                });
            match result {
                Ok(warnings) => warnings
                    .into_iter()
                    .for_each(|w| diags.warn(*line, format!("{name}: {w}"))),
                Err(e) => {
                    let what = if keys::find(name).is_some() {
                        "using the default"
                    } else {
                        "ignored"
                    };
                    diags.error(*line, format!("{e}; {what}"));
                    file.remove(*name);
                }
            }
        }
        for (line, w) in r.warnings.drain(..) {
            diags.warn(line, w);
        }
        referenced.extend(r.referenced.drain());
    }
    for (name, (v, line)) in &by_line {
        if keys::find(name).is_none() && !referenced.contains(*name) && file.contains_key(*name) {
            diags.warn(*line, format!("unknown parameter: {name}={}", parse::shorten(v)));
        }
    }

    // Pass 2: effective values of every key with the bad assignments gone, and the
    // defaults alone (postconf -d, and the last fallback).
    let no_file = FileValues::new();
    let mut dr = Resolver::new(&no_file, env, &cfg_dir_str);
    let mut r = Resolver::new(&file, env, &cfg_dir_str);
    let mut eff: HashMap<String, String> = HashMap::new();
    let mut params = Vec::new();
    for key in keys::KEYS {
        let default_expanded = dr.expand_key(key.name).unwrap_or_default();
        let line = file.get(key.name).map(|(_, l)| *l).unwrap_or(0);
        let v = match r.expand_key(key.name).map_err(|e| e.0).and_then(|v| {
            validate(key.kind, &v)
                .map(|_| v)
                .map_err(|e| format!("{}: {e}", key.name))
        }) {
            Ok(v) => v,
            Err(e) => {
                diags.error(line, format!("{e}; using the default"));
                default_expanded.clone()
            }
        };
        eff.insert(key.name.to_string(), v.clone());
        let default = match key.default {
            keys::DefaultValue::Domain => expand::domain_of(&env.hostname),
            _ => expand::default_text(key, env, &cfg_dir_str),
        };
        params.push(Param {
            name: key.name.to_string(),
            known: true,
            default,
            default_expanded,
            set: set_in_file.get(key.name).cloned(),
            expanded: v,
        });
    }
    for (name, (v, line)) in &set_in_file {
        if keys::find(name).is_none() {
            params.push(Param {
                name: name.clone(),
                known: false,
                default: String::new(),
                default_expanded: String::new(),
                set: Some((v.clone(), *line)),
                expanded: r.expand_key(name).unwrap_or_default(),
            });
        }
    }
    for (line, w) in r.warnings.drain(..) {
        diags.warn(line, w);
    }
    params.sort_by(|a, b| a.name.cmp(&b.name));

    let line_of = |name: &str| file.get(name).map(|(_, l)| *l).unwrap_or(0);
    let settings = build_settings(
        &eff,
        &dr_defaults(&params),
        line_of,
        &mut diags,
        config_file,
        config_directory,
    );
    let mut diagnostics = diags.list;
    diagnostics.sort_by_key(|d| d.line);
    Loaded {
        settings,
        diagnostics,
        params,
    }
}

fn dr_defaults(params: &[Param]) -> HashMap<String, String> {
    params
        .iter()
        .map(|p| (p.name.clone(), p.default_expanded.clone()))
        .collect()
}

/// Typed view of validated, expanded values. A parse can only fail here if a default is
/// wrong (the key-table tests check they all parse); then the default, then the type's
/// zero value is used rather than panicking.
fn build_settings(
    eff: &HashMap<String, String>,
    dflt: &HashMap<String, String>,
    line_of: impl Fn(&str) -> usize,
    diags: &mut Diags,
    config_file: PathBuf,
    config_directory: PathBuf,
) -> Settings {
    let get = |name: &str| eff.get(name).map(String::as_str).unwrap_or_default();
    fn typed<T: std::default::Default, E>(
        eff: &HashMap<String, String>,
        dflt: &HashMap<String, String>,
        name: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> T {
        let e = eff.get(name).map(String::as_str).unwrap_or_default();
        let d = dflt.get(name).map(String::as_str).unwrap_or_default();
        f(e).or_else(|_| f(d)).unwrap_or_default()
    }
    let path = |name: &str| -> PathBuf {
        let p = PathBuf::from(get(name));
        if p.is_absolute() {
            p
        } else {
            config_directory.join(p)
        }
    };
    let int = |name: &str| -> usize {
        typed(eff, dflt, name, |s| {
            value::parse_u64(s)
                .map_err(|_| ())
                .and_then(|n| usize::try_from(n).map_err(|_| ()))
        })
    };
    // Counts that are u32 in Settings (the key table caps integers at i32::MAX anyway).
    let int32 = |name: &str| -> u32 { u32::try_from(int(name)).unwrap_or(u32::MAX) };
    let time = |name: &str| -> u64 {
        let unit = match keys::find(name).map(|k| k.kind) {
            Some(Kind::Time { unit }) => unit,
            _ => 's',
        };
        typed(eff, dflt, name, |s| value::parse_time(s, unit))
    };

    let inet_protocols = protocols_of(get("inet_protocols")).unwrap_or(InetProtocols::All);
    let inet_interfaces = match interfaces_of(get("inet_interfaces"), inet_protocols) {
        Ok((list, dropped)) if !list.is_empty() => {
            for ip in dropped {
                diags.warn(
                    line_of("inet_interfaces"),
                    format!("inet_interfaces: {ip} ignored: its protocol is not in inet_protocols"),
                );
            }
            list
        }
        _ => {
            diags.error(
                line_of("inet_interfaces"),
                "inet_interfaces: no address left for the protocols in inet_protocols; using the default".into(),
            );
            interfaces_of(
                dflt.get("inet_interfaces")
                    .map(String::as_str)
                    .unwrap_or("loopback-only"),
                inet_protocols,
            )
            .map(|(l, _)| l)
            .unwrap_or_default()
        }
    };
    // `port` entries bind on every inet_interfaces address; duplicates are dropped.
    let listen = |name: &str| -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for entry in value::split_list(get(name)) {
            let addrs = match value::parse_listen(&entry) {
                Ok(value::ListenEntry::Port(p)) => inet_interfaces.iter().map(|ip| SocketAddr::new(*ip, p)).collect(),
                Ok(value::ListenEntry::Addr(a)) => vec![a],
                Err(_) => Vec::new(),
            };
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    };
    let smtpd_listen = listen("smtpd_listen");
    let submission_listen = listen("submission_listen");
    let submissions_listen = listen("submissions_listen");
    let pop3d_listen = listen("pop3d_listen");
    let pop3s_listen = listen("pop3s_listen");
    let opt_path = |name: &str| -> Option<PathBuf> {
        if get(name).trim().is_empty() {
            None
        } else {
            Some(path(name))
        }
    };
    let mut smtpd_recipient_limit = int("smtpd_recipient_limit");
    if smtpd_recipient_limit < crate::limits::SMTP_RECIPIENTS_MIN {
        // RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
        diags.warn(
            line_of("smtpd_recipient_limit"),
            format!(
                "smtpd_recipient_limit {smtpd_recipient_limit} is below the RFC 5321 minimum; using {}",
                crate::limits::SMTP_RECIPIENTS_MIN
            ),
        );
        smtpd_recipient_limit = crate::limits::SMTP_RECIPIENTS_MIN;
    }
    let maillog = get("maillog_file");
    let relayhost = get("relayhost").trim().to_string();
    let relayhost = match crate::delivery::route::RouteConfig::parse_relayhost(&relayhost) {
        Ok(_) => relayhost,
        Err(e) => {
            diags.error(line_of("relayhost"), format!("{e}; mail goes by MX instead"));
            String::new()
        }
    };
    let transport_maps = value::split_list(get("transport_maps"));
    let smtp_sasl_password_maps = value::split_list(get("smtp_sasl_password_maps"));
    // Bad table lines are reported where they are (file:line), for `poshta check`.
    let (_, terrs) = crate::delivery::route::TransportMap::load(&transport_maps, &config_directory);
    let (_, serrs) = crate::delivery::route::SaslPasswords::load(&smtp_sasl_password_maps, &config_directory);
    for (key, errs) in [("transport_maps", terrs), ("smtp_sasl_password_maps", serrs)] {
        for e in errs {
            let d = if e.line == 0 {
                Diagnostic {
                    file: diags.file.clone(),
                    line: line_of(key),
                    severity: Severity::Error,
                    message: format!("{key}: {e}"),
                }
            } else {
                Diagnostic {
                    file: e.file,
                    line: e.line,
                    severity: Severity::Error,
                    message: e.message,
                }
            };
            if !diags.list.contains(&d) {
                diags.list.push(d);
            }
        }
    }
    let dns_level = get("smtp_dns_support_level").trim().to_ascii_lowercase();
    let dns_resolver = value::split_list(get("dns_resolver"));
    if let Err(e) = crate::dns::conf_from_servers(&dns_resolver) {
        diags.error(
            line_of("dns_resolver"),
            format!("dns_resolver: {e}; using /etc/resolv.conf"),
        );
    }
    Settings {
        bounce_queue_lifetime_secs: time("bounce_queue_lifetime"),
        delay_warning_time_secs: time("delay_warning_time"),
        relayhost,
        transport_maps,
        smtp_sasl_auth_enable: typed(eff, dflt, "smtp_sasl_auth_enable", value::parse_bool),
        smtp_sasl_password_maps,
        smtp_sasl_auth_soft_bounce: typed(eff, dflt, "smtp_sasl_auth_soft_bounce", value::parse_bool),
        smtp_sender_dependent_authentication: typed(
            eff,
            dflt,
            "smtp_sender_dependent_authentication",
            value::parse_bool,
        ),
        smtp_tls_security_level: ClientTlsLevel::parse(get("smtp_tls_security_level")),
        smtp_tls_wrappermode: typed(eff, dflt, "smtp_tls_wrappermode", value::parse_bool),
        smtp_tls_ca_file: opt_path("smtp_tls_CAfile"),
        smtp_helo_name: get("smtp_helo_name").to_string(),
        disable_dns_lookups: typed(eff, dflt, "disable_dns_lookups", value::parse_bool) || dns_level == "disabled",
        dns_resolver,
        smtp_mx_address_limit: int("smtp_mx_address_limit"),
        smtp_mx_session_limit: int("smtp_mx_session_limit"),
        smtp_connect_timeout_secs: time("smtp_connect_timeout"),
        smtp_helo_timeout_secs: time("smtp_helo_timeout"),
        smtp_starttls_timeout_secs: time("smtp_starttls_timeout"),
        smtp_mail_timeout_secs: time("smtp_mail_timeout"),
        smtp_rcpt_timeout_secs: time("smtp_rcpt_timeout"),
        smtp_data_init_timeout_secs: time("smtp_data_init_timeout"),
        smtp_data_xfer_timeout_secs: time("smtp_data_xfer_timeout"),
        smtp_data_done_timeout_secs: time("smtp_data_done_timeout"),
        smtp_rset_timeout_secs: time("smtp_rset_timeout"),
        smtp_quit_timeout_secs: time("smtp_quit_timeout"),
        smtp_destination_concurrency_limit: int("smtp_destination_concurrency_limit").max(1),
        smtp_destination_recipient_limit: int("smtp_destination_recipient_limit").max(1),
        myhostname: get("myhostname").to_string(),
        mydomain: get("mydomain").to_string(),
        myorigin: get("myorigin").to_string(),
        mydestination: value::split_list(&get("mydestination").to_ascii_lowercase()),
        mynetworks: value::split_list(get("mynetworks")),
        smtpd_forbid_bare_newline_exclusions: value::split_list(get("smtpd_forbid_bare_newline_exclusions")),
        inet_interfaces,
        inet_protocols,
        smtpd_listen,
        message_size_limit: typed(eff, dflt, "message_size_limit", value::parse_u64),
        queue_directory: path("queue_directory"),
        queue_minfree: typed(eff, dflt, "queue_minfree", value::parse_u64),
        home_mailbox: get("home_mailbox").to_string(),
        virtual_mailbox_base: path("virtual_mailbox_base"),
        mailbox_users_file: path("mailbox_users_file"),
        smtpd_recipient_limit,
        smtpd_timeout_secs: time("smtpd_timeout"),
        smtpd_sessions_max: int("smtpd_sessions_max").max(1),
        recipient_delimiter: get("recipient_delimiter").to_string(),
        minimal_backoff_time_secs: time("minimal_backoff_time"),
        maximal_backoff_time_secs: time("maximal_backoff_time"),
        maximal_queue_lifetime_secs: time("maximal_queue_lifetime"),
        maillog_file: if maillog.is_empty() {
            None
        } else {
            Some(path("maillog_file"))
        },
        delivery_paused: typed(eff, dflt, "delivery_paused", value::parse_bool),
        submission_listen,
        submissions_listen,
        pop3d_listen,
        pop3s_listen,
        smtpd_tls_cert_file: opt_path("smtpd_tls_cert_file"),
        smtpd_tls_key_file: opt_path("smtpd_tls_key_file"),
        smtpd_tls_security_level: TlsSecurityLevel::parse(get("smtpd_tls_security_level")),
        smtpd_tls_auth_only: typed(eff, dflt, "smtpd_tls_auth_only", value::parse_bool),
        smtpd_starttls_timeout_secs: time("smtpd_starttls_timeout"),
        smtpd_sasl_auth_enable: typed(eff, dflt, "smtpd_sasl_auth_enable", value::parse_bool),
        reject_authenticated_sender_login_mismatch: typed(
            eff,
            dflt,
            "reject_authenticated_sender_login_mismatch",
            value::parse_bool,
        ),
        auth_cache_ttl_secs: time("auth_cache_ttl"),
        auth_failure_limit: int32("auth_failure_limit"),
        auth_failure_window_secs: time("auth_failure_window"),
        auth_failure_penalty_secs: time("auth_failure_penalty"),
        syslog_name: get("syslog_name").to_string(),
        smtpd_client_restrictions: get("smtpd_client_restrictions").to_string(),
        smtpd_helo_restrictions: get("smtpd_helo_restrictions").to_string(),
        smtpd_sender_restrictions: get("smtpd_sender_restrictions").to_string(),
        smtpd_relay_restrictions: get("smtpd_relay_restrictions").to_string(),
        smtpd_recipient_restrictions: get("smtpd_recipient_restrictions").to_string(),
        smtpd_data_restrictions: get("smtpd_data_restrictions").to_string(),
        smtpd_delay_reject: typed(eff, dflt, "smtpd_delay_reject", value::parse_bool),
        parent_domain_matches_subdomains: value::split_list(
            &get("parent_domain_matches_subdomains").to_ascii_lowercase(),
        ),
        pop3d_autologout_secs: time("pop3d_autologout"),
        smtpd_client_connection_count_limit: int32("smtpd_client_connection_count_limit"),
        smtpd_client_connection_rate_limit: int32("smtpd_client_connection_rate_limit"),
        smtpd_client_message_rate_limit: int32("smtpd_client_message_rate_limit"),
        smtpd_client_recipient_rate_limit: int32("smtpd_client_recipient_rate_limit"),
        smtpd_client_event_limit_exceptions: value::split_list(get("smtpd_client_event_limit_exceptions"))
            .into_iter()
            .map(|x| x.to_string())
            .collect(),
        anvil_rate_time_unit_secs: time("anvil_rate_time_unit"),
        pop3d_disable_plaintext_auth: typed(eff, dflt, "pop3d_disable_plaintext_auth", value::parse_bool),
        alias_maps: value::split_list(get("alias_maps")),
        alias_database: get("alias_database").trim().to_string(),
        allow_mail_to_commands: value::split_list(&get("allow_mail_to_commands").to_ascii_lowercase()),
        allow_mail_to_files: value::split_list(&get("allow_mail_to_files").to_ascii_lowercase()),
        hopcount_limit: int("hopcount_limit").max(1),
        mail_owner: get("mail_owner").trim().to_string(),
        mail_spool_directory: path("mail_spool_directory"),
        mailbox_size_limit: typed(eff, dflt, "mailbox_size_limit", value::parse_u64),
        config_file,
        config_directory,
    }
}

#[cfg(test)]
mod tests;

/// The TLS, submission and POP3 keys (issue 4).
#[cfg(test)]
mod tls_key_tests {
    use super::*;

    fn env(is_root: bool) -> Env {
        Env {
            is_root,
            hostname: "mail.example.org".into(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn user_defaults() {
        let l = load_text(Path::new("/home/u/poshta/main.cf"), None, &env(false));
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        let s = &l.settings;
        assert_eq!(
            s.smtpd_tls_cert_file,
            Some(PathBuf::from("/home/u/poshta/tls/cert.pem"))
        );
        assert_eq!(s.smtpd_tls_key_file, Some(PathBuf::from("/home/u/poshta/tls/key.pem")));
        assert_eq!(s.smtpd_tls_security_level, TlsSecurityLevel::May);
        assert!(s.smtpd_tls_auth_only);
        assert_eq!(s.smtpd_starttls_timeout_secs, 300);
        assert_eq!(s.submission_listen, vec![sa("127.0.0.1:2587"), sa("[::1]:2587")]);
        assert_eq!(s.submissions_listen, vec![sa("127.0.0.1:2465"), sa("[::1]:2465")]);
        assert_eq!(s.pop3d_listen, vec![sa("127.0.0.1:2110"), sa("[::1]:2110")]);
        assert_eq!(s.pop3s_listen, vec![sa("127.0.0.1:2995"), sa("[::1]:2995")]);
        assert_eq!(
            l.param("smtpd_tls_cert_file").unwrap().default,
            "$config_directory/tls/cert.pem"
        );
        for name in [
            "smtpd_tls_cert_file",
            "smtpd_tls_key_file",
            "smtpd_tls_security_level",
            "smtpd_tls_auth_only",
            "smtpd_starttls_timeout",
            "submission_listen",
            "submissions_listen",
            "pop3d_listen",
            "pop3s_listen",
        ] {
            assert!(keys::find(name).unwrap().used, "{name} should be marked used");
        }
    }

    #[test]
    fn root_defaults() {
        let l = load_text(Path::new("/etc/poshta/main.cf"), None, &env(true));
        let s = &l.settings;
        assert_eq!(s.smtpd_tls_cert_file, Some(PathBuf::from("/etc/poshta/tls/cert.pem")));
        assert_eq!(s.smtpd_tls_key_file, Some(PathBuf::from("/etc/poshta/tls/key.pem")));
        assert_eq!(s.submission_listen, vec![sa("0.0.0.0:587"), sa("[::]:587")]);
        assert_eq!(s.submissions_listen, vec![sa("0.0.0.0:465"), sa("[::]:465")]);
        assert_eq!(s.pop3d_listen, vec![sa("0.0.0.0:110"), sa("[::]:110")]);
        assert_eq!(s.pop3s_listen, vec![sa("0.0.0.0:995"), sa("[::]:995")]);
    }

    #[test]
    fn set_values() {
        let text = "smtpd_tls_cert_file = certs/fullchain.pem\n\
                    smtpd_tls_key_file = /etc/ssl/private/k.pem\n\
                    smtpd_tls_security_level = encrypt\n\
                    smtpd_tls_auth_only = no\n\
                    smtpd_starttls_timeout = 2m\n\
                    submission_listen = 10.0.0.1:587, 587\n\
                    submissions_listen =\n\
                    pop3d_listen = [::1]:110\n\
                    pop3s_listen = 995 995\n";
        let l = load_text(Path::new("/srv/p/main.cf"), Some(text.as_bytes()), &env(false));
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        let s = &l.settings;
        assert_eq!(s.smtpd_tls_cert_file, Some(PathBuf::from("/srv/p/certs/fullchain.pem")));
        assert_eq!(s.smtpd_tls_key_file, Some(PathBuf::from("/etc/ssl/private/k.pem")));
        assert_eq!(s.smtpd_tls_security_level, TlsSecurityLevel::Encrypt);
        assert!(!s.smtpd_tls_auth_only);
        assert_eq!(s.smtpd_starttls_timeout_secs, 120);
        assert_eq!(
            s.submission_listen,
            vec![sa("10.0.0.1:587"), sa("127.0.0.1:587"), sa("[::1]:587")]
        );
        assert!(s.submissions_listen.is_empty());
        assert_eq!(s.pop3d_listen, vec![sa("[::1]:110")]);
        assert_eq!(s.pop3s_listen, vec![sa("127.0.0.1:995"), sa("[::1]:995")]);
    }

    #[test]
    fn empty_tls_files_mean_no_tls_and_empty_level_means_none() {
        let text = "smtpd_tls_cert_file =\nsmtpd_tls_key_file =\nsmtpd_tls_security_level =\n";
        let l = load_text(Path::new("/srv/p/main.cf"), Some(text.as_bytes()), &env(false));
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        assert_eq!(l.settings.smtpd_tls_cert_file, None);
        assert_eq!(l.settings.smtpd_tls_key_file, None);
        assert_eq!(l.settings.smtpd_tls_security_level, TlsSecurityLevel::None);
    }

    #[test]
    fn bad_values_fall_back_with_errors() {
        let text = "smtpd_tls_security_level = always\n\
                    smtpd_tls_auth_only = maybe\n\
                    smtpd_starttls_timeout = soon\n\
                    submission_listen = 587, smtp\n\
                    pop3s_listen = 99999\n";
        let l = load_text(Path::new("/srv/p/main.cf"), Some(text.as_bytes()), &env(false));
        let errors: Vec<usize> = l
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.line)
            .collect();
        assert_eq!(errors, vec![1, 2, 3, 4, 5], "{:?}", l.diagnostics);
        let s = &l.settings;
        assert_eq!(s.smtpd_tls_security_level, TlsSecurityLevel::May);
        assert!(s.smtpd_tls_auth_only);
        assert_eq!(s.smtpd_starttls_timeout_secs, 300);
        assert_eq!(s.submission_listen, vec![sa("127.0.0.1:2587"), sa("[::1]:2587")]);
        assert_eq!(s.pop3s_listen, vec![sa("127.0.0.1:2995"), sa("[::1]:2995")]);
    }
}

/// The outbound (relay) keys (issue 6).
#[cfg(test)]
mod relay_key_tests {
    use super::*;

    fn env() -> Env {
        Env {
            is_root: false,
            hostname: "mail.example.org".into(),
        }
    }

    #[test]
    fn defaults_are_postfixs() {
        let l = load_text(Path::new("/home/u/poshta/main.cf"), None, &env());
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        let s = &l.settings;
        assert_eq!(s.relayhost, "");
        assert!(s.transport_maps.is_empty() && s.smtp_sasl_password_maps.is_empty());
        assert!(!s.smtp_sasl_auth_enable && s.smtp_sasl_auth_soft_bounce);
        assert_eq!(s.smtp_tls_security_level, ClientTlsLevel::None);
        assert!(!s.smtp_tls_wrappermode && !s.disable_dns_lookups);
        assert_eq!(s.smtp_tls_ca_file, None);
        assert_eq!(s.smtp_helo_name, "mail.example.org");
        let t = (
            s.smtp_connect_timeout_secs,
            s.smtp_helo_timeout_secs,
            s.smtp_mail_timeout_secs,
            s.smtp_rcpt_timeout_secs,
            s.smtp_data_init_timeout_secs,
            s.smtp_data_xfer_timeout_secs,
            s.smtp_data_done_timeout_secs,
            s.smtp_quit_timeout_secs,
            s.smtp_rset_timeout_secs,
            s.smtp_starttls_timeout_secs,
        );
        assert_eq!(t, (30, 300, 300, 300, 120, 180, 600, 300, 20, 300));
        assert_eq!(s.smtp_destination_concurrency_limit, 20);
        assert_eq!(s.smtp_destination_recipient_limit, 50);
        assert_eq!(s.delay_warning_time_secs, 0);
        assert_eq!(s.bounce_queue_lifetime_secs, 5 * 86400);
        assert_eq!(s.maximal_queue_lifetime_secs, 5 * 86400);
    }

    #[test]
    fn smarthost_setup_and_bad_maps() {
        let dir = crate::testutil::TempDir::new(&format!("poshta-relay-keys-{}", std::process::id()));
        std::fs::write(
            dir.join("sasl_passwd"),
            "[smtp.provider.net]:587 user:pw\nbroken-line\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("transport"),
            "lab.example smtp:[10.0.0.5]\nx.example nosuch:\n",
        )
        .unwrap();
        let text = "relayhost = [smtp.provider.net]:587\n\
                    smtp_sasl_auth_enable = yes\n\
                    smtp_sasl_password_maps = hash:$config_directory/sasl_passwd\n\
                    transport_maps = hash:transport\n\
                    smtp_tls_security_level = encrypt\n\
                    smtp_tls_CAfile = ca.pem\n\
                    smtp_dns_support_level = disabled\n\
                    default_destination_recipient_limit = 10\n\
                    delay_warning_time = 4\n";
        let l = load_text(&dir.join("main.cf"), Some(text.as_bytes()), &env());
        let s = &l.settings;
        assert_eq!(s.relayhost, "[smtp.provider.net]:587");
        assert!(s.smtp_sasl_auth_enable);
        assert_eq!(s.smtp_tls_security_level, ClientTlsLevel::Encrypt);
        assert_eq!(s.smtp_tls_ca_file, Some(dir.join("ca.pem")));
        assert!(s.disable_dns_lookups);
        assert_eq!(s.smtp_destination_recipient_limit, 10);
        assert_eq!(s.delay_warning_time_secs, 4 * 3600);
        // Bad table lines are reported at their own file and line.
        let d: Vec<String> = l.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|x| x.starts_with(&format!("{}:2: error: ", dir.join("sasl_passwd").display()))),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|x| x.starts_with(&format!("{}:2: error: ", dir.join("transport").display()))),
            "{d:?}"
        );
        // A bad relayhost and a level poshta does not implement are errors.
        let l = load_text(
            &dir.join("main.cf"),
            Some(
                b"relayhost = 2001:db8::1\nsmtp_tls_security_level = dane\nsmtp_sasl_password_maps = /nonexistent/x\n",
            ),
            &env(),
        );
        let d: Vec<String> = l.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d.iter().any(|x| x.contains(":1: error: ") && x.contains("brackets")),
            "{d:?}"
        );
        assert_eq!(l.settings.relayhost, "");
        assert_eq!(l.settings.smtp_tls_security_level, ClientTlsLevel::None);
    }
}
