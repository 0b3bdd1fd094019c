//! A small DNS stub resolver for outbound mail: MX, A and AAAA lookups sent to the
//! recursive name servers of /etc/resolv.conf (or the `dns_resolver` key), and the MX
//! selection of RFC 5321 §5.1 with RFC 7505's null MX.
//!
//! This module is sans-IO: it builds queries, checks and decodes answers (wire format by
//! the `simple-dns` crate), parses resolv.conf and orders MX records. The exchanges over
//! UDP and TCP live in [`io`], the only part that touches smol.
//!
//! # resolv.conf (resolv.conf(5), the subset a stub resolver needs)
//! ```text
//! line    = "nameserver" WSP address      ; IPv4 or IPv6 (a "%zone" is skipped); port 53
//!         | "options" *(WSP option)       ; timeout:N (seconds), attempts:N; others ignored
//!         | ("#" / ";") text | other      ; ignored
//! ```
//! At most limits::DNS_SERVERS_MAX name servers, in file order. With none, glibc's default
//! (the local host, 127.0.0.1) is used. timeout defaults to 5 s, attempts to 2, capped by
//! limits::DNS_TIMEOUT_SECS_MAX and limits::DNS_ATTEMPTS_MAX.
//!
//! # dns_resolver (poshta's key)
//! A list of `address`, `address:port` or `[ipv6]:port` entries; when set, resolv.conf is
//! not read. Tests use it to point poshta at a DNS server on a loopback port.
//!
//! # Queries and answers
//! One question per query, class IN, recursion desired, no EDNS (answers over UDP are
//! then at most 512 bytes; a truncated answer (TC) is asked again over TCP, RFC 7766 §5).
//! An answer counts only when its id, its QR bit and its question (name, type, class)
//! match the query (RFC 5452 §9.1); anything else is ignored. CNAMEs inside the answer
//! are followed (at most limits::DNS_CNAME_CHAIN_MAX links). RCODE NXDOMAIN is a
//! definitive "no such name"; NOERROR without a record of the type is "no data";
//! SERVFAIL, REFUSED, NOTIMP, FORMERR, a malformed answer or no answer at all are
//! temporary: mail is deferred, never bounced, on them.

pub mod io;

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::limits::{DNS_ATTEMPTS_MAX, DNS_CNAME_CHAIN_MAX, DNS_MX_RECORDS_MAX, DNS_SERVERS_MAX, DNS_TIMEOUT_SECS_MAX};

/// The record types poshta asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qtype {
    A,
    Aaaa,
    Mx,
}

impl Qtype {
    fn ty(self) -> TYPE {
        match self {
            Qtype::A => TYPE::A,
            Qtype::Aaaa => TYPE::AAAA,
            Qtype::Mx => TYPE::MX,
        }
    }

    /// As Postfix writes it in "name service error for name=... type=...".
    pub fn name(self) -> &'static str {
        match self {
            Qtype::A => "A",
            Qtype::Aaaa => "AAAA",
            Qtype::Mx => "MX",
        }
    }
}

/// One answer record poshta uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// Preference and exchange (lowercased, no trailing dot; "" is the root: null MX).
    Mx(u16, String),
    Addr(IpAddr),
}

/// A definitive answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The records of the asked type (after CNAMEs).
    Records(Vec<Rdata>),
    /// The name exists, but has no record of this type.
    NoData,
    /// The name does not exist (RCODE 3).
    NxDomain,
}

/// What one received message means for the query it may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Not an answer to this query (wrong id, not a response, other question): keep waiting.
    Ignore,
    /// TC was set: ask again over TCP.
    Truncated,
    Answer(Answer),
    /// This server cannot answer now (SERVFAIL, REFUSED, ...): try the next one.
    Temp(String),
}

