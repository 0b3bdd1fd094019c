//! The SMTP client core (RFC 5321), sans-IO: one session with one destination host,
//! delivering one or more messages (connection reuse), each to one or more recipients.
//!
//! Contract (the I/O shell drives it; it owns the socket, TLS, the clock and the timers):
//! ```text
//! let mut c = Client::new(params);            // expects the 220 greeting first
//! loop {
//!     while let Some(ev) = c.poll() {
//!         match ev {
//!             Event::StartTls => { write(c.take_output()); handshake; c.tls_started() }
//!             Event::Ready => c.send(next_message) or c.quit(),
//!             Event::SendBody => { for chunk in stored body { c.body_chunk(chunk);
//!                                  write(c.take_output()) } c.body_end() }
//!             Event::Done(results) => record one outcome per recipient,
//!             Event::Closed(failure) => { failure applies to messages not yet sent; stop }
//!         }
//!     }
//!     write(c.take_output());
//!     arm the timer for c.stage().timeout_key();
//!     c.input(read()) / c.eof() / c.timeout();
//! }
//! ```
//!
//! Sequence: 220 greeting; EHLO (HELO after a 5xx to EHLO, RFC 5321 §3.2); STARTTLS when
//! offered and the policy wants it (then EHLO again, RFC 3207 §4.2); AUTH PLAIN or LOGIN
//! when credentials are given and the server offers AUTH (RFC 4954); then per message:
//! \[RSET,\] MAIL, RCPT per recipient, DATA, the body, `.`; QUIT at the end. With PIPELINING
//! (RFC 2920) the commands from RSET to DATA go out in one write; without it, one command
//! at a time, and DATA only when some RCPT was accepted.
//!
//! Results: one [`RcptResult`] per recipient of a message (`Event::Done`), in the order
//! given: `Sent` for a 2xx to the final dot, `Bounced` for a 5xx to MAIL, RCPT, DATA or the
//! dot, `Deferred` for a 4xx, or for a failure of the session (lost connection, timeout,
//! malformed reply). A recipient refused at RCPT keeps that answer when the session later
//! fails. The remote reply is kept for the DSN (`Diagnostic-Code: smtp; 550 5.1.1 ...`).
//! `Event::Closed(Some(failure))` ends a session that failed; the shell gives that failure
//! to the messages it had not yet handed over (or tries the next MX host).
//!
//! Choices (Postfix's behaviour unless said otherwise):
//! - A greeting other than 220 fails the attempt: a 5xx is permanent, anything else
//!   temporary (Postfix: "host X refused to talk to me").
//! - TLS policy `Required` (smtp_tls_security_level encrypt/verify/secure): no STARTTLS in
//!   the EHLO reply, or a refused STARTTLS, is a temporary failure ("TLS is required, but was
//!   not offered by host X"); mail never goes out in the clear. `May`: plaintext goes on.
//! - After the `220` to STARTTLS, input already buffered is dropped: it arrived before the
//!   handshake and could be injected (the client side of CVE-2011-0411).
//! - AUTH: offered but no PLAIN or LOGIN, or refused: temporary when
//!   `auth_soft_bounce` (Postfix smtp_sasl_auth_soft_bounce, default yes), else permanent on
//!   a 5xx. AUTH not offered at all: the mail goes unauthenticated (as Postfix; the server
//!   will say if it minds). With `auth_needs_tls` (Postfix's default `noplaintext`
//!   security option) credentials are never sent over a session without TLS: temporary
//!   failure instead.
//! - BODY=8BITMIME is sent when the message has 8-bit octets and the server offers 8BITMIME
//!   (RFC 6152 §3). An 8-bit message to a server without 8BITMIME is still sent as is: Postfix
//!   does the same (smtp_never_send_ehlo aside) rather than bounce; converting to
//!   quoted-printable is not done.
//! - SIZE=n is sent when the server offers SIZE (RFC 1870 §6); a message larger than the
//!   server's announced non-zero limit bounces at once without MAIL (RFC 1870 §6.1;
//!   Postfix's "message size N exceeds size limit M of server X", 5.3.4).
//! - SMTPUTF8 is sent when an address is not ASCII; a server that does not offer it gets
//!   nothing: the message bounces with 5.6.7 (RFC 6531 §3.4; Postfix's text).
//! - CHUNKING is recognised but not used: the body always goes with DATA, dot-stuffed.
//! - The body is stored with LF line ends; each LF goes out as CR LF, a `.` at the start of
//!   a line gets a second `.` (RFC 5321 §4.5.2), and a missing last line end is added
//!   before `.` CR LF (RFC 5321 §4.1.1.4). A bare CR in the stored body is sent as is.
//! - A reply line longer than `limits::SMTP_REPLY_LINE_BYTES_MAX`, more than
//!   `limits::SMTP_REPLY_LINES_MAX` lines, a line that is not `ddd`, `ddd text` or
//!   `ddd-text`, or lines whose codes differ: "malformed reply", a temporary failure
//!   (Postfix truncates long lines instead). Control characters in reply text are replaced
//!   by `?` before the text reaches logs or DSNs.
//! - Before a second message in the same session an RSET is sent (in the pipelined batch
//!   when PIPELINING is offered); a non-2xx RSET reply ends the session.
//! - After a failure that came as a reply (refused greeting, TLS not offered, AUTH refused)
//!   a QUIT is queued without waiting for its answer; after a lost connection, a timeout or
//!   a malformed reply nothing more is sent.

use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::limits::{SESSION_INPUT_BYTES_MAX, SMTP_PATH_BYTES_MAX, SMTP_REPLY_LINES_MAX, SMTP_REPLY_LINE_BYTES_MAX};
use crate::proto::reply::Reply;

/// Outbound TLS policy, from smtp_tls_security_level (and smtp_tls_wrappermode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// `none`: never STARTTLS.
    None,
    /// `may`: STARTTLS when offered, else plaintext.
    May,
    /// `encrypt`, `verify`, `secure`: STARTTLS or nothing (certificate checks are the
    /// shell's: it fails the handshake with `tls_failed`).
    Required,
}

