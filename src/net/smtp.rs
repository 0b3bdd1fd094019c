//! One SMTP session: pumps bytes between a connection (plain or TLS) and
//! `proto::smtp::server::Server`, and answers its events with policy decisions, password
//! checks and queue writes.
//!
//! Three kinds of listener share this code (see [`Kind`]): port 25 (`smtpd_listen`: mail
//! from other servers and from mynetworks, STARTTLS offered, AUTH only with
//! smtpd_sasl_auth_enable), submission on 587 (RFC 6409: STARTTLS, AUTH required before
//! MAIL) and submissions on 465 (RFC 8314 §3.3: TLS from the first byte, AUTH required).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

use super::tls::{self, Stream};
use super::{Ctx, Policy};
use crate::config::TlsSecurityLevel;
use crate::mlog;
use crate::policy::restrictions::{Facts, Stage};
use crate::policy::RcptClass;
use crate::proto::reply::Reply;
use crate::proto::sasl::Credentials;
use crate::proto::smtp::received::{received_header, ReceivedInfo};
use crate::proto::smtp::server::{BareNewline, Buffers, Event, HeaderFix, Server, SessionParams};
use crate::queue::{Envelope, Incoming};

const REPLY_STORAGE: Reply = Reply::new(452, "4.3.1 Insufficient system storage");
const REPLY_QUEUE_ERROR: Reply = Reply::new(451, "4.3.0 Error: queue file write error");
/// RFC 3207 §4: with smtpd_tls_security_level = encrypt nothing but STARTTLS is allowed
/// before TLS.
const REPLY_NEED_TLS: Reply = Reply::new(530, "5.7.0 Must issue a STARTTLS command first");

/// Which listener a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// smtpd_listen (25).
    Smtp,
    /// submission_listen (587, STARTTLS).
    Submission,
    /// submissions_listen (465, implicit TLS).
    Submissions,
}

impl Kind {
    pub fn service(self) -> &'static str {
        match self {
            Kind::Smtp => "smtpd",
            Kind::Submission => "submission/smtpd",
            Kind::Submissions => "submissions/smtpd",
        }
    }
}

/// Normalise IPv4-mapped IPv6 client addresses (::ffff:a.b.c.d) to IPv4 for logs and policy.
pub fn client_ip(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        ip => ip,
    }
}

/// Over the session cap: say so (421, RFC 5321 §3.8) instead of leaving the client hanging.
/// On the implicit-TLS port a plaintext reply means nothing to the client: just close.
pub async fn refuse(ctx: Rc<Ctx>, stream: Async<TcpStream>, peer: SocketAddr, kind: Kind) {
    let host = ctx.policy().settings.myhostname.clone();
    mlog!(
        kind.service(),
        "warning: too many sessions: refusing unknown[{}]",
        client_ip(&peer)
    );
    let line = format!("421 4.7.0 {host} Error: too many connections\r\n");
    super::refuse_connection(stream, (kind != Kind::Submissions).then_some(line.as_str())).await;
}

/// Over a smtpd_client_connection_{count,rate}_limit: Postfix's reply and log line
/// (`421 4.7.0 <host> Error: too many connections from <ip>`).
pub async fn refuse_limited(
    ctx: Rc<Ctx>,
    stream: Async<TcpStream>,
    ip: IpAddr,
    kind: Kind,
    exceeded: crate::policy::anvil::Exceeded,
) {
    let host = ctx.policy().settings.myhostname.clone();
    let what = match exceeded {
        crate::policy::anvil::Exceeded::ConnectionCount(_) => "Connection concurrency limit exceeded",
        _ => "Connection rate limit exceeded",
    };
    mlog!(
        kind.service(),
        "warning: {what}: {} from unknown[{ip}] for service smtp",
        exceeded.count()
    );
    let line = format!("421 4.7.0 {host} Error: too many connections from {ip}\r\n");
    super::refuse_connection(stream, (kind != Kind::Submissions).then_some(line.as_str())).await;
}

/// The open transaction as the shell sees it.
#[derive(Default)]
struct Txn {
    from: Option<String>,
    rcpts: Vec<String>,
    incoming: Option<Incoming>,
    /// Set when a body write failed: the message is aborted at its end.
    write_failed: Option<Reply>,
    /// An access table said DISCARD: accept, tell the client it was accepted, drop it.
    discard: bool,
    /// An access table said HOLD: queue the message on hold.
    hold: bool,
    /// reject_unknown_sender_domain: the sender's domain looked up once per transaction
    /// (None inside: DNS could not say).
    sender_resolves: Option<Option<bool>>,
}

