//! One SMTP session: pumps bytes between a socket and `proto::smtp::server::Server`, and
//! answers its events with policy decisions and queue writes.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

use super::{Ctx, Policy};
use crate::mlog;
use crate::policy::RcptClass;
use crate::proto::reply::Reply;
use crate::proto::smtp::received::{received_header, ReceivedInfo};
use crate::proto::smtp::server::{BareNewline, Event, HeaderFix, Server, SessionParams};
use crate::queue::{Envelope, Incoming};

const REPLY_STORAGE: Reply = Reply::new(452, "4.3.1 Insufficient system storage");
const REPLY_QUEUE_ERROR: Reply = Reply::new(451, "4.3.0 Error: queue file write error");

/// Normalise IPv4-mapped IPv6 client addresses (::ffff:a.b.c.d) to IPv4 for logs and policy.
fn client_ip(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        ip => ip,
    }
}

/// Over the session cap: say so (421, RFC 5321 §3.8) instead of leaving the client hanging.
pub async fn refuse(ctx: Rc<Ctx>, mut stream: Async<TcpStream>, peer: SocketAddr) {
    let host = ctx.policy().settings.myhostname.clone();
    mlog!(
        "smtpd",
        "warning: too many sessions: refusing unknown[{}]",
        client_ip(&peer)
    );
    let msg = format!("421 4.7.0 {host} Error: too many connections\r\n");
    let _ = smol::future::or(async { stream.write_all(msg.as_bytes()).await }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
}

/// The open transaction as the shell sees it.
#[derive(Default)]
struct Txn {
    from: Option<String>,
    rcpts: Vec<String>,
    incoming: Option<Incoming>,
    /// Set when a body write failed: the message is aborted at its end.
    write_failed: Option<Reply>,
}

impl Txn {
    fn reset(&mut self) {
        if let Some(i) = self.incoming.take() {
            i.abort();
        }
        *self = Txn::default();
    }
}

/// Run one session to its end.
pub async fn session(ctx: Rc<Ctx>, stream: Async<TcpStream>, peer: SocketAddr, slot: super::SessionSlot) {
    let policy: Rc<Policy> = ctx.policy();
    let s = &policy.settings;
    let sid = ctx.next_sid.get();
    ctx.next_sid.set(sid + 1);
    let ip = client_ip(&peer);
    let client_name = "unknown".to_string();
    let trusted = policy.mynetworks.contains(ip);
    mlog!("smtpd", "sid={sid} connect from {client_name}[{ip}]");
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
        tls_active: false,
        starttls_offered: false,
        auth_offered: false,
        auth_requires_tls: true,
        auth_required: false,
    };
    let timeout = Duration::from_secs(s.smtpd_timeout_secs.max(1));
    let mut server = Server::new(params);
    let mut stream = stream;
    let mut buf = vec![0u8; crate::limits::SESSION_READ_BYTES];
    let mut helo = String::new();
    let mut esmtp = false;
    let mut txn = Txn::default();
    let mut counts = Counts::default();
    'session: loop {
        while let Some(ev) = server.poll() {
            match ev {
                Event::Helo { esmtp: e, domain } => {
                    counts.helo += 1;
                    helo = domain;
                    esmtp = e;
                    txn.reset();
                    server.accept();
                }
                Event::Mail { from, .. } => {
                    counts.mail += 1;
                    txn.reset();
                    txn.from = Some(from);
                    server.accept();
                }
                Event::Rcpt { to } => {
                    counts.rcpt += 1;
                    let verdict = match policy.router.classify(&to) {
                        RcptClass::Local { .. } => Ok(()),
                        RcptClass::UnknownLocal => Err(Reply::owned(
                            550,
                            format!("5.1.1 <{to}>: Recipient address rejected: User unknown in local recipient table"),
                        )),
                        // RFC 5321 §3.6.1/§7.1: relay only for trusted clients.
                        RcptClass::Remote if trusted => Ok(()),
                        RcptClass::Remote => Err(Reply::owned(554, format!("5.7.1 <{to}>: Relay access denied"))),
                    };
                    match verdict {
                        Ok(()) => {
                            txn.rcpts.push(to);
                            server.accept();
                        }
                        Err(reply) => {
                            // Postfix's NOQUEUE line, so log tools (fail2ban) keep working.
                            mlog!(
                                "smtpd",
                                "NOQUEUE: reject: RCPT from {client_name}[{ip}]: {}; from=<{}> to=<{}> proto={} helo=<{}>",
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
                    let env = Envelope {
                        sender: txn.from.clone().unwrap_or_default(),
                        recipients: txn.rcpts.clone(),
                        arrival_unix: crate::time::now_unix(),
                        client: format!("{client_name}[{ip}]"),
                    };
                    match ctx.queue.begin(env) {
                        Ok(incoming) => {
                            let qid = incoming.qid().to_string();
                            let now = crate::time::now_unix();
                            let date = crate::time::rfc5322(now);
                            // RFC 5321 §4.4 trace header; the recipient is named only when
                            // there is one, so Bcc recipients stay hidden from each other.
                            let received = received_header(&ReceivedInfo {
                                helo: &helo,
                                client_name: &client_name,
                                client_ip: ip,
                                hostname: &s.myhostname,
                                protocol: if esmtp { "ESMTP" } else { "SMTP" },
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
                            mlog!("smtpd", "sid={sid} qid={qid} client={client_name}[{ip}]");
                            txn.incoming = Some(incoming);
                            server.accept_data(received.into_bytes(), fix);
                        }
                        Err(e) => {
                            mlog!("smtpd", "warning: sid={sid} queue: {e}");
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
                                mlog!("smtpd", "warning: sid={sid} qid={} write: {e}", inc.qid());
                                txn.write_failed = Some(match e {
                                    crate::queue::QueueError::Full { .. } => REPLY_STORAGE,
                                    _ => REPLY_QUEUE_ERROR,
                                });
                            }
                        }
                    }
                }
                Event::DataEnd { size } => {
                    let reply = match (txn.incoming.take(), txn.write_failed.take()) {
                        (Some(inc), None) => {
                            let qid = inc.qid();
                            match inc.commit().await {
                                Ok(()) => {
                                    mlog!(
                                        "qmgr",
                                        "qid={qid} from=<{}>, size={size}, nrcpt={} (queue active)",
                                        txn.from.as_deref().unwrap_or(""),
                                        txn.rcpts.len()
                                    );
                                    Reply::owned(250, format!("2.0.0 Ok: queued as {qid}"))
                                }
                                Err(e) => {
                                    mlog!("smtpd", "warning: sid={sid} qid={qid} commit: {e}");
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
                    mlog!("smtpd", "sid={sid} message aborted: {reason:?}");
                    txn.reset();
                }
                Event::Reset => txn.reset(),
                Event::Quit => counts.quit += 1,
                // Not offered by this shell yet (starttls_offered and auth_offered are false,
                // so the core never emits these); the TLS/AUTH integration replaces them.
                Event::StartTls => server.tls_failed(),
                Event::Auth { .. } => server.auth_failed(),
            }
        }
        let out = server.take_output();
        if !out.is_empty() {
            let wrote = smol::future::or(async { stream.write_all(&out).await.map(|_| true) }, async {
                Timer::after(timeout).await;
                Ok(false)
            })
            .await;
            if !matches!(wrote, Ok(true)) {
                txn.reset();
                break 'session;
            }
        }
        if server.is_closed() {
            break;
        }
        enum Got {
            Data(usize),
            Eof,
            Timeout,
            Stop,
        }
        let got = smol::future::or(
            async {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => Got::Eof,
                    Ok(n) => Got::Data(n),
                }
            },
            smol::future::or(
                async {
                    Timer::after(timeout).await;
                    Got::Timeout
                },
                async {
                    ctx.stopped().await;
                    Got::Stop
                },
            ),
        )
        .await;
        match got {
            Got::Data(n) => server.input(&buf[..n]),
            Got::Eof => server.eof(),
            Got::Timeout => {
                mlog!(
                    "smtpd",
                    "sid={sid} timeout after {} from {client_name}[{ip}]",
                    "command"
                );
                server.timeout();
            }
            Got::Stop => {
                // Shutting down: a session between commands gets 421 (RFC 5321 §3.8).
                server.reject(Reply::owned(
                    421,
                    format!("4.3.2 {} Service shutting down", s.myhostname),
                ));
                let _ = stream.write_all(&server.take_output()).await;
                txn.reset();
                break 'session;
            }
        }
    }
    txn.reset();
    drop(slot);
    mlog!(
        "smtpd",
        "sid={sid} disconnect from {client_name}[{ip}] ehlo={} mail={} rcpt={}/{} data={} quit={}",
        counts.helo,
        counts.mail,
        counts.rcpt - counts.rejected,
        counts.rcpt,
        counts.data,
        counts.quit
    );
    linger(&mut stream).await;
}

#[derive(Default)]
struct Counts {
    helo: u32,
    mail: u32,
    rcpt: u32,
    rejected: u32,
    data: u32,
    quit: u32,
}

/// After the last reply: half-close and drain what the client still sends for a moment, so
/// the reply is not destroyed by a TCP reset (closing with unread input sends RST).
async fn linger(stream: &mut Async<TcpStream>) {
    let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut budget: usize = 1 << 20;
    let deadline = Timer::after(Duration::from_secs(crate::limits::LINGER_SECS));
    let drain = async {
        while budget > 0 {
            match stream.read(&mut sink).await {
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
