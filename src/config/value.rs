//! Parsers for expanded main.cf values: lists, booleans, numbers, times, networks,
//! interfaces and listen entries. Each returns `Err(message)` for the diagnostic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Postfix list syntax: entries separated by commas and/or whitespace; empty entries
/// are dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// `yes` / `no`, case-insensitive (Postfix get_bool).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    if s.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(format!("bad boolean value \"{s}\" (use yes or no)"))
    }
}

/// A plain decimal number (no sign, no suffix), as Postfix reads integers and sizes.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad numerical value \"{s}\" (use a plain decimal number)"));
    }
    s.parse::<u64>()
        .map_err(|_| format!("numerical value \"{s}\" is too large"))
}

/// The largest time value accepted, in seconds (i32::MAX, about 68 years).
pub const TIME_SECS_MAX: u64 = i32::MAX as u64;

/// A time: decimal number plus an optional unit (s, m, h, d, w); `default_unit` applies
/// without one. Returns seconds.
pub fn parse_time(s: &str, default_unit: char) -> Result<u64, String> {
    let bad = || format!("bad time value \"{s}\" (use a number with unit s, m, h, d or w)");
    let digits_end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(bad());
    }
    let unit = match unit.len() {
        0 => default_unit,
        1 => unit.chars().next().unwrap_or(default_unit),
        _ => return Err(bad()),
    };
    let mult: u64 = match unit.to_ascii_lowercase() {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(bad()),
    };
    // Postfix keeps times in a C int; the same cap keeps later arithmetic
    // (now + time) far from overflow.
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&secs| secs <= TIME_SECS_MAX)
        .ok_or_else(|| format!("time value \"{s}\" is too large"))
}

/// An IP address, IPv6 optionally in brackets (`[::1]`).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    s.parse::<IpAddr>().ok()
}

/// A network as mynetworks writes it: `addr` or `addr/len`; IPv6 may be bracketed with
/// the length outside (`[::1]/128`, Postfix style) or bare (`::1/128`). Returns the
/// address and the prefix length (full length when none is given).
pub fn parse_network(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("bad network \"{s}\" (use address or address/length; IPv6 as [addr]/length)");
    let (addr, len) = match s.rsplit_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip = parse_ip(addr).ok_or_else(bad)?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u8>().map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
    };
    if len > max {
        return Err(format!("bad network \"{s}\": prefix length {len} is larger than {max}"));
    }
    Ok((ip, len))
}

/// True when `ip` has bits set outside the first `len` bits (Postfix warns:
/// "non-null host address bits").
pub fn has_host_bits(ip: IpAddr, len: u8) -> bool {
    let (bits, width): (u128, u32) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host = width.saturating_sub(u32::from(len));
    if host == 0 {
        return false;
    }
    let mask = if host >= 128 { u128::MAX } else { (1u128 << host) - 1 };
    bits & mask != 0
}

/// One listen entry: a bare port, or an address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenEntry {
    /// `25`: bind on each inet_interfaces address.
    Port(u16),
    /// `127.0.0.1:2525` or `[::1]:2525`.
    Addr(SocketAddr),
}

/// `port`, `ipv4:port` or `[ipv6]:port`. Port 0 is accepted (the kernel picks one;
/// useful in tests).
pub fn parse_listen(s: &str) -> Result<ListenEntry, String> {
    let bad = || format!("bad listen entry \"{s}\" (use port, address:port or [ipv6-address]:port)");
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        p.parse::<u16>()
            .map_err(|_| format!("bad listen entry \"{s}\": port out of range"))
    };
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return port(s).map(ListenEntry::Port);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest.split_once("]:").ok_or_else(bad)?;
        let ip = a.parse::<Ipv6Addr>().map_err(|_| bad())?;
        return Ok(ListenEntry::Addr(SocketAddr::new(IpAddr::V6(ip), port(p)?)));
    }
    let (a, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip = a.parse::<Ipv4Addr>().map_err(|_| bad())?;
    Ok(ListenEntry::Addr(SocketAddr::new(IpAddr::V4(ip), port(p)?)))
}

