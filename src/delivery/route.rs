//! Where non-local mail goes: relayhost, transport_maps, smtp_sasl_password_maps, the hosts
//! file for `disable_dns_lookups = yes`, and the retry/lifetime policy. Pure functions and
//! parsers; no DNS, no sockets (the delivery runner resolves and connects).
//!
//! # Next hop (relayhost, the nexthop of a transport entry)
//! ```text
//! nexthop = "[" host "]" [ ":" port ]     ; no MX lookup: connect to host itself
//!         | "[ipv6:" addr "]" [ ":" port ]; Postfix's IPv6 literal form, same as [addr]
//!         | host [ ":" port ]             ; MX lookup of host (RFC 5321 §5.1)
//! port    = 1..65535 | "smtp" (25) | "submission" (587) | "submissions" | "smtps" (465)
//! ```
//! The default port is 25. An IPv6 address must be in brackets; an IP address is never
//! looked up as MX. With DNS disabled, `mx_lookup` hosts are looked up in the hosts file.
//!
//! # Lookup tables (Postfix's text form; no `postmap` step needed)
//! Named in main.cf as `/path`, or `type:/path` with type `hash`, `btree`, `lmdb`, `cdb`,
//! `dbm` or `texthash` (the text file itself is read: `hash:/etc/poshta/sasl_passwd`
//! reads `/etc/poshta/sasl_passwd`, not the `.db`). Relative paths are taken from
//! config_directory.
//! ```text
//! file    = *( line LF )
//! line    = key 1*WSP value      ; a logical line
//!         | WSP text             ; continues the previous logical line (Postfix)
//!         | [WSP] "#" text       ; comment
//!         | *WSP                 ; ignored
//! ```
//! Keys are case-insensitive. A key given twice: the first wins, the second is reported.
//! Bad lines are reported as `file:line: message` and skipped; the good lines still work.
//!
//! ## transport_maps (transport(5))
//! ```text
//! key   = user@domain | domain | .domain | "*"
//! value = [transport] ":" [nexthop]
//! transport = "smtp" | "relay"     ; SMTP to nexthop (default: the recipient domain, MX)
//!           | "local" | "virtual"  ; local delivery (the nexthop is ignored)
//!           | "error"              ; bounce, the nexthop is the text ("5.1.1 no such user")
//!           | "retry"              ; defer, the nexthop is the text
//!           | ""                   ; keep the transport routing would use anyway
//! ```
//! Search order (transport(5) TABLE SEARCH ORDER): `user@domain`, `domain`, then `.parent`
//! for each parent domain (`a.b.example` tries `.b.example`, `.example`), then `*`.
//! `domain` matches that domain only; `.domain` its subdomains only. `:` alone (empty
//! transport and nexthop) means "route as if the table had no entry" and stops the search.
//! A non-empty transport with an empty nexthop sends to the recipient domain (transport(5)).
//!
//! ## smtp_sasl_password_maps (Postfix's sasl_passwd)
//! ```text
//! key   = "[" host "]:" port | "[" host "]" | host ":" port | host | user@domain | @domain
//! value = username ":" password  ; split at the first ":" (the password may contain ":")
//! ```
//! Lookup order: the sender (`user@domain`, then `@domain`; only when the caller passes
//! one: smtp_sender_dependent_authentication), the next hop as routing wrote it
//! (`[smtp.provider.net]:587`), its other spellings (`[host]`, `host:port`, `host`), then
//! the name of the host actually connected to (an MX host).
//!
//! # Hosts file (hosts(5), for disable_dns_lookups / smtp_dns_support_level = disabled)
//! `address name [alias ...]`, `#` starts a comment. Names are case-insensitive, a trailing
//! dot is ignored. A name's addresses are returned in file order, IPv4 and IPv6, each
//! once; lines with a bad address (or a `%zone`) are skipped.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::limits::{HOSTS_FILE_BYTES_MAX, MAP_FILE_BYTES_MAX, MAP_LINE_BYTES_MAX, SMTP_DOMAIN_BYTES_MAX};
use crate::proto::smtp::client::SaslLogin;

/// A next hop: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexthop {
    /// Host name or IP address (no brackets), lowercased.
    pub host: String,
    pub port: u16,
    /// Look up MX records of `host` (unbracketed name), else connect to `host` itself.
    pub mx_lookup: bool,
    /// The port was written (`:587`), for the password-map key.
    port_given: bool,
}

