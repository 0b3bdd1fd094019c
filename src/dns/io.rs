//! The I/O shell of the resolver: queries over smol's UDP, again over TCP when an answer is
//! truncated, every step bounded in time and size; and the destination lookup of RFC 5321
//! §5.1 (MX, then the addresses of each exchange; the domain's own addresses when it has
//! no MX) written against the [`Lookup`] trait so it is tested without a network.
//!
//! Nothing here blocks the event loop: sockets are non-blocking, waits are timers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

use super::{
    decode_reply, encode_query, order_mx, order_mx_pref, random_u64, special_name, Answer, MxPlan, MxPrefPlan, Qtype,
    Rdata, Reply, ResolverConf,
};
use crate::limits::{DNS_STRAY_REPLIES_MAX, DNS_TCP_BYTES_MAX, DNS_UDP_BYTES_MAX};

/// Something that answers one DNS question: definitive answer, or a temporary failure.
#[allow(async_fn_in_trait)] // single-threaded: no Send bound wanted
pub trait Lookup {
    async fn lookup(&self, name: &str, qtype: Qtype) -> Result<Answer, String>;
}

/// The stub resolver: asks the configured servers in turn.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub conf: ResolverConf,
}

impl Lookup for Resolver {
    async fn lookup(&self, name: &str, qtype: Qtype) -> Result<Answer, String> {
        if let Some(a) = special_name(name) {
            // RFC 6761 §6.3: localhost has no MX; its address is the loopback address.
            return Ok(match (a, qtype) {
                (Answer::NxDomain, _) => Answer::NxDomain,
                (_, Qtype::A) => Answer::Records(vec![Rdata::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST))]),
                (_, Qtype::Aaaa) => Answer::Records(vec![Rdata::Addr(IpAddr::V6(Ipv6Addr::LOCALHOST))]),
                (_, Qtype::Mx) => Answer::NoData,
            });
        }
        let mut last = String::from("no name server configured");
        // Bounded: attempts (<= DNS_ATTEMPTS_MAX) x servers (<= DNS_SERVERS_MAX), each
        // exchange bounded by the timeout.
        for _ in 0..self.conf.attempts.max(1) {
            for server in &self.conf.servers {
                match exchange(*server, name, qtype, self.conf.timeout).await {
                    Ok(a) => return Ok(a),
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        Err(last)
    }
}

async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        Timer::after(d).await;
        None
    })
    .await
}

/// One question to one server: UDP, then TCP if the answer was truncated.
async fn exchange(server: SocketAddr, name: &str, qtype: Qtype, timeout: Duration) -> Result<Answer, String> {
    let id = random_u64() as u16;
    let query = encode_query(id, name, qtype)?;
    let reply = match within(timeout, udp(server, &query, id, name, qtype)).await {
        None => return Err("timed out".into()),
        Some(r) => r?,
    };
    let reply = match reply {
        Reply::Truncated => match within(timeout, tcp(server, &query, id, name, qtype)).await {
            None => return Err("timed out over TCP".into()),
            Some(r) => r?,
        },
        r => r,
    };
    match reply {
        Reply::Answer(a) => Ok(a),
        Reply::Temp(e) => Err(e),
        Reply::Truncated => Err("truncated answer over TCP".into()),
        Reply::Ignore => Err("no matching answer".into()),
    }
}

async fn udp(server: SocketAddr, query: &[u8], id: u16, name: &str, qtype: Qtype) -> Result<Reply, String> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let sock = Async::<UdpSocket>::bind(local).map_err(|e| e.to_string())?;
    // A connected socket takes datagrams from the server only, and reports an ICMP
    // "port unreachable" as a refused connection at once instead of a timeout.
    sock.get_ref().connect(server).map_err(|e| e.to_string())?;
    sock.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; DNS_UDP_BYTES_MAX];
    for _ in 0..DNS_STRAY_REPLIES_MAX {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        match decode_reply(id, name, qtype, &buf[..n]) {
            Reply::Ignore => continue,
            r => return Ok(r),
        }
    }
    Err("too many stray answers".into())
}

/// RFC 1035 §4.2.2: the message is preceded by its length in two bytes.
async fn tcp(server: SocketAddr, query: &[u8], id: u16, name: &str, qtype: Qtype) -> Result<Reply, String> {
    let mut s = Async::<TcpStream>::connect(server).await.map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await.map_err(|e| e.to_string())?;
    let n = usize::from(u16::from_be_bytes(l)).min(DNS_TCP_BYTES_MAX);
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(match decode_reply(id, name, qtype, &buf) {
        Reply::Ignore => Reply::Temp("TCP answer does not match the query".into()),
        r => r,
    })
}

/// reject_unknown_sender_domain: can mail be returned to `domain`? True when it has an
/// MX that is not null, or (no MX) an A or AAAA record. False for a name that does not
/// exist, a null MX (RFC 7505 §4.2: such a domain sends no mail back) or one with no
/// records at all. Err: the DNS could not say (temporary).
pub async fn domain_resolves<L: Lookup>(l: &L, domain: &str) -> Result<bool, String> {
    match l.lookup(domain, Qtype::Mx).await? {
        Answer::NxDomain => Ok(false),
        Answer::Records(r) => Ok(matches!(order_mx(&r, random_u64), MxPlan::Hosts(h) if !h.is_empty())),
        Answer::NoData => {
            for q in [Qtype::A, Qtype::Aaaa] {
                match l.lookup(domain, q).await? {
                    Answer::Records(r) if !r.is_empty() => return Ok(true),
                    Answer::NxDomain => return Ok(false),
                    _ => {}
                }
            }
            Ok(false)
        }
    }
}

