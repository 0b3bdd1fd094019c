//! Policy: which recipients are local, which clients may relay.
//!
//! # Networks (`mynetworks`, `smtpd_forbid_bare_newline_exclusions`)
//!
//! Each entry is one of (Postfix `mynetworks` syntax):
//!
//! - `a.b.c.d` or `a.b.c.d/len` (len 0..=32)
//! - `[ipv6]` or `[ipv6]/len` (len 0..=128) — Postfix's form; `ipv6` and `ipv6/len`
//!   without brackets are accepted too. `[a.b.c.d]` is accepted as well.
//! - `!entry` excludes: entries are tried in order and the first match decides (as in
//!   Postfix match lists).
//!
//! An entry with host bits set below its length (`10.1.2.3/8`) is accepted as the network
//! (`10.0.0.0/8`) with a warning, as Postfix does. Host names, `/file/name` and
//! `type:table` entries, which Postfix also allows, are not supported: they are errors.
//!
//! A client address that is IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 peer) matches IPv4 entries as `a.b.c.d`; an IPv4 client matches
//! IPv6 entries as `::ffff:a.b.c.d`.
//!
//! # Recipients
//!
//! See [`router`] for how a recipient address is classified.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4 { addr: u32, len: u8 },
    V6 { addr: u128, len: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    net: Net,
    negate: bool,
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl Net {
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Net::V4 { addr, len }, IpAddr::V4(a)) => u32::from(a) & mask32(len) == addr,
            (Net::V4 { .. }, IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (Net::V6 { addr, len }, IpAddr::V6(a)) => u128::from(a) & mask128(len) == addr,
            (Net::V6 { .. }, IpAddr::V4(a)) => self.contains(IpAddr::V6(a.to_ipv6_mapped())),
        }
    }
}

/// A parsed list of networks (mynetworks, smtpd_forbid_bare_newline_exclusions).
#[derive(Debug, Clone, Default)]
pub struct Networks {
    entries: Vec<Entry>,
}

fn parse_entry(entry: &str, warnings: &mut Vec<String>) -> Result<Entry, String> {
    let (negate, spec) = match entry.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let (addr_part, len_part) = match spec.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (spec, None),
    };
    let bare = addr_part
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(addr_part);
    let addr: IpAddr = bare.parse().map_err(|_| {
        format!(
            "{entry}: not an IP address or network (host names, /file and type:table \
             are not supported)"
        )
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_part {
        None => max,
        Some(l) => {
            // Digits only: u8::from_str would accept "+8".
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{entry}: bad network length {l:?}"));
            }
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{entry}: network length {l} is more than {max}")),
            }
        }
    };
    let (net, shown) = match addr {
        IpAddr::V4(a) => {
            let net = u32::from(a) & mask32(len);
            (
                Net::V4 { addr: net, len },
                (net != u32::from(a)).then(|| Ipv4Addr::from(net).to_string()),
            )
        }
        IpAddr::V6(a) => {
            let net = u128::from(a) & mask128(len);
            (
                Net::V6 { addr: net, len },
                (net != u128::from(a)).then(|| format!("[{}]", Ipv6Addr::from(net))),
            )
        }
    };
    if let Some(shown) = shown {
        warnings.push(format!(
            "{entry}: non-null host address bits, perhaps you should use {shown}/{len} instead"
        ));
    }
    Ok(Entry { net, negate })
}

impl Networks {
    /// Parse entries as Postfix writes them: `127.0.0.0/8`, `[::1]/128`, `::1/128`,
    /// `192.168.1.5`, `[2001:db8::]/32`. Err: `entry: reason` for the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Networks, String> {
        Networks::parse_with_warnings(entries).map(|(n, _)| n)
    }

    /// Like [`Networks::parse`], also returning warnings (`entry: host bits set ...`) for
    /// `poshta check` and the start-up log.
    pub fn parse_with_warnings(entries: &[String]) -> Result<(Networks, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut parsed = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.trim();
            if e.is_empty() {
                continue;
            }
            parsed.push(parse_entry(e, &mut warnings)?);
        }
        Ok((Networks { entries: parsed }, warnings))
    }

    /// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 entries. The first matching
    /// entry decides (a `!` entry excludes); no match: not contained.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.entries
            .iter()
            .find(|e| e.net.contains(ip))
            .is_some_and(|e| !e.negate)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a recipient address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptClass {
    /// A mailbox user in a local domain; `user` is the users-file name (lowercase,
    /// extension after recipient_delimiter removed).
    Local { user: String },
    /// An alias (alias_maps) in a local domain; `name` is the alias name that matched
    /// (lowercase; the whole local part, or the part before the recipient_delimiter).
    Alias { name: String },
    /// A system user (a passwd entry, Postfix's local(8) recipients); `user` is the login
    /// name.
    System { user: String },
    /// A local domain but no such user: 550 5.1.1.
    UnknownLocal,
    /// Not a local domain: relay (allowed only from mynetworks, later after AUTH).
    Remote,
}

