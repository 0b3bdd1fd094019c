//! access(5): which keys are looked up for an address, a host name or an IP address, and
//! what the value found means.
//!
//! # Lookup order (text maps)
//!
//! Keys are tried in this order and the first one found decides. Text maps fold case, so
//! the keys are not lowercased here.
//!
//! - **E-mail address** `user+ext@domain` (recipient_delimiter `+`):
//!   `user+ext@domain`, `user@domain`, then the domain as below, then `user+ext@`,
//!   `user@`. The null sender is looked up as `<>` (smtpd_null_access_lookup_key). An
//!   address without `@` is looked up whole, then as `user@`. A domain literal
//!   (`[192.0.2.1]`) is looked up as written, without parent domains.
//! - **Domain or host name** `sub.example.com` (one trailing dot removed): the name, then
//!   its parent domains. With `parent_domain_matches_subdomains` containing
//!   `smtpd_access_maps` (Postfix's default) the parents are `example.com`, `com` (a bare
//!   `example.com` key matches subdomains); without it they are `.example.com`, `.com`.
//! - **IPv4 address** `1.2.3.4`: `1.2.3.4`, `1.2.3`, `1.2`, `1`.
//! - **IPv6 address** in its compact form (`2001:db8::1`): the address, then with the last
//!   `:`-separated part removed each time, as Postfix does: `2001:db8:`, `2001:db8`,
//!   `2001`. An IPv4-mapped address is looked up as IPv4.
//! - **Client**: the host name as a domain (unless it is `unknown`), then its address.
//!
//! Pattern tables (cidr, regexp, pcre) get only the whole string: no parent domains, no
//! address splitting (access(5) "REGULAR EXPRESSION TABLES" and "CIDR TABLES").
//!
//! # Actions (case-insensitive first word; the rest is optional text)
//!
//! | value | [`Action`] |
//! | --- | --- |
//! | `OK`, `PERMIT`, all digits (`1234567`) | `Ok` |
//! | `REJECT [text]` | `Reject`: access_map_reject_code 554, 5.7.1 |
//! | `DEFER [text]` | `Defer`: access_map_defer_code 450, 4.7.1 |
//! | `DEFER_IF_PERMIT [text]`, `DEFER_IF_REJECT [text]` | defer only if the rest would permit / reject |
//! | `4NN text`, `5NN text` | `Code`: that code; enhanced code from the text or 4.7.1 / 5.7.1 |
//! | `DISCARD [text]` | `Discard`: accept, tell the client so, drop the message (logged) |
//! | `HOLD [text]` | `Hold`: accept and keep the message on hold (logged) |
//! | `DUNNO` | `Dunno`: as if not found, and stop looking at shorter keys |
//! | `WARN text`, `INFO text` | log the text, go on |
//! | anything else | `Restrictions`: restriction names, parsed by [`super::restrictions`] |
//!
//! # Reply texts (Postfix's)
//!
//! `CODE DSN <NAME>: CLASS rejected: TEXT`, e.g.
//! `554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied`,
//! `550 5.7.1 <a@b.example>: Sender address rejected: go away`. NAME is what was looked up:
//! the client as `name[address]` (Postfix's namaddr, not the bare address), the HELO
//! name, the sender or recipient address. TEXT is the action's text or `Access denied`.
//! A text that starts with an enhanced status code (`REJECT 5.7.2 no`) supplies the DSN;
//! its class digit is always made to agree with the reply code (a 5NN reply never
//! carries 4.x.x). As Postfix's smtpd_dsn_fix, an address status (X.1.Y) is made to fit
//! where it is used: for a sender X.1.1 → X.1.0, X.1.2 → X.1.8, X.1.3 → X.1.7; for a
//! recipient X.1.7 → X.1.3, X.1.8 → X.1.2; for client, HELO and DATA X.1.Y → X.7.1.

use super::table::Table;
use crate::proto::reply::Reply;
use std::borrow::Cow;
use std::net::IpAddr;

