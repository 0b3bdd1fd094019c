//! Outbound SMTP: the I/O shell around [`crate::proto::smtp::client`]. One session per
//! destination (next hop) per delivery batch delivers every message of the batch routed
//! there (connection reuse), each message with up to smtp_destination_recipient_limit
//! recipients per transaction.
//!
//! Resolution:
//! - an IP literal next hop is used as is;
//! - with disable_dns_lookups = yes (or smtp_dns_support_level = disabled) every name comes
//!   from the hosts file (/etc/hosts), MX destination or not, as Postfix does without DNS;
//! - a next hop named directly (`[host]`) is looked up in the hosts file, then in DNS (A,
//!   AAAA per inet_protocols);
//! - otherwise (the recipient domain, or an unbracketed relayhost) the MX records are looked
//!   up in DNS ([`crate::dns`]; RFC 5321 §5.1: preference order, equal preferences shuffled,
//!   the domain's own addresses when it has no MX, RFC 7505 null MX bounces with 5.1.10).
//!
//! A DNS failure (SERVFAIL, REFUSED, timeout) defers. "No such domain" bounces only when the
//! next hop is the recipient's own domain; a relayhost that does not resolve defers. The
//! addresses are tried in order: a refused or timed-out connection, or a session that fails
//! before its first message (a 4xx/5xx greeting, a failed EHLO, STARTTLS or AUTH), moves on
//! to the next address, for at most smtp_mx_address_limit addresses and
//! smtp_mx_session_limit sessions (Postfix's keys and defaults, 5 and 2).
//!
//! TLS: smtp_tls_security_level `may` uses STARTTLS when offered without checking the
//! certificate (opportunistic TLS: an unverified session is still better than plaintext);
//! `encrypt`, `verify` and `secure` require TLS and a certificate that verifies against the
//! roots and matches the next-hop name (or IP literal). This is stricter than Postfix's
//! `encrypt` on purpose: a smarthost that gets the user's password must prove who it is.
//! Roots come from smtp_tls_CAfile (PEM), else from the system bundle
//! /etc/ssl/certs/ca-certificates.crt. poshta ships no roots of its own: an appliance image
//! without a CA bundle must set smtp_tls_CAfile (with `encrypt` and no roots at all, mail
//! defers with a clear reason). smtp_tls_wrappermode = yes starts TLS at connect (port 465,
//! RFC 8314 §3.3).
//!
//! Limits: at most smtp_destination_concurrency_limit sessions per destination at a time
//! (a counter per next hop; more wait for a slot); every network step is bounded by its
//! Postfix timeout key (smtp_connect_timeout, smtp_helo_timeout, ...).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{Async, Timer};

use crate::config::{ClientTlsLevel, InetProtocols, Settings};
use crate::delivery::route::{Hosts, Nexthop, RouteConfig, SaslPasswords, TransportMap};
use crate::dns::io::{host_targets, mx_targets, Families, NotFound, Resolver, Target};
use crate::limits::DNS_MX_RECORDS_MAX;
use crate::proto::smtp::client::{Client, ClientParams, Event, Message, RcptResult, Stage, Status, TlsPolicy};
use crate::queue::{Outcome, QueueId};

/// The system's CA bundle (Debian, Alpine with ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where host names come from without DNS.
const HOSTS_FILE: &str = "/etc/hosts";
/// Bytes per body read from the queue (one thread-pool trip per chunk).
const BODY_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes per socket read.
const READ_BYTES: usize = 16 * 1024;
/// The C library's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Routing and credentials for one delivery batch, loaded off the event loop.
pub struct RelayConf {
    pub route: RouteConfig,
    pub sasl: SaslPasswords,
    pub hosts: Hosts,
    /// The DNS servers (dns_resolver, else /etc/resolv.conf).
    pub resolver: Resolver,
    /// The client TLS config for verified sessions (Err: why TLS cannot verify anything).
    pub tls_verified: Result<Arc<ClientConfig>, String>,
    /// For `may`: TLS without certificate checks.
    pub tls_opportunistic: Arc<ClientConfig>,
    /// Where this server takes SMTP (smtpd_listen; an unspecified address stands for every
    /// address of this host's interfaces): an MX host listed here is ourselves.
    pub me: Vec<SocketAddr>,
}