/// SMTP AUTH credentials for this host (from smtp_sasl_password_maps).
#[derive(Clone, PartialEq, Eq)]
pub struct SaslLogin {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLogin")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Fixed facts about one session, given by the shell.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// smtp_helo_name (default $myhostname).
    pub helo_name: String,
    /// The peer as Postfix names it in texts: `mx.example.com[192.0.2.1]:25`.
    pub peer: String,
    pub tls: TlsPolicy,
    /// The session runs over TLS from the start (smtp_tls_wrappermode, port 465).
    pub tls_active: bool,
    /// Credentials to authenticate with (smtp_sasl_auth_enable and a password map entry).
    pub auth: Option<SaslLogin>,
    /// Send credentials only over TLS (Postfix smtp_sasl_security_options = noplaintext).
    pub auth_needs_tls: bool,
    /// smtp_sasl_auth_soft_bounce (default yes): a refused AUTH defers instead of bouncing.
    pub auth_soft_bounce: bool,
}

/// One message to send in this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Reverse path without brackets; "" is the null sender.
    pub sender: String,
    /// Forward paths without brackets.
    pub recipients: Vec<String>,
    /// Stored size in bytes (LF line ends), for SIZE= (RFC 1870 counts CR LF; the shell
    /// may add one byte per line if it knows the count; a close estimate is allowed).
    pub size: u64,
    /// The body has octets above 127 (BODY=8BITMIME, RFC 6152). When unknown, say true.
    pub eight_bit: bool,
}

/// What the session waits for: names the Postfix timeout key and the text of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// The TLS handshake after `Event::StartTls` (the shell's job).
    TlsHandshake,
    Auth,
    /// Between messages: `Event::Ready` was given, waiting for `send` or `quit`.
    Idle,
    Rset,
    Mail,
    Rcpt,
    /// The reply to DATA (354).
    Data,
    /// The shell streams the body (`Event::SendBody`).
    Body,
    /// The reply to the final dot.
    DataDone,
    Quit,
    Closed,
}

impl Stage {
    /// The Postfix key bounding this stage; None where no timer should run.
    pub fn timeout_key(self) -> Option<&'static str> {
        Some(match self {
            // Postfix: smtp_helo_timeout covers the greeting and the EHLO/HELO handshake
            // (AUTH uses it too here: Postfix has no separate key).
            Stage::Greeting | Stage::Ehlo | Stage::Helo | Stage::Auth => "smtp_helo_timeout",
            Stage::StartTls | Stage::TlsHandshake => "smtp_starttls_timeout",
            Stage::Rset => "smtp_rset_timeout",
            Stage::Mail => "smtp_mail_timeout",
            Stage::Rcpt => "smtp_rcpt_timeout",
            Stage::Data => "smtp_data_init_timeout",
            Stage::Body => "smtp_data_xfer_timeout",
            Stage::DataDone => "smtp_data_done_timeout",
            Stage::Quit => "smtp_quit_timeout",
            Stage::Idle | Stage::Closed => return None,
        })
    }

    /// Postfix's words for what was going on ("timed out while ...").
    pub fn phrase(self) -> &'static str {
        match self {
            Stage::Greeting => "receiving the initial server greeting",
            Stage::Ehlo => "performing the EHLO handshake",
            Stage::Helo => "performing the HELO handshake",
            Stage::StartTls | Stage::TlsHandshake => "performing the STARTTLS handshake",
            Stage::Auth => "performing SASL authentication",
            Stage::Idle => "waiting for the next message",
            Stage::Rset => "sending RSET",
            Stage::Mail => "sending MAIL FROM",
            Stage::Rcpt => "sending RCPT TO",
            Stage::Data => "sending DATA command",
            Stage::Body => "sending message body",
            Stage::DataDone => "sending end of data -- message may be sent more than once",
            Stage::Quit => "sending QUIT",
            Stage::Closed => "closing the connection",
        }
    }
}

/// The service extensions of the EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: Some(0) is SIZE without a (or with a zero) limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eightbitmime: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 4954: mechanism names, uppercased.
    pub auth: Vec<String>,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030 (recognised, not used).
    pub chunking: bool,
    /// RFC 2034.
    pub enhancedstatuscodes: bool,
}

impl Extensions {
    /// Parse the lines after the first of a 250 EHLO reply. Unknown keywords are ignored.
    pub fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            let kw = kw.to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => e.eightbitmime = true,
                "STARTTLS" => e.starttls = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "CHUNKING" => e.chunking = true,
                "ENHANCEDSTATUSCODES" => e.enhancedstatuscodes = true,
                // `AUTH=LOGIN PLAIN` is the pre-RFC form some old servers still send.
                _ if kw == "AUTH" || kw.starts_with("AUTH=") => {
                    let first = kw.strip_prefix("AUTH=").filter(|m| !m.is_empty());
                    for m in first
                        .map(str::to_string)
                        .into_iter()
                        .chain(words.map(|w| w.to_ascii_uppercase()))
                    {
                        if !e.auth.contains(&m) && e.auth.len() < 32 {
                            e.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        e
    }
}

/// The fate of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    /// Try again later.
    Deferred,
    /// Bounce: trying again cannot help.
    Bounced,
}

/// The result for one recipient (or for a whole failed session: [`Failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    pub status: Status,
    /// The remote reply this is based on, when there was one.
    pub reply: Option<Reply>,
    /// What to log and show in mailq / the DSN's human part, Postfix-style:
    /// `host mx.example.com[192.0.2.1] said: 550 5.1.1 ... (in reply to RCPT TO command)`.
    pub text: String,
    /// The RFC 3463 status for the DSN (`Status:` field), e.g. `5.1.1`.
    pub dsn: String,
}