/// A host to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX exchange (or the domain itself), for the log, TLS and sasl_passwd.
    pub host: String,
    pub ip: IpAddr,
}

/// Why no target was found: temporary (defer) or permanent (bounce), with the RFC 3463
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    pub permanent: bool,
    pub text: String,
    pub dsn: &'static str,
}

/// Which address families to look up (inet_protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

fn not_found(name: &str, qtype: Qtype, temp: Option<&str>) -> NotFound {
    match temp {
        // Postfix's wording, so log watchers and users see familiar text.
        Some(e) => NotFound {
            permanent: false,
            text: format!(
                "Host or domain name not found. Name service error for name={name} type={}: Host not found, try again ({e})",
                qtype.name()
            ),
            dsn: "4.4.3",
        },
        None => NotFound {
            permanent: true,
            text: format!(
                "Host or domain name not found. Name service error for name={name} type={}: Host not found",
                qtype.name()
            ),
            dsn: "5.4.4",
        },
    }
}

/// The addresses of `host`: Ok (maybe empty: no such host or no address), Err: temporary.
async fn addresses<L: Lookup>(l: &L, host: &str, fam: Families) -> Result<Vec<IpAddr>, (Qtype, String)> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut out = Vec::new();
    let mut temp = None;
    for (on, q) in [(fam.v4, Qtype::A), (fam.v6, Qtype::Aaaa)] {
        if !on {
            continue;
        }
        match l.lookup(host, q).await {
            Ok(Answer::Records(r)) => out.extend(r.into_iter().filter_map(|r| match r {
                Rdata::Addr(ip) => Some(ip),
                Rdata::Mx(..) => None,
            })),
            Ok(_) => {}
            Err(e) => temp = Some((q, e)),
        }
    }
    match temp {
        Some(t) if out.is_empty() => Err(t),
        _ => Ok(out),
    }
}

/// Targets for a host connected to directly (no MX): its addresses.
pub async fn host_targets<L: Lookup>(l: &L, host: &str, fam: Families, max: usize) -> Result<Vec<Target>, NotFound> {
    match addresses(l, host, fam).await {
        Ok(a) if a.is_empty() => Err(not_found(host, Qtype::A, None)),
        Ok(a) => Ok(a
            .into_iter()
            .take(max.max(1))
            .map(|ip| Target {
                host: host.to_string(),
                ip,
            })
            .collect()),
        Err((q, e)) => Err(not_found(host, q, Some(&e))),
    }
}

/// RFC 5321 §5.1: the hosts to try for mail to `domain`, in order, at most `max` addresses.
/// `is_self(host, None)` / `is_self(host, Some(ip))` say whether an MX host (by name, or one
/// of its addresses) is this server: "if the SMTP client finds its
/// own name or address among the MX hosts, it MUST discard that record and any with the same
/// or a higher preference value"; when nothing is left the mail loops back to us (5.4.6).
pub async fn mx_targets<L: Lookup>(
    l: &L,
    domain: &str,
    fam: Families,
    max: usize,
    is_self: &dyn Fn(&str, Option<IpAddr>) -> bool,
) -> Result<Vec<Target>, NotFound> {
    let domain = super::normalize(domain);
    let records = match l.lookup(&domain, Qtype::Mx).await {
        Err(e) => return Err(not_found(&domain, Qtype::Mx, Some(&e))),
        Ok(Answer::NxDomain) => return Err(not_found(&domain, Qtype::Mx, None)),
        // RFC 5321 §5.1: no MX records: the domain itself is the implicit MX (preference 0).
        Ok(Answer::NoData) => return host_targets(l, &domain, fam, max).await,
        Ok(Answer::Records(r)) => r,
    };
    let hosts = match order_mx_pref(&records, random_u64) {
        // RFC 7505 §4.1: a null MX bounces at once with 5.1.10 (RFC 7505 §4.2 code).
        MxPrefPlan::NullMx => {
            return Err(NotFound {
                permanent: true,
                text: format!("Domain {domain} does not accept mail (nullMX)"),
                dsn: "5.1.10",
            })
        }
        MxPrefPlan::Hosts(h) => h,
    };
    let max = max.max(1);
    // (preference, target)
    let mut out: Vec<(u16, Target)> = Vec::new();
    let mut last: Option<NotFound> = None;
    let mut found_self = false;
    // Bounded by DNS_MX_RECORDS_MAX hosts and `max` addresses.
    for (pref, h) in hosts {
        if out.len() >= max {
            break;
        }
        match addresses(l, &h, fam).await {
            // RFC 5321 §5.1: ourselves, and every record from this preference on, are out.
            Ok(a) if is_self(&h, None) || a.iter().any(|ip| is_self(&h, Some(*ip))) => {
                out.retain(|(p, _)| *p < pref);
                found_self = true;
                break;
            }
            Ok(a) if a.is_empty() => {
                if last.as_ref().is_none_or(|l| l.permanent) {
                    last = Some(not_found(&h, Qtype::A, None));
                }
            }
            Ok(a) => {
                let room = max - out.len();
                out.extend(
                    a.into_iter()
                        .take(room)
                        .map(|ip| (pref, Target { host: h.clone(), ip })),
                )
            }
            // A temporary failure of any MX host makes the whole lookup temporary.
            Err((q, e)) => last = Some(not_found(&h, q, Some(&e))),
        }
    }
    if out.is_empty() && found_self {
        // Postfix's words and status for the same case.
        return Err(NotFound {
            permanent: true,
            text: format!("mail for {domain} loops back to myself"),
            dsn: "5.4.6",
        });
    }
    if out.is_empty() {
        return Err(last.unwrap_or_else(|| not_found(&domain, Qtype::Mx, None)));
    }
    Ok(out.into_iter().map(|(_, t)| t).collect())
}