/// smtpd_listen with `0.0.0.0` / `::` replaced by this host's interface addresses
/// (getifaddrs(3)), for RFC 5321 §5.1's "is this MX host me?".
fn own_smtp_addresses(s: &Settings) -> Vec<SocketAddr> {
    let ifaces: Vec<IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(_) => vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ],
    };
    let mut out = Vec::new();
    for a in &s.smtpd_listen {
        if a.ip().is_unspecified() {
            out.extend(ifaces.iter().map(|ip| SocketAddr::new(*ip, a.port())));
        } else {
            out.push(*a);
        }
    }
    out
}

impl RelayConf {
    /// Blocking: reads transport_maps, sasl_passwd, /etc/hosts and the CA file. Map errors
    /// were reported by `poshta check` and at load; bad lines are skipped here.
    pub fn load(s: &Settings) -> RelayConf {
        let relayhost = RouteConfig::parse_relayhost(&s.relayhost).unwrap_or(None);
        let (transport, _) = TransportMap::load(&s.transport_maps, &s.config_directory);
        let (sasl, _) = if s.smtp_sasl_auth_enable {
            SaslPasswords::load(&s.smtp_sasl_password_maps, &s.config_directory)
        } else {
            (SaslPasswords::default(), Vec::new())
        };
        let hosts = Hosts::load(std::path::Path::new(HOSTS_FILE)).unwrap_or_default();
        let resolver = Resolver {
            conf: match crate::dns::conf_from_servers(&s.dns_resolver) {
                Ok(Some(c)) => c,
                // A bad dns_resolver was reported at load; resolv.conf then.
                Ok(None) | Err(_) => crate::dns::load_resolv_conf(std::path::Path::new(RESOLV_CONF)),
            },
        };
        RelayConf {
            route: RouteConfig {
                local_domains: s.mydestination.clone(),
                relayhost,
                transport,
            },
            sasl,
            hosts,
            resolver,
            // Parsing a system bundle costs milliseconds: only when certificates are checked.
            tls_verified: match s.smtp_tls_security_level {
                ClientTlsLevel::None | ClientTlsLevel::May => Err("certificates are not checked".into()),
                _ => verified_config(s.smtp_tls_ca_file.as_deref()),
            },
            tls_opportunistic: Arc::new(
                with_versions(ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                )))
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify))
                .with_no_client_auth(),
            ),
            me: own_smtp_addresses(s),
        }
    }
}

fn with_versions(
    b: rustls::ConfigBuilder<ClientConfig, rustls::WantsVersions>,
) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    match b.with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]) {
        Ok(b) => b,
        // ring supports both versions: unreachable in practice; fall back to the defaults.
        Err(_) => ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| ClientConfig::builder()),
    }
}

fn verified_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    let path = ca_file.unwrap_or(std::path::Path::new(SYSTEM_CA_BUNDLE));
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        format!(
            "cannot read CA certificates from {}: {e} (set smtp_tls_CAfile)",
            path.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs.flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!(
            "no CA certificates in {} (set smtp_tls_CAfile)",
            path.display()
        ));
    }
    Ok(Arc::new(
        with_versions(ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        )))
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// Opportunistic TLS (`may`): encrypt without authenticating the server (RFC 7435 §1.3).
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One message (or part of one: a recipient-limit chunk) for one destination.
pub struct Item {
    /// The caller's index for the result.
    pub job: usize,
    pub qid: QueueId,
    pub sender: String,
    pub size: u64,
    /// (recipient index in the queue, address)
    pub rcpts: Vec<(usize, String)>,
}

/// The fate of one recipient.
pub struct ItemResult {
    pub job: usize,
    pub idx: usize,
    pub outcome: Outcome,
    /// `host[ip]:port`, or `none`.
    pub relay: String,
    /// Log detail: the remote reply (sent) or the reason.
    pub detail: String,
    /// RFC 3463 status for a DSN, and the Diagnostic-Code value.
    pub dsn: String,
    pub diagnostic: String,
    pub remote_mta: Option<String>,
}

/// A destination: where one session goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dest {
    pub host: String,
    pub port: u16,
    pub mx_lookup: bool,
}

thread_local! {
    /// Sessions per destination (smtp_destination_concurrency_limit).
    static ACTIVE: RefCell<HashMap<Dest, usize>> = RefCell::new(HashMap::new());
    static FREED: event_listener::Event = const { event_listener::Event::new() };
}

