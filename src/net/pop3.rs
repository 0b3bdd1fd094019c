//! One POP3 session (RFC 1939; STLS RFC 2595; implicit TLS on 995, RFC 8314 §3.1): pumps
//! bytes between a connection and `proto::pop3::server::Server`, checks passwords (shared
//! lockout with SMTP AUTH), and opens, streams from and updates the user's maildrop: a
//! mailbox user's Maildir, or a system user's mbox or home Maildir (`mailbox::system`).
//!
//! Mailbox work is blocking file I/O: it runs on the thread pool (`smol::unblock`); a
//! message is streamed through `smol::Unblock` in chunks, so memory does not grow with the
//! message. Deletions (and a Maildir's new/ → cur/ moves) happen only on QUIT (UPDATE state,
//! RFC 1939 §6); a dropped connection changes nothing.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

use super::smtp::{client_ip, linger, log_tls, verify_login};
use super::tls::{self, Stream};
use super::{Ctx, Policy};
use crate::config::TlsSecurityLevel;
use crate::mailbox::{Mailbox, MailboxError};
use crate::mlog;
use crate::proto::pop3::server::{Event, LoginFailure, Pop3Params, Server};
use crate::proto::sasl::Credentials;

const SVC: &str = "pop3d";

/// Over the session cap (on 995 a plaintext reply means nothing: just close).
pub async fn refuse(stream: Async<TcpStream>, peer: SocketAddr, implicit_tls: bool) {
    mlog!(
        SVC,
        "warning: too many sessions: refusing unknown[{}]",
        client_ip(&peer)
    );
    let line = "-ERR [SYS/TEMP] Too many connections\r\n";
    super::refuse_connection(stream, (!implicit_tls).then_some(line)).await;
}

async fn write_out(stream: &mut Stream, server: &mut Server, timeout: Duration) -> bool {
    let out = server.take_output();
    let ok = super::send_all(stream, &out, timeout).await;
    server.recycle_output(out);
    ok
}

/// One read from a message file (and the size of a message that is "whole" after it).
const CHUNK: usize = crate::limits::QUEUE_CHUNK_BYTES_MAX;

/// Whole messages read ahead of the client's RETRs.
///
/// Mail programs download a maildrop in order, and each thread-pool trip (open, read and
/// close on a blocking thread, then a wake-up of the event loop) cost more than the rest
/// of a small RETR together: with 32 commands pipelined, Dovecot sent 5,000 messages of
/// 2 KiB about 4.5 times faster than poshta did with one trip per message
/// (bench/pop3-fetch.sh, "plain+p32"). So the trip that reads a small message also reads
/// the messages after it, whole, into a [`Batch`], and the next RETRs are served from
/// memory. The stored bytes go through the same encoder as a read from disk. What the
/// client skips is dropped; a message larger than what is left of the batch's budget ends
/// the batch (it streams from disk when asked for). The maildrop is held for the session
/// (RFC 1939 §8), so a message read ahead is the one the client would read.
///
/// Once a RETR is served from a batch (the client reads in order), the batch after it is
/// read on the thread pool while the client takes this one: the file reads overlap the
/// network instead of stopping the session every [`POP3_READ_AHEAD_MESSAGES`] messages.
/// Two batch buffers exist per session, each of half of [`POP3_READ_AHEAD_BYTES`]; they
/// are reused from batch to batch (one allocation per session, not one per message).
///
/// [`POP3_READ_AHEAD_BYTES`]: crate::limits::POP3_READ_AHEAD_BYTES
/// [`POP3_READ_AHEAD_MESSAGES`]: crate::limits::POP3_READ_AHEAD_MESSAGES
#[derive(Default)]
struct ReadAhead {
    /// The batch RETRs are served from.
    cur: Batch,
    /// The next batch, being read on the thread pool.
    pending: Option<smol::Task<Batch>>,
    /// A buffer for the next batch when none is being read.
    spare: Option<Batch>,
}