/// A host or domain name: dot-separated labels of letters, digits, `-` and `_`, no
/// label starting or ending with `-`, at most 255 bytes (RFC 5321 §4.5.3.1.2).
pub fn check_hostname(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= crate::limits::SMTP_DOMAIN_BYTES_MAX
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad host or domain name \"{s}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(split_list("a, b,c  d\t,,e"), vec!["a", "b", "c", "d", "e"]);
        assert!(split_list("").is_empty());
        assert!(split_list(" , ,, ").is_empty());
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert_eq!(parse_bool("YES"), Ok(true));
        for b in ["", "true", "1", "y", "yes please"] {
            assert!(parse_bool(b).is_err(), "{b}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("10240000"), Ok(10_240_000));
        assert_eq!(parse_u64("0"), Ok(0));
        for b in ["", "lots", "-1", "+1", "10M", "1 0", "99999999999999999999999"] {
            assert!(parse_u64(b).is_err(), "{b}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("300", 's'), Ok(300));
        assert_eq!(parse_time("300s", 'd'), Ok(300));
        assert_eq!(parse_time("5", 'd'), Ok(432_000));
        assert_eq!(parse_time("5d", 's'), Ok(432_000));
        assert_eq!(parse_time("2m", 's'), Ok(120));
        assert_eq!(parse_time("1h", 's'), Ok(3600));
        assert_eq!(parse_time("1w", 's'), Ok(604_800));
        assert_eq!(parse_time("0h", 'h'), Ok(0));
        assert_eq!(parse_time("3H", 's'), Ok(10_800));
        assert_eq!(parse_time("2147483647", 's'), Ok(TIME_SECS_MAX));
        assert_eq!(parse_time("3550w", 's'), Ok(3550 * 604_800));
        for b in [
            "",
            "s",
            "5x",
            "5ss",
            "1h30m",
            "-5s",
            "5 s",
            "99999999999999999999w",
            "30000000000000w",
            "2147483648",
            "3551w",
        ] {
            assert!(parse_time(b, 's').is_err(), "{b}");
        }
    }

    #[test]
    fn networks() {
        let v4 = |s: &str| parse_network(s).map(|(a, l)| (a.to_string(), l));
        assert_eq!(v4("127.0.0.0/8"), Ok(("127.0.0.0".into(), 8)));
        assert_eq!(v4("10.1.2.3"), Ok(("10.1.2.3".into(), 32)));
        assert_eq!(v4("[::1]/128"), Ok(("::1".into(), 128)));
        assert_eq!(v4("[::ffff:127.0.0.0]/104"), Ok(("::ffff:127.0.0.0".into(), 104)));
        assert_eq!(v4("::1/128"), Ok(("::1".into(), 128)));
        assert_eq!(v4("[fe80::]"), Ok(("fe80::".into(), 128)));
        assert_eq!(v4("0.0.0.0/0"), Ok(("0.0.0.0".into(), 0)));
        for b in [
            "",
            "/8",
            "127.0.0.0/",
            "127.0.0.0/33",
            "[::1]/129",
            "127.0.0/8",
            "localhost",
            "1.2.3.4/+8",
            "1.2.3.4/08x",
            "[127.0.0.1]",
            "[::1/128]",
            "hash:/etc/net",
            "::1]/12",
            "1.2.3.4/0008",
        ] {
            assert!(parse_network(b).is_err(), "{b}");
        }
        assert!(has_host_bits("10.1.2.3".parse().unwrap(), 8));
        assert!(!has_host_bits("10.0.0.0".parse().unwrap(), 8));
        assert!(!has_host_bits("10.1.2.3".parse().unwrap(), 32));
        assert!(!has_host_bits("::".parse().unwrap(), 0));
        assert!(has_host_bits("::1".parse().unwrap(), 0));
        assert!(has_host_bits("::1".parse().unwrap(), 64));
    }

    #[test]
    fn listen_entries() {
        assert_eq!(parse_listen("25"), Ok(ListenEntry::Port(25)));
        assert_eq!(
            parse_listen("127.0.0.1:2525"),
            Ok(ListenEntry::Addr("127.0.0.1:2525".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("[::1]:2525"),
            Ok(ListenEntry::Addr("[::1]:2525".parse().unwrap()))
        );
        assert_eq!(parse_listen("0"), Ok(ListenEntry::Port(0)));
        for b in [
            "",
            "65536",
            "smtp",
            ":25",
            "127.0.0.1:",
            "127.0.0.1",
            "::1:25",
            "[::1]",
            "[::1]25",
            "[127.0.0.1]:25",
            "1.2.3.4:99999",
            "host:25",
            "[::1]:-1",
            "-25",
        ] {
            assert!(parse_listen(b).is_err(), "{b}");
        }
    }

    #[test]
    fn hostnames() {
        for g in ["mail.example.org", "localhost", "a-b.c_d.e1", "x"] {
            assert!(check_hostname(g).is_ok(), "{g}");
        }
        let long = format!("{}.org", "a".repeat(64));
        for b in [
            "",
            ".",
            "a..b",
            "-a.org",
            "a-.org",
            "a b",
            "a.org.",
            "ä.org",
            long.as_str(),
        ] {
            assert!(check_hostname(b).is_err(), "{b}");
        }
    }
}