/// A session place at one destination; freed on drop.
struct Slot(Dest);

impl Slot {
    async fn take(dest: &Dest, limit: usize) -> Slot {
        let limit = limit.max(1);
        loop {
            let got = ACTIVE.with(|a| {
                let mut a = a.borrow_mut();
                let n = a.entry(dest.clone()).or_insert(0);
                if *n < limit {
                    *n += 1;
                    true
                } else {
                    false
                }
            });
            if got {
                return Slot(dest.clone());
            }
            let l = FREED.with(|f| f.listen());
            // Re-check after registering: a slot may have been freed in between.
            let free = ACTIVE.with(|a| a.borrow().get(dest).copied().unwrap_or(0) < limit);
            if !free {
                l.await;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(n) = a.get_mut(&self.0) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.remove(&self.0);
                }
            }
        });
        FREED.with(|f| f.notify(usize::MAX));
    }
}

/// The connection to the relay: plain TCP, or TLS over it.
enum Conn {
    Plain(Async<TcpStream>),
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
    /// Only while upgrading.
    Gone,
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// Run `f` bounded by `secs`; None on timeout.
async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        Timer::after(Duration::from_secs(secs.max(1))).await;
        None
    })
    .await
}

fn stage_secs(s: &Settings, stage: Stage) -> u64 {
    match stage.timeout_key() {
        Some("smtp_helo_timeout") => s.smtp_helo_timeout_secs,
        Some("smtp_starttls_timeout") => s.smtp_starttls_timeout_secs,
        Some("smtp_rset_timeout") => s.smtp_rset_timeout_secs,
        Some("smtp_mail_timeout") => s.smtp_mail_timeout_secs,
        Some("smtp_rcpt_timeout") => s.smtp_rcpt_timeout_secs,
        Some("smtp_data_init_timeout") => s.smtp_data_init_timeout_secs,
        Some("smtp_data_xfer_timeout") => s.smtp_data_xfer_timeout_secs,
        Some("smtp_data_done_timeout") => s.smtp_data_done_timeout_secs,
        Some("smtp_quit_timeout") => s.smtp_quit_timeout_secs,
        // Waiting for ourselves (Idle): bounded by the helo timeout as a fallback.
        _ => s.smtp_helo_timeout_secs,
    }
}

/// A failure for every recipient of `items` (before or without a session).
fn fail_all(items: &[Item], relay: &str, r: &RcptResult) -> Vec<ItemResult> {
    items
        .iter()
        .flat_map(|it| it.rcpts.iter().map(move |(idx, _)| (it.job, *idx)))
        .map(|(job, idx)| result(job, idx, relay, r, None))
        .collect()
}

fn result(job: usize, idx: usize, relay: &str, r: &RcptResult, remote: Option<&str>) -> ItemResult {
    let outcome = match r.status {
        Status::Sent => Outcome::Delivered,
        Status::Deferred => Outcome::Deferred { reason: r.text.clone() },
        Status::Bounced => Outcome::Bounced { reason: r.text.clone() },
    };
    ItemResult {
        job,
        idx,
        outcome,
        relay: relay.to_string(),
        detail: r.text.clone(),
        dsn: r.dsn.clone(),
        diagnostic: r.diagnostic_code(),
        remote_mta: remote.map(str::to_string),
    }
}

fn temp(text: String, dsn: &str) -> RcptResult {
    RcptResult {
        status: Status::Deferred,
        reply: None,
        text,
        dsn: dsn.into(),
    }
}

/// The next hop as a password-map key source.
fn nexthop_of(d: &Dest) -> Option<Nexthop> {
    let spelled = if d.mx_lookup {
        format!("{}:{}", d.host, d.port)
    } else if d.host.contains(':') {
        format!("[ipv6:{}]:{}", d.host, d.port)
    } else {
        format!("[{}]:{}", d.host, d.port)
    };
    Nexthop::parse(&spelled).ok()
}