impl RcptResult {
    /// RFC 3464 §2.3.6 Diagnostic-Code: `smtp; 550 5.1.1 <a@b>: ...` when the remote host
    /// said something, else `X-Postfix; <text>` as Postfix writes it.
    pub fn diagnostic_code(&self) -> String {
        match &self.reply {
            Some(r) => format!("smtp; {}", one_line(r)),
            None => format!("X-Postfix; {}", self.text),
        }
    }
}

/// Why a whole session failed. Same fields as [`RcptResult`]; never `Sent`.
pub type Failure = RcptResult;

/// What the core tells the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server accepted STARTTLS: write the output, do the handshake, then call
    /// `tls_started()` or `tls_failed(reason)`. Input fed meanwhile is dropped.
    StartTls,
    /// The session is ready for a message: `send(msg)` or `quit()`.
    Ready,
    /// The server answered 354: call `body_chunk` with the stored body, then `body_end`.
    SendBody,
    /// The message is finished: one result per recipient, in the order given to `send`.
    Done(Vec<RcptResult>),
    /// The session is over. `Some` when it ended by a failure; nothing more will be sent
    /// (the output may still hold a QUIT to write).
    Closed(Option<Failure>),
}

/// A command whose reply is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    AuthLogin,
    AuthUser,
    AuthPass,
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    Quit,
}

impl Cmd {
    fn stage(self) -> Stage {
        match self {
            Cmd::Greeting => Stage::Greeting,
            Cmd::Ehlo => Stage::Ehlo,
            Cmd::Helo => Stage::Helo,
            Cmd::StartTls => Stage::StartTls,
            Cmd::AuthPlain | Cmd::AuthLogin | Cmd::AuthUser | Cmd::AuthPass => Stage::Auth,
            Cmd::Rset => Stage::Rset,
            Cmd::Mail => Stage::Mail,
            Cmd::Rcpt(_) => Stage::Rcpt,
            Cmd::Data => Stage::Data,
            Cmd::Dot => Stage::DataDone,
            Cmd::Quit => Stage::Quit,
        }
    }

    /// Postfix's "(in reply to X command)".
    fn name(self) -> &'static str {
        match self {
            Cmd::Greeting => "initial greeting",
            Cmd::Ehlo => "EHLO command",
            Cmd::Helo => "HELO command",
            Cmd::StartTls => "STARTTLS command",
            Cmd::AuthPlain | Cmd::AuthLogin | Cmd::AuthUser | Cmd::AuthPass => "AUTH command",
            Cmd::Rset => "RSET command",
            Cmd::Mail => "MAIL FROM command",
            Cmd::Rcpt(_) => "RCPT TO command",
            Cmd::Data => "DATA command",
            Cmd::Dot => "end of DATA command",
            Cmd::Quit => "QUIT command",
        }
    }
}

/// Where the session is; what the core waits for from the shell is in the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Greeting, EHLO/HELO, STARTTLS, AUTH replies in flight.
    Handshake,
    /// Event::StartTls given; waiting for tls_started/tls_failed.
    TlsWait,
    /// Event::Ready given; waiting for send/quit.
    Idle,
    /// A message transaction: replies to RSET/MAIL/RCPT/DATA/dot in flight.
    Txn,
    /// Event::SendBody given: the shell streams the body.
    Body,
    Quitting,
    Closed,
}

/// The message in progress.
struct Txn {
    msg: Message,
    /// Final result per recipient, as they become known.
    results: Vec<Option<RcptResult>>,
    /// Recipients accepted at RCPT, waiting for the end of data.
    accepted: Vec<usize>,
    mail_ok: bool,
    data_sent: bool,
    /// Recipients sent (RCPT went out); the others had results before sending.
    sent_rcpts: usize,
}

/// The body encoder: LF -> CR LF and dot-stuffing (RFC 5321 §4.5.2).
#[derive(Debug, Clone, Copy)]
struct Stuffer {
    /// The next byte starts a line (true at the start of the data, after DATA's CR LF).
    line_start: bool,
}

impl Stuffer {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 2);
        let mut rest = input;
        while !rest.is_empty() {
            if self.line_start && rest[0] == b'.' {
                // RFC 5321 §4.5.2: a line starting with "." gets one more.
                out.push(b'.');
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.line_start = false;
                    rest = &[];
                }
            }
        }
    }

    /// RFC 5321 §4.1.1.4: the data ends with CR LF . CR LF; a last line without its line
    /// end gets one first.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.line_start = true;
    }
}

/// The SMTP client state machine for one connection.
pub struct Client {
    params: ClientParams,
    phase: Phase,
    ext: Extensions,
    /// Whether EHLO (not HELO) was accepted.
    esmtp: bool,
    /// STARTTLS was tried and refused (policy May): do not try again.
    starttls_refused: bool,
    authenticated: bool,
    /// Commands written, replies awaited, oldest first.
    inflight: VecDeque<Cmd>,
    /// Commands not yet written (no PIPELINING: one at a time).
    queued: VecDeque<(Cmd, Vec<u8>)>,
    txn: Option<Txn>,
    messages_started: u64,
    stuffer: Stuffer,
    /// Unread input is `inbuf[pos..]`.
    inbuf: Vec<u8>,
    pos: usize,
    /// Lines of the reply being read.
    reply_lines: Vec<String>,
    reply_code: u16,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// `Event::Ready` is due once the events before it were taken (and the session did not
    /// fail meanwhile: a Ready must never follow a Closed).
    ready_pending: bool,
}

impl Client {
    /// A new session on a connected socket; the first thing expected is the greeting.
    pub fn new(params: ClientParams) -> Client {
        let mut inflight = VecDeque::new();
        inflight.push_back(Cmd::Greeting);
        Client {
            params,
            phase: Phase::Handshake,
            ext: Extensions::default(),
            esmtp: false,
            starttls_refused: false,
            authenticated: false,
            inflight,
            queued: VecDeque::new(),
            txn: None,
            messages_started: 0,
            stuffer: Stuffer { line_start: true },
            inbuf: Vec::new(),
            pos: 0,
            reply_lines: Vec::new(),
            reply_code: 0,
            out: Vec::new(),
            events: VecDeque::new(),
            ready_pending: false,
        }
    }