impl Txn {
    fn reset(&mut self) {
        if let Some(i) = self.incoming.take() {
            i.abort();
        }
        *self = Txn::default();
    }
}

/// The mailbox user an AUTH identity names: `alice`, or `alice@<local domain>`, lowercased.
/// None when it cannot be a local mailbox user (an unknown user still costs a full password
/// check, so timing does not tell which names exist).
fn login_name(policy: &Policy, authcid: &str) -> Option<String> {
    let lower = authcid.to_ascii_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) if policy.router.is_local_domain(domain) => Some(local.to_string()),
        Some(_) => None,
        None => Some(lower),
    }
}

/// Check a password off the event loop (argon2id is deliberately slow) on the one
/// password thread (`auth::verify`). Always runs a full verification, also for names that
/// cannot exist (constant cost).
pub async fn verify_login(ctx: &Ctx, policy: &Policy, creds: &Credentials) -> Option<String> {
    // RFC 4616 §2: an authorization identity other than the authentication identity would
    // mean acting as someone else; poshta has no such proxy rights.
    let proxy = !creds.authzid.is_empty() && !creds.authzid.eq_ignore_ascii_case(&creds.authcid);
    let name = login_name(policy, &creds.authcid);
    let users = policy.users.clone();
    let lookup = name.clone().unwrap_or_else(|| "\u{0}nobody".to_string());
    let password = creds.password.clone();
    let ttl = std::time::Duration::from_secs(policy.settings.auth_cache_ttl_secs);
    let ok = ctx.verifier.verify(users, lookup, password, ttl).await;
    match (ok, proxy, name) {
        (true, false, Some(n)) => Some(n),
        _ => None,
    }
}

/// reject_unknown_sender_domain's fact: does the sender's domain have an MX (not null) or
/// an address? None when nothing needs it, DNS is off (disable_dns_lookups), the sender is
/// null or local, or the DNS could not say: a temporary DNS failure never rejects mail
/// (Postfix would answer 450 at the end; poshta lets it through and logs it).
///
/// The look-up's future (1.4 KiB) is boxed, and made only when there is a look-up to do:
/// inline it set the size of every session's task, and made per recipient it was one more
/// allocation class that musl's allocator mapped and unmapped as sessions came and went.
async fn sender_domain_resolves(ctx: &Rc<Ctx>, policy: &Rc<Policy>, from: &str) -> Option<bool> {
    if !policy.restrictions.checks_sender_domain() || policy.settings.disable_dns_lookups {
        return None;
    }
    let (_, domain) = from.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() || domain.starts_with('[') || policy.router.is_local_domain(domain) {
        return None;
    }
    Box::pin(look_up_sender_domain(ctx, policy, domain)).await
}

async fn look_up_sender_domain(ctx: &Rc<Ctx>, policy: &Rc<Policy>, domain: &str) -> Option<bool> {
    let conf = super::deliver::relay_conf(ctx, policy).await;
    match crate::dns::io::domain_resolves(&conf.resolver, domain).await {
        Ok(v) => Some(v),
        Err(e) => {
            crate::mlog!("smtpd", "warning: sender domain {domain}: DNS lookup failed: {e}");
            None
        }
    }
}