impl Nexthop {
    /// The MX destination for a recipient domain, port 25.
    pub fn domain(domain: &str) -> Nexthop {
        Nexthop {
            host: domain.to_ascii_lowercase(),
            port: 25,
            mx_lookup: true,
            port_given: false,
        }
    }

    /// Parse `[host]:port`, `[host]`, `[ipv6:addr]`, `host:port` or `host`.
    pub fn parse(s: &str) -> Result<Nexthop, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty next-hop destination".into());
        }
        let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(format!("\"{s}\": missing \"]\""));
            };
            let inner = match inner.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("ipv6:") => &inner[5..],
                _ => inner,
            };
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("\"{s}\": junk after \"]\""))?,
                ),
            };
            (inner, port, true)
        } else {
            if s.matches(':').count() > 1 {
                return Err(format!("\"{s}\": an IPv6 address must be written in brackets: [{s}]"));
            }
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p), false),
                None => (s, None, false),
            }
        };
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_none() {
            check_name(host).map_err(|e| format!("\"{s}\": {e}"))?;
        }
        let port_num = match port {
            None => 25,
            Some(p) => parse_port(p).ok_or_else(|| format!("\"{s}\": bad port \"{p}\""))?,
        };
        Ok(Nexthop {
            host: match ip {
                Some(ip) => ip.to_string(),
                None => host.to_ascii_lowercase(),
            },
            port: port_num,
            mx_lookup: !bracketed && ip.is_none(),
            port_given: port.is_some(),
        })
    }

    /// Password-map keys for this next hop, most specific first.
    fn keys(&self) -> Vec<String> {
        let h = &self.host;
        let mut v = Vec::with_capacity(4);
        let written = self.to_string();
        v.push(written);
        for k in [
            format!("[{h}]:{}", self.port),
            format!("[{h}]"),
            format!("{h}:{}", self.port),
            h.clone(),
        ] {
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }
}

impl fmt::Display for Nexthop {
    /// As Postfix writes it: `[host]:port`, `[host]`, `host:port`, `host`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mx_lookup {
            f.write_str(&self.host)?;
        } else {
            write!(f, "[{}]", self.host)?;
        }
        if self.port_given {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

fn parse_port(p: &str) -> Option<u16> {
    match p.to_ascii_lowercase().as_str() {
        "smtp" => Some(25),
        "submission" => Some(587),
        "submissions" | "smtps" => Some(465),
        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse::<u16>().ok().filter(|&n| n > 0),
        _ => None,
    }
}

/// Labels of letters, digits, `-`, `_`; at most 255 octets (RFC 5321 §4.5.3.1.2).
fn check_name(h: &str) -> Result<(), String> {
    let h = h.strip_suffix('.').unwrap_or(h);
    let ok = !h.is_empty()
        && h.len() <= SMTP_DOMAIN_BYTES_MAX
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad host name \"{h}\""))
    }
}

/// A problem in a table file, reported as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file itself (cannot be read, too big).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for MapError {}

/// The file a main.cf table reference names: `/path` or `type:/path` (see module docs).
pub fn map_path(spec: &str, config_directory: &Path) -> Result<PathBuf, String> {
    let spec = spec.trim();
    let path = match spec.split_once(':') {
        Some((ty, p)) if !ty.contains('/') => match ty.to_ascii_lowercase().as_str() {
            "hash" | "btree" | "lmdb" | "cdb" | "dbm" | "texthash" => p,
            _ => {
                return Err(format!(
                    "\"{spec}\": table type \"{ty}\" is not supported (use a text file, optionally as hash:/path)"
                ))
            }
        },
        _ => spec,
    };
    if path.is_empty() {
        return Err(format!("\"{spec}\": no file name"));
    }
    let p = PathBuf::from(path);
    Ok(if p.is_absolute() { p } else { config_directory.join(p) })
}