    /// Bytes received from the server. Dropped during a TLS handshake and once closed.
    pub fn input(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::Closed | Phase::TlsWait) {
            return;
        }
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        self.inbuf.extend_from_slice(data);
    }

    /// Whether the shell may read and feed more input now (bounded buffer).
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closed && self.inbuf.len() - self.pos < SESSION_INPUT_BYTES_MAX
    }

    /// The server closed the connection.
    pub fn eof(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::Quitting => self.close(None),
            _ => {
                let stage = self.stage();
                let text = format!("lost connection with {} while {}", self.params.peer, stage.phrase());
                self.fail(temp(text, "4.4.2"), false);
            }
        }
    }

    /// The shell's timer for `stage().timeout_key()` fired.
    pub fn timeout(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::Quitting => self.close(None),
            _ => {
                let stage = self.stage();
                let text = format!(
                    "conversation with {} timed out while {}",
                    self.params.peer,
                    stage.phrase()
                );
                self.fail(temp(text, "4.4.2"), false);
            }
        }
    }

    /// What the session waits for now (the shell arms the matching timer).
    pub fn stage(&self) -> Stage {
        match self.phase {
            Phase::Closed => Stage::Closed,
            Phase::TlsWait => Stage::TlsHandshake,
            Phase::Idle => Stage::Idle,
            Phase::Body => Stage::Body,
            _ => self
                .inflight
                .front()
                .map(|c| c.stage())
                .or_else(|| self.queued.front().map(|(c, _)| c.stage()))
                .unwrap_or(Stage::Idle),
        }
    }

    /// The extensions of the last EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn tls_active(&self) -> bool {
        self.params.tls_active
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Bytes to send to the server (drains the output buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The next event, or None when input (or an answer from the shell) is needed.
    pub fn poll(&mut self) -> Option<Event> {
        // Each round returns or consumes at least one input line: bounded by the input.
        let rounds = self.inbuf.len() - self.pos + 4;
        for _ in 0..rounds {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if std::mem::take(&mut self.ready_pending) {
                return Some(Event::Ready);
            }
            if !matches!(self.phase, Phase::Handshake | Phase::Txn | Phase::Quitting) || self.inflight.is_empty() {
                return None;
            }
            match self.read_reply() {
                Read::Incomplete => return None,
                Read::Malformed => {
                    let text = format!(
                        "malformed reply from {} while {}",
                        self.params.peer,
                        self.stage().phrase()
                    );
                    self.fail(temp(text, "4.5.0"), false);
                }
                Read::Line => {}
                Read::Reply(r) => {
                    if let Some(cmd) = self.inflight.pop_front() {
                        let closing = (r.code == 421 && cmd != Cmd::Quit).then(|| said(&self.params.peer, &r, cmd));
                        self.on_reply(cmd, r);
                        if let Some(f) = closing {
                            // RFC 5321 §3.8: 421 means the server is closing the connection.
                            self.fail(f, false);
                        }
                        self.flush();
                    }
                }
            }
        }
        self.events.pop_front()
    }

    /// After `Event::StartTls`: the handshake succeeded. EHLO is sent again and what the
    /// server said before is forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        if self.phase != Phase::TlsWait {
            return;
        }
        self.params.tls_active = true;
        self.ext = Extensions::default();
        self.esmtp = false;
        self.phase = Phase::Handshake;
        self.drop_input();
        self.ehlo();
        self.flush();
    }

    /// After `Event::StartTls`: the handshake failed (or the certificate did not verify).
    /// Temporary failure; nothing more is sent on this connection.
    pub fn tls_failed(&mut self, reason: &str) {
        if self.phase != Phase::TlsWait {
            return;
        }
        let text = format!("TLS handshake with {} failed: {}", self.params.peer, clean(reason));
        self.fail(temp(text, "4.7.5"), false);
    }

    /// Answer to `Event::Ready`: send this message. Recipients whose fate is known before
    /// anything is sent (bad address, too big, no SMTPUTF8) get it in `Event::Done`.
    pub fn send(&mut self, msg: Message) {
        if self.phase != Phase::Idle {
            return;
        }
        self.ready_pending = false;
        let n = msg.recipients.len();
        let mut txn = Txn {
            results: vec![None; n],
            accepted: Vec::new(),
            mail_ok: false,
            data_sent: false,
            sent_rcpts: 0,
            msg,
        };
        self.phase = Phase::Txn;
        self.stuffer = Stuffer { line_start: true };
        let peer = self.params.peer.clone();
        let all = |r: RcptResult| vec![Some(r); n];
        if let Some(limit) = self.ext.size.filter(|&l| l > 0) {
            // RFC 1870 §6.1: do not send what the server already said it will refuse.
            if txn.msg.size > limit {
                let text = format!(
                    "message size {} exceeds size limit {} of server {}",
                    txn.msg.size, limit, peer
                );
                txn.results = all(perm(text, "5.3.4"));
                self.txn = Some(txn);
                return self.finish();
            }
        }
        if !valid_path(&txn.msg.sender) {
            txn.results = all(perm(
                format!("bad sender address syntax: <{}>", clean(&txn.msg.sender)),
                "5.1.7",
            ));
            self.txn = Some(txn);
            return self.finish();
        }
        let utf8 = !txn.msg.sender.is_ascii() || txn.msg.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && !self.ext.smtputf8 {
            // RFC 6531 §3.4: without the extension the addresses cannot be sent.
            let text = format!("SMTPUTF8 is required, but was not offered by host {peer}");
            txn.results = all(perm(text, "5.6.7"));
            self.txn = Some(txn);
            return self.finish();
        }
        if self.messages_started > 0 {
            self.queue(Cmd::Rset, b"RSET\r\n".to_vec());
        }
        self.messages_started += 1;
        let mut mail = format!("MAIL FROM:<{}>", txn.msg.sender);
        if self.ext.size.is_some() {
            // RFC 1870 §6.
            mail.push_str(&format!(" SIZE={}", txn.msg.size));
        }
        if txn.msg.eight_bit && self.ext.eightbitmime {
            // RFC 6152 §3.
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            // RFC 6531 §3.4.
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        self.queue(Cmd::Mail, mail.into_bytes());
        for (i, r) in txn.msg.recipients.iter().enumerate() {
            if valid_path(r) && !r.is_empty() {
                self.queue(Cmd::Rcpt(i), format!("RCPT TO:<{r}>\r\n").into_bytes());
                txn.sent_rcpts += 1;
            } else if let Some(slot) = txn.results.get_mut(i) {
                *slot = Some(perm(format!("bad recipient address syntax: <{}>", clean(r)), "5.1.3"));
            }
        }
        if txn.sent_rcpts > 0 && self.ext.pipelining {
            // RFC 2920 §3.1: DATA may end the batch; its reply tells whether to send data.
            self.queue(Cmd::Data, b"DATA\r\n".to_vec());
            txn.data_sent = true;
        }
        let nothing = txn.sent_rcpts == 0;
        self.txn = Some(txn);
        if nothing {
            // Every recipient failed before sending: no transaction at all.
            self.queued.clear();
            return self.finish();
        }
        self.flush();
    }

    /// Answer to `Event::Ready`: end the session politely (QUIT, RFC 5321 §4.1.1.10).
    pub fn quit(&mut self) {
        if self.phase == Phase::Idle {
            self.ready_pending = false;
            self.phase = Phase::Quitting;
            self.queue(Cmd::Quit, b"QUIT\r\n".to_vec());
            self.flush();
        }
    }

    /// After `Event::SendBody`: stored body bytes (LF line ends), in any pieces. The output
    /// grows by about the chunk's size: write `take_output()` between chunks.
    pub fn body_chunk(&mut self, chunk: &[u8]) {
        if self.phase == Phase::Body {
            self.stuffer.push(chunk, &mut self.out);
        }
    }

    /// After the last `body_chunk`: the end of data, then the final reply is awaited.
    pub fn body_end(&mut self) {
        if self.phase == Phase::Body {
            self.stuffer.finish(&mut self.out);
            self.inflight.push_back(Cmd::Dot);
            self.phase = Phase::Txn;
        }
    }

    // ---- internals ----

    fn drop_input(&mut self) {
        self.inbuf = Vec::new();
        self.pos = 0;
        self.reply_lines.clear();
    }

    fn queue(&mut self, cmd: Cmd, line: Vec<u8>) {
        self.queued.push_back((cmd, line));
    }

    /// Write queued commands: all of them with PIPELINING inside a transaction (RFC 2920
    /// §3.1), else one once nothing is in flight.
    fn flush(&mut self) {
        if self.phase == Phase::Closed {
            self.queued.clear();
            return;
        }
        while let Some((cmd, _)) = self.queued.front() {
            let batch = self.ext.pipelining && matches!(cmd, Cmd::Rset | Cmd::Mail | Cmd::Rcpt(_) | Cmd::Data);
            if !self.inflight.is_empty() && !batch {
                return;
            }
            let Some((cmd, line)) = self.queued.pop_front() else {
                return;
            };
            self.out.extend_from_slice(&line);
            self.inflight.push_back(cmd);
        }
    }

    fn read_reply(&mut self) -> Read {
        let buf = &self.inbuf[self.pos..];
        let window = &buf[..buf.len().min(SMTP_REPLY_LINE_BYTES_MAX)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CR LF.
            return if buf.len() >= SMTP_REPLY_LINE_BYTES_MAX {
                Read::Malformed
            } else {
                Read::Incomplete
            };
        };
        let mut line = &buf[..lf];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let parsed = parse_reply_line(line);
        self.pos += lf + 1;
        let Some((code, last, text)) = parsed else {
            return Read::Malformed;
        };
        // RFC 5321 §4.2.1: every line of a multi-line reply has the same code.
        if !self.reply_lines.is_empty() && code != self.reply_code {
            return Read::Malformed;
        }
        if self.reply_lines.len() >= SMTP_REPLY_LINES_MAX {
            return Read::Malformed;
        }
        self.reply_code = code;
        self.reply_lines.push(text);
        if !last {
            return Read::Line;
        }
        let text = std::mem::take(&mut self.reply_lines).join("\n");
        Read::Reply(Reply::owned(code, text))
    }

    fn on_reply(&mut self, cmd: Cmd, r: Reply) {
        let code = r.code;
        match cmd {
            Cmd::Greeting => {
                if code == 220 {
                    self.ehlo();
                } else {
                    // RFC 5321 §3.1: 554 (or anything but 220) means no service here.
                    let text = format!("host {} refused to talk to me: {}", self.params.peer, one_line(&r));
                    self.fail(from_reply(&r, text), true);
                }
            }
            Cmd::Ehlo => {
                if (200..300).contains(&code) {
                    self.esmtp = true;
                    self.ext = Extensions::parse(&r);
                    self.after_ehlo();
                } else if code >= 500 {
                    // RFC 5321 §3.2: a server that does not know EHLO; try HELO.
                    let line = format!("HELO {}\r\n", self.params.helo_name);
                    self.queue(Cmd::Helo, line.into_bytes());
                } else {
                    self.fail_reply(cmd, &r);
                }
            }
            Cmd::Helo => {
                if (200..300).contains(&code) {
                    self.ext = Extensions::default();
                    self.after_ehlo();
                } else {
                    self.fail_reply(cmd, &r);
                }
            }
            Cmd::StartTls => {
                if code == 220 {
                    self.phase = Phase::TlsWait;
                    // Client side of CVE-2011-0411: anything buffered came before the
                    // handshake and must not be read as if it came over TLS.
                    self.drop_input();
                    self.events.push_back(Event::StartTls);
                } else if self.params.tls == TlsPolicy::Required {
                    let text = format!(
                        "TLS is required, but host {} refused to start TLS: {}",
                        self.params.peer,
                        one_line(&r)
                    );
                    self.fail(temp(text, "4.7.4").with_reply(r), true);
                } else {
                    self.starttls_refused = true;
                    self.after_ehlo();
                }
            }
            Cmd::AuthPlain | Cmd::AuthPass => self.auth_reply(cmd, r),
            Cmd::AuthLogin | Cmd::AuthUser => {
                if code == 334 {
                    let Some(login) = self.params.auth.clone() else { return };
                    let (next, value) = if cmd == Cmd::AuthLogin {
                        (Cmd::AuthUser, login.user)
                    } else {
                        (Cmd::AuthPass, login.password)
                    };
                    let line = format!("{}\r\n", STANDARD.encode(value.as_bytes()));
                    self.queue(next, line.into_bytes());
                } else {
                    self.auth_reply(cmd, r);
                }
            }
            Cmd::Rset => {
                if !(200..300).contains(&code) {
                    self.fail_reply(cmd, &r);
                }
            }
            Cmd::Mail => self.mail_reply(r),
            Cmd::Rcpt(i) => self.rcpt_reply(i, r),
            Cmd::Data => self.data_reply(r),
            Cmd::Dot => self.dot_reply(r),
            Cmd::Quit => self.close(None),
        }
    }

    fn ehlo(&mut self) {
        // RFC 5321 §4.1.1.1.
        let line = format!("EHLO {}\r\n", self.params.helo_name);
        self.queue(Cmd::Ehlo, line.into_bytes());
    }

    /// After a good EHLO/HELO: STARTTLS, AUTH, or ready.
    fn after_ehlo(&mut self) {
        let peer = self.params.peer.clone();
        if !self.params.tls_active {
            match self.params.tls {
                TlsPolicy::May | TlsPolicy::Required if self.ext.starttls && !self.starttls_refused => {
                    // RFC 3207 §4.
                    self.queue(Cmd::StartTls, b"STARTTLS\r\n".to_vec());
                    return;
                }
                TlsPolicy::Required => {
                    let text = format!("TLS is required, but was not offered by host {peer}");
                    return self.fail(temp(text, "4.7.4"), true);
                }
                _ => {}
            }
        }
        if let (Some(login), false) = (self.params.auth.clone(), self.authenticated) {
            if !self.ext.auth.is_empty() {
                if !self.params.tls_active && self.params.auth_needs_tls {
                    let text = format!("SASL authentication with {peer} refused: the connection is not encrypted");
                    return self.fail(temp(text, "4.7.0"), true);
                }
                if self.ext.auth.iter().any(|m| m == "PLAIN") {
                    // RFC 4616 §2: authzid NUL authcid NUL passwd; RFC 4954 §4 initial response.
                    let msg = format!("\0{}\0{}", login.user, login.password);
                    let line = format!("AUTH PLAIN {}\r\n", STANDARD.encode(msg.as_bytes()));
                    self.queue(Cmd::AuthPlain, line.into_bytes());
                } else if self.ext.auth.iter().any(|m| m == "LOGIN") {
                    self.queue(Cmd::AuthLogin, b"AUTH LOGIN\r\n".to_vec());
                } else {
                    let text = format!(
                        "SASL authentication failed: no mechanism available (host {peer} offered: {})",
                        clean(&self.ext.auth.join(" "))
                    );
                    let f = if self.params.auth_soft_bounce {
                        temp(text, "4.7.0")
                    } else {
                        perm(text, "5.7.0")
                    };
                    return self.fail(f, true);
                }
                return;
            }
        }
        self.ready();
    }

    fn auth_reply(&mut self, cmd: Cmd, r: Reply) {
        match r.code {
            235 => {
                self.authenticated = true;
                self.ready();
            }
            334 if cmd == Cmd::AuthPlain => {
                // The server ignored the initial response and asks for it (RFC 4954 §4).
                let Some(login) = self.params.auth.clone() else { return };
                let msg = format!("\0{}\0{}", login.user, login.password);
                let line = format!("{}\r\n", STANDARD.encode(msg.as_bytes()));
                self.queue(Cmd::AuthPass, line.into_bytes());
            }
            _ => {
                let text = format!(
                    "SASL authentication failed; server {} said: {}",
                    self.params.peer,
                    one_line(&r)
                );
                let mut f = from_reply(&r, text);
                if f.status == Status::Bounced && self.params.auth_soft_bounce {
                    // smtp_sasl_auth_soft_bounce = yes: a password problem should not bounce mail.
                    f.status = Status::Deferred;
                    f.dsn = format!("4{}", f.dsn.get(1..).unwrap_or(".7.8"));
                }
                self.fail(f, true);
            }
        }
    }

    fn ready(&mut self) {
        self.phase = Phase::Idle;
        self.ready_pending = true;
    }

    fn mail_reply(&mut self, r: Reply) {
        let peer = self.params.peer.clone();
        let Some(txn) = self.txn.as_mut() else { return };
        if (200..300).contains(&r.code) {
            txn.mail_ok = true;
        } else {
            let res = said(&peer, &r, Cmd::Mail);
            for slot in txn.results.iter_mut().filter(|s| s.is_none()) {
                *slot = Some(res.clone());
            }
            if !self.ext.pipelining {
                // The RCPTs were not sent: the transaction is over.
                self.queued.clear();
            }
        }
        self.advance_txn();
    }

    fn rcpt_reply(&mut self, i: usize, r: Reply) {
        let peer = self.params.peer.clone();
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.mail_ok {
            if (200..300).contains(&r.code) {
                txn.accepted.push(i);
            } else if let Some(slot) = txn.results.get_mut(i) {
                *slot = Some(said(&peer, &r, Cmd::Rcpt(i)));
            }
        }
        self.advance_txn();
    }

    fn data_reply(&mut self, r: Reply) {
        let peer = self.params.peer.clone();
        let Some(txn) = self.txn.as_mut() else { return };
        let useful = txn.mail_ok && !txn.accepted.is_empty();
        if r.code == 354 {
            if useful {
                self.phase = Phase::Body;
                self.events.push_back(Event::SendBody);
                return;
            }
            // RFC 2920 §3.1: DATA was accepted although no recipient was: send an empty
            // data section (just the dot) to get back in step; its reply is ignored.
            self.out.extend_from_slice(b".\r\n");
            self.inflight.push_back(Cmd::Dot);
            txn.accepted.clear();
            return;
        }
        if useful {
            let mut res = said(&peer, &r, Cmd::Data);
            if res.status == Status::Sent || r.code < 400 {
                // Only 354 lets the data go (RFC 5321 §4.1.1.4); another positive reply
                // delivered nothing: an unclassified answer is temporary.
                res.status = Status::Deferred;
                res.dsn = "4.5.0".into();
                res.text = format!("host {peer} said: {} (in reply to DATA command)", one_line(&r));
            }
            for &i in &txn.accepted {
                if let Some(slot) = txn.results.get_mut(i) {
                    *slot = Some(res.clone());
                }
            }
            txn.accepted.clear();
        }
        self.advance_txn();
    }

    fn dot_reply(&mut self, r: Reply) {
        let peer = self.params.peer.clone();
        let Some(txn) = self.txn.as_mut() else { return };
        // RFC 5321 §4.1.1.4: one reply for every accepted recipient.
        let res = said(&peer, &r, Cmd::Dot);
        for &i in &txn.accepted {
            if let Some(slot) = txn.results.get_mut(i) {
                *slot = Some(res.clone());
            }
        }
        txn.accepted.clear();
        self.advance_txn();
    }

    /// After a transaction reply: send DATA (no PIPELINING) or finish the message once
    /// nothing of it is in flight.
    fn advance_txn(&mut self) {
        if self.phase != Phase::Txn || !self.inflight.is_empty() || !self.queued.is_empty() {
            return;
        }
        let Some(txn) = self.txn.as_mut() else { return };
        if !txn.data_sent && txn.mail_ok && !txn.accepted.is_empty() {
            txn.data_sent = true;
            self.queue(Cmd::Data, b"DATA\r\n".to_vec());
            return;
        }
        self.finish();
    }

    /// The message is over: Done, then Ready.
    fn finish(&mut self) {
        let Some(txn) = self.txn.take() else { return };
        let peer = self.params.peer.clone();
        let results = txn
            .results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| temp(format!("no reply from {peer}"), "4.4.2")))
            .collect();
        self.events.push_back(Event::Done(results));
        self.ready();
    }

    /// A failure of the whole session given as a reply to `cmd`.
    fn fail_reply(&mut self, cmd: Cmd, r: &Reply) {
        let f = said(&self.params.peer, r, cmd);
        self.fail(f, true);
    }

    /// The session fails: the open message's undecided recipients get `f`, then Closed.
    /// `polite`: the server is in step (it replied), so a QUIT is queued.
    fn fail(&mut self, f: Failure, polite: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(txn) = self.txn.take() {
            let accepted = txn.accepted;
            let results = txn
                .results
                .into_iter()
                .enumerate()
                .map(|(i, r)| match r {
                    Some(r) if !accepted.contains(&i) => r,
                    _ => f.clone(),
                })
                .collect();
            self.events.push_back(Event::Done(results));
        }
        if polite {
            // RFC 5321 §4.1.1.10; the answer is not awaited.
            self.out.extend_from_slice(b"QUIT\r\n");
        }
        self.close(Some(f));
    }

    fn close(&mut self, f: Option<Failure>) {
        self.phase = Phase::Closed;
        self.ready_pending = false;
        self.inflight.clear();
        self.queued.clear();
        self.drop_input();
        self.events.push_back(Event::Closed(f));
    }
}