/// A parsed access(5) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Ok,
    Reject(Option<String>),
    Defer(Option<String>),
    DeferIfPermit(Option<String>),
    DeferIfReject(Option<String>),
    /// `4NN text` or `5NN text`.
    Code(u16, Option<String>),
    Discard(Option<String>),
    Hold(Option<String>),
    Dunno,
    Warn(Option<String>),
    Info(Option<String>),
    /// Anything else: one or more restriction names (`reject_unauth_destination, permit`).
    Restrictions(String),
}

fn split_word(value: &str) -> (&str, Option<String>) {
    let v = value.trim();
    match v.split_once([' ', '\t']) {
        Some((w, rest)) if !rest.trim().is_empty() => (w, Some(rest.trim().to_string())),
        Some((w, _)) => (w, None),
        None => (v, None),
    }
}

/// Parse a table value (access(5) "ACCEPT ACTIONS", "REJECT ACTIONS", "OTHER ACTIONS").
pub fn parse_action(value: &str) -> Action {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // access(5): "An all-numerical result is treated as OK" (pop-before-smtp stamps).
        return Action::Ok;
    }
    let (word, text) = split_word(v);
    let b = word.as_bytes();
    if b.len() == 3 && b.iter().all(u8::is_ascii_digit) && matches!(b.first(), Some(b'4' | b'5')) {
        let code = word.parse::<u16>().unwrap_or(554);
        return Action::Code(code, text);
    }
    match word.to_ascii_uppercase().as_str() {
        "OK" | "PERMIT" if text.is_none() => Action::Ok,
        "REJECT" => Action::Reject(text),
        "DEFER" => Action::Defer(text),
        "DEFER_IF_PERMIT" => Action::DeferIfPermit(text),
        "DEFER_IF_REJECT" => Action::DeferIfReject(text),
        "DISCARD" => Action::Discard(text),
        "HOLD" => Action::Hold(text),
        "DUNNO" if text.is_none() => Action::Dunno,
        "WARN" => Action::Warn(text),
        "INFO" => Action::Info(text),
        _ => Action::Restrictions(v.to_string()),
    }
}

/// What a reply is about (Postfix's reply classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Client,
    Helo,
    Sender,
    Recipient,
    Data,
}

impl ReplyClass {
    pub fn name(self) -> &'static str {
        match self {
            ReplyClass::Client => "Client host",
            ReplyClass::Helo => "Helo command",
            ReplyClass::Sender => "Sender address",
            ReplyClass::Recipient => "Recipient address",
            ReplyClass::Data => "Data command",
        }
    }
}

/// `text` split into a leading enhanced status code (RFC 3463 §2: class.subject.detail)
/// and the rest.
fn dsn_split(text: &str) -> (Option<&str>, &str) {
    let (first, rest) = match text.split_once(' ') {
        Some((f, r)) => (f, r.trim_start()),
        None => (text, ""),
    };
    let parts: Vec<&str> = first.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts.first(), Some(&("2" | "4" | "5")))
        && parts
            .iter()
            .skip(1)
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        (Some(first), rest)
    } else {
        (None, text)
    }
}

/// smtpd_dsn_fix: make the status fit the reply code and where it is used.
fn dsn_fix(dsn: &str, code: u16, class: ReplyClass) -> String {
    let class_digit = if code < 500 { '4' } else { '5' };
    let mut parts = dsn.splitn(3, '.');
    let (_, subject, detail) = (parts.next(), parts.next().unwrap_or("7"), parts.next().unwrap_or("1"));
    let (subject, detail) = match (class, subject, detail) {
        (ReplyClass::Sender, "1", "1" | "4" | "5" | "6") => ("1", "0"),
        (ReplyClass::Sender, "1", "2") => ("1", "8"),
        (ReplyClass::Sender, "1", "3") => ("1", "7"),
        (ReplyClass::Recipient, "1", "7") => ("1", "3"),
        (ReplyClass::Recipient, "1", "8") => ("1", "2"),
        (ReplyClass::Client | ReplyClass::Helo | ReplyClass::Data, "1", _) => ("7", "1"),
        (_, s, d) => (s, d),
    };
    format!("{class_digit}.{subject}.{detail}")
}