/// Whole messages read on the thread pool, back to back in one buffer.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// (0-based message index, its bytes in `buf`), ascending, consecutive indexes.
    msgs: std::collections::VecDeque<(usize, std::ops::Range<usize>)>,
    /// The index after the last message read (where the next batch starts).
    end: usize,
}

/// Bytes of whole messages in one batch.
const BATCH_BYTES: usize = crate::limits::POP3_READ_AHEAD_BYTES / 2;

impl Batch {
    /// Read messages `from`, `from + 1`, ... whole while they fit in `budget` bytes (on a
    /// blocking thread), reusing this batch's buffer. A read error or a missing message ends
    /// it: the RETR for that message will meet the error itself.
    fn fill(mut self, mb: &Mailbox, from: usize, budget: usize) -> Batch {
        self.buf.clear();
        self.msgs.clear();
        self.end = from;
        if self.buf.capacity() < budget {
            self.buf = Vec::with_capacity(budget);
        }
        let count = mb.len();
        for i in from..count.min(from.saturating_add(crate::limits::POP3_READ_AHEAD_MESSAGES)) {
            let start = self.buf.len();
            let Ok((msg, size)) = mb.open_message_sized(i) else {
                break;
            };
            if !read_whole(msg, size, &mut self.buf, budget - start) {
                self.buf.truncate(start);
                break;
            }
            self.msgs.push_back((i, start..self.buf.len()));
            self.end = i + 1;
        }
        self
    }

    /// The bytes of message `index` if this batch holds it; messages before it are dropped
    /// (each is served once; the client skipped them).
    fn take(&mut self, index: usize) -> Option<std::ops::Range<usize>> {
        while self.msgs.front().is_some_and(|(i, _)| *i < index) {
            self.msgs.pop_front();
        }
        match self.msgs.front() {
            Some((i, _)) if *i == index => self.msgs.pop_front().map(|(_, r)| r),
            _ => None,
        }
    }
}

/// Append a whole message to `buf` if it fits in `room` bytes; false when it does not or
/// the read failed (the caller cuts `buf` back). `size` is the stored size when the backend
/// knows it: exactly that much is read (one `read` for a small file). Otherwise one byte
/// over `room` tells "too big" without reading the whole message.
fn read_whole(mut msg: crate::mailbox::Message, size: Option<u64>, buf: &mut Vec<u8>, room: usize) -> bool {
    match size {
        Some(n) if n > room as u64 => false,
        // A file that shrank since fstat reads short: what is there is the message.
        Some(n) => (&mut msg).take(n).read_to_end(buf).is_ok(),
        None => matches!((&mut msg).take(room as u64 + 1).read_to_end(buf), Ok(n) if n <= room),
    }
}

impl ReadAhead {
    /// Message `index`'s bytes (a range of `self.cur.buf`) if it was read ahead. When the
    /// current batch is used up, waits for the one being read.
    async fn take(&mut self, index: usize) -> Option<std::ops::Range<usize>> {
        if let Some(r) = self.cur.take(index) {
            return Some(r);
        }
        if !self.cur.msgs.is_empty() {
            // The client went back: the batches ahead do not hold it either.
            return None;
        }
        let next = self.pending.take()?.await;
        self.spare = Some(std::mem::replace(&mut self.cur, next));
        self.cur.take(index)
    }

    /// Start reading the batch after the current one (after a RETR was served from it),
    /// unless one is being read or the maildrop ends there.
    fn prefetch(&mut self, mb: &Arc<Mailbox>) {
        let from = self.cur.end;
        if self.pending.is_some() || from >= mb.len() {
            return;
        }
        let batch = self.spare.take().unwrap_or_default();
        let mb = mb.clone();
        self.pending = Some(smol::unblock(move || batch.fill(&mb, from, BATCH_BYTES)));
    }