enum Read {
    Incomplete,
    /// One line of a multi-line reply was read.
    Line,
    Reply(Reply),
    Malformed,
}

/// `ddd`, `ddd text` or `ddd-text` (RFC 5321 §4.2). Returns (code, is last line, text).
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let d = line.get(..3)?;
    // RFC 5321 §4.2: first digit 2-5, second 0-5, third 0-9.
    if !(b'2'..=b'5').contains(&d[0]) || !(b'0'..=b'5').contains(&d[1]) || !d[2].is_ascii_digit() {
        return None;
    }
    let code = u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    Some((code, last, clean(&String::from_utf8_lossy(text))))
}

/// Control characters (log and header injection) become '?'.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A reply on one line, lines joined by a space (as Postfix logs them).
fn one_line(r: &Reply) -> String {
    format!("{} {}", r.code, r.text.split('\n').collect::<Vec<_>>().join(" "))
        .trim_end()
        .to_string()
}

/// A path we can put between < > on a command line: no CR, LF or other controls, no < or >,
/// spaces only inside a quoted local part (RFC 5321 §4.1.2 Quoted-string), and at most 256
/// octets (RFC 5321 §4.5.3.1.3). "" is the null path.
fn valid_path(p: &str) -> bool {
    let quoted = p.starts_with('"');
    p.len() <= SMTP_PATH_BYTES_MAX
        && !p
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>' || (c.is_whitespace() && !quoted))
}