/// Run one session to its end.
pub async fn session(ctx: Rc<Ctx>, tcp: Async<TcpStream>, peer: SocketAddr, slot: super::SessionSlot, kind: Kind) {
    let policy: Rc<Policy> = ctx.policy();
    let s = &policy.settings;
    let svc = kind.service();
    let sid = ctx.next_sid.get();
    ctx.next_sid.set(sid + 1);
    let ip = client_ip(&peer);
    let client_name = "unknown".to_string();
    // `NAME[IP]` as logs show the client, made once: several lines a message name it.
    let client = format!("{client_name}[{ip}]");
    let trusted = policy.mynetworks.contains(ip);
    mlog!(svc, "sid={sid} connect from {client}");
    let tls_config = if s.smtpd_tls_security_level == TlsSecurityLevel::None {
        None
    } else {
        ctx.tls_config()
    };
    let handshake_timeout = Duration::from_secs(s.smtpd_starttls_timeout_secs.max(1));

    let mut stream = match kind {
        Kind::Submissions => {
            let Some(cfg) = tls_config.clone() else {
                mlog!(svc, "warning: sid={sid} no usable TLS certificate; closing {client}");
                return;
            };
            // Boxed, as the DNS check and STARTTLS below: each is 1.4-1.7 KiB of future that
            // most sessions never run, and inline they set the size of every session's task
            // (now under 2 KiB: async-task then makes one allocation per session, not two).
            match Box::pin(tls::accept_tls(tcp, cfg, handshake_timeout)).await {
                Ok(st) => {
                    log_tls(svc, sid, &client_name, ip, &st);
                    st
                }
                Err(e) => {
                    mlog!(svc, "sid={sid} SSL_accept error from {client}: {e}");
                    mlog!(svc, "sid={sid} lost connection after CONNECT from {client}");
                    return;
                }
            }
        }
        _ => Stream::Plain(tcp),
    };

    // A client locked out for failed logins gets nothing on the submission ports.
    if kind != Kind::Smtp {
        // (The borrow must end before the await below.)
        let locked = ctx.throttle.borrow_mut().check(ip, crate::time::now_unix());
        if let Err(p) = locked {
            mlog!(
                svc,
                "warning: sid={sid} {client}: locked out for failed logins until {}",
                p.until
            );
            let msg = format!(
                "421 4.7.0 {} Error: too many failed authentication attempts\r\n",
                s.myhostname
            );
            let _ = stream.write_all(msg.as_bytes()).await;
            return;
        }
    }

    let params = SessionParams {
        hostname: s.myhostname.clone(),
        client_ip: ip,
        client_name: client_name.clone(),
        bare_newline: if policy.bare_newline_exclusions.contains(ip) {
            BareNewline::Normalize
        } else {
            BareNewline::Reject
        },
        message_size_limit: s.message_size_limit,
        recipient_limit: s.smtpd_recipient_limit,
        extra_ehlo: Vec::new(),
        tls_active: stream.is_tls(),
        starttls_offered: tls_config.is_some() && kind != Kind::Submissions,
        auth_offered: kind != Kind::Smtp || s.smtpd_sasl_auth_enable,
        auth_requires_tls: s.smtpd_tls_auth_only,
        auth_required: kind != Kind::Smtp,
    };
    let require_tls = kind == Kind::Smtp && s.smtpd_tls_security_level == TlsSecurityLevel::Encrypt;
    let timeout = Duration::from_secs(s.smtpd_timeout_secs.max(1));
    // On the heap: the session's task stays under async-task's 2 KiB boxing threshold
    // (one allocation per session, not two; see linger). Its buffers are an earlier
    // session's (`Buffers`).
    let mut server = Box::new(Server::with_buffers(params, take_buffers()));
    // smtpd_delay_reject = no: the client restrictions run at connect (Postfix's smtpd);
    // a refusal replaces the greeting and every later command but QUIT gets 503.
    if !policy.restrictions.delay_reject {
        let mut facts = Facts::new(ip);
        facts.client_name = &client_name;
        facts.trusted = trusted;
        policy.refresh_tables(svc);
        let verdict = policy
            .restrictions
            .check(Stage::Client, &facts, &policy.tables.borrow());
        for line in &verdict.log {
            mlog!(svc, "warning: {line}");
        }
        if let Some(reply) = verdict.decision.reply() {
            mlog!(
                svc,
                "NOQUEUE: reject: CONNECT from {client}: {}; proto=SMTP",
                reply.first_line()
            );
            server.deny_access(reply.clone());
        }
    }
    let mut buf = super::ReadBuf::take();
    let mut waits = super::Waits::new(&ctx, timeout);
    let mut helo = String::new();
    let mut esmtp = false;
    let mut user: Option<String> = None;
    let mut txn = Txn::default();
    let mut counts = Counts::default();
    'session: loop {
        let mut start_tls = false;
        while let Some(ev) = server.poll() {
            match ev {
                Event::Helo { esmtp: e, domain } => {
                    counts.helo += 1;
                    helo = domain;
                    esmtp = e;
                    txn.reset();
                    // smtpd_delay_reject = no: the HELO restrictions run at HELO.
                    if !policy.restrictions.delay_reject {
                        let mut facts = Facts::new(ip);
                        facts.client_name = &client_name;
                        facts.helo = (!helo.is_empty()).then_some(helo.as_str());
                        facts.trusted = trusted;
                        facts.sasl_user = user.as_deref();
                        policy.refresh_tables(svc);
                        let verdict = policy.restrictions.check(Stage::Helo, &facts, &policy.tables.borrow());
                        for line in &verdict.log {
                            mlog!(svc, "warning: {line}");
                        }
                        if let Some(reply) = verdict.decision.reply() {
                            mlog!(
                                svc,
                                "NOQUEUE: reject: HELO from {client}: {}; proto=SMTP helo=<{helo}>",
                                reply.first_line()
                            );
                            counts.rejected += 1;
                            server.reject(reply.clone());
                            continue;
                        }
                    }
                    server.accept();
                }
                Event::StartTls => {
                    counts.starttls += 1;
                    txn.reset();
                    start_tls = true;
                }
                Event::Auth { mechanism, creds } => {
                    counts.auth += 1;
                    let now = crate::time::now_unix();
                    let locked = ctx.throttle.borrow_mut().check(ip, now);
                    if let Err(p) = locked {
                        mlog!(
                            svc,
                            "warning: sid={sid} {client}: locked out for failed logins until {}",
                            p.until
                        );
                        server.reject(lockout_reply(&s.myhostname));
                        continue;
                    }
                    match verify_login(&ctx, &policy, &creds).await {
                        Some(name) => {
                            ctx.throttle.borrow_mut().success(ip, now);
                            mlog!(
                                svc,
                                "sid={sid} client={client}, sasl_method={}, sasl_username={}",
                                mechanism.name(),
                                name
                            );
                            user = Some(name);
                            server.auth_ok();
                        }
                        None => {
                            // Postfix's line: fail2ban's stock postfix-sasl filter matches it.
                            crate::log::line(
                                svc,
                                format_args!(
                                    "{}",
                                    crate::auth::log::sasl_failure_line(
                                        &client_name,
                                        ip,
                                        mechanism.name(),
                                        "authentication failure"
                                    )
                                ),
                            );
                            let locked = ctx.throttle.borrow_mut().failure(ip, crate::time::now_unix());
                            if locked.is_some() {
                                mlog!(svc, "warning: sid={sid} {client}: too many failed logins; locked out");
                                server.reject(lockout_reply(&s.myhostname));
                            } else {
                                server.auth_failed();
                            }
                        }
                    }
                }
                Event::Mail { from, size, .. } => {
                    counts.mail += 1;
                    txn.reset();
                    if require_tls && !server.tls_active() {
                        server.reject(REPLY_NEED_TLS);
                        continue;
                    }
                    // Postfix's log line for a refused MAIL.
                    let log_mail_reject = |reply: &Reply| {
                        mlog!(
                            svc,
                            "NOQUEUE: reject: MAIL from {client}: {}; from=<{from}> proto=ESMTP helo=<{helo}>",
                            reply.first_line()
                        )
                    };
                    if let Some(reply) = storage_short(s, size) {
                        log_mail_reject(&reply);
                        server.reject(reply);
                        continue;
                    }
                    // smtpd_client_message_rate_limit (anvil).
                    if !policy.event_limit_exceptions.contains(ip) {
                        let limited = ctx.anvil.borrow_mut().message(ip, crate::time::now_unix());
                        if let Err(e) = limited {
                            mlog!(
                                svc,
                                "warning: Message delivery request rate limit exceeded: {} from {client} for service smtp",
                                e.count()
                            );
                            server.reject(Reply::owned(450, format!("4.7.1 Error: too much mail from {ip}")));
                            continue;
                        }
                    }
                    // Postfix's reject_sender_login_mismatch for authenticated clients: a
                    // user may send only as addresses that deliver to their own mailbox.
                    if let Some(u) = user.as_deref() {
                        if s.reject_authenticated_sender_login_mismatch && !from.is_empty() {
                            let owned =
                                matches!(policy.router.classify(&from), RcptClass::Local { user: ref o } if o == u);
                            if !owned {
                                let reply = Reply::owned(
                                    553,
                                    format!("5.7.1 <{from}>: Sender address rejected: not owned by user {u}"),
                                );
                                log_mail_reject(&reply);
                                server.reject(reply);
                                continue;
                            }
                        }
                    }
                    // smtpd_delay_reject = no: the sender restrictions run at MAIL.
                    let mut early_discard = None;
                    let mut early_hold = None;
                    if !policy.restrictions.delay_reject {
                        let domain_of = |a: &str| a.rsplit_once('@').map(|(_, d)| policy.router.is_local_domain(d));
                        let mut facts = Facts::new(ip);
                        facts.client_name = &client_name;
                        facts.helo = (!helo.is_empty()).then_some(helo.as_str());
                        facts.sender = Some(&from);
                        facts.sasl_user = user.as_deref();
                        facts.trusted = trusted;
                        facts.sender_domain_is_local = domain_of(&from).unwrap_or(false);
                        let resolves = sender_domain_resolves(&ctx, &policy, &from).await;
                        facts.sender_domain_resolves = resolves;
                        policy.refresh_tables(svc);
                        let verdict = policy
                            .restrictions
                            .check(Stage::Sender, &facts, &policy.tables.borrow());
                        for line in &verdict.log {
                            mlog!(svc, "warning: {line}");
                        }
                        if let Some(reply) = verdict.decision.reply() {
                            log_mail_reject(reply);
                            counts.rejected += 1;
                            server.reject(reply.clone());
                            continue;
                        }
                        early_discard = verdict.discard;
                        early_hold = verdict.hold;
                    }
                    if let Some(why) = early_discard {
                        mlog!(
                            svc,
                            "sid={sid} discard: MAIL from {client}: {why}; from=<{from}> proto=ESMTP helo=<{helo}>"
                        );
                        txn.discard = true;
                    }
                    if let Some(why) = early_hold {
                        mlog!(
                            svc,
                            "sid={sid} hold: MAIL from {client}: {why}; from=<{from}> proto=ESMTP helo=<{helo}>"
                        );
                        txn.hold = true;
                    }
                    txn.from = Some(from);
                    server.accept();
                }
                Event::Rcpt { to } => {
                    counts.rcpt += 1;
                    // A changed aliases file counts from the next recipient on.
                    policy.refresh_aliases(svc);
                    let class = policy.router.classify(&to);
                    if txn.sender_resolves.is_none() {
                        let r = match txn.from.as_deref() {
                            Some(f) => sender_domain_resolves(&ctx, &policy, f).await,
                            None => None,
                        };
                        txn.sender_resolves = Some(r);
                    }
                    let domain_of = |a: &str| a.rsplit_once('@').map(|(_, d)| policy.router.is_local_domain(d));
                    let facts = Facts {
                        client_ip: ip,
                        client_name: &client_name,
                        helo: (!helo.is_empty()).then_some(helo.as_str()),
                        sender: txn.from.as_deref(),
                        recipient: Some(&to),
                        sasl_user: user.as_deref(),
                        trusted,
                        recipient_domain_is_local: !matches!(class, RcptClass::Remote),
                        recipient_is_local: class.is_local_recipient(),
                        sender_domain_is_local: txn.from.as_deref().and_then(domain_of).unwrap_or(false),
                        sender_domain_resolves: txn.sender_resolves.flatten(),
                    };
                    // smtpd_delay_reject = yes: client, HELO and sender restrictions run here
                    // too, so the log shows the whole envelope (Postfix's default).
                    policy.refresh_tables(svc);
                    let verdict = policy.restrictions.check_rcpt(&facts, &policy.tables.borrow());
                    for line in &verdict.log {
                        mlog!(svc, "warning: {line}");
                    }
                    let outcome = match (verdict.decision.reply(), &class) {
                        (Some(reply), _) => Err(reply.clone()),
                        // No alias table could be loaded yet: the name may be an alias, so
                        // only a temporary refusal is honest (Postfix: "temporary lookup
                        // failure").
                        (None, RcptClass::UnknownLocal) if policy.aliases_failed() => {
                            Err(Reply::owned(451, format!("4.3.0 <{to}>: Temporary lookup failure")))
                        }
                        // smtpd_reject_unlisted_recipient (Postfix default yes).
                        (None, RcptClass::UnknownLocal) => Err(Reply::owned(
                            550,
                            format!("5.1.1 <{to}>: Recipient address rejected: User unknown in local recipient table"),
                        )),
                        (None, _) => Ok(()),
                    };
                    // smtpd_client_recipient_rate_limit (anvil): counts accepted recipients.
                    let outcome = match outcome {
                        Ok(()) if !policy.event_limit_exceptions.contains(ip) => {
                            let limited = ctx.anvil.borrow_mut().recipient(ip, crate::time::now_unix());
                            match limited {
                                Ok(()) => Ok(()),
                                Err(e) => {
                                    mlog!(
                                        svc,
                                        "warning: Recipient address rate limit exceeded: {} from {client} for service smtp",
                                        e.count()
                                    );
                                    Err(Reply::owned(450, format!("4.7.1 Error: too many recipients from {ip}")))
                                }
                            }
                        }
                        other => other,
                    };
                    match outcome {
                        Ok(()) => {
                            if let Some(why) = verdict.discard {
                                mlog!(
                                    svc,
                                    "sid={sid} discard: RCPT from {client}: {why}; from=<{}> to=<{to}>",
                                    txn.from.as_deref().unwrap_or("")
                                );
                                txn.discard = true;
                            }
                            if let Some(why) = verdict.hold {
                                // access(5) HOLD: the message is queued but held until
                                // `poshta queue release` (postsuper -H).
                                mlog!(
                                    svc,
                                    "sid={sid} hold: RCPT from {client}: {why}; from=<{}> to=<{to}>",
                                    txn.from.as_deref().unwrap_or("")
                                );
                                txn.hold = true;
                            }
                            // Named again in this transaction: accepted, kept once (the
                            // queue does the same for every entry point; here local names
                            // also match in any case, as they resolve).
                            let local = class.is_local_recipient();
                            if !txn.rcpts.iter().any(|r| crate::queue::same_recipient(r, &to, local)) {
                                txn.rcpts.push(to);
                            }
                            server.accept();
                        }
                        Err(reply) => {
                            // Postfix's NOQUEUE line, so log tools (fail2ban) keep working.
                            mlog!(
                                svc,
                                "NOQUEUE: reject: RCPT from {client}: {}; from=<{}> to=<{}> proto={} helo=<{}>",
                                reply.first_line(),
                                txn.from.as_deref().unwrap_or(""),
                                to,
                                if esmtp { "ESMTP" } else { "SMTP" },
                                helo
                            );
                            counts.rejected += 1;
                            server.reject(reply);
                        }
                    }
                }
                Event::DataStart => {
                    counts.data += 1;
                    let mut facts = Facts::new(ip);
                    facts.client_name = &client_name;
                    facts.helo = (!helo.is_empty()).then_some(helo.as_str());
                    facts.sender = txn.from.as_deref();
                    facts.sasl_user = user.as_deref();
                    facts.trusted = trusted;
                    let verdict = policy.restrictions.check(Stage::Data, &facts, &policy.tables.borrow());
                    if let Some(reply) = verdict.decision.reply() {
                        mlog!(
                            svc,
                            "NOQUEUE: reject: DATA from {client}: {}; from=<{}> proto=ESMTP helo=<{helo}>",
                            reply.first_line(),
                            txn.from.as_deref().unwrap_or("")
                        );
                        server.reject(reply.clone());
                        continue;
                    }
                    let env = Envelope {
                        sender: txn.from.clone().unwrap_or_default(),
                        recipients: txn.rcpts.clone(),
                        arrival_unix: crate::time::now_unix(),
                        client: client.clone(),
                    };
                    match ctx.queue.begin(env) {
                        Ok(incoming) => {
                            let qid = incoming.qid().to_string();
                            let now = crate::time::now_unix();
                            let date = crate::time::rfc5322(now);
                            // RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA.
                            let protocol = match (esmtp, server.tls_active(), user.is_some()) {
                                (false, _, _) => "SMTP",
                                (true, false, false) => "ESMTP",
                                (true, true, false) => "ESMTPS",
                                (true, false, true) => "ESMTPA",
                                (true, true, true) => "ESMTPSA",
                            };
                            // RFC 5321 §4.4 trace header; the recipient is named only when
                            // there is one, so Bcc recipients stay hidden from each other.
                            let received = received_header(&ReceivedInfo {
                                helo: &helo,
                                client_name: &client_name,
                                client_ip: ip,
                                hostname: &s.myhostname,
                                protocol,
                                queue_id: &qid,
                                rcpt: if txn.rcpts.len() == 1 {
                                    Some(txn.rcpts[0].as_str())
                                } else {
                                    None
                                },
                                date: &date,
                            });
                            let fix = HeaderFix {
                                date: Some(format!("Date: {date}")),
                                message_id: Some(format!(
                                    "Message-ID: <{}.{}@{}>",
                                    crate::time::compact(now),
                                    qid,
                                    s.myhostname
                                )),
                            };
                            match user.as_deref() {
                                Some(u) => {
                                    mlog!(svc, "sid={sid} qid={qid} client={client}, sasl_username={u}")
                                }
                                None => mlog!(svc, "sid={sid} qid={qid} client={client}"),
                            }
                            txn.incoming = Some(incoming);
                            server.accept_data(received.into_bytes(), fix);
                        }
                        Err(e) => {
                            mlog!(svc, "warning: sid={sid} queue: {e}");
                            server.reject(match e {
                                crate::queue::QueueError::Full { .. } => REPLY_STORAGE,
                                _ => REPLY_QUEUE_ERROR,
                            });
                        }
                    }
                }
                Event::Body(bytes) => {
                    if txn.write_failed.is_none() {
                        if let Some(inc) = txn.incoming.as_mut() {
                            if let Err(e) = inc.write(&bytes).await {
                                mlog!(svc, "warning: sid={sid} qid={} write: {e}", inc.qid());
                                txn.write_failed = Some(match e {
                                    crate::queue::QueueError::Full { .. } => REPLY_STORAGE,
                                    _ => REPLY_QUEUE_ERROR,
                                });
                            }
                        }
                    }
                    server.recycle(bytes);
                }
                Event::DataEnd { size } if txn.discard => {
                    // access(5) DISCARD: the client is told the message was accepted.
                    let qid = txn.incoming.as_ref().map(|i| i.qid().to_string()).unwrap_or_default();
                    mlog!(
                        svc,
                        "sid={sid} qid={qid} discarded: size={size}, nrcpt={}",
                        txn.rcpts.len()
                    );
                    txn.reset();
                    server.finish_data(Reply::owned(250, format!("2.0.0 Ok: queued as {qid}")));
                }
                Event::DataEnd { size } => {
                    let reply = match (txn.incoming.take(), txn.write_failed.take()) {
                        (Some(inc), None) => {
                            let qid = inc.qid();
                            match inc.commit().await {
                                Ok(()) => {
                                    // Held before anything else runs (no await in between),
                                    // so the runner never picks it up.
                                    if txn.hold {
                                        if let Err(e) = ctx.queue.hold(qid) {
                                            mlog!(svc, "warning: sid={sid} qid={qid} hold: {e}");
                                        }
                                    }
                                    mlog!(
                                        "qmgr",
                                        "qid={qid} from=<{}>, size={size}, nrcpt={} (queue active)",
                                        txn.from.as_deref().unwrap_or(""),
                                        txn.rcpts.len()
                                    );
                                    Reply::owned(250, format!("2.0.0 Ok: queued as {qid}"))
                                }
                                Err(e) => {
                                    mlog!(svc, "warning: sid={sid} qid={qid} commit: {e}");
                                    match e {
                                        crate::queue::QueueError::Full { .. } => REPLY_STORAGE,
                                        _ => REPLY_QUEUE_ERROR,
                                    }
                                }
                            }
                        }
                        (inc, failed) => {
                            if let Some(i) = inc {
                                i.abort();
                            }
                            failed.unwrap_or(REPLY_QUEUE_ERROR)
                        }
                    };
                    txn = Txn::default();
                    server.finish_data(reply);
                }
                Event::DataAborted(reason) => {
                    mlog!(svc, "sid={sid} message aborted: {reason:?}");
                    txn.reset();
                }
                Event::Reset => txn.reset(),
                Event::Quit => counts.quit += 1,
            }
        }
        let out = server.take_output();
        let sent = super::send_all(&mut stream, &out, timeout).await;
        server.recycle_output(out);
        if !sent {
            txn.reset();
            break 'session;
        }
        if start_tls {
            // RFC 3207 §4.2: the 220 went out in plaintext; now the handshake. The core has
            // already thrown away anything the client pipelined after STARTTLS
            // (CVE-2011-0411) and forgets EHLO/AUTH once TLS is up.
            let cfg = match tls_config.clone() {
                Some(c) => c,
                None => {
                    server.tls_failed();
                    break 'session;
                }
            };
            match Box::pin(stream.upgrade(cfg, handshake_timeout)).await {
                Ok(st) => {
                    log_tls(svc, sid, &client_name, ip, &st);
                    stream = st;
                    user = None;
                    helo.clear();
                    server.tls_started();
                    continue 'session;
                }
                Err(e) => {
                    mlog!(svc, "sid={sid} SSL_accept error from {client}: {e}");
                    mlog!(svc, "sid={sid} lost connection after STARTTLS from {client}");
                    drop(slot);
                    return;
                }
            }
        }
        if server.is_closed() {
            break;
        }
        let got = super::next_input(&mut stream, &mut buf, &mut waits).await;
        match got {
            super::Got::Data(n) => server.input(&buf[..n]),
            super::Got::Eof => server.eof(),
            super::Got::Timeout => {
                mlog!(svc, "sid={sid} timeout after {} from {client}", "command");
                server.timeout();
            }
            super::Got::Stop => {
                // Shutting down: a session between commands gets 421 (RFC 5321 §3.8).
                server.shutting_down();
                let _ = super::send_all(&mut stream, &server.take_output(), Duration::from_secs(5)).await;
                txn.reset();
                break 'session;
            }
        }
    }
    txn.reset();
    keep_buffers(server.take_buffers());
    drop(server);
    drop(slot);
    mlog!(
        svc,
        "sid={sid} disconnect from {client} ehlo={} starttls={} auth={} mail={} rcpt={}/{} data={} quit={}",
        counts.helo,
        counts.starttls,
        counts.auth,
        counts.mail,
        counts.rcpt - counts.rejected,
        counts.rcpt,
        counts.data,
        counts.quit
    );
    linger(&mut stream, &mut buf).await;
}