/// Read a table or hosts file, bounded.
fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > max {
        return Err(format!("file is larger than {max} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "file is not valid UTF-8".to_string())
}

/// Postfix table text to (line number, key, value) entries; problems to `errs`.
fn table_lines(text: &str, file: &Path, errs: &mut Vec<MapError>) -> Vec<(usize, String, String)> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // A line starting with whitespace continues the logical line (Postfix tables).
            match logical.last_mut() {
                Some((_, l)) if l.len() + trimmed.len() < MAP_LINE_BYTES_MAX => {
                    l.push(' ');
                    l.push_str(trimmed);
                }
                Some(_) => errs.push(err(file, n, "logical line too long")),
                None => errs.push(err(file, n, "continuation line without a line to continue")),
            }
            continue;
        }
        if trimmed.len() >= MAP_LINE_BYTES_MAX {
            errs.push(err(file, n, "line too long"));
            // Its continuation lines must not attach to the line before it.
            logical.push((n, String::new()));
            continue;
        }
        logical.push((n, trimmed.to_string()));
    }
    let mut out = Vec::new();
    for (n, l) in logical {
        if l.is_empty() {
            continue;
        }
        match l.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, v)) if !v.trim().is_empty() => out.push((n, k.to_lowercase(), v.trim().to_string())),
            _ => errs.push(err(file, n, &format!("expected \"key value\", got \"{}\"", short(&l)))),
        }
    }
    out
}

fn err(file: &Path, line: usize, message: &str) -> MapError {
    MapError {
        file: file.to_path_buf(),
        line,
        message: message.to_string(),
    }
}

fn short(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        t.push_str("...");
    }
    t
}

/// Load several tables (a main.cf list) with `parse`; the first table with a key wins.
fn load_all<T: Default>(
    specs: &[String],
    config_directory: &Path,
    mut parse: impl FnMut(&mut T, &str, &Path, &mut Vec<MapError>),
) -> (T, Vec<MapError>) {
    let mut t = T::default();
    let mut errs = Vec::new();
    for spec in specs {
        let path = match map_path(spec, config_directory) {
            Ok(p) => p,
            Err(e) => {
                errs.push(err(Path::new(spec), 0, &e));
                continue;
            }
        };
        match read_bounded(&path, MAP_FILE_BYTES_MAX) {
            Ok(text) => parse(&mut t, &text, &path, &mut errs),
            Err(e) => errs.push(err(&path, 0, &e)),
        }
    }
    (t, errs)
}

/// What a transport_maps entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// `:` — route as if there were no entry.
    Default,
    /// `:nexthop` — the usual transport, this next hop.
    Nexthop(Nexthop),
    /// `smtp:` / `smtp:nexthop`.
    Smtp(Option<Nexthop>),
    Local,
    Error(String),
    Retry(String),
}

/// transport_maps, loaded.
#[derive(Debug, Clone, Default)]
pub struct TransportMap {
    entries: HashMap<String, Action>,
}

impl TransportMap {
    /// Load the tables of a transport_maps value (already split into entries).
    pub fn load(specs: &[String], config_directory: &Path) -> (TransportMap, Vec<MapError>) {
        load_all(specs, config_directory, |m: &mut TransportMap, text, path, errs| {
            m.add(text, path, errs)
        })
    }

    /// Parse table text (`file` names it in errors).
    pub fn parse(text: &str, file: &Path) -> (TransportMap, Vec<MapError>) {
        let mut m = TransportMap::default();
        let mut errs = Vec::new();
        m.add(text, file, &mut errs);
        (m, errs)
    }