/// A name as queried: lowercase, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Build a query for `name` (RFC 1035 §4.1; RD set for a recursive server).
pub fn encode_query(id: u16, name: &str, qtype: Qtype) -> Result<Vec<u8>, String> {
    let n = normalize(name);
    let qname = Name::new(&n).map_err(|e| format!("bad name \"{n}\": {e}"))?;
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(
        qname,
        QTYPE::TYPE(qtype.ty()),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec()
        .map_err(|e| format!("cannot encode a query for \"{n}\": {e}"))
}

fn name_text(n: &Name<'_>) -> String {
    normalize(&n.to_string())
}

/// Check and decode `data` as the answer to (`id`, `name`, `qtype`).
pub fn decode_reply(id: u16, name: &str, qtype: Qtype, data: &[u8]) -> Reply {
    // The id is checked before anything is parsed: stray datagrams cost nothing.
    if data.len() < 12 || u16::from_be_bytes([data[0], data[1]]) != id {
        return Reply::Ignore;
    }
    let p = match Packet::parse(data) {
        Ok(p) => p,
        Err(e) => return Reply::Temp(format!("malformed DNS answer: {e}")),
    };
    let want = normalize(name);
    // RFC 5452 §9.1: the question must match, not only the id.
    let question_ok = p.questions.len() == 1
        && p.questions.iter().all(|q| {
            name_text(&q.qname) == want && q.qtype == QTYPE::TYPE(qtype.ty()) && q.qclass == QCLASS::CLASS(CLASS::IN)
        });
    if !p.has_flags(PacketFlag::RESPONSE) || !question_ok {
        return Reply::Ignore;
    }
    // RFC 2181 §9: a truncated answer is not used; ask again over TCP.
    if p.has_flags(PacketFlag::TRUNCATION) {
        return Reply::Truncated;
    }
    match p.rcode() {
        RCODE::NoError | RCODE::NameError => {}
        other => return Reply::Temp(format!("server answered {other:?}")),
    }
    // Follow CNAMEs from the question name (RFC 1034 §3.6.2), bounded.
    let mut owner = want;
    let mut records = Vec::new();
    for _ in 0..=DNS_CNAME_CHAIN_MAX {
        for rr in p.answers.iter().filter(|rr| name_text(&rr.name) == owner) {
            match (&rr.rdata, qtype) {
                (RData::A(a), Qtype::A) => records.push(Rdata::Addr(IpAddr::V4(Ipv4Addr::from(a.address)))),
                (RData::AAAA(a), Qtype::Aaaa) => records.push(Rdata::Addr(IpAddr::V6(Ipv6Addr::from(a.address)))),
                (RData::MX(mx), Qtype::Mx) => records.push(Rdata::Mx(mx.preference, name_text(&mx.exchange))),
                _ => {}
            }
        }
        if !records.is_empty() {
            break;
        }
        let next = p.answers.iter().find_map(|rr| match &rr.rdata {
            RData::CNAME(c) if name_text(&rr.name) == owner => Some(name_text(&c.0)),
            _ => None,
        });
        match next {
            Some(n) if n != owner => owner = n,
            _ => break,
        }
    }
    if !records.is_empty() {
        return Reply::Answer(Answer::Records(records));
    }
    if p.rcode() == RCODE::NameError {
        Reply::Answer(Answer::NxDomain)
    } else {
        Reply::Answer(Answer::NoData)
    }
}

/// Where and how to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConf {
    pub servers: Vec<SocketAddr>,
    /// Per query and server.
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
}

impl Default for ResolverConf {
    /// glibc's defaults with an empty resolv.conf.
    fn default() -> ResolverConf {
        ResolverConf {
            servers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)],
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Parse resolv.conf text (module docs).
pub fn parse_resolv_conf(text: &str) -> ResolverConf {
    let mut c = ResolverConf {
        servers: Vec::new(),
        ..ResolverConf::default()
    };
    for line in text.lines() {
        let mut w = line.split_ascii_whitespace();
        match w.next() {
            Some("nameserver") => {
                let Some(ip) = w
                    .next()
                    .filter(|a| !a.contains('%'))
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                if c.servers.len() < DNS_SERVERS_MAX {
                    c.servers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("options") => {
                for o in w {
                    if let Some(v) = o.strip_prefix("timeout:").and_then(|v| v.parse::<u64>().ok()) {
                        c.timeout = Duration::from_secs(v.clamp(1, DNS_TIMEOUT_SECS_MAX));
                    } else if let Some(v) = o.strip_prefix("attempts:").and_then(|v| v.parse::<u32>().ok()) {
                        c.attempts = v.clamp(1, DNS_ATTEMPTS_MAX);
                    }
                }
            }
            _ => {}
        }
    }
    if c.servers.is_empty() {
        c.servers = ResolverConf::default().servers;
    }
    c
}

/// Parse one dns_resolver entry: `address`, `address:port`, `[address]` or `[address]:port`.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("\"{s}\": port 0"));
        }
        return Ok(sa);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, 53));
        }
    }
    Err(format!("\"{s}\": expected address, address:port or [address]:port"))
}