/// How many sessions' protocol buffers the event loop keeps for the next sessions, and how
/// much memory one set may hold to be kept (a big message's are let go).
const SMTP_BUFFERS_KEPT: usize = 8;
const SMTP_BUFFERS_KEPT_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    static SMTP_BUFFERS: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers of an earlier session, or new empty ones.
fn take_buffers() -> Buffers {
    SMTP_BUFFERS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keep a finished session's buffers for the next one (bounded in count and size).
fn keep_buffers(b: Buffers) {
    if b.capacity() > SMTP_BUFFERS_KEPT_BYTES_MAX {
        return;
    }
    SMTP_BUFFERS.with_borrow_mut(|pool| {
        if pool.len() < SMTP_BUFFERS_KEPT {
            pool.push(b);
        }
    });
}

fn lockout_reply(host: &str) -> Reply {
    Reply::owned(
        421,
        format!("4.7.0 {host} Error: too many failed authentication attempts"),
    )
}

/// Postfix's line, so TLS usage can be counted the same way.
pub fn log_tls(svc: &str, sid: u64, client_name: &str, ip: IpAddr, st: &Stream) {
    match st.tls_info() {
        Some(info) => mlog!(
            svc,
            "sid={sid} Anonymous TLS connection established from {client_name}[{ip}]: {info}"
        ),
        None => mlog!(svc, "sid={sid} TLS connection established from {client_name}[{ip}]"),
    }
}

#[derive(Default)]
struct Counts {
    helo: u32,
    starttls: u32,
    auth: u32,
    mail: u32,
    rcpt: u32,
    rejected: u32,
    data: u32,
    quit: u32,
}

/// After the last reply: half-close and drain what the client still sends for a moment, so
/// the reply is not destroyed by a TCP reset (closing with unread input sends RST). `sink`
/// is the session's read buffer: a buffer of its own here made every session's future
/// 4 KiB bigger (5.7 KiB, for the allocator a size class whose groups were unmapped and
/// mapped again connection after connection).
pub async fn linger(stream: &mut Stream, sink: &mut [u8]) {
    let _ = stream.shutdown_write().await;
    let mut budget: usize = 1 << 20;
    let deadline = Timer::after(Duration::from_secs(crate::limits::LINGER_SECS));
    let drain = async {
        while budget > 0 {
            match stream.read(sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    smol::future::or(drain, async {
        deadline.await;
    })
    .await;
}

/// Postfix's queue_minfree check at MAIL (postconf(5)): the queue's file system must keep
/// queue_minfree bytes free, and at least 1.5 × message_size_limit, plus what the client
/// announced with SIZE; otherwise `452 4.3.1` (RFC 1870 §6.1: storage temporarily short),
/// so that a client does not send a whole message only to have it refused at its end.
/// Unknown free space (statvfs failed) is not a refusal: the write itself will tell.
fn storage_short(s: &crate::config::Settings, size: Option<u64>) -> Option<Reply> {
    let keep = s.queue_minfree.max(s.message_size_limit.saturating_mul(3) / 2);
    let need = keep.saturating_add(size.unwrap_or(0));
    if need == 0 {
        return None;
    }
    let st = rustix::fs::statvfs(&s.queue_directory).ok()?;
    // Blocks available to unprivileged users (poshta runs as mail_owner).
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    (free < need).then(|| Reply::owned(452, "4.3.1 Insufficient system storage".to_string()))
}