    fn add(&mut self, text: &str, file: &Path, errs: &mut Vec<MapError>) {
        for (n, key, value) in table_lines(text, file, errs) {
            if let Err(e) = check_transport_key(&key) {
                errs.push(err(file, n, &e));
                continue;
            }
            match parse_action(&value) {
                Ok(a) => match self.entries.entry(key) {
                    std::collections::hash_map::Entry::Occupied(o) => errs.push(err(
                        file,
                        n,
                        &format!("duplicate entry \"{}\" (the first one is used)", o.key()),
                    )),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(a);
                    }
                },
                Err(e) => errs.push(err(file, n, &e)),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// transport(5) search order: user@domain, domain, .parent..., *.
    fn find(&self, addr: Option<&str>, domain: &str) -> Option<&Action> {
        if self.entries.is_empty() {
            return None;
        }
        if let Some(a) = addr.and_then(|a| self.entries.get(a)) {
            return Some(a);
        }
        if let Some(a) = self.entries.get(domain) {
            return Some(a);
        }
        let mut rest = domain;
        // Bounded by the number of labels.
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(a) = self.entries.get(&format!(".{parent}")) {
                return Some(a);
            }
            rest = parent;
        }
        self.entries.get("*")
    }
}

fn check_transport_key(k: &str) -> Result<(), String> {
    if k == "*" {
        return Ok(());
    }
    let domain = match k.rsplit_once('@') {
        Some((local, d)) if !local.is_empty() => d,
        Some(_) => return Err(format!("bad key \"{k}\" (use user@domain, domain, .domain or *)")),
        None => k.strip_prefix('.').unwrap_or(k),
    };
    check_name(domain).map_err(|e| format!("bad key \"{k}\": {e}"))
}

fn parse_action(v: &str) -> Result<Action, String> {
    let (transport, nexthop) = v.split_once(':').unwrap_or((v, ""));
    let transport = transport.trim().to_ascii_lowercase();
    let nexthop = nexthop.trim();
    Ok(match transport.as_str() {
        "" if nexthop.is_empty() => Action::Default,
        "" => Action::Nexthop(Nexthop::parse(nexthop)?),
        "smtp" | "relay" => Action::Smtp(if nexthop.is_empty() {
            None
        } else {
            Some(Nexthop::parse(nexthop)?)
        }),
        "local" | "virtual" => Action::Local,
        "error" => Action::Error(nexthop.to_string()),
        "retry" => Action::Retry(nexthop.to_string()),
        other => {
            return Err(format!(
                "unsupported transport \"{other}\" (poshta knows smtp, relay, local, virtual, error, retry)"
            ))
        }
    })
}

/// Routing inputs from main.cf.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// Domains delivered locally (mydestination, lowercased).
    pub local_domains: Vec<String>,
    /// relayhost; None when empty.
    pub relayhost: Option<Nexthop>,
    pub transport: TransportMap,
}

impl RouteConfig {
    /// Parse relayhost (empty: none).
    pub fn parse_relayhost(v: &str) -> Result<Option<Nexthop>, String> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if v.contains([',', ' ', '\t']) {
            return Err(format!("relayhost \"{v}\": only one destination is supported"));
        }
        Nexthop::parse(v).map(Some)
    }
}

/// Where one recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    /// SMTP to this next hop.
    Relay {
        host: String,
        port: u16,
        mx_lookup: bool,
    },
    /// Bounce with this text (transport `error:`).
    Error(String),
    /// Defer with this text (transport `retry:`).
    Defer(String),
}

impl Route {
    fn relay(n: &Nexthop) -> Route {
        Route::Relay {
            host: n.host.clone(),
            port: n.port,
            mx_lookup: n.mx_lookup,
        }
    }
}