/// `CODE DSN <name>: Class rejected: text` (Postfix's check_table_result wording).
pub fn reject_reply(code: u16, default_dsn: &str, text: Option<&str>, class: ReplyClass, name: &str) -> Reply {
    let (dsn, rest) = match text {
        Some(t) => dsn_split(t),
        None => (None, ""),
    };
    let dsn = dsn_fix(dsn.unwrap_or(default_dsn), code, class);
    let shown = if rest.is_empty() { "Access denied" } else { rest };
    Reply::owned(code, format!("{dsn} <{name}>: {} rejected: {shown}", class.name()))
}

/// The log text of DISCARD/HOLD/WARN: `<name>: Class triggers DISCARD action` or
/// `<name>: Class TEXT`.
pub fn action_log_text(what: &str, text: Option<&str>, class: ReplyClass, name: &str) -> String {
    match text {
        Some(t) => format!("<{name}>: {} {t}", class.name()),
        None => format!("<{name}>: {} triggers {what} action", class.name()),
    }
}

/// Lookup options from main.cf.
#[derive(Debug, Clone)]
pub struct AccessOptions {
    /// parent_domain_matches_subdomains contains `smtpd_access_maps`.
    pub parent_domain_matches_subdomains: bool,
    /// recipient_delimiter characters ("" = none).
    pub recipient_delimiter: String,
}

impl Default for AccessOptions {
    fn default() -> AccessOptions {
        AccessOptions {
            parent_domain_matches_subdomains: true,
            recipient_delimiter: String::new(),
        }
    }
}

/// Keys for a domain or host name, most specific first.
pub fn domain_keys(domain: &str, opts: &AccessOptions) -> Vec<String> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    let mut out = vec![d.to_string()];
    if d.starts_with('[') {
        return out;
    }
    // Postfix check_domain_access: the next '.' after the first character.
    let mut from = 1;
    while let Some(i) = d.get(from..).and_then(|s| s.find('.')).map(|i| i + from) {
        let parent = if opts.parent_domain_matches_subdomains {
            d.get(i + 1..).unwrap_or("")
        } else {
            d.get(i..).unwrap_or("")
        };
        if !parent.is_empty() && parent != "." {
            out.push(parent.to_string());
        }
        from = i + 1;
    }
    out
}

/// Keys for an IP address (text form; IPv6 optionally in brackets). Not an IP address:
/// the string itself only.
pub fn ip_keys(addr: &str) -> Vec<String> {
    let Some(ip) = crate::config::value::parse_ip(addr.trim()) else {
        return vec![addr.to_string()];
    };
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let delim = if ip.is_ipv4() { '.' } else { ':' };
    let mut key = ip.to_string();
    let mut out = vec![key.clone()];
    // Postfix check_addr_access: split_at_right on the delimiter until none is left.
    while let Some(i) = key.rfind(delim) {
        key.truncate(i);
        if key.is_empty() {
            break;
        }
        out.push(key.clone());
    }
    out
}

/// Keys for an e-mail address (see the module docs). `addr` is the address without `<>`;
/// the null sender is `""`.
pub fn address_keys(addr: &str, opts: &AccessOptions) -> Vec<String> {
    if addr.is_empty() {
        return vec!["<>".into()];
    }
    let (local, domain) = match addr.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (addr, None),
    };
    // user+ext → user, unless that would leave nothing (Postfix strip_addr).
    let base = (!opts.recipient_delimiter.is_empty())
        .then(|| local.find(|c| opts.recipient_delimiter.contains(c)))
        .flatten()
        .filter(|&i| i > 0)
        .and_then(|i| local.get(..i));
    let mut out = vec![addr.to_string()];
    if let (Some(b), Some(d)) = (base, domain) {
        out.push(format!("{b}@{d}"));
    }
    if let Some(d) = domain.filter(|d| !d.is_empty()) {
        out.extend(domain_keys(d, opts));
    }
    if domain.is_some() || base.is_some() {
        out.push(format!("{local}@"));
    }
    if let Some(b) = base {
        out.push(format!("{b}@"));
    }
    out.dedup();
    out
}