/// Deliver `items` to `dest`: resolve it (MX, or the host itself), then one session
/// (connection reuse across messages) on the first host that answers; a host that refuses
/// the connection or fails before the first message makes poshta try the next one
/// (RFC 5321 §5.1), within smtp_mx_address_limit addresses and smtp_mx_session_limit
/// sessions.
pub async fn deliver(
    ctx: &Rc<super::Ctx>,
    s: &Settings,
    conf: &RelayConf,
    dest: &Dest,
    items: Vec<Item>,
) -> Vec<ItemResult> {
    let targets = match resolve(s, conf, dest, &items).await {
        Ok(t) => t,
        Err(nf) => {
            let r = RcptResult {
                status: if nf.permanent {
                    Status::Bounced
                } else {
                    Status::Deferred
                },
                reply: None,
                text: nf.text,
                dsn: nf.dsn.into(),
            };
            return fail_all(&items, "none", &r);
        }
    };
    let _slot = Slot::take(dest, s.smtp_destination_concurrency_limit).await;
    let session_limit = match s.smtp_mx_session_limit {
        0 => usize::MAX,
        n => n,
    };
    let mut sessions = 0usize;
    let mut last_connect = String::new();
    let mut last_session: Option<(String, RcptResult)> = None;
    // Bounded by the number of targets (smtp_mx_address_limit, DNS_MX_RECORDS_MAX).
    for target in &targets {
        let sa = SocketAddr::new(target.ip, dest.port);
        let tcp = match within(s.smtp_connect_timeout_secs, Async::<TcpStream>::connect(sa)).await {
            Some(Ok(t)) => {
                // Commands and body chunks are written as they come: without TCP_NODELAY,
                // Nagle's algorithm and the peer's delayed ACK stall each message ~40 ms.
                let _ = t.get_ref().set_nodelay(true);
                t
            }
            Some(Err(e)) => {
                last_connect = format!(
                    "connect to {}[{}]:{}: {}",
                    target.host,
                    target.ip,
                    dest.port,
                    io_text(&e)
                );
                continue;
            }
            None => {
                last_connect = format!(
                    "connect to {}[{}]:{}: Connection timed out",
                    target.host, target.ip, dest.port
                );
                continue;
            }
        };
        sessions += 1;
        match session(ctx, s, conf, dest, target, tcp, &items).await {
            End::Done(out) => return out,
            End::NotStarted(relay, f) => {
                last_session = Some((relay, f));
                if sessions >= session_limit {
                    break;
                }
            }
        }
    }
    match last_session {
        Some((relay, f)) => fail_all(&items, &relay, &f),
        None => fail_all(&items, "none", &temp(last_connect, "4.4.1")),
    }
}

/// How a session ended.
enum End {
    /// Results for every recipient of the items.
    Done(Vec<ItemResult>),
    /// Nothing was sent: (relay, why). The caller may try another host.
    NotStarted(String, RcptResult),
}

/// Which address families outbound mail uses (inet_protocols).
fn families(s: &Settings) -> Families {
    match s.inet_protocols {
        InetProtocols::All => Families { v4: true, v6: true },
        InetProtocols::Ipv4 => Families { v4: true, v6: false },
        InetProtocols::Ipv6 => Families { v4: false, v6: true },
    }
}

/// The hosts to connect to for `dest`, in order (see the module docs).
async fn resolve(s: &Settings, conf: &RelayConf, dest: &Dest, items: &[Item]) -> Result<Vec<Target>, NotFound> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![Target {
            host: dest.host.clone(),
            ip,
        }]);
    }
    let max = match s.smtp_mx_address_limit {
        0 => DNS_MX_RECORDS_MAX,
        n => n.min(DNS_MX_RECORDS_MAX),
    };
    let from_hosts = |name: &str| -> Vec<Target> {
        conf.hosts
            .lookup(name)
            .into_iter()
            .take(max)
            .map(|ip| Target {
                host: name.to_string(),
                ip,
            })
            .collect()
    };
    if s.disable_dns_lookups {
        // No DNS at all: the hosts file answers for any name, MX destination or not.
        let t = from_hosts(&dest.host);
        if t.is_empty() {
            return Err(NotFound {
                permanent: false,
                text: format!(
                    "Host or domain name not found. Name service error for name={} type=A: Host not found (not in {HOSTS_FILE}; DNS lookups are disabled)",
                    dest.host
                ),
                dsn: "4.4.3",
            });
        }
        return Ok(t);
    }
    let res = if dest.mx_lookup {
        // RFC 5321 §5.1: an MX host that is this server (by name, or an address and port
        // we take SMTP on) ends the list.
        let is_self = |host: &str, ip: Option<IpAddr>| match ip {
            None => host.eq_ignore_ascii_case(s.myhostname.trim_end_matches('.')),
            Some(ip) => conf.me.contains(&SocketAddr::new(ip, dest.port)),
        };
        mx_targets(&conf.resolver, &dest.host, families(s), max, &is_self).await
    } else {
        // A host named directly ([host]): the hosts file first, as the C library's
        // "files dns" order would, so LAN names keep working with DNS on.
        let t = from_hosts(&dest.host);
        if !t.is_empty() {
            return Ok(t);
        }
        host_targets(&conf.resolver, &dest.host, families(s), max).await
    };
    res.map_err(|mut nf| {
        // Only the recipient's own domain can bounce for want of a host: a relayhost or
        // transport next hop that does not resolve is a configuration problem, and the
        // mail waits for it to be fixed (as Postfix defers mail for a bad relayhost).
        let own_domain = dest.mx_lookup
            && items.iter().flat_map(|i| i.rcpts.iter()).all(|(_, a)| {
                a.rsplit_once('@')
                    .is_some_and(|(_, d)| crate::dns::normalize(d) == dest.host)
            });
        if nf.permanent && !own_domain {
            nf.permanent = false;
            nf.dsn = "4.4.3";
        }
        nf
    })
}