    /// A batch buffer for the read after a missed RETR (the one being read is waited for:
    /// it is not the one wanted).
    async fn buffer(&mut self) -> Batch {
        if let Some(t) = self.pending.take() {
            self.spare = Some(t.await);
        }
        self.spare.take().unwrap_or_default()
    }

    /// End the read-ahead; a read under way is waited for, so that it no longer holds the
    /// maildrop when the session releases it.
    async fn stop(&mut self) {
        if let Some(t) = self.pending.take() {
            drop(t.await);
        }
        *self = ReadAhead::default();
    }
}

/// A buffer size for reading message `index` whole: its listed size (RFC 1939 §11: with
/// CR LF line ends, so never less than what is stored; mbox `>From ` quoting undone only
/// shrinks it) plus one byte for the end-of-file read, at most `cap`. Growing from empty
/// cost several reallocations per message.
fn read_capacity(mb: &Mailbox, index: usize, cap: usize) -> usize {
    let listed = mb.listing().get(index).map_or(0, |e| e.size());
    usize::try_from(listed).unwrap_or(usize::MAX).saturating_add(1).min(cap)
}

pub async fn session(
    ctx: Rc<Ctx>,
    tcp: Async<TcpStream>,
    peer: SocketAddr,
    slot: super::SessionSlot,
    implicit_tls: bool,
) {
    let policy: Rc<Policy> = ctx.policy();
    let s = &policy.settings;
    let sid = ctx.next_sid.get();
    ctx.next_sid.set(sid + 1);
    let ip = client_ip(&peer);
    let client_name = "unknown";
    mlog!(SVC, "sid={sid} connect from {client_name}[{ip}]");
    let tls_config = if s.smtpd_tls_security_level == TlsSecurityLevel::None {
        None
    } else {
        ctx.tls_config()
    };
    let handshake_timeout = Duration::from_secs(s.smtpd_starttls_timeout_secs.max(1));
    let mut stream = if implicit_tls {
        let Some(cfg) = tls_config.clone() else {
            mlog!(
                SVC,
                "warning: sid={sid} no usable TLS certificate; closing {client_name}[{ip}]"
            );
            return;
        };
        match tls::accept_tls(tcp, cfg, handshake_timeout).await {
            Ok(st) => {
                log_tls(SVC, sid, client_name, ip, &st);
                st
            }
            Err(e) => {
                mlog!(SVC, "sid={sid} TLS handshake failed from {client_name}[{ip}]: {e}");
                return;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    // Dovecot's default (disable_plaintext_auth): passwords only over TLS, or when the
    // client is this host itself (its address is the server's address: Dovecot's "secured").
    let same_host = stream.local_addr().map(|a| client_ip(&a) == ip).unwrap_or(false);
    let plaintext_ok = |tls: bool| tls || same_host || !s.pop3d_disable_plaintext_auth;
    let params = Pop3Params {
        hostname: s.myhostname.clone(),
        tls_active: stream.is_tls(),
        stls_offered: tls_config.is_some() && !stream.is_tls(),
        plaintext_login_allowed: plaintext_ok(stream.is_tls()),
        autologout_secs: s.pop3d_autologout_secs,
    };
    // RFC 1939 §3: the autologout timer is at least 10 minutes.
    let timeout = Duration::from_secs(s.pop3d_autologout_secs.max(1));
    let mut server = Server::new(params);
    let mut mailbox: Option<Arc<Mailbox>> = None;
    let mut user: Option<String> = None;
    let mut buf = super::ReadBuf::take();
    let mut waits = super::Waits::new(&ctx, timeout);
    let mut ahead = ReadAhead::default();
    'session: loop {
        let mut start_tls = false;
        while let Some(ev) = server.poll() {
            match ev {
                Event::Login {
                    user: name,
                    password,
                    mechanism,
                } => {
                    let now = crate::time::now_unix();
                    let locked = ctx.throttle.borrow_mut().check(ip, now);
                    if locked.is_err() {
                        mlog!(
                            SVC,
                            "warning: sid={sid} {client_name}[{ip}]: locked out for failed logins"
                        );
                        server.login_failed(LoginFailure::LoginDelay);
                        continue;
                    }
                    let creds = Credentials {
                        authzid: String::new(),
                        authcid: name.clone(),
                        password,
                    };
                    let Some(login) = verify_login(&ctx, &policy, &creds).await else {
                        mlog!(
                            SVC,
                            "sid={sid} auth failed: user=<{}>, method={mechanism}, rip={ip}",
                            name.escape_debug()
                        );
                        let penalty = ctx.throttle.borrow_mut().failure(ip, crate::time::now_unix());
                        if penalty.is_some() {
                            mlog!(
                                SVC,
                                "warning: sid={sid} {client_name}[{ip}]: too many failed logins; locked out"
                            );
                        }
                        server.login_failed(LoginFailure::BadCredentials);
                        continue;
                    };
                    ctx.throttle.borrow_mut().success(ip, now);
                    let opened = if policy.users.is_system(&login) {
                        // A system user: the system mailbox (mbox or home Maildir).
                        let settings = s.clone();
                        let name = login.clone();
                        smol::unblock(move || crate::mailbox::system::open_system_mailbox(&settings, &name)).await
                    } else {
                        let Some(dir) = crate::delivery::maildir::virtual_maildir(&s.virtual_mailbox_base, &login)
                        else {
                            server.login_failed(LoginFailure::SysTemp);
                            continue;
                        };
                        // Maildrop::open creates the Maildir when missing (a user with no mail yet).
                        smol::unblock(move || Mailbox::open_maildir(&dir)).await
                    };
                    match opened {
                        Ok(mb) => {
                            for w in mb.warnings() {
                                mlog!(SVC, "warning: sid={sid} user={login}: {w}");
                            }
                            let count = mb.len();
                            mlog!(
                                SVC,
                                "sid={sid} login: user=<{login}>, method={mechanism}, rip={ip}{}, messages={}",
                                if stream.is_tls() { ", TLS" } else { "" },
                                count
                            );
                            server.login_ok(mb.listing().clone());
                            mailbox = Some(Arc::new(mb));
                            user = Some(login);
                        }
                        Err(MailboxError::InUse) => {
                            mlog!(SVC, "sid={sid} user=<{login}>: maildrop in use");
                            server.login_failed(LoginFailure::InUse);
                        }
                        Err(e) => {
                            mlog!(SVC, "warning: sid={sid} user=<{login}>: {e}");
                            server.login_failed(LoginFailure::SysTemp);
                        }
                    }
                }
                Event::StartTls => start_tls = true,
                Event::Retr { index, .. } => {
                    let Some(mb) = mailbox.clone() else {
                        server.retr_failed();
                        continue;
                    };
                    if let Some(range) = ahead.take(index).await {
                        server.retr_begin();
                        server.retr_chunk(&ahead.cur.buf[range]);
                        server.retr_end();
                        ahead.prefetch(&mb);
                        continue;
                    }
                    // One thread-pool trip opens the message and reads its first chunk:
                    // most messages are whole after it (a 2 KiB message costs one hand-off,
                    // not three); bigger ones stream on in chunks. When it is whole, the
                    // trip also reads the next small messages (ReadAhead).
                    let batch = ahead.buffer().await;
                    let first =
                        smol::unblock(move || -> Result<_, MailboxError> {
                            let mut msg = mb.open_message(index)?;
                            let mut chunk = Vec::with_capacity(read_capacity(&mb, index, CHUNK));
                            let n = (&mut msg).take(CHUNK as u64).read_to_end(&mut chunk).map_err(|e| {
                                MailboxError::Io {
                                    path: format!("message {}", index + 1).into(),
                                    source: e,
                                }
                            })?;
                            let next = if n < CHUNK {
                                batch.fill(&mb, index + 1, BATCH_BYTES)
                            } else {
                                batch
                            };
                            Ok((msg, chunk, n, next))
                        })
                        .await;
                    match first {
                        Ok((msg, mut chunk, n, next)) => {
                            server.retr_begin();
                            server.retr_chunk(&chunk[..n]);
                            if n < CHUNK {
                                server.retr_end();
                                ahead.spare = Some(std::mem::replace(&mut ahead.cur, next));
                                continue;
                            }
                            ahead.spare = Some(next);
                            if !write_out(&mut stream, &mut server, timeout).await {
                                break 'session;
                            }
                            chunk.resize(CHUNK, 0);
                            let mut reader = smol::Unblock::with_capacity(crate::limits::QUEUE_CHUNK_BYTES_MAX, msg);
                            loop {
                                match reader.read(&mut chunk).await {
                                    Ok(0) => {
                                        server.retr_end();
                                        break;
                                    }
                                    Ok(n) => {
                                        server.retr_chunk(&chunk[..n]);
                                        if !write_out(&mut stream, &mut server, timeout).await {
                                            break 'session;
                                        }
                                    }
                                    Err(e) => {
                                        mlog!(SVC, "warning: sid={sid} read message {}: {e}", index + 1);
                                        server.retr_failed();
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            mlog!(SVC, "warning: sid={sid} open message {}: {e}", index + 1);
                            server.retr_failed();
                        }
                    }
                }
                Event::Update { deleted } => {
                    ahead.stop().await;
                    // The mailbox is released (its locks too) before +OK goes out.
                    let release = crate::mailbox::system::drop_blocking;
                    let ok = match mailbox.take() {
                        // RFC 1939 §6: UPDATE also when nothing was deleted (a Maildir moves the
                        // messages listed from new/ to cur/).
                        Some(mb) => match smol::unblock(move || {
                            let r = mb.update(&deleted);
                            release(mb);
                            r
                        })
                        .await
                        {
                            // The core answers (RFC 1939 §6); here the causes are logged.
                            Ok(report) if !report.failed.is_empty() => {
                                for why in &report.failed {
                                    mlog!(SVC, "warning: sid={sid} update: not removed: {why}");
                                }
                                false
                            }
                            Ok(_) => true,
                            Err(e) => {
                                mlog!(SVC, "warning: sid={sid} update: {e}");
                                false
                            }
                        },
                        None => true,
                    };
                    server.update_done(ok);
                }
                Event::Closed => {
                    ahead.stop().await;
                    if let Some(mb) = mailbox.take() {
                        smol::unblock(move || crate::mailbox::system::drop_blocking(mb)).await;
                    }
                }
            }
        }
        if !write_out(&mut stream, &mut server, timeout).await {
            break 'session;
        }
        if start_tls {
            let Some(cfg) = tls_config.clone() else { break 'session };
            match stream.upgrade(cfg, handshake_timeout).await {
                Ok(st) => {
                    log_tls(SVC, sid, client_name, ip, &st);
                    stream = st;
                    server.tls_started(plaintext_ok(true));
                    continue 'session;
                }
                Err(e) => {
                    mlog!(SVC, "sid={sid} TLS handshake failed from {client_name}[{ip}]: {e}");
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
            super::Got::Timeout => server.timeout(),
            super::Got::Stop => {
                let _ = stream.write_all(b"-ERR [SYS/TEMP] Server shutting down\r\n").await;
                break 'session;
            }
        }
    }
    ahead.stop().await;
    drop(mailbox);
    drop(slot);
    let stats = server.stats();
    // One line per logout (Dovecot's shape): `user=... retr=N/bytes del=N/bytes`.
    mlog!(
        SVC,
        "sid={sid} disconnect from {client_name}[{ip}] user={} top={}/{} retr={}/{} del={}/{} size={}",
        user.as_deref().unwrap_or("-"),
        stats.top_count,
        stats.top_bytes,
        stats.retr_count,
        stats.retr_bytes,
        stats.deleted_count,
        stats.deleted_bytes,
        stats.size_bytes
    );
    linger(&mut stream, &mut buf).await;
}