/// The resolver from dns_resolver entries (already split), or None to read resolv.conf.
pub fn conf_from_servers(entries: &[String]) -> Result<Option<ResolverConf>, String> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut servers = Vec::new();
    for e in entries {
        let sa = parse_server(e)?;
        if servers.len() < DNS_SERVERS_MAX && !servers.contains(&sa) {
            servers.push(sa);
        }
    }
    Ok(Some(ResolverConf {
        servers,
        ..ResolverConf::default()
    }))
}

/// Read /etc/resolv.conf (bounded; blocking: call it off the event loop). A missing file
/// gives glibc's defaults.
pub fn load_resolv_conf(path: &std::path::Path) -> ResolverConf {
    use std::io::Read;
    let mut buf = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            let _ = f.take(crate::limits::RESOLV_CONF_BYTES_MAX).read_to_end(&mut buf);
            parse_resolv_conf(&String::from_utf8_lossy(&buf))
        }
        Err(_) => ResolverConf::default(),
    }
}

/// A random 64-bit value from the standard library's per-process random SipHash keys,
/// mixed with a counter and the clock (query ids and the shuffle of equal MX preferences;
/// no need for a cryptographic generator: the source port is random too, chosen by the
/// kernel).
pub fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Names a resolver must never send to the network (RFC 6761 §6.3, §6.4): `localhost`
/// is the loopback host, `invalid` never exists.
pub fn special_name(name: &str) -> Option<Answer> {
    let n = normalize(name);
    let last = n.rsplit('.').next().unwrap_or("");
    match last {
        "invalid" => Some(Answer::NxDomain),
        "localhost" => Some(Answer::Records(vec![Rdata::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST))])),
        _ => None,
    }
}

/// What the MX records of a domain say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Exchanges to try, in order.
    Hosts(Vec<String>),
    /// RFC 7505 §3: the domain accepts no mail.
    NullMx,
}

/// Order MX records: by preference, ties shuffled (RFC 5321 §5.1: "randomize them to
/// spread the load"), duplicates dropped, at most limits::DNS_MX_RECORDS_MAX. A single
/// record whose exchange is the root is a null MX (RFC 7505 §3); a root exchange among
/// other records is ignored (RFC 7505 §4.3 leaves that undefined: the real hosts are used).
pub fn order_mx(records: &[Rdata], rand: impl FnMut() -> u64) -> MxPlan {
    match order_mx_pref(records, rand) {
        MxPrefPlan::NullMx => MxPlan::NullMx,
        MxPrefPlan::Hosts(h) => MxPlan::Hosts(h.into_iter().map(|(_, h)| h).collect()),
    }
}

/// [`order_mx`] keeping each host's preference (RFC 5321 §5.1 drops records by preference
/// when the client finds itself among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPrefPlan {
    Hosts(Vec<(u16, String)>),
    NullMx,
}

/// See [`order_mx`].
pub fn order_mx_pref(records: &[Rdata], mut rand: impl FnMut() -> u64) -> MxPrefPlan {
    let mut mx: Vec<(u16, u64, String)> = records
        .iter()
        .filter_map(|r| match r {
            Rdata::Mx(p, h) => Some((*p, rand(), h.clone())),
            Rdata::Addr(_) => None,
        })
        .collect();
    if mx.len() == 1 && mx[0].2.is_empty() {
        return MxPrefPlan::NullMx;
    }
    mx.retain(|(_, _, h)| !h.is_empty());
    mx.sort();
    let mut hosts: Vec<(u16, String)> = Vec::new();
    for (p, _, h) in mx {
        if !hosts.iter().any(|(_, x)| *x == h) && hosts.len() < DNS_MX_RECORDS_MAX {
            hosts.push((p, h));
        }
    }
    if hosts.is_empty() {
        return MxPrefPlan::NullMx;
    }
    MxPrefPlan::Hosts(hosts)
}

#[cfg(test)]
mod tests;