/// One SMTP session on `tcp` (connected to `target`) delivering `items`.
async fn session(
    ctx: &Rc<super::Ctx>,
    s: &Settings,
    conf: &RelayConf,
    dest: &Dest,
    target: &Target,
    tcp: Async<TcpStream>,
    items: &[Item],
) -> End {
    let ip = target.ip;
    let relay = format!("{}[{}]:{}", target.host, ip, dest.port);
    let tls_policy = match s.smtp_tls_security_level {
        ClientTlsLevel::None => TlsPolicy::None,
        ClientTlsLevel::May => TlsPolicy::May,
        _ => TlsPolicy::Required,
    };
    let tls_cfg = match s.smtp_tls_security_level {
        ClientTlsLevel::None | ClientTlsLevel::May => Ok(conf.tls_opportunistic.clone()),
        _ => conf.tls_verified.clone(),
    };
    // The certificate must name the host connected to (the MX host, or the next hop).
    let server_name = match target.host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => match ServerName::try_from(target.host.clone()) {
            Ok(n) => n,
            Err(_) => ServerName::IpAddress(ip.into()),
        },
    };
    let mut conn = Conn::Plain(tcp);
    let wrapper = s.smtp_tls_wrappermode;
    if wrapper {
        // RFC 8314 §3.3: implicit TLS, the handshake comes first.
        let cfg = match &tls_cfg {
            Ok(c) => c.clone(),
            Err(e) => return End::NotStarted(relay, temp(format!("TLS is required, but {e}"), "4.7.5")),
        };
        match handshake(conn, cfg, server_name.clone(), s.smtp_starttls_timeout_secs).await {
            Ok(c) => conn = c,
            Err(e) => {
                let text = format!("TLS handshake with {relay} failed: {e}");
                return End::NotStarted(relay, temp(text, "4.7.5"));
            }
        }
    }
    let sender_key = s.smtp_sender_dependent_authentication;
    let auth = nexthop_of(dest).and_then(|n| {
        conf.sasl.lookup(
            &n,
            Some(&target.host),
            if sender_key {
                items.first().map(|i| i.sender.as_str())
            } else {
                None
            },
        )
    });
    let mut client = Client::new(ClientParams {
        helo_name: if s.smtp_helo_name.is_empty() {
            s.myhostname.clone()
        } else {
            s.smtp_helo_name.clone()
        },
        peer: relay.clone(),
        tls: tls_policy,
        tls_active: wrapper,
        auth,
        auth_needs_tls: true,
        auth_soft_bounce: s.smtp_sasl_auth_soft_bounce,
    });
    let remote = target.host.clone();
    let mut out: Vec<ItemResult> = Vec::new();
    let mut next = 0usize; // next item to hand to the client
    let mut current: Option<usize> = None; // item in the client
    let mut failure: Option<RcptResult> = None;
    let mut buf = vec![0u8; READ_BYTES];
    let mut closed_rounds = 0u32;
    // Each round reads or writes once, bounded in time by the stage timers; the number of
    // rounds is bounded by the bytes the peer sends (and the items).
    'session: loop {
        while let Some(ev) = client.poll() {
            match ev {
                Event::StartTls => {
                    if let Err(e) = write_out(&mut conn, &mut client, s).await {
                        failure = Some(temp(
                            format!("lost connection with {relay} while performing the STARTTLS handshake: {e}"),
                            "4.4.2",
                        ));
                        break 'session;
                    }
                    let cfg = match &tls_cfg {
                        Ok(c) => c.clone(),
                        Err(e) => {
                            client.tls_failed(e);
                            continue;
                        }
                    };
                    let plain = std::mem::replace(&mut conn, Conn::Gone);
                    match handshake(plain, cfg, server_name.clone(), s.smtp_starttls_timeout_secs).await {
                        Ok(c) => {
                            conn = c;
                            client.tls_started();
                        }
                        Err(e) => client.tls_failed(&e),
                    }
                }
                Event::Ready => match items.get(next) {
                    Some(it) => {
                        current = Some(next);
                        next += 1;
                        client.send(Message {
                            sender: it.sender.clone(),
                            recipients: it.rcpts.iter().map(|(_, a)| a.clone()).collect(),
                            size: it.size,
                            eight_bit: true,
                        });
                    }
                    None => client.quit(),
                },
                Event::SendBody => {
                    let Some(it) = current.and_then(|c| items.get(c)) else {
                        break 'session;
                    };
                    if let Err(e) = send_body(ctx, &mut conn, &mut client, s, it.qid).await {
                        failure = Some(temp(e.replace("{peer}", &relay), "4.4.2"));
                        break 'session;
                    }
                    client.body_end();
                }
                Event::Done(results) => {
                    if let Some(it) = current.take().and_then(|c| items.get(c)) {
                        for ((idx, _), r) in it.rcpts.iter().zip(results.iter()) {
                            out.push(result(it.job, *idx, &relay, r, Some(&remote)));
                        }
                    }
                }
                Event::Closed(f) => {
                    failure = f;
                    let _ = write_out(&mut conn, &mut client, s).await;
                    break 'session;
                }
            }
        }
        if let Err(e) = write_out(&mut conn, &mut client, s).await {
            failure = Some(temp(
                format!("lost connection with {relay} while {}: {e}", client.stage().phrase()),
                "4.4.2",
            ));
            break;
        }
        if client.is_closed() {
            // Poll once more for Event::Closed; never spin.
            closed_rounds += 1;
            if closed_rounds > 1 {
                break;
            }
            continue;
        }
        match within(stage_secs(s, client.stage()), conn.read(&mut buf)).await {
            None => client.timeout(),
            Some(Ok(0)) | Some(Err(_)) => client.eof(),
            Some(Ok(n)) => client.input(&buf[..n]),
        }
    }
    let _ = within(1, conn.close()).await;
    // Items the session did not finish get the session's failure.
    let f = failure.unwrap_or_else(|| temp(format!("lost connection with {relay}"), "4.4.2"));
    if out.is_empty() && current.is_none() && next == 0 {
        // No message was started (greeting, EHLO, STARTTLS or AUTH failed): the next host
        // may do better (RFC 5321 §5.1).
        return End::NotStarted(relay, f);
    }
    let start = current.unwrap_or(next);
    out.extend(fail_all(items.get(start..).unwrap_or(&[]), &relay, &f));
    End::Done(out)
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "Connection refused".into(),
        io::ErrorKind::TimedOut => "Connection timed out".into(),
        _ => e.to_string(),
    }
}