/// Keys for a client: its name as a domain (unless `unknown`), then its address.
pub fn client_keys(name: &str, addr: &str, opts: &AccessOptions) -> Vec<String> {
    let mut out = Vec::new();
    if !name.is_empty() && !name.eq_ignore_ascii_case("unknown") {
        out.extend(domain_keys(name, opts));
    }
    out.extend(ip_keys(addr));
    out
}

/// Look `keys` up in order; pattern tables get only `whole`. Returns the key that matched
/// and its value. A `DUNNO` value stops the search there (access(5): "Pretend that the
/// lookup key was not found. This prevents Postfix from trying substrings").
pub fn lookup<'t>(table: &'t Table, whole: &str, keys: &[String]) -> Option<(String, Cow<'t, str>)> {
    if table.is_pattern() {
        return table.lookup(whole).map(|v| (whole.to_string(), v));
    }
    keys.iter().find_map(|k| table.lookup(k).map(|v| (k.clone(), v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::table::TableType;
    use std::path::Path;

    fn opts(parent: bool, delim: &str) -> AccessOptions {
        AccessOptions {
            parent_domain_matches_subdomains: parent,
            recipient_delimiter: delim.into(),
        }
    }

    #[test]
    fn address_order() {
        let o = opts(true, "+");
        assert_eq!(
            address_keys("joe+ext@mail.example.com", &o),
            vec![
                "joe+ext@mail.example.com",
                "joe@mail.example.com",
                "mail.example.com",
                "example.com",
                "com",
                "joe+ext@",
                "joe@"
            ]
        );
        assert_eq!(
            address_keys("a@b.org", &opts(false, "")),
            vec!["a@b.org", "b.org", ".org", "a@"]
        );
        assert_eq!(address_keys("", &o), vec!["<>"]);
        assert_eq!(address_keys("postmaster", &o), vec!["postmaster"]);
        assert_eq!(address_keys("+x@b", &o), vec!["+x@b", "b", "+x@"]);
        assert_eq!(
            address_keys("a@[192.0.2.1]", &o),
            vec!["a@[192.0.2.1]", "[192.0.2.1]", "a@"]
        );
        assert_eq!(address_keys("a@", &o), vec!["a@"]);
    }

    #[test]
    fn domain_and_ip_order() {
        let o = opts(true, "");
        assert_eq!(
            domain_keys("a.b.example.com.", &o),
            vec!["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert_eq!(domain_keys("a.b.c", &opts(false, "")), vec!["a.b.c", ".b.c", ".c"]);
        assert_eq!(domain_keys("localhost", &o), vec!["localhost"]);
        assert_eq!(ip_keys("1.2.3.4"), vec!["1.2.3.4", "1.2.3", "1.2", "1"]);
        assert_eq!(ip_keys("::ffff:1.2.3.4"), vec!["1.2.3.4", "1.2.3", "1.2", "1"]);
        assert_eq!(
            ip_keys("2001:DB8::1"),
            vec!["2001:db8::1", "2001:db8:", "2001:db8", "2001"]
        );
        assert_eq!(ip_keys("[::1]"), vec!["::1", ":"]);
        assert_eq!(ip_keys("garbage"), vec!["garbage"]);
        assert_eq!(
            client_keys("mail.example.com", "1.2.3.4", &o),
            vec!["mail.example.com", "example.com", "com", "1.2.3.4", "1.2.3", "1.2", "1"]
        );
        assert_eq!(client_keys("unknown", "1.2.3.4", &o).len(), 4);
    }

    #[test]
    fn actions() {
        use Action::*;
        let s = |x: &str| Some(x.to_string());
        for (v, a) in [
            ("OK", Ok),
            ("ok", Ok),
            ("PERMIT", Ok),
            ("1234567", Ok),
            ("550", Ok),
            ("REJECT", Reject(None)),
            ("reject  go away ", Reject(s("go away"))),
            ("DEFER", Defer(None)),
            ("DEFER later", Defer(s("later"))),
            ("DEFER_IF_PERMIT x", DeferIfPermit(s("x"))),
            ("DEFER_IF_REJECT", DeferIfReject(None)),
            ("550 Go away", Code(550, s("Go away"))),
            ("450\tbusy", Code(450, s("busy"))),
            ("DISCARD", Discard(None)),
            ("DISCARD spam", Discard(s("spam"))),
            ("HOLD", Hold(None)),
            ("hold check", Hold(s("check"))),
            ("DUNNO", Dunno),
            ("WARN look", Warn(s("look"))),
            ("INFO i", Info(s("i"))),
            (
                "reject_unauth_destination",
                Restrictions("reject_unauth_destination".into()),
            ),
            (
                "permit_mynetworks, reject",
                Restrictions("permit_mynetworks, reject".into()),
            ),
            ("250 fine", Restrictions("250 fine".into())),
            ("5500 x", Restrictions("5500 x".into())),
            ("OK then", Restrictions("OK then".into())),
        ] {
            assert_eq!(parse_action(v), a, "{v:?}");
        }
    }

    #[test]
    fn replies() {
        let r = reject_reply(554, "5.7.1", None, ReplyClass::Client, "unknown[1.2.3.4]");
        assert_eq!(
            r.first_line(),
            "554 5.7.1 <unknown[1.2.3.4]>: Client host rejected: Access denied"
        );
        let r = reject_reply(550, "5.7.1", Some("Go away"), ReplyClass::Sender, "a@b");
        assert_eq!(r.first_line(), "550 5.7.1 <a@b>: Sender address rejected: Go away");
        let r = reject_reply(550, "5.7.1", Some("5.1.1 no such user"), ReplyClass::Recipient, "a@b");
        assert_eq!(
            r.first_line(),
            "550 5.1.1 <a@b>: Recipient address rejected: no such user"
        );
        let r = reject_reply(550, "5.7.1", Some("5.1.1 nope"), ReplyClass::Sender, "a@b");
        assert_eq!(r.first_line(), "550 5.1.0 <a@b>: Sender address rejected: nope");
        let r = reject_reply(450, "4.7.1", Some("5.7.2 mixed"), ReplyClass::Helo, "x");
        assert_eq!(r.first_line(), "450 4.7.2 <x>: Helo command rejected: mixed");
        let r = reject_reply(554, "5.7.1", Some("5.1.2 odd"), ReplyClass::Client, "h[1.2.3.4]");
        assert_eq!(r.first_line(), "554 5.7.1 <h[1.2.3.4]>: Client host rejected: odd");
        // Not a status code: part of the text.
        let r = reject_reply(554, "5.7.1", Some("5.7 is not one"), ReplyClass::Client, "h");
        assert!(r.first_line().ends_with("rejected: 5.7 is not one"));
        assert_eq!(
            action_log_text("DISCARD", None, ReplyClass::Sender, "a@b"),
            "<a@b>: Sender address triggers DISCARD action"
        );
    }

    #[test]
    fn dunno_stops_and_patterns_get_whole_string() {
        let t = Table::parse(
            TableType::Hash,
            Path::new("t"),
            "sub.example.com DUNNO\nexample.com REJECT\n",
        )
        .unwrap();
        let o = opts(true, "");
        let keys = domain_keys("sub.example.com", &o);
        let (k, v) = lookup(&t, "sub.example.com", &keys).unwrap();
        assert_eq!((k.as_str(), v.as_ref()), ("sub.example.com", "DUNNO"));
        let keys = domain_keys("x.example.com", &o);
        assert_eq!(lookup(&t, "x.example.com", &keys).unwrap().1, "REJECT");
        let r = Table::parse(TableType::Regexp, Path::new("r"), "/^example\\.com$/ REJECT\n").unwrap();
        assert!(lookup(&r, "x.example.com", &keys).is_none());
    }
}