/// Route a recipient: `local@domain`, or a bare domain. transport_maps first (it overrides
/// even local domains, as in Postfix), then mydestination (local), then relayhost, then
/// the recipient domain's MX.
pub fn route(recipient: &str, cfg: &RouteConfig) -> Route {
    let (addr, domain) = match recipient.rsplit_once('@') {
        Some((_, d)) => (Some(recipient.to_lowercase()), d),
        // RFC 5321 §4.5.1: a bare "postmaster" is local.
        None if recipient.eq_ignore_ascii_case("postmaster") => return Route::Local,
        None => (None, recipient),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let is_local = cfg.local_domains.iter().any(|d| d.trim_end_matches('.') == domain);
    let default = || {
        if is_local {
            Route::Local
        } else if let Some(r) = &cfg.relayhost {
            Route::relay(r)
        } else {
            Route::relay(&Nexthop::domain(&domain))
        }
    };
    match cfg.transport.find(addr.as_deref(), &domain) {
        None | Some(Action::Default) => default(),
        Some(Action::Nexthop(n)) if !is_local => Route::relay(n),
        Some(Action::Nexthop(_)) => Route::Local,
        // transport(5): a transport with a null nexthop resets the nexthop to the domain.
        Some(Action::Smtp(None)) => Route::relay(&Nexthop::domain(&domain)),
        Some(Action::Smtp(Some(n))) => Route::relay(n),
        Some(Action::Local) => Route::Local,
        Some(Action::Error(t)) => Route::Error(if t.is_empty() {
            "5.0.0 mail for this destination is refused (transport_maps error:)".into()
        } else {
            t.clone()
        }),
        Some(Action::Retry(t)) => Route::Defer(if t.is_empty() {
            "4.0.0 delivery to this destination is postponed (transport_maps retry:)".into()
        } else {
            t.clone()
        }),
    }
}

/// smtp_sasl_password_maps, loaded. Passwords never appear in Debug output.
#[derive(Clone, Default)]
pub struct SaslPasswords {
    entries: HashMap<String, SaslLogin>,
}

impl fmt::Debug for SaslPasswords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslPasswords")
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SaslPasswords {
    pub fn load(specs: &[String], config_directory: &Path) -> (SaslPasswords, Vec<MapError>) {
        load_all(specs, config_directory, |m: &mut SaslPasswords, text, path, errs| {
            m.add(text, path, errs)
        })
    }

    pub fn parse(text: &str, file: &Path) -> (SaslPasswords, Vec<MapError>) {
        let mut m = SaslPasswords::default();
        let mut errs = Vec::new();
        m.add(text, file, &mut errs);
        (m, errs)
    }

    fn add(&mut self, text: &str, file: &Path, errs: &mut Vec<MapError>) {
        for (n, key, value) in table_lines(text, file, errs) {
            let key_ok = if let Some(d) = key.strip_prefix('@') {
                check_name(d).is_ok()
            } else if let Some((l, d)) = key.rsplit_once('@') {
                !l.is_empty() && check_name(d).is_ok()
            } else {
                Nexthop::parse(&key).is_ok()
            };
            if !key_ok {
                errs.push(err(
                    file,
                    n,
                    &format!("bad key \"{}\" (use [host]:port, host, or user@domain)", short(&key)),
                ));
                continue;
            }
            // The value is never echoed: it holds a password.
            let Some((user, password)) = value.split_once(':') else {
                errs.push(err(file, n, &format!("value for \"{key}\" must be username:password")));
                continue;
            };
            if user.is_empty() || password.is_empty() {
                errs.push(err(
                    file,
                    n,
                    &format!("value for \"{key}\" has an empty username or password"),
                ));
                continue;
            }
            // `[Host]:587` and `[host]:587` are one key.
            let key = Nexthop::parse(&key).map(|n| n.to_string()).unwrap_or(key);
            if self.entries.contains_key(&key) {
                errs.push(err(
                    file,
                    n,
                    &format!("duplicate entry \"{key}\" (the first one is used)"),
                ));
                continue;
            }
            self.entries.insert(
                key,
                SaslLogin {
                    user: user.to_string(),
                    password: password.to_string(),
                },
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Credentials for a connection to `nexthop` (as routed), on host `host_name` (the MX
    /// host actually connected to, if different), for `sender` (sender-dependent
    /// authentication only). Order in the module docs.
    pub fn lookup(&self, nexthop: &Nexthop, host_name: Option<&str>, sender: Option<&str>) -> Option<SaslLogin> {
        let mut keys = Vec::new();
        if let Some(s) = sender.filter(|s| !s.is_empty()) {
            let s = s.to_lowercase();
            if let Some((_, d)) = s.rsplit_once('@') {
                keys.push(format!("@{d}"));
            }
            keys.insert(0, s);
        }
        keys.extend(nexthop.keys());
        if let Some(h) = host_name {
            keys.push(h.trim_end_matches('.').to_ascii_lowercase());
        }
        keys.iter().find_map(|k| self.entries.get(k)).cloned()
    }
}

/// A hosts file, parsed: name -> addresses in file order.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    pub fn parse(text: &str) -> Hosts {
        let mut h = Hosts::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            let Some(addr) = words.next() else { continue };
            let Some(ip) = parse_host_addr(addr) else { continue };
            for name in words {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() {
                    continue;
                }
                let v = h.names.entry(name).or_default();
                if !v.contains(&ip) {
                    v.push(ip);
                }
            }
        }
        h
    }

    /// Read a hosts file (bounded by limits::HOSTS_FILE_BYTES_MAX).
    pub fn load(path: &Path) -> Result<Hosts, MapError> {
        read_bounded(path, HOSTS_FILE_BYTES_MAX)
            .map(|t| Hosts::parse(&t))
            .map_err(|e| err(path, 0, &e))
    }

    /// The addresses of `name` (empty when unknown). An IP literal is returned as itself.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return vec![ip];
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.get(&name).cloned().unwrap_or_default()
    }
}

fn parse_host_addr(s: &str) -> Option<IpAddr> {
    if s.contains('%') {
        // A link-local address with a zone cannot be used for mail.
        return None;
    }
    s.parse::<IpAddr>().ok()
}

/// Resolve `name` from the hosts file at `path` (disable_dns_lookups). Blocking file read:
/// the runner calls it off the event loop, or loads [`Hosts`] once and reloads on change.
pub fn resolve_hosts(path: &Path, name: &str) -> Result<Vec<IpAddr>, MapError> {
    Hosts::load(path).map(|h| h.lookup(name))
}

/// The queue lifetime settings (Postfix names and defaults: 300s, 4000s, 5d, 5d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub minimal_backoff_secs: u64,
    pub maximal_backoff_secs: u64,
    pub maximal_queue_lifetime_secs: u64,
    /// For bounces (null sender): bounce_queue_lifetime, at most maximal_queue_lifetime.
    pub bounce_queue_lifetime_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            minimal_backoff_secs: 300,
            maximal_backoff_secs: 4000,
            maximal_queue_lifetime_secs: 5 * 86400,
            bounce_queue_lifetime_secs: 5 * 86400,
        }
    }
}