impl RcptClass {
    /// Someone here receives it (a mailbox user, an alias or a system user).
    pub fn is_local_recipient(&self) -> bool {
        matches!(
            self,
            RcptClass::Local { .. } | RcptClass::Alias { .. } | RcptClass::System { .. }
        )
    }
}

pub mod access;
pub mod aliases;
pub mod anvil;
pub mod restrictions;
pub mod router;
pub mod table;
pub use router::Router;

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Networks {
        Networks::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn postfix_forms() {
        let n = nets(&[
            "127.0.0.0/8",
            "[::1]/128",
            "192.168.1.5",
            "[2001:db8::]/32",
            "fe80::/10",
            "[10.9.9.9]",
        ]);
        for yes in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "192.168.1.5",
            "2001:db8:1::7",
            "fe80::1",
            "10.9.9.9",
        ] {
            assert!(n.contains(ip(yes)), "{yes}");
        }
        for no in [
            "128.0.0.1",
            "::2",
            "192.168.1.4",
            "192.168.1.6",
            "2001:db9::1",
            "fec0::1",
            "10.9.9.8",
            "0.0.0.0",
            "::",
        ] {
            assert!(!n.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries() {
        let n = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        assert!(n.contains(ip("::ffff:127.0.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("::ffff:11.1.2.3")));
        // IPv4-compatible (deprecated ::a.b.c.d) is not mapped: no match.
        assert!(!n.contains(ip("::10.1.2.3")));
        let v6 = nets(&["[::ffff:0:0]/96"]);
        assert!(v6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn zero_length_and_full_length() {
        let all4 = nets(&["0.0.0.0/0"]);
        assert!(all4.contains(ip("8.8.8.8")) && !all4.contains(ip("2001:db8::1")));
        let all6 = nets(&["[::]/0"]);
        assert!(all6.contains(ip("2001:db8::1")));
        let one = nets(&["1.2.3.4/32", "[2001:db8::1]/128"]);
        assert!(one.contains(ip("1.2.3.4")) && !one.contains(ip("1.2.3.5")));
        assert!(one.contains(ip("2001:db8::1")) && !one.contains(ip("2001:db8::2")));
    }

    #[test]
    fn negation_first_match_wins() {
        let n = nets(&["!192.168.1.5", "192.168.1.0/24"]);
        assert!(!n.contains(ip("192.168.1.5")));
        assert!(n.contains(ip("192.168.1.6")));
    }

    #[test]
    fn host_bits_warn() {
        let (n, w) =
            Networks::parse_with_warnings(&["10.1.2.3/8".into(), "[2001:db8::1]/32".into(), "127.0.0.0/8".into()])
                .unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("perhaps you should use 10.0.0.0/8"), "{w:?}");
        assert!(w[1].contains("[2001:db8::]/32"), "{w:?}");
        assert!(n.contains(ip("10.200.0.1")));
    }

    #[test]
    fn bad_entries() {
        for bad in [
            "localhost",
            "example.org",
            "/etc/poshta/mynetworks",
            "hash:/etc/x",
            "1.2.3.4/33",
            "[::1]/129",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "1.2.3.4/-1",
            "1.2.3.4/08x",
            "1.2.3",
            "1.2.3.4.5",
            "[1.2.3.4",
            "::1]",
            "1.2.3.4/8/8",
            "256.1.1.1",
            "[::1%eth0]",
            "!",
            "1.2.3.4/0008",
        ] {
            let e = Networks::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
        // Blank entries are skipped, the empty list contains nothing.
        let n = nets(&["", "  "]);
        assert!(n.is_empty() && !n.contains(ip("127.0.0.1")));
    }
}