async fn handshake(conn: Conn, cfg: Arc<ClientConfig>, name: ServerName<'static>, secs: u64) -> Result<Conn, String> {
    let Conn::Plain(tcp) = conn else {
        return Err("TLS is already active".into());
    };
    let connector = futures_rustls::TlsConnector::from(cfg);
    match within(secs, connector.connect(name, tcp)).await {
        None => Err("timed out".into()),
        Some(Ok(t)) => Ok(Conn::Tls(Box::new(t))),
        Some(Err(e)) => Err(e.to_string()),
    }
}

async fn write_out(conn: &mut Conn, client: &mut Client, s: &Settings) -> Result<(), String> {
    let out = client.take_output();
    if out.is_empty() {
        return Ok(());
    }
    let secs = stage_secs(s, client.stage());
    match within(secs, async {
        conn.write_all(&out).await?;
        conn.flush().await
    })
    .await
    {
        None => Err("write timed out".into()),
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(())) => Ok(()),
    }
}

/// Stream the stored body through the client (dot-stuffing) to the socket, chunk by chunk;
/// each chunk's write is bounded by smtp_data_xfer_timeout.
async fn send_body(
    ctx: &Rc<super::Ctx>,
    conn: &mut Conn,
    client: &mut Client,
    s: &Settings,
    qid: QueueId,
) -> Result<(), String> {
    let reader = ctx
        .queue
        .body(qid)
        .map_err(|e| format!("queue read error for {qid}: {e}"))?;
    // Blocking reads of the segments run on the thread pool.
    let mut body = smol::Unblock::with_capacity(BODY_CHUNK_BYTES, reader);
    let mut chunk = vec![0u8; BODY_CHUNK_BYTES];
    // Bounded by the message size: each round consumes at least one byte or ends.
    loop {
        let n = body
            .read(&mut chunk)
            .await
            .map_err(|e| format!("queue read error for {qid}: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        client.body_chunk(&chunk[..n]);
        write_out(conn, client, s)
            .await
            .map_err(|e| format!("lost connection with {{peer}} while sending message body: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(h: &str) -> Dest {
        Dest {
            host: h.into(),
            port: 25,
            mx_lookup: false,
        }
    }

    #[test]
    fn slots_bound_sessions_per_destination() {
        let ex = smol::LocalExecutor::new();
        smol::block_on(ex.run(async {
            let d = dest("relay.test");
            let a = Slot::take(&d, 2).await;
            let _b = Slot::take(&d, 2).await;
            // Another destination is not affected.
            let _other = Slot::take(&dest("other.test"), 1).await;
            let third = ex.spawn(async move { Slot::take(&dest("relay.test"), 2).await });
            // The third waits while two are held.
            let waited = smol::future::or(async { Some(third.await) }, async {
                Timer::after(Duration::from_millis(50)).await;
                None
            })
            .await;
            assert!(waited.is_none());
            let third = ex.spawn(async move { Slot::take(&dest("relay.test"), 2).await });
            drop(a);
            let got = smol::future::or(async { Some(third.await) }, async {
                Timer::after(Duration::from_secs(2)).await;
                None
            })
            .await;
            assert!(got.is_some(), "a freed slot is taken");
        }));
        // A limit of 0 is treated as 1, never as "wait forever".
        smol::block_on(async {
            let _s = Slot::take(&dest("zero.test"), 0).await;
        });
    }

    #[test]
    fn nexthop_spellings_for_password_lookup() {
        assert_eq!(
            nexthop_of(&dest("smtp.example.net")).map(|n| n.host),
            Some("smtp.example.net".into())
        );
        let v6 = Dest {
            host: "::1".into(),
            port: 587,
            mx_lookup: false,
        };
        assert_eq!(nexthop_of(&v6).map(|n| (n.host, n.port)), Some(("::1".into(), 587)));
        let mx = Dest {
            host: "example.net".into(),
            port: 25,
            mx_lookup: true,
        };
        assert!(nexthop_of(&mx).is_some_and(|n| n.mx_lookup));
    }

    #[test]
    fn every_stage_has_its_timeout_key() {
        let mut s = crate::config::load(std::path::Path::new("/nonexistent/main.cf"))
            .map(|l| l.settings)
            .expect("defaults load");
        s.smtp_rcpt_timeout_secs = 7;
        s.smtp_data_xfer_timeout_secs = 9;
        assert_eq!(stage_secs(&s, Stage::Rcpt), 7);
        assert_eq!(stage_secs(&s, Stage::Body), 9);
        assert_eq!(stage_secs(&s, Stage::Greeting), s.smtp_helo_timeout_secs);
    }

    #[test]
    fn missing_ca_file_is_a_clear_reason() {
        let e = verified_config(Some(std::path::Path::new("/nonexistent/ca.pem"))).err();
        assert!(e.is_some_and(|e| e.contains("smtp_tls_CAfile")));
        let e = verified_config(Some(std::path::Path::new("/dev/null"))).err();
        assert!(e.is_some_and(|e| e.contains("no CA certificates")));
    }
}