/// After a temporary failure: try again, or give up and bounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Again { next_try_unix: u64 },
    GiveUp,
}

/// Postfix's rule: a message older than its lifetime (counted from arrival) bounces after
/// its next failed attempt; a lifetime of 0 means "try once". The wait before the next try
/// is the message's age clamped to [minimal_backoff_time, maximal_backoff_time] (Postfix
/// qmgr's age-based backoff: roughly doubling per attempt).
pub fn retry_decision(arrival_unix: u64, now_unix: u64, null_sender: bool, p: &RetryPolicy) -> Retry {
    let lifetime = if null_sender {
        p.bounce_queue_lifetime_secs.min(p.maximal_queue_lifetime_secs)
    } else {
        p.maximal_queue_lifetime_secs
    };
    let age = now_unix.saturating_sub(arrival_unix);
    if lifetime == 0 || age >= lifetime {
        return Retry::GiveUp;
    }
    let min = p.minimal_backoff_secs.min(p.maximal_backoff_secs);
    let wait = age.clamp(min, p.maximal_backoff_secs.max(min));
    Retry::Again {
        next_try_unix: now_unix.saturating_add(wait),
    }
}

/// Whether a delay warning (delay_warning_time; 0: never) is due for a message that is
/// still undelivered. Postfix sends at most one per message, never for bounces.
pub fn delay_warning_due(
    arrival_unix: u64,
    now_unix: u64,
    delay_warning_secs: u64,
    null_sender: bool,
    already_sent: bool,
) -> bool {
    delay_warning_secs > 0
        && !already_sent
        && !null_sender
        && now_unix.saturating_sub(arrival_unix) >= delay_warning_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthops() {
        let n = Nexthop::parse("[smtp.Provider.net]:587").expect("parse");
        assert_eq!(
            (n.host.as_str(), n.port, n.mx_lookup),
            ("smtp.provider.net", 587, false)
        );
        assert_eq!(n.to_string(), "[smtp.provider.net]:587");
        let n = Nexthop::parse("example.com:2525").expect("parse");
        assert_eq!((n.host.as_str(), n.port, n.mx_lookup), ("example.com", 2525, true));
        let n = Nexthop::parse("[2001:db8::1]").expect("parse");
        assert_eq!((n.host.as_str(), n.port, n.mx_lookup), ("2001:db8::1", 25, false));
        let n = Nexthop::parse("[ipv6:2001:DB8::1]:submission").expect("parse");
        assert_eq!((n.host.as_str(), n.port), ("2001:db8::1", 587));
        let n = Nexthop::parse("192.0.2.1:25").expect("parse");
        assert!(!n.mx_lookup);
        for bad in [
            "",
            "[",
            "[]",
            "[host",
            "[host]x",
            "host:0",
            "host:70000",
            "host:",
            "2001:db8::1",
            "bad host",
            "a..b",
            "[h]:port",
        ] {
            assert!(Nexthop::parse(bad).is_err(), "{bad:?}");
        }
    }
}