/// The RFC 3463 code of a reply: its enhanced code when the first word is one and its class
/// matches the reply code (RFC 2034 §4), else `X.0.0`.
fn enhanced(r: &Reply) -> String {
    let class = (r.code / 100).to_string();
    let word = r.text.split_ascii_whitespace().next().unwrap_or("");
    let mut parts = word.split('.');
    let ok = parts.next() == Some(class.as_str())
        && parts
            .by_ref()
            .take(2)
            .filter(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 2
        && parts.next().is_none();
    if ok {
        word.to_string()
    } else {
        format!("{class}.0.0")
    }
}

fn temp(text: String, dsn: &str) -> RcptResult {
    RcptResult {
        status: Status::Deferred,
        reply: None,
        text,
        dsn: dsn.to_string(),
    }
}

fn perm(text: String, dsn: &str) -> RcptResult {
    RcptResult {
        status: Status::Bounced,
        reply: None,
        text,
        dsn: dsn.to_string(),
    }
}

impl RcptResult {
    fn with_reply(mut self, r: Reply) -> RcptResult {
        self.reply = Some(r);
        self
    }
}

/// The result a reply means: 2xx sent, 5xx bounced, anything else deferred (an
/// unclassified answer is temporary).
fn from_reply(r: &Reply, text: String) -> RcptResult {
    let status = match r.code {
        200..=299 => Status::Sent,
        500..=599 => Status::Bounced,
        _ => Status::Deferred,
    };
    let mut dsn = enhanced(r);
    if status == Status::Deferred && !dsn.starts_with('4') {
        dsn = "4.0.0".into();
    }
    RcptResult {
        status,
        reply: Some(r.clone()),
        text,
        dsn,
    }
}

/// Postfix's `host X said: 550 ... (in reply to RCPT TO command)`; a 2xx is logged as the
/// bare reply (`status=sent (250 2.0.0 Ok: queued as X)`).
fn said(peer: &str, r: &Reply, cmd: Cmd) -> RcptResult {
    let text = if (200..300).contains(&r.code) {
        one_line(r)
    } else {
        format!("host {peer} said: {} (in reply to {})", one_line(r), cmd.name())
    };
    from_reply(r, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ClientParams {
        ClientParams {
            helo_name: "client.example".into(),
            peer: "mx.example.org[192.0.2.1]:25".into(),
            tls: TlsPolicy::None,
            tls_active: false,
            auth: None,
            auth_needs_tls: true,
            auth_soft_bounce: true,
        }
    }

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line(b"250 ok"), Some((250, true, "ok".into())));
        assert_eq!(parse_reply_line(b"250-x"), Some((250, false, "x".into())));
        assert_eq!(parse_reply_line(b"221"), Some((221, true, String::new())));
        assert_eq!(parse_reply_line(b"250 a\x1bb"), Some((250, true, "a?b".into())));
        for bad in [&b"25"[..], b"hello", b"600 x", b"260 x", b"250x", b"2a0 x", b""] {
            assert_eq!(parse_reply_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced(&Reply::new(550, "5.1.1 <a@b>: no")), "5.1.1");
        assert_eq!(enhanced(&Reply::new(550, "4.1.1 mismatch")), "5.0.0");
        assert_eq!(enhanced(&Reply::new(451, "try later")), "4.0.0");
        assert_eq!(enhanced(&Reply::new(550, "5.1")), "5.0.0");
        assert_eq!(enhanced(&Reply::new(550, "5.1.1.1 x")), "5.0.0");
    }

    #[test]
    fn ehlo_keywords() {
        let r = Reply::new(
            250,
            "mx\nPIPELINING\nSIZE 1000\n8bitmime\nSTARTTLS\nAUTH PLAIN login\nAUTH=CRAM-MD5\nSMTPUTF8\nCHUNKING\nX-FOO",
        );
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.eightbitmime && e.starttls && e.smtputf8 && e.chunking);
        assert_eq!(e.size, Some(1000));
        assert_eq!(e.auth, vec!["PLAIN", "LOGIN", "CRAM-MD5"]);
        let e = Extensions::parse(&Reply::new(250, "mx\nSIZE"));
        assert_eq!(e.size, Some(0));
        // The first line is the server's name, never a keyword.
        assert!(!Extensions::parse(&Reply::new(250, "PIPELINING")).pipelining);
    }

    #[test]
    fn stuffing() {
        let mut out = Vec::new();
        let mut s = Stuffer { line_start: true };
        s.push(b".a\n", &mut out);
        s.push(b"b.", &mut out);
        s.push(b"\n.", &mut out);
        s.push(b"\n..\nlast", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n...\r\nlast\r\n.\r\n");
        let mut out = Vec::new();
        let mut s = Stuffer { line_start: true };
        s.finish(&mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn paths() {
        assert!(valid_path(""));
        assert!(valid_path("a@b.example"));
        assert!(valid_path("\"a b\"@b.example"));
        assert!(valid_path("jörg@b.example"));
        for bad in ["a b@x", "a@x>", "<a@x", "a\r\nRCPT TO:<x@y>", "a\0@x"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(!valid_path(&"a".repeat(300)));
    }

    #[test]
    fn stage_keys() {
        let c = Client::new(params());
        assert_eq!(c.stage(), Stage::Greeting);
        assert_eq!(c.stage().timeout_key(), Some("smtp_helo_timeout"));
        assert_eq!(Stage::Body.timeout_key(), Some("smtp_data_xfer_timeout"));
        assert_eq!(Stage::Idle.timeout_key(), None);
    }

    #[test]
    fn no_banner_timeout_text() {
        let mut c = Client::new(params());
        c.timeout();
        let Some(Event::Closed(Some(f))) = c.poll() else {
            panic!("expected Closed")
        };
        assert_eq!(
            f.text,
            "conversation with mx.example.org[192.0.2.1]:25 timed out while receiving the initial server greeting"
        );
        assert_eq!(f.status, Status::Deferred);
        assert_eq!(f.diagnostic_code(), format!("X-Postfix; {}", f.text));
        assert!(c.take_output().is_empty());
        assert!(c.is_closed());
    }
}
