//! The SMTP server core (RFC 5321), sans-IO.
//!
//! Contract (the I/O shell in `net::smtp` drives it):
//! ```text
//! let mut s = Server::new(params);          // queues the 220 greeting
//! loop {
//!     while let Some(ev) = s.poll() {       // consumes buffered input, one command at a time
//!         match ev { ... answer with accept()/reject()/accept_data()/finish_data(),
//!                    auth_ok()/auth_failed(), tls_started()/tls_failed() ... }
//!     }
//!     write(s.take_output());               // replies to a pipelined batch go out in one write
//!     if s.is_closed() { break }
//!     s.input(read_from_socket());          // or s.eof() / s.timeout()
//! }
//! ```
//! After an event that needs an answer (`Event::needs_answer`), `poll` returns `None`
//! until the shell answers; input stays buffered meanwhile (bounded by
//! `limits::SESSION_INPUT_BYTES_MAX`: the shell must not feed more while
//! `wants_input()` is false).
//!
//! Structure (after OpenSMTPD): each verb has a `check` that looks at the state and the
//! arguments and mutates nothing (`Result<Cmd, Refuse>`), then `apply` changes the state.
//! The session's phase lives in `State`; what the core waits for lives in `Wait`.
//!
//! STARTTLS (RFC 3207): the core replies `220 2.0.0 Ready to start TLS`, drops every input
//! byte buffered behind the command (CVE-2011-0411: plaintext injected before the
//! handshake must never run as if it came over TLS) and emits `Event::StartTls`. The shell
//! writes the output, does the handshake (input fed meanwhile is dropped too), then calls
//! `tls_started()` (or `tls_failed()`). The session then starts over: EHLO is needed, and
//! HELO, transaction and authentication are forgotten (RFC 3207 §4.2).
//!
//! AUTH (RFC 4954) runs the shared SASL exchange (`proto::sasl`): challenges go out as
//! `334 <base64>`; the AUTH line and each response line may be up to
//! `limits::SMTP_AUTH_LINE_BYTES_MAX` octets (RFC 4954 §4, see `line_limit`). A completed
//! exchange is `Event::Auth`; the shell checks the password and answers `auth_ok()` or
//! `auth_failed()` (or `reject(421 ...)` for a lockout). `accept()` is deliberately not an
//! answer to `Event::Auth`: authenticating must be said explicitly.
//!
//! Choices (Postfix texts unless said otherwise):
//! - 8-bit text in a command is allowed when it is valid UTF-8 (HELO names, VRFY); in an
//!   address it needs the SMTPUTF8 parameter of MAIL, else `553 5.6.7` (RFC 6531 §3.5).
//!   Invalid UTF-8 or NUL anywhere in a command: `500 5.5.2 Error: bad syntax`.
//! - A bare CR inside a command line: `521` and close in reject mode, `500 5.5.2 Error: bad
//!   syntax` in normalize mode.
//! - BDAT content is taken as is (CR LF -> LF only): a chunk is counted, so bare LF/CR
//!   cannot smuggle an end of data (RFC 3030 §2); they are kept in both modes.
//! - After `message_size_limit` is passed in BDAT, each further chunk of the transaction
//!   is read and answered `552 5.3.4 Error: message file too big`.
//! - Reset, Quit and DataAborted all mean "drop the open message, if any".
//! - STARTTLS inside a transaction is allowed (RFC 3207 §4.2 forgets it anyway): the core
//!   emits `Reset` first, as Postfix resets.
//! - Unknown SASL mechanism: Postfix's `535 5.7.8 Error: authentication failed: Invalid
//!   authentication mechanism` (RFC 4954 §4 would say 504). A decoded but malformed response
//!   gets the same 535 as a wrong password. Authentication survives EHLO and RSET; only
//!   STARTTLS forgets it.

use std::collections::VecDeque;

use core::net::IpAddr;

use super::address::{self, AddrError};
use super::headers::HeaderFixer;
use crate::limits::{SESSION_INPUT_BYTES_MAX, SMTP_AUTH_LINE_BYTES_MAX, SMTP_COMMAND_LINE_BYTES_MAX};
use crate::proto::dot::{crlf_to_lf, CrlfToLf, DotDecoder, Stop};
use crate::proto::line::{Frame, LineReader};
use crate::proto::reply::Reply;
use crate::proto::sasl::{self, Credentials, Exchange, Mechanism, SaslError};

/// How bare LF / bare CR are treated (RFC 5321 §2.3.8, §4.1.1.4; the SMTP smuggling defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    /// Refuse with `521 5.5.2` and close the connection.
    Reject,
    /// Postfix's `normalize`: a bare LF ends a line as if it were CR LF.
    /// Only CR LF . CR LF ends the data, in both modes.
    Normalize,
}

/// Fixed facts about one session, given by the shell.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Our name (myhostname), used in the greeting and replies.
    pub hostname: String,
    pub client_ip: IpAddr,
    /// The client's verified reverse name, or "unknown".
    pub client_name: String,
    pub bare_newline: BareNewline,
    /// message_size_limit in bytes; 0 means no limit. Advertised with SIZE (RFC 1870).
    pub message_size_limit: u64,
    /// smtpd_recipient_limit (at least `limits::SMTP_RECIPIENTS_MIN`).
    pub recipient_limit: usize,
    /// More EHLO keywords, listed after SIZE, STARTTLS and AUTH in the order given.
    pub extra_ehlo: Vec<String>,
    /// The session runs over TLS (port 465 from the start, or after STARTTLS).
    pub tls_active: bool,
    /// STARTTLS is configured for this listener (advertised while TLS is not active).
    pub starttls_offered: bool,
    /// AUTH is configured for this listener.
    pub auth_offered: bool,
    /// smtpd_tls_auth_only (default yes): AUTH only over TLS, and advertised only then.
    pub auth_requires_tls: bool,
    /// Submission (587/465): MAIL before a successful AUTH is refused.
    pub auth_required: bool,
}

/// BODY= parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// Why a message transaction's data ended without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// Over message_size_limit: the core answers 552 5.3.4 at the end of the data.
    TooBig,
    /// Bare LF or bare CR in Reject mode: the core answered 521 5.5.2 and closed.
    BareNewline,
    /// The client closed the connection mid-data.
    Disconnected,
    /// The idle timer fired mid-data.
    Timeout,
}

/// What the core needs the shell to decide or know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// HELO/EHLO. Answer: `accept()` (the core builds the 250 reply and, for EHLO, the
    /// extension list) or `reject(reply)`.
    Helo { esmtp: bool, domain: String },
    /// MAIL FROM. `from` is the address without brackets, "" for the null path.
    /// Answer: `accept()` (250 2.1.0 Ok) or `reject(reply)`.
    Mail {
        from: String,
        size: Option<u64>,
        body: BodyType,
        smtputf8: bool,
    },
    /// RCPT TO. `to` is `local@domain` (source route dropped, RFC 5321 §4.1.1.3) or
    /// `postmaster` (RFC 5321 §4.5.1), or any bare local part after
    /// [`Server::accept_bare_local_rcpt`]. Answer: `accept()` (250 2.1.5 Ok) or `reject(reply)`.
    Rcpt { to: String },
    /// DATA or the first BDAT: the shell opens a queue file.
    /// Answer: `accept_data(prefix, fix)` or `reject(reply)`.
    DataStart,
    /// Message bytes, dot-unstuffed, line ends normalised to LF. The first Body event
    /// carries the `prefix` given to `accept_data` (the Received: header). No answer.
    Body(Vec<u8>),
    /// The end of the data (CR LF . CR LF, or BDAT LAST). `size` counts the message bytes
    /// as received. Answer: `finish_data(reply)`, a 250 only once the message is durable.
    DataEnd { size: u64 },
    /// The data ended without a message; drop what was written. No answer.
    DataAborted(AbortReason),
    /// RSET, or a new HELO/EHLO: forget the transaction (and an open BDAT message).
    /// No answer (the core replied).
    Reset,
    /// QUIT: the core replied 221 and is closed; an open BDAT message is dropped.
    /// No answer.
    Quit,
    /// STARTTLS was accepted and `220 2.0.0 Ready to start TLS` queued. The shell writes the
    /// output, does the TLS handshake, then calls `tls_started()` (or `tls_failed()`);
    /// until then `poll` returns None and input is dropped (RFC 3207 §4.2, CVE-2011-0411).
    StartTls,
    /// A completed SASL exchange (RFC 4954 §4). Answer: `auth_ok()` (235), `auth_failed()`
    /// (535), or `reject(reply)` (a 421 closes: lockout).
    Auth { mechanism: Mechanism, creds: Credentials },
}

impl Event {
    /// Whether `poll` waits for the shell's answer (or, for StartTls, `tls_started()`).
    pub fn needs_answer(&self) -> bool {
        matches!(
            self,
            Event::Helo { .. }
                | Event::Mail { .. }
                | Event::Rcpt { .. }
                | Event::DataStart
                | Event::DataEnd { .. }
                | Event::StartTls
                | Event::Auth { .. }
        )
    }
}

/// Headers to add when the message lacks them (RFC 5322 §3.6: Date and, SHOULD,
/// Message-ID). Full header lines without line end, e.g. `Date: Sat, 28 Nov 2026 ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFix {
    pub date: Option<String>,
    pub message_id: Option<String>,
}

// Replies with fixed text (Postfix's words).
const OK: Reply = Reply::new(250, "2.0.0 Ok");
const MAIL_OK: Reply = Reply::new(250, "2.1.0 Ok");
const RCPT_OK: Reply = Reply::new(250, "2.1.5 Ok");
const GO_AHEAD: Reply = Reply::new(354, "End data with <CR><LF>.<CR><LF>");
const BYE: Reply = Reply::new(221, "2.0.0 Bye");
const VRFY: Reply = Reply::new(
    252,
    "2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
);
const HELP: Reply = Reply::new(
    214,
    "2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
);
const UNKNOWN: Reply = Reply::new(502, "5.5.2 Error: command not recognized");
const NO_EXPN: Reply = Reply::new(502, "5.5.1 EXPN command not supported");
const BAD_SYNTAX: Reply = Reply::new(500, "5.5.2 Error: bad syntax");
const TOO_LONG: Reply = Reply::new(500, "5.5.2 Error: line too long");
const SEND_HELO: Reply = Reply::new(503, "5.5.1 Error: send HELO/EHLO first");
const NESTED_MAIL: Reply = Reply::new(503, "5.5.1 Error: nested MAIL command");
const NEED_MAIL: Reply = Reply::new(503, "5.5.1 Error: need MAIL command");
const NEED_RCPT: Reply = Reply::new(503, "5.5.1 Error: need RCPT command");
const NO_VALID_RCPT: Reply = Reply::new(554, "5.5.1 Error: no valid recipients");
const DATA_AFTER_BDAT: Reply = Reply::new(503, "5.5.1 Error: DATA command not allowed after BDAT");
const RCPT_AFTER_BDAT: Reply = Reply::new(503, "5.5.1 Error: RCPT command not allowed after BDAT");
const HELO_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: HELO hostname");
const EHLO_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: EHLO hostname");
const MAIL_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>");
const RCPT_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>");
const DATA_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: DATA");
const BDAT_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: BDAT count [LAST]");
const RSET_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: RSET");
const VRFY_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: VRFY address");
const BAD_SENDER: Reply = Reply::new(501, "5.1.7 Bad sender address syntax");
const BAD_RCPT: Reply = Reply::new(501, "5.1.3 Bad recipient address syntax");
const NEED_SMTPUTF8: Reply = Reply::new(553, "5.6.7 Must declare SMTPUTF8 to send unicode address");
const BAD_SIZE: Reply = Reply::new(501, "5.5.4 Bad message size syntax");
const BAD_BODY: Reply = Reply::new(501, "5.5.4 Bad BODY keyword value");
const SIZE_OVER: Reply = Reply::new(552, "5.3.4 Message size exceeds fixed limit");
const TOO_BIG: Reply = Reply::new(552, "5.3.4 Error: message file too big");
const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3 Error: too many recipients");
const TLS_READY: Reply = Reply::new(220, "2.0.0 Ready to start TLS");
const TLS_NOT_OFFERED: Reply = Reply::new(502, "5.5.1 Error: command not implemented");
const TLS_ACTIVE: Reply = Reply::new(554, "5.5.1 Error: TLS already active");
const STARTTLS_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: STARTTLS");
const AUTH_NOT_OFFERED: Reply = Reply::new(503, "5.5.1 Error: authentication not enabled");
const AUTH_IN_TXN: Reply = Reply::new(503, "5.5.1 Error: MAIL transaction in progress");
const AUTH_AGAIN: Reply = Reply::new(503, "5.5.1 Error: already authenticated");
const AUTH_SYNTAX: Reply = Reply::new(501, "5.5.4 Syntax: AUTH mechanism");
const AUTH_NEED_TLS: Reply = Reply::new(530, "5.7.0 Must issue a STARTTLS command first");
const AUTH_UNKNOWN_MECH: Reply = Reply::new(
    535,
    "5.7.8 Error: authentication failed: Invalid authentication mechanism",
);
const AUTH_OK: Reply = Reply::new(235, "2.7.0 Authentication successful");
const AUTH_FAILED: Reply = Reply::new(535, "5.7.8 Error: authentication failed: authentication failure");
const AUTH_ABORTED: Reply = Reply::new(501, "5.7.0 Authentication aborted");
const AUTH_BAD_BASE64: Reply = Reply::new(501, "5.5.2 Cannot decode response");
const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0 Authentication required");

/// The phase of the session.
enum State {
    /// Greeted; HELO/EHLO expected.
    Start,
    /// HELO/EHLO done; MAIL expected.
    Idle,
    /// MAIL accepted; RCPT, DATA or BDAT expected.
    Mail(Txn),
    /// Inside DATA: reading dot-stuffed lines.
    Data { msg: Msg, dec: DotDecoder },
    /// Reading a BDAT chunk: `remaining` of `chunk` octets still to come.
    Chunk {
        msg: Msg,
        remaining: u64,
        chunk: u64,
        last: bool,
    },
    /// Between BDAT chunks of one message.
    Bdat(Msg),
    /// Inside an AUTH exchange: the next line is a SASL response (RFC 4954 §4).
    Auth { mechanism: Mechanism, ex: Exchange },
}

/// One mail transaction before its data.
struct Txn {
    smtputf8: bool,
    /// RCPT commands that reached the policy (accepted or not).
    rcpt_tried: usize,
    rcpt_ok: usize,
}

/// One message being received (after DataStart was accepted).
struct Msg {
    /// Emitted in front of the first Body bytes.
    prefix: Option<Vec<u8>>,
    hdr: HeaderFixer,
    /// BDAT only: CR LF -> LF across chunks.
    crlf: CrlfToLf,
    /// BDAT only: octets received (DATA counts in its decoder).
    size_bytes: u64,
    /// DataAborted was emitted; the rest is read and dropped.
    aborted: bool,
}

impl Msg {
    fn new(prefix: Vec<u8>, fix: HeaderFix) -> Msg {
        let mut prefix = crlf_to_lf(&prefix);
        if prefix.last().is_some_and(|&b| b != b'\n') {
            prefix.push(b'\n');
        }
        Msg {
            prefix: Some(prefix),
            hdr: HeaderFixer::new(fix),
            crlf: CrlfToLf::new(),
            size_bytes: 0,
            aborted: false,
        }
    }

    /// Decoded message bytes -> Body bytes.
    fn pass(&mut self, decoded: &[u8], out: &mut Vec<u8>) {
        if let Some(p) = self.prefix.take() {
            out.extend_from_slice(&p);
        }
        self.hdr.push(decoded, out);
    }

    /// The end of the message: flush held bytes and missing headers.
    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut tail = Vec::new();
        self.crlf.finish(&mut tail);
        self.pass(&tail, out);
        self.hdr.finish(out);
    }
}

/// The answer the core waits for.
enum Wait {
    Helo {
        esmtp: bool,
    },
    Mail {
        smtputf8: bool,
    },
    Rcpt,
    DataStart(Via),
    DataEnd,
    /// STARTTLS accepted: the handshake runs; input is dropped.
    Tls,
    /// A SASL exchange completed for this user (authcid).
    Auth {
        user: String,
    },
}

#[derive(Clone, Copy)]
enum Via {
    Data,
    Bdat { size: u64, last: bool },
}

/// A parsed, allowed command.
enum Cmd {
    Helo {
        esmtp: bool,
        domain: String,
    },
    Mail {
        from: String,
        size: Option<u64>,
        body: BodyType,
        smtputf8: bool,
    },
    Rcpt {
        to: String,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
}

/// A refused command: the reply, and what happens to the session.
struct Refuse {
    reply: Reply,
    then: Then,
}

enum Then {
    Continue,
    /// The stream cannot be resynchronised (a bad BDAT count).
    Close,
    /// RFC 3030 §2: a refused BDAT's chunk is still read (and dropped) before the reply.
    SkipChunk(u64),
}

impl From<Reply> for Refuse {
    fn from(reply: Reply) -> Refuse {
        Refuse {
            reply,
            then: Then::Continue,
        }
    }
}

/// Octets of a refused BDAT still to be dropped, and the reply to send then.
struct Skip {
    remaining: u64,
    reply: Reply,
}

type Check = fn(&Server, &str) -> Result<Cmd, Refuse>;

/// The command table: verb and its check.
const COMMANDS: &[(&str, Check)] = &[
    ("HELO", Server::check_helo),
    ("EHLO", Server::check_ehlo),
    ("MAIL", Server::check_mail),
    ("RCPT", Server::check_rcpt),
    ("DATA", Server::check_data),
    ("BDAT", Server::check_bdat),
    ("RSET", Server::check_rset),
    ("NOOP", Server::check_noop),
    ("QUIT", Server::check_quit),
    ("VRFY", Server::check_vrfy),
    ("EXPN", Server::check_expn),
    ("HELP", Server::check_help),
    ("STARTTLS", Server::check_starttls),
    ("AUTH", Server::check_auth),
];

/// Largest scratch or body buffer a session keeps between steps (a 16 KiB read decodes to
/// at most that plus the headers added at the start of a message).
const KEPT_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// Room reserved in a body buffer beyond the decoded bytes, for what the first step puts
/// in front of them (Received:, and Date:/Message-ID: when missing).
const BODY_PREFIX_RESERVE: usize = 512;

/// The SMTP server state machine for one connection.
pub struct Server {
    params: SessionParams,
    state: State,
    wait: Option<Wait>,
    skip: Option<Skip>,
    lines: LineReader,
    /// Unread input is `inbuf[pos..]`.
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    events: VecDeque<Event>,
    closed: bool,
    /// What an open message is aborted with once closed.
    close_reason: AbortReason,
    /// The authcid of a successful AUTH (RFC 4954 §4: at most one per session).
    user: Option<String>,
    /// [`Server::deny_access`] was called: every command but QUIT gets 503.
    access_denied: bool,
    /// [`Server::accept_bare_local_rcpt`] was called (`sendmail -bs`).
    bare_local_rcpt: bool,
    /// Scratch for a DATA/BDAT step's decoded bytes, kept for the next step.
    decoded: Vec<u8>,
    /// A body buffer handed back by [`Server::recycle`], for the next `Event::Body`.
    spare_body: Vec<u8>,
}

/// The buffers a session grows — input, output, the DATA decode scratch and a body buffer —
/// handed by the shell from a finished session to the next ([`Server::with_buffers`],
/// [`Server::take_buffers`]). With one message per connection (smtp-source, cron jobs,
/// scanners), growing them from empty in every session made musl's allocator map and unmap
/// memory for them again and again (docs/decisions.md, "Where a session's time goes").
/// They come back emptied; what a new session reads is only what it wrote.
#[derive(Default)]
pub struct Buffers {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    decoded: Vec<u8>,
    body: Vec<u8>,
}

impl Buffers {
    /// Bytes of memory the buffers hold.
    pub fn capacity(&self) -> usize {
        self.inbuf.capacity() + self.out.capacity() + self.decoded.capacity() + self.body.capacity()
    }
}

/// An emptied buffer to keep, or nothing if a burst grew it beyond `KEPT_BUFFER_BYTES_MAX`.
fn kept(mut v: Vec<u8>) -> Vec<u8> {
    if v.capacity() > KEPT_BUFFER_BYTES_MAX {
        return Vec::new();
    }
    v.clear();
    v
}

impl Server {
    /// A new session; the 220 greeting is queued in the output.
    pub fn new(params: SessionParams) -> Server {
        Server::with_buffers(params, Buffers::default())
    }

    /// [`Server::new`], growing into the buffers of an earlier session.
    pub fn with_buffers(params: SessionParams, b: Buffers) -> Server {
        let mut s = Server {
            state: State::Start,
            wait: None,
            skip: None,
            lines: LineReader::new(),
            inbuf: kept(b.inbuf),
            pos: 0,
            out: kept(b.out),
            events: VecDeque::new(),
            closed: false,
            close_reason: AbortReason::Disconnected,
            user: None,
            access_denied: false,
            bare_local_rcpt: false,
            decoded: kept(b.decoded),
            spare_body: kept(b.body),
            params,
        };
        // RFC 5321 §4.2: the greeting; §4.3.1.
        let greeting = Reply::owned(220, format!("{} ESMTP poshta", s.params.hostname));
        s.reply(greeting);
        s
    }

    /// RCPT TO may name a bare local part (`<nick>`), passed on in [`Event::Rcpt`] as
    /// written for the caller to qualify: for `sendmail -bs`, a local submitter, as Postfix's
    /// sendmail -bs accepts (its cleanup appends @myorigin). Network sessions never call it.
    pub fn accept_bare_local_rcpt(&mut self) {
        self.bare_local_rcpt = true;
    }

    /// The client restrictions refused this client at connect (Postfix's smtpd with
    /// smtpd_delay_reject = no): `reply` (4xx/5xx) replaces the 220 greeting (RFC 5321
    /// §3.1 allows a 554 greeting; the client should then QUIT), and every later command
    /// except QUIT gets `503 5.7.0 Error: access denied for NAME[IP]`, as Postfix answers.
    /// Call before any input.
    pub fn deny_access(&mut self, reply: Reply) {
        self.out.clear();
        self.reply(reply);
        self.access_denied = true;
    }

    /// Bytes received from the client. Ignored once closed.
    pub fn input(&mut self, data: &[u8]) {
        // RFC 3207 §4.2, CVE-2011-0411: nothing sent before the handshake completes counts.
        if self.closed || matches!(self.wait, Some(Wait::Tls)) {
            return;
        }
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        self.inbuf.extend_from_slice(data);
    }

    /// Whether the shell may read and feed more input now.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.buffered() < SESSION_INPUT_BYTES_MAX
    }

    /// The client closed its side. Next `poll` returns `DataAborted(Disconnected)` if data was
    /// in progress; the session is closed.
    pub fn eof(&mut self) {
        if !self.closed {
            self.close_reason = AbortReason::Disconnected;
            self.close();
        }
    }

    /// The idle timer (smtpd_timeout) fired: queues `421 4.4.2 <host> Error: timeout exceeded`
    /// and closes; `poll` then reports `DataAborted(Timeout)` if data was in progress.
    pub fn timeout(&mut self) {
        // Mid-handshake the client expects TLS records, not a plaintext reply.
        if matches!(self.wait, Some(Wait::Tls)) {
            return self.tls_failed();
        }
        if !self.closed {
            let r = Reply::owned(421, format!("4.4.2 {} Error: timeout exceeded", self.params.hostname));
            self.reply(r);
            self.close_reason = AbortReason::Timeout;
            self.close();
        }
    }

    /// The server is shutting down while the client is between commands (or its command
    /// waits for an answer): RFC 5321 §3.8, `421` and close. A client mid-TLS-handshake is
    /// just closed.
    pub fn shutting_down(&mut self) {
        if matches!(self.wait, Some(Wait::Tls)) {
            return self.tls_failed();
        }
        if !self.closed {
            let r = Reply::owned(421, format!("4.3.2 {} Service shutting down", self.params.hostname));
            if self.wait.is_some() {
                self.reject(r);
            } else {
                self.reply(r);
                self.close();
            }
        }
    }

    /// The next event, or None when more input (or an answer) is needed.
    pub fn poll(&mut self) -> Option<Event> {
        // Each round either returns, or consumes input, or finishes a chunk or a skip
        // (which took input before): bounded by the buffered input.
        let rounds = 2 * self.buffered() + 8;
        for _ in 0..rounds {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.wait.is_some() {
                return None;
            }
            if self.closed {
                return self.abort_open_message();
            }
            if !self.step() {
                return None;
            }
        }
        self.events.pop_front()
    }

    /// Positive answer to the pending Helo, Mail or Rcpt event. For DataStart it is
    /// `accept_data` with no prefix and no fix; for DataEnd it does nothing (use
    /// `finish_data`: a 250 there promises durability).
    pub fn accept(&mut self) {
        match self.wait.take() {
            Some(Wait::Helo { esmtp }) => {
                self.state = State::Idle;
                let r = if esmtp {
                    self.ehlo_reply()
                } else {
                    Reply::owned(250, self.params.hostname.clone())
                };
                self.reply(r);
            }
            Some(Wait::Mail { smtputf8 }) => {
                self.state = State::Mail(Txn {
                    smtputf8,
                    rcpt_tried: 0,
                    rcpt_ok: 0,
                });
                self.reply(MAIL_OK);
            }
            Some(Wait::Rcpt) => {
                if let State::Mail(t) = &mut self.state {
                    t.rcpt_ok += 1;
                }
                self.reply(RCPT_OK);
            }
            Some(w @ Wait::DataStart(_)) => {
                self.wait = Some(w);
                self.accept_data(Vec::new(), HeaderFix::default());
            }
            other => self.wait = other,
        }
    }

    /// Negative answer to any pending event. A 421 reply also closes the session.
    pub fn reject(&mut self, reply: Reply) {
        let Some(w) = self.wait.take() else { return };
        let closing = reply.code == 421;
        match w {
            // The client expects a TLS handshake now, not a reply: just close.
            Wait::Tls => return self.close(),
            // RFC 3030 §2: the chunk of a refused BDAT is read before the reply.
            Wait::DataStart(Via::Bdat { size, .. }) if !closing && size > 0 => {
                self.skip = Some(Skip { remaining: size, reply });
            }
            _ => self.reply(reply),
        }
        if closing {
            self.close();
        }
    }

    /// Positive answer to DataStart: `prefix` (the Received: header, CRLF or LF ended) is
    /// emitted first; headers in `fix` are added at the end of the header section when the
    /// message has none of that name.
    pub fn accept_data(&mut self, prefix: Vec<u8>, fix: HeaderFix) {
        let Some(Wait::DataStart(via)) = self.wait.take() else {
            return;
        };
        let msg = Msg::new(prefix, fix);
        match via {
            Via::Data => {
                let reject = self.params.bare_newline == BareNewline::Reject;
                self.state = State::Data {
                    msg,
                    dec: DotDecoder::new(reject),
                };
                self.reply(GO_AHEAD);
            }
            Via::Bdat { size, last } => {
                self.state = State::Chunk {
                    msg,
                    remaining: size,
                    chunk: size,
                    last,
                };
            }
        }
    }

    /// Answer to DataEnd (250 once durable; 452 4.3.1 when the disk is full, ...).
    pub fn finish_data(&mut self, reply: Reply) {
        match self.wait.take() {
            Some(Wait::DataEnd) => {
                let closing = reply.code == 421;
                self.reply(reply);
                if closing {
                    self.close();
                }
            }
            other => self.wait = other,
        }
    }

    /// The TLS handshake after `Event::StartTls` succeeded: the session starts over and
    /// needs EHLO; HELO, transaction and authentication are forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        if !matches!(self.wait, Some(Wait::Tls)) {
            return;
        }
        self.wait = None;
        self.params.tls_active = true;
        self.state = State::Start;
        self.user = None;
        self.drop_input();
    }

    /// The TLS handshake failed: the session is over (nothing can be sent in the clear).
    pub fn tls_failed(&mut self) {
        if matches!(self.wait, Some(Wait::Tls)) {
            self.wait = None;
            self.close();
        }
    }

    /// Answer to `Event::Auth`: the password is right. `235 2.7.0 Authentication successful`.
    pub fn auth_ok(&mut self) {
        match self.wait.take() {
            Some(Wait::Auth { user }) => {
                self.user = Some(user);
                self.reply(AUTH_OK);
            }
            other => self.wait = other,
        }
    }

    /// Answer to `Event::Auth`: wrong user or password (RFC 4954 §6: 535 5.7.8; the text
    /// never says which). The session stays unauthenticated and may try again.
    pub fn auth_failed(&mut self) {
        match self.wait.take() {
            Some(Wait::Auth { .. }) => self.reply(AUTH_FAILED),
            other => self.wait = other,
        }
    }

    /// The user of a successful AUTH in this session, if any.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the session runs over TLS now.
    pub fn tls_active(&self) -> bool {
        self.params.tls_active
    }

    /// Bytes to send to the client (drains the output buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Give back a buffer from [`Server::take_output`] once it is sent: the next replies
    /// are written into it instead of a new one grown from empty (two allocations a reply
    /// otherwise). Kept only up to `KEPT_BUFFER_BYTES_MAX` of capacity.
    pub fn recycle_output(&mut self, mut buf: Vec<u8>) {
        if self.out.is_empty() && buf.capacity() <= KEPT_BUFFER_BYTES_MAX {
            buf.clear();
            self.out = buf;
        }
    }

    /// This session's buffers, emptied, for the next one ([`Buffers`]); the server keeps
    /// none. Call once the session is over.
    pub fn take_buffers(&mut self) -> Buffers {
        Buffers {
            inbuf: kept(std::mem::take(&mut self.inbuf)),
            out: kept(std::mem::take(&mut self.out)),
            decoded: kept(std::mem::take(&mut self.decoded)),
            body: kept(std::mem::take(&mut self.spare_body)),
        }
    }

    /// True once nothing more will be read: after QUIT, a 421, a 521, eof or timeout.
    /// The shell sends the remaining output, then closes.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    // ---- internals ----

    fn buffered(&self) -> usize {
        self.inbuf.len() - self.pos
    }

    fn reply(&mut self, r: Reply) {
        if !self.closed {
            r.encode(&mut self.out);
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.drop_input();
        self.skip = None;
    }

    /// Forget all buffered input, and any half-read over-long line.
    fn drop_input(&mut self) {
        self.inbuf = kept(std::mem::take(&mut self.inbuf));
        self.pos = 0;
        self.lines = LineReader::new();
    }

    /// `521 5.5.2 <host> Error: bare <LF> received` and close (RFC 5321 §2.3.8).
    fn bare_newline_close(&mut self, what: &str) {
        let r = Reply::owned(
            521,
            format!("5.5.2 {} Error: bare <{}> received", self.params.hostname, what),
        );
        self.reply(r);
        self.close();
    }

    /// After close: an open message is reported aborted, once.
    fn abort_open_message(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Data { msg, .. } | State::Chunk { msg, .. } | State::Bdat(msg) if !msg.aborted => {
                Some(Event::DataAborted(self.close_reason))
            }
            _ => None,
        }
    }

    /// The longest line the current state reads. RFC 4954 §4: an AUTH command with its
    /// initial response, and each SASL response line, may be up to 12288 octets; other
    /// commands longer than 512 are refused in `step_command` after framing.
    fn line_limit(&self) -> usize {
        if self.params.auth_offered {
            SMTP_AUTH_LINE_BYTES_MAX
        } else {
            SMTP_COMMAND_LINE_BYTES_MAX
        }
    }

    /// One unit of work on the buffered input; false when nothing could be done.
    fn step(&mut self) -> bool {
        if self.skip.is_some() {
            return self.step_skip();
        }
        match self.state {
            State::Data { .. } => self.step_data(),
            State::Chunk { .. } => self.step_chunk(),
            _ => self.step_command(),
        }
    }

    fn step_skip(&mut self) -> bool {
        let avail = self.buffered() as u64;
        let Some(skip) = self.skip.as_mut() else {
            return false;
        };
        let n = skip.remaining.min(avail);
        self.pos += n as usize;
        skip.remaining -= n;
        if skip.remaining == 0 {
            if let Some(s) = self.skip.take() {
                self.reply(s.reply);
            }
            return true;
        }
        n > 0
    }

    /// A buffer for the next `Event::Body`: the one last handed back, emptied.
    fn body_buffer(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.spare_body);
        b.clear();
        b
    }

    /// Keep a decode scratch buffer for the next step unless a big chunk grew it.
    fn keep_decoded(&mut self, decoded: Vec<u8>) {
        if decoded.capacity() <= KEPT_BUFFER_BYTES_MAX {
            self.decoded = decoded;
        }
    }

    /// Hand back the bytes of an `Event::Body` once written: the next one reuses the
    /// buffer. A message then costs no allocation per body step (with musl's allocator
    /// each one could map and unmap memory; bench/smtp-deliver.sh).
    pub fn recycle(&mut self, body: Vec<u8>) {
        if body.capacity() <= KEPT_BUFFER_BYTES_MAX && body.capacity() > self.spare_body.capacity() {
            self.spare_body = body;
        }
    }

    fn step_data(&mut self) -> bool {
        if self.buffered() == 0 {
            return false;
        }
        let State::Data { mut msg, mut dec } = std::mem::replace(&mut self.state, State::Idle) else {
            return false;
        };
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        // Decoding only shrinks: one reservation instead of growth line by line.
        decoded.reserve(self.buffered());
        let (n, stop) = dec.feed(&self.inbuf[self.pos..], &mut decoded);
        self.pos += n;
        let size = dec.message_bytes();
        let limit = self.params.message_size_limit;
        let mut body = self.body_buffer();
        if !msg.aborted {
            if limit > 0 && size > limit {
                msg.aborted = true;
                self.events.push_back(Event::DataAborted(AbortReason::TooBig));
            } else {
                body.reserve(decoded.len() + BODY_PREFIX_RESERVE);
                msg.pass(&decoded, &mut body);
            }
        }
        self.keep_decoded(decoded);
        match stop {
            None => {
                push_body(&mut self.events, body);
                self.state = State::Data { msg, dec };
            }
            Some(Stop::End) if msg.aborted => self.reply(TOO_BIG),
            Some(Stop::End) => {
                msg.finish(&mut body);
                push_body(&mut self.events, body);
                self.events.push_back(Event::DataEnd { size });
                self.wait = Some(Wait::DataEnd);
            }
            Some(stop @ (Stop::BareLf | Stop::BareCr)) => {
                if !msg.aborted {
                    self.events.push_back(Event::DataAborted(AbortReason::BareNewline));
                }
                self.bare_newline_close(if stop == Stop::BareLf { "LF" } else { "CR" });
            }
        }
        true
    }

    fn step_chunk(&mut self) -> bool {
        let State::Chunk {
            mut msg,
            mut remaining,
            chunk,
            last,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return false;
        };
        let n = remaining.min(self.buffered() as u64) as usize;
        if n == 0 && remaining > 0 {
            self.state = State::Chunk {
                msg,
                remaining,
                chunk,
                last,
            };
            return false;
        }
        let mut body = self.body_buffer();
        let start = self.pos;
        self.pos += n;
        remaining -= n as u64;
        msg.size_bytes += n as u64;
        let limit = self.params.message_size_limit;
        if !msg.aborted {
            if limit > 0 && msg.size_bytes > limit {
                msg.aborted = true;
                self.events.push_back(Event::DataAborted(AbortReason::TooBig));
            } else {
                let mut decoded = std::mem::take(&mut self.decoded);
                decoded.clear();
                msg.crlf.feed(&self.inbuf[start..start + n], &mut decoded);
                body.reserve(decoded.len() + BODY_PREFIX_RESERVE);
                msg.pass(&decoded, &mut body);
                self.keep_decoded(decoded);
            }
        }
        if remaining > 0 {
            push_body(&mut self.events, body);
            self.state = State::Chunk {
                msg,
                remaining,
                chunk,
                last,
            };
        } else if msg.aborted {
            self.reply(TOO_BIG);
            if !last {
                self.state = State::Bdat(msg);
            }
        } else if last {
            // RFC 3030 §2: BDAT LAST ends the message.
            msg.finish(&mut body);
            push_body(&mut self.events, body);
            self.events.push_back(Event::DataEnd { size: msg.size_bytes });
            self.wait = Some(Wait::DataEnd);
        } else {
            push_body(&mut self.events, body);
            self.reply(Reply::owned(250, format!("2.0.0 {chunk} octets received")));
            self.state = State::Bdat(msg);
        }
        true
    }

    fn step_command(&mut self) -> bool {
        let limit = self.line_limit();
        match self.lines.next(&self.inbuf[self.pos..], limit) {
            Frame::Incomplete => false,
            Frame::TooLong { consumed, done } => {
                self.pos += consumed;
                if done {
                    // RFC 5321 §4.5.3.1.4, §4.2.2 (500: line too long); an over-long SASL
                    // response also ends the exchange.
                    if matches!(self.state, State::Auth { .. }) {
                        self.state = State::Idle;
                    }
                    self.reply(TOO_LONG);
                }
                true
            }
            Frame::Line {
                content_len,
                consumed,
                bare_lf,
            } => {
                let line = self.inbuf[self.pos..self.pos + content_len].to_vec();
                self.pos += consumed;
                let in_auth = matches!(self.state, State::Auth { .. });
                if content_len + 2 > SMTP_COMMAND_LINE_BYTES_MAX && !in_auth && !is_auth_command(&line) {
                    // RFC 5321 §4.5.3.1.4: only AUTH lines may be longer (RFC 4954 §4).
                    self.reply(TOO_LONG);
                } else if bare_lf && self.params.bare_newline == BareNewline::Reject {
                    // RFC 5321 §2.3.8: lines end with CR LF only.
                    self.bare_newline_close("LF");
                } else if in_auth {
                    self.auth_response(&line);
                } else {
                    self.command(&line);
                }
                true
            }
        }
    }

    fn command(&mut self, line: &[u8]) {
        if line.contains(&b'\r') {
            if self.params.bare_newline == BareNewline::Reject {
                return self.bare_newline_close("CR");
            }
            return self.reply(BAD_SYNTAX);
        }
        if line.contains(&0) {
            return self.reply(BAD_SYNTAX);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return self.reply(BAD_SYNTAX);
        };
        let (verb, arg) = match text.find([' ', '\t']) {
            Some(i) => (&text[..i], text[i + 1..].trim_matches([' ', '\t'])),
            None => (text, ""),
        };
        if verb.is_empty() {
            return self.reply(BAD_SYNTAX);
        }
        let Some((_, check)) = COMMANDS.iter().find(|(name, _)| verb.eq_ignore_ascii_case(name)) else {
            return self.reply(UNKNOWN);
        };
        if self.access_denied && !verb.eq_ignore_ascii_case("QUIT") {
            let denied = Reply::owned(
                503,
                format!(
                    "5.7.0 Error: access denied for {}[{}]",
                    self.params.client_name, self.params.client_ip
                ),
            );
            // A BDAT chunk's bytes are data, not commands: skip them (RFC 3030 §2).
            return match check(self, arg) {
                Ok(Cmd::Bdat { size, .. }) if size > 0 => {
                    self.skip = Some(Skip {
                        remaining: size,
                        reply: denied,
                    })
                }
                Err(Refuse {
                    then: Then::SkipChunk(n),
                    ..
                }) if n > 0 => {
                    self.skip = Some(Skip {
                        remaining: n,
                        reply: denied,
                    })
                }
                _ => self.reply(denied),
            };
        }
        match check(self, arg) {
            Ok(cmd) => self.apply(cmd),
            Err(Refuse {
                reply,
                then: Then::Continue,
            }) => self.reply(reply),
            Err(Refuse {
                reply,
                then: Then::Close,
            }) => {
                self.reply(reply);
                self.close();
            }
            Err(Refuse {
                reply,
                then: Then::SkipChunk(n),
            }) => {
                if n == 0 {
                    self.reply(reply);
                } else {
                    self.skip = Some(Skip { remaining: n, reply });
                }
            }
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Helo { esmtp, domain } => {
                // RFC 5321 §4.1.4: a new EHLO/HELO resets the transaction.
                if matches!(self.state, State::Mail(_) | State::Bdat(_)) {
                    self.state = State::Idle;
                    self.events.push_back(Event::Reset);
                }
                self.events.push_back(Event::Helo { esmtp, domain });
                self.wait = Some(Wait::Helo { esmtp });
            }
            Cmd::Mail {
                from,
                size,
                body,
                smtputf8,
            } => {
                self.events.push_back(Event::Mail {
                    from,
                    size,
                    body,
                    smtputf8,
                });
                self.wait = Some(Wait::Mail { smtputf8 });
            }
            Cmd::Rcpt { to } => {
                if let State::Mail(t) = &mut self.state {
                    t.rcpt_tried += 1;
                }
                self.events.push_back(Event::Rcpt { to });
                self.wait = Some(Wait::Rcpt);
            }
            Cmd::Data => {
                self.events.push_back(Event::DataStart);
                self.wait = Some(Wait::DataStart(Via::Data));
            }
            Cmd::Bdat { size, last } => match std::mem::replace(&mut self.state, State::Idle) {
                State::Bdat(msg) => {
                    self.state = State::Chunk {
                        msg,
                        remaining: size,
                        chunk: size,
                        last,
                    }
                }
                other => {
                    self.state = other;
                    self.events.push_back(Event::DataStart);
                    self.wait = Some(Wait::DataStart(Via::Bdat { size, last }));
                }
            },
            Cmd::Rset => {
                // RFC 5321 §4.1.1.5
                if !matches!(self.state, State::Start) {
                    self.state = State::Idle;
                }
                self.events.push_back(Event::Reset);
                self.reply(OK);
            }
            Cmd::Noop => self.reply(OK),
            Cmd::Quit => {
                // RFC 5321 §4.1.1.10
                self.reply(BYE);
                self.state = State::Idle;
                self.events.push_back(Event::Quit);
                self.close();
            }
            Cmd::Vrfy => self.reply(VRFY),
            Cmd::Help => self.reply(HELP),
            Cmd::StartTls => {
                // RFC 3207 §4.2: the transaction is forgotten (Postfix resets it at once).
                if matches!(self.state, State::Mail(_) | State::Bdat(_)) {
                    self.events.push_back(Event::Reset);
                }
                self.state = State::Start;
                self.reply(TLS_READY);
                // CVE-2011-0411: pipelined plaintext after STARTTLS is dropped, never run.
                self.drop_input();
                self.events.push_back(Event::StartTls);
                self.wait = Some(Wait::Tls);
            }
            Cmd::Auth { mechanism, initial } => {
                let (ex, step) = Exchange::start(mechanism, initial.as_deref());
                self.state = State::Auth { mechanism, ex };
                self.auth_step(step);
            }
        }
    }

    /// One SASL response line (RFC 4954 §4).
    fn auth_response(&mut self, line: &[u8]) {
        let State::Auth { mechanism, mut ex } = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        // Not UTF-8 cannot be base64 either.
        let step = match std::str::from_utf8(line) {
            Ok(text) => ex.step(text),
            Err(_) => sasl::Step::Failed(SaslError::BadBase64),
        };
        self.state = State::Auth { mechanism, ex };
        self.auth_step(step);
    }

    fn auth_step(&mut self, step: sasl::Step) {
        let State::Auth { mechanism, ex } = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        match step {
            // RFC 4954 §4: "334" SP [base64]; an empty challenge is "334 ".
            sasl::Step::Challenge(c) => {
                self.state = State::Auth { mechanism, ex };
                self.reply(Reply::owned(334, c));
            }
            sasl::Step::Done(creds) => {
                self.wait = Some(Wait::Auth {
                    user: creds.authcid.clone(),
                });
                self.events.push_back(Event::Auth { mechanism, creds });
            }
            // RFC 4954 §4: "*" cancels with 501.
            sasl::Step::Failed(SaslError::Cancelled) => self.reply(AUTH_ABORTED),
            // RFC 4954 §4: a response that is not base64 gets 501.
            sasl::Step::Failed(SaslError::BadBase64) => self.reply(AUTH_BAD_BASE64),
            sasl::Step::Failed(SaslError::Malformed) => self.reply(AUTH_FAILED),
        }
    }

    /// AUTH is usable now (and so advertised): configured, and TLS active unless
    /// smtpd_tls_auth_only is off (RFC 4954 §4: no plaintext passwords in the clear).
    fn auth_usable(&self) -> bool {
        self.params.auth_offered && (self.params.tls_active || !self.params.auth_requires_tls)
    }

    /// EHLO keywords in Postfix's order (PIPELINING, SIZE, STARTTLS, AUTH,
    /// ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8, CHUNKING).
    fn ehlo_reply(&self) -> Reply {
        let p = &self.params;
        let mut t = format!("{}\nPIPELINING\n", p.hostname);
        // RFC 1870 §4: SIZE with the limit, bare SIZE when there is none.
        if p.message_size_limit > 0 {
            t.push_str(&format!("SIZE {}\n", p.message_size_limit));
        } else {
            t.push_str("SIZE\n");
        }
        // RFC 3207 §4: not offered again once TLS runs.
        if p.starttls_offered && !p.tls_active {
            t.push_str("STARTTLS\n");
        }
        // RFC 4954 §3
        if self.auth_usable() {
            t.push_str("AUTH PLAIN LOGIN\n");
        }
        for kw in &p.extra_ehlo {
            t.push_str(kw);
            t.push('\n');
        }
        t.push_str("ENHANCEDSTATUSCODES\n8BITMIME\nSMTPUTF8\nCHUNKING");
        Reply::owned(250, t)
    }

    // ---- checks: look at state and arguments, change nothing ----

    fn check_helo(&self, arg: &str) -> Result<Cmd, Refuse> {
        if arg.is_empty() {
            return Err(HELO_SYNTAX.into());
        }
        Ok(Cmd::Helo {
            esmtp: false,
            domain: arg.to_string(),
        })
    }

    fn check_ehlo(&self, arg: &str) -> Result<Cmd, Refuse> {
        if arg.is_empty() {
            return Err(EHLO_SYNTAX.into());
        }
        Ok(Cmd::Helo {
            esmtp: true,
            domain: arg.to_string(),
        })
    }

    fn check_mail(&self, arg: &str) -> Result<Cmd, Refuse> {
        match self.state {
            State::Start => return Err(SEND_HELO.into()),
            State::Mail(_) | State::Bdat(_) => return Err(NESTED_MAIL.into()),
            _ => {}
        }
        // RFC 4954 §6: submission needs AUTH first.
        if self.params.auth_required && self.user.is_none() {
            return Err(AUTH_REQUIRED.into());
        }
        // "FROM: <a@b>" with a space is a common client bug that Postfix accepts.
        let rest = strip_prefix_ci(arg, "FROM:")
            .ok_or(MAIL_SYNTAX)?
            .trim_start_matches([' ', '\t']);
        let (path, params) = address::split_path(rest).ok_or(BAD_SENDER)?;
        if path.is_empty() {
            return Err(MAIL_SYNTAX.into());
        }
        let mut size = None;
        let mut body = BodyType::SevenBit;
        let mut smtputf8 = false;
        for (key, value) in esmtp_params(params, MAIL_SYNTAX)? {
            if key.eq_ignore_ascii_case("SIZE") {
                // RFC 1870 §6: SIZE=digits
                let v = value.filter(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()));
                size = Some(v.and_then(|v| v.parse::<u64>().ok()).ok_or(BAD_SIZE)?);
            } else if key.eq_ignore_ascii_case("BODY") {
                // RFC 6152 §2; BINARYMIME (RFC 3030 §3) is not advertised.
                body = match value {
                    Some(v) if v.eq_ignore_ascii_case("7BIT") => BodyType::SevenBit,
                    Some(v) if v.eq_ignore_ascii_case("8BITMIME") => BodyType::EightBitMime,
                    _ => return Err(BAD_BODY.into()),
                };
            } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_none() {
                // RFC 6531 §3.4
                smtputf8 = true;
            } else if key.eq_ignore_ascii_case("AUTH") && value.is_some() && self.params.auth_offered {
                // RFC 4954 §5: AUTH=<mailbox> or AUTH=<>; poshta does not relay the
                // identity onward, so it is accepted and ignored.
            } else {
                return Err(unsupported(key));
            }
        }
        let limit = self.params.message_size_limit;
        if limit > 0 && size.is_some_and(|s| s > limit) {
            // RFC 1870 §6.1
            return Err(SIZE_OVER.into());
        }
        let from = address::parse_reverse_path(path, smtputf8).map_err(|e| match e {
            AddrError::NonAscii => NEED_SMTPUTF8,
            AddrError::Syntax | AddrError::TooLong => BAD_SENDER,
        })?;
        Ok(Cmd::Mail {
            from,
            size,
            body,
            smtputf8,
        })
    }

    fn check_rcpt(&self, arg: &str) -> Result<Cmd, Refuse> {
        let txn = match &self.state {
            State::Mail(t) => t,
            State::Bdat(_) => return Err(RCPT_AFTER_BDAT.into()),
            _ => return Err(NEED_MAIL.into()),
        };
        // RFC 5321 §4.5.3.1.10
        if txn.rcpt_ok >= self.params.recipient_limit.max(1) {
            return Err(TOO_MANY_RCPTS.into());
        }
        let rest = strip_prefix_ci(arg, "TO:")
            .ok_or(RCPT_SYNTAX)?
            .trim_start_matches([' ', '\t']);
        let (path, params) = address::split_path(rest).ok_or(BAD_RCPT)?;
        if path.is_empty() {
            return Err(RCPT_SYNTAX.into());
        }
        // No RCPT parameters are advertised (no DSN).
        if let Some((key, _)) = esmtp_params(params, RCPT_SYNTAX)?.first() {
            return Err(unsupported(key));
        }
        let parsed = if self.bare_local_rcpt {
            address::parse_forward_path_or_local(path, txn.smtputf8)
        } else {
            address::parse_forward_path(path, txn.smtputf8)
        };
        let to = parsed.map_err(|e| match e {
            AddrError::NonAscii => NEED_SMTPUTF8,
            AddrError::Syntax | AddrError::TooLong => BAD_RCPT,
        })?;
        Ok(Cmd::Rcpt { to })
    }

    fn check_data(&self, arg: &str) -> Result<Cmd, Refuse> {
        match &self.state {
            State::Mail(t) => need_recipients(t)?,
            State::Bdat(_) => return Err(DATA_AFTER_BDAT.into()),
            _ => return Err(NEED_RCPT.into()),
        }
        if !arg.is_empty() {
            return Err(DATA_SYNTAX.into());
        }
        Ok(Cmd::Data)
    }

    fn check_bdat(&self, arg: &str) -> Result<Cmd, Refuse> {
        // RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]
        let mut words = arg.split([' ', '\t']).filter(|w| !w.is_empty());
        let size = words
            .next()
            .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // Without a size the chunk cannot be skipped: the stream is lost.
            return Err(Refuse {
                reply: BDAT_SYNTAX,
                then: Then::Close,
            });
        };
        let skip = |reply: Reply| Refuse {
            reply,
            then: Then::SkipChunk(size),
        };
        match &self.state {
            State::Mail(t) => need_recipients(t).map_err(|r| skip(r.reply))?,
            State::Bdat(_) => {}
            _ => return Err(skip(NEED_RCPT)),
        }
        Ok(Cmd::Bdat { size, last })
    }

    fn check_rset(&self, arg: &str) -> Result<Cmd, Refuse> {
        if !arg.is_empty() {
            return Err(RSET_SYNTAX.into());
        }
        Ok(Cmd::Rset)
    }

    fn check_noop(&self, _arg: &str) -> Result<Cmd, Refuse> {
        Ok(Cmd::Noop)
    }

    fn check_quit(&self, _arg: &str) -> Result<Cmd, Refuse> {
        Ok(Cmd::Quit)
    }

    fn check_vrfy(&self, arg: &str) -> Result<Cmd, Refuse> {
        if arg.is_empty() {
            return Err(VRFY_SYNTAX.into());
        }
        // RFC 5321 §3.5.3: 252 when the server will not verify.
        Ok(Cmd::Vrfy)
    }

    fn check_expn(&self, _arg: &str) -> Result<Cmd, Refuse> {
        Err(NO_EXPN.into())
    }

    fn check_help(&self, _arg: &str) -> Result<Cmd, Refuse> {
        Ok(Cmd::Help)
    }

    /// RFC 3207 §4, in Postfix's order of checks.
    fn check_starttls(&self, arg: &str) -> Result<Cmd, Refuse> {
        if !arg.is_empty() {
            return Err(STARTTLS_SYNTAX.into());
        }
        if self.params.tls_active {
            return Err(TLS_ACTIVE.into());
        }
        if !self.params.starttls_offered {
            return Err(TLS_NOT_OFFERED.into());
        }
        Ok(Cmd::StartTls)
    }

    /// RFC 4954 §4: `AUTH mechanism [initial-response]`.
    fn check_auth(&self, arg: &str) -> Result<Cmd, Refuse> {
        if !self.params.auth_offered {
            return Err(AUTH_NOT_OFFERED.into());
        }
        match self.state {
            State::Start => return Err(SEND_HELO.into()),
            // RFC 4954 §4: not during a mail transaction.
            State::Mail(_) | State::Bdat(_) => return Err(AUTH_IN_TXN.into()),
            _ => {}
        }
        // RFC 3207 §4 wording; smtpd_tls_auth_only.
        if !self.auth_usable() {
            return Err(AUTH_NEED_TLS.into());
        }
        // RFC 4954 §4: after a successful AUTH, another one is refused with 503.
        if self.user.is_some() {
            return Err(AUTH_AGAIN.into());
        }
        let mut words = arg.split([' ', '\t']).filter(|w| !w.is_empty());
        let (Some(mech), initial, None) = (words.next(), words.next(), words.next()) else {
            return Err(AUTH_SYNTAX.into());
        };
        let mechanism = Mechanism::parse(mech).ok_or(AUTH_UNKNOWN_MECH)?;
        Ok(Cmd::Auth {
            mechanism,
            initial: initial.map(str::to_string),
        })
    }
}

/// Whether a line is an AUTH command (which may be longer than 512 octets, RFC 4954 §4).
fn is_auth_command(line: &[u8]) -> bool {
    line.len() > 4 && line[..4].eq_ignore_ascii_case(b"AUTH") && matches!(line[4], b' ' | b'\t')
}

/// DATA/BDAT need an accepted recipient (Postfix's two replies).
fn need_recipients(t: &Txn) -> Result<(), Refuse> {
    if t.rcpt_ok > 0 {
        Ok(())
    } else if t.rcpt_tried == 0 {
        Err(NEED_RCPT.into())
    } else {
        Err(NO_VALID_RCPT.into())
    }
}

fn push_body(events: &mut VecDeque<Event>, body: Vec<u8>) {
    if !body.is_empty() {
        events.push_back(Event::Body(body));
    }
}

fn unsupported(key: &str) -> Refuse {
    Reply::owned(555, format!("5.5.4 Unsupported option: {key}")).into()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// RFC 5321 §4.1.2 Mail-parameters: `esmtp-keyword ["=" esmtp-value]`, space separated.
/// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 /
/// %d62-126), plus UTF-8 (RFC 6531 §3.3).
fn esmtp_params(params: &str, syntax: Reply) -> Result<Vec<(&str, Option<&str>)>, Refuse> {
    let mut out = Vec::new();
    for p in params.split([' ', '\t']).filter(|p| !p.is_empty()) {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        let key_ok = key.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| !v.is_empty() && v.chars().all(|c| c != '=' && !c.is_control()));
        if !key_ok || !value_ok {
            return Err(syntax.into());
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SESSION_READ_BYTES;

    fn params() -> SessionParams {
        SessionParams {
            hostname: "mx.example.org".into(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            client_name: "localhost".into(),
            bare_newline: BareNewline::Reject,
            message_size_limit: 0,
            recipient_limit: 100,
            extra_ehlo: Vec::new(),
            tls_active: false,
            starttls_offered: false,
            auth_offered: false,
            auth_requires_tls: true,
            auth_required: false,
        }
    }

    fn out(s: &mut Server) -> String {
        String::from_utf8(s.take_output()).unwrap()
    }

    /// A session in the middle of a transaction with one accepted recipient.
    fn in_txn(p: SessionParams) -> Server {
        let mut s = Server::new(p);
        s.input(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        for _ in 0..3 {
            assert!(s.poll().is_some_and(|e| e.needs_answer()));
            s.accept();
        }
        assert_eq!(s.poll(), None);
        s.take_output();
        s
    }

    #[test]
    fn greeting_and_extra_ehlo_keywords() {
        let mut p = params();
        p.extra_ehlo = vec!["STARTTLS".into(), "AUTH PLAIN".into()];
        p.message_size_limit = 1000;
        let mut s = Server::new(p);
        assert_eq!(out(&mut s), "220 mx.example.org ESMTP poshta\r\n");
        s.input(b"EHLO c\r\n");
        assert_eq!(
            s.poll(),
            Some(Event::Helo {
                esmtp: true,
                domain: "c".into()
            })
        );
        s.accept();
        assert_eq!(
            out(&mut s),
            "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
        );
    }

    #[test]
    fn access_denied_at_connect_answers_503_until_quit() {
        let mut s = Server::new(params());
        s.deny_access(Reply::owned(
            554,
            "5.7.1 <unknown[127.0.0.9]>: Client host rejected: Access denied".to_string(),
        ));
        let denied = format!(
            "503 5.7.0 Error: access denied for {}[{}]\r\n",
            s.params.client_name, s.params.client_ip
        );
        assert_eq!(
            out(&mut s),
            "554 5.7.1 <unknown[127.0.0.9]>: Client host rejected: Access denied\r\n"
        );
        // No events reach the session: nothing is taken from a refused client. A BDAT
        // chunk is skipped as data, not read as commands.
        s.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nBDAT 10 LAST\r\nHELO x\r\nXYZZY\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            format!("{denied}{denied}{denied}502 5.5.2 Error: command not recognized\r\n")
        );
        s.input(b"QUIT\r\n");
        assert_eq!(s.poll(), Some(Event::Quit));
    }

    #[test]
    fn poll_waits_for_the_answer_and_keeps_input() {
        let mut s = Server::new(params());
        s.input(b"HELO c\r\nNOOP\r\nNOOP\r\n");
        assert!(matches!(s.poll(), Some(Event::Helo { esmtp: false, .. })));
        assert_eq!(s.poll(), None);
        assert_eq!(s.poll(), None);
        assert!(s.wants_input());
        s.accept();
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "220 mx.example.org ESMTP poshta\r\n250 mx.example.org\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn wants_input_false_when_buffer_full() {
        let mut s = Server::new(params());
        s.input(b"HELO c\r\n");
        assert!(s.poll().is_some());
        let noops = b"NOOP\r\n".repeat(SESSION_INPUT_BYTES_MAX / 6 + 1);
        s.input(&noops);
        assert!(!s.wants_input());
        s.accept();
        assert_eq!(s.poll(), None);
        assert!(s.wants_input());
    }

    #[test]
    fn mail_event_fields() {
        let mut s = Server::new(params());
        s.input(b"EHLO c\r\nMAIL FROM:<j\xc3\xb6rg@b.example> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n");
        s.poll();
        s.accept();
        assert_eq!(
            s.poll(),
            Some(Event::Mail {
                from: "jörg@b.example".into(),
                size: Some(42),
                body: BodyType::EightBitMime,
                smtputf8: true
            })
        );
    }

    #[test]
    fn data_streams_in_bounded_pieces() {
        let mut p = params();
        p.bare_newline = BareNewline::Normalize;
        let mut s = in_txn(p);
        s.input(b"DATA\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.accept_data(b"Received: x".to_vec(), HeaderFix::default());
        assert_eq!(s.poll(), None);
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        let chunk = line.repeat(SESSION_READ_BYTES / line.len());
        let mut body_bytes = 0usize;
        let mut first = true;
        // 20 MB through the core: every Body is one read's worth, the buffer stays small.
        for _ in 0..(20 * 1024 * 1024 / chunk.len()) {
            assert!(s.wants_input());
            s.input(&chunk);
            while let Some(ev) = s.poll() {
                let Event::Body(b) = ev else {
                    panic!("unexpected {ev:?}")
                };
                assert!(b.len() <= chunk.len() + 16, "Body of {} bytes", b.len());
                if first {
                    assert!(b.starts_with(b"Received: x\n0123"));
                    first = false;
                }
                body_bytes += b.len();
            }
            assert!(s.inbuf.len() <= chunk.len(), "input buffer grew to {}", s.inbuf.len());
        }
        s.input(b".\r\n");
        let mut end = None;
        while let Some(ev) = s.poll() {
            match ev {
                Event::Body(b) => body_bytes += b.len(),
                Event::DataEnd { size } => end = Some(size),
                other => panic!("unexpected {other:?}"),
            }
        }
        let n = (20 * 1024 * 1024 / chunk.len()) * chunk.len();
        assert_eq!(end, Some(n as u64));
        // CR LF -> LF: one byte less per line, plus the prefix and its LF.
        assert_eq!(body_bytes, n - n / line.len() + 12);
    }

    #[test]
    fn too_big_aborts_once_and_answers_at_end() {
        let mut p = params();
        p.message_size_limit = 10;
        let mut s = in_txn(p);
        s.input(b"DATA\r\n");
        s.poll();
        s.accept_data(Vec::new(), HeaderFix::default());
        s.input(b"0123456789\r\n");
        assert_eq!(s.poll(), Some(Event::DataAborted(AbortReason::TooBig)));
        assert_eq!(s.poll(), None);
        s.input(b"more\r\nmore\r\n.\r\nNOOP\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Error: message file too big\r\n250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn data_end_size_and_answer() {
        let mut s = in_txn(params());
        s.input(b"DATA\r\nhello\r\n.\r\nNOOP\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.accept_data(b"P: 1\r\n".to_vec(), HeaderFix::default());
        assert_eq!(s.poll(), Some(Event::Body(b"P: 1\nhello\n".to_vec())));
        assert_eq!(s.poll(), Some(Event::DataEnd { size: 7 }));
        assert_eq!(s.poll(), None);
        // accept() is not an answer to DataEnd: a 250 there must come from finish_data.
        s.accept();
        assert_eq!(s.poll(), None);
        s.finish_data(Reply::new(250, "2.0.0 Ok: queued as X"));
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as X\r\n250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn a_session_starts_in_the_emptied_buffers_of_the_last_one() {
        let mut s = in_txn(params());
        s.input(b"DATA\r\nsecret body\r\n.\r\nQUIT\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.accept_data(Vec::new(), HeaderFix::default());
        let Some(Event::Body(body)) = s.poll() else {
            panic!("no body")
        };
        s.recycle(body);
        assert_eq!(s.poll(), Some(Event::DataEnd { size: 13 }));
        s.finish_data(Reply::new(250, "2.0.0 Ok"));
        assert_eq!(s.poll(), Some(Event::Quit));
        let used = s.take_buffers();
        assert!(used.capacity() > 0);
        assert_eq!(s.take_buffers().capacity(), 0, "the old session keeps nothing");
        // The next session writes its greeting into the old output buffer and nothing of the
        // last session shows: not in the output, not as input, not in a body.
        let kept = used.capacity();
        let mut next = Server::with_buffers(params(), used);
        assert_eq!(out(&mut next), "220 mx.example.org ESMTP poshta\r\n");
        assert_eq!(next.buffered(), 0);
        next.input(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
        for _ in 0..3 {
            assert!(next.poll().is_some_and(|e| e.needs_answer()));
            next.accept();
        }
        assert_eq!(next.poll(), Some(Event::DataStart));
        next.accept_data(Vec::new(), HeaderFix::default());
        assert_eq!(next.poll(), Some(Event::Body(b"x\n".to_vec())));
        assert!(next.take_buffers().capacity() <= kept + 4096);
        // A burst's buffer is let go, not kept.
        let mut big = Server::new(params());
        big.input(&vec![b'a'; 2 * KEPT_BUFFER_BYTES_MAX]);
        assert!(big.take_buffers().capacity() < KEPT_BUFFER_BYTES_MAX);
    }

    #[test]
    fn eof_while_data_start_pending_then_accepted() {
        let mut s = in_txn(params());
        s.input(b"DATA\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.eof();
        assert!(s.is_closed());
        assert_eq!(s.poll(), None);
        s.accept_data(Vec::new(), HeaderFix::default());
        assert_eq!(s.poll(), Some(Event::DataAborted(AbortReason::Disconnected)));
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "");
    }

    #[test]
    fn shutting_down_between_commands_sends_421_and_closes() {
        let mut s = Server::new(params());
        out(&mut s);
        s.input(b"NOOP\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "250 2.0.0 Ok\r\n");
        s.shutting_down();
        assert!(s.is_closed());
        assert_eq!(out(&mut s), "421 4.3.2 mx.example.org Service shutting down\r\n");
        s.shutting_down();
        assert_eq!(out(&mut s), "", "one 421 only");
    }

    #[test]
    fn timeout_while_data_end_pending_aborts_nothing() {
        let mut s = in_txn(params());
        s.input(b"DATA\r\n");
        s.poll();
        s.accept_data(Vec::new(), HeaderFix::default());
        s.input(b".\r\n");
        assert_eq!(s.poll(), Some(Event::DataEnd { size: 0 }));
        s.timeout();
        s.finish_data(Reply::new(250, "2.0.0 Ok"));
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "354 End data with <CR><LF>.<CR><LF>\r\n421 4.4.2 mx.example.org Error: timeout exceeded\r\n"
        );
    }

    #[test]
    fn reject_421_closes() {
        let mut s = Server::new(params());
        s.input(b"EHLO c\r\nNOOP\r\n");
        s.poll();
        s.reject(Reply::new(421, "4.7.0 mx.example.org Error: too many connections"));
        assert!(s.is_closed());
        assert_eq!(s.poll(), None);
        assert!(out(&mut s).ends_with("421 4.7.0 mx.example.org Error: too many connections\r\n"));
        s.input(b"NOOP\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "");
    }

    #[test]
    fn ehlo_mid_transaction_resets_first() {
        let mut s = in_txn(params());
        s.input(b"EHLO again\r\n");
        assert_eq!(s.poll(), Some(Event::Reset));
        assert_eq!(
            s.poll(),
            Some(Event::Helo {
                esmtp: true,
                domain: "again".into()
            })
        );
    }

    #[test]
    fn rejected_first_bdat_skips_its_chunk() {
        let mut s = in_txn(params());
        s.input(b"BDAT 6\r\nNOOP\r\nNOOP\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.reject(Reply::new(451, "4.3.0 Error: queue file write error"));
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "451 4.3.0 Error: queue file write error\r\n250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn quit_with_open_bdat_message() {
        let mut s = in_txn(params());
        s.input(b"BDAT 2\r\nab");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.accept_data(Vec::new(), HeaderFix::default());
        assert_eq!(s.poll(), Some(Event::Body(b"ab".to_vec())));
        s.input(b"QUIT\r\n");
        assert_eq!(s.poll(), Some(Event::Quit));
        assert_eq!(s.poll(), None);
        assert!(s.is_closed());
    }

    fn tls_auth_params() -> SessionParams {
        let mut p = params();
        p.starttls_offered = true;
        p.auth_offered = true;
        p
    }

    #[test]
    fn starttls_drops_input_until_the_handshake_is_done() {
        let mut s = Server::new(tls_auth_params());
        s.input(b"EHLO c\r\n");
        s.poll();
        s.accept();
        s.take_output();
        s.input(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n");
        assert_eq!(s.poll(), Some(Event::StartTls));
        assert!(Event::StartTls.needs_answer());
        assert_eq!(out(&mut s), "220 2.0.0 Ready to start TLS\r\n");
        // Bytes that arrive before the handshake completes are plaintext too.
        s.input(b"RCPT TO:<victim@example.org>\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(s.buffered(), 0);
        assert!(!s.tls_active());
        s.tls_started();
        assert!(s.tls_active());
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "");
        // The session starts over: EHLO first (RFC 3207 §4.2).
        s.input(b"MAIL FROM:<a@b.example>\r\nEHLO c\r\n");
        assert_eq!(
            s.poll(),
            Some(Event::Helo {
                esmtp: true,
                domain: "c".into()
            })
        );
        s.accept();
        let o = out(&mut s);
        assert!(
            o.starts_with("503 5.5.1 Error: send HELO/EHLO first\r\n250-mx.example.org\r\n"),
            "{o}"
        );
        assert!(!o.contains("STARTTLS"));
        assert!(o.contains("250-AUTH PLAIN LOGIN\r\n"));
    }

    #[test]
    fn starttls_in_a_transaction_resets_and_handshake_failure_closes() {
        let mut s = in_txn(tls_auth_params());
        s.input(b"STARTTLS\r\n");
        assert_eq!(s.poll(), Some(Event::Reset));
        assert_eq!(s.poll(), Some(Event::StartTls));
        // accept/auth answers do not end the handshake wait.
        s.accept();
        s.auth_ok();
        assert_eq!(s.poll(), None);
        s.tls_failed();
        assert!(s.is_closed());
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "220 2.0.0 Ready to start TLS\r\n");
        // The idle timer during a handshake closes without a plaintext 421.
        let mut s = Server::new(tls_auth_params());
        s.input(b"STARTTLS\r\n");
        assert_eq!(s.poll(), Some(Event::StartTls));
        s.take_output();
        s.timeout();
        assert!(s.is_closed());
        assert_eq!(out(&mut s), "");
    }

    #[test]
    fn reject_during_handshake_closes_without_plaintext() {
        let mut s = Server::new(tls_auth_params());
        s.input(b"STARTTLS\r\n");
        assert_eq!(s.poll(), Some(Event::StartTls));
        s.take_output();
        s.reject(Reply::new(421, "4.3.2 mx.example.org Service shutting down"));
        assert!(s.is_closed());
        assert_eq!(out(&mut s), "");
    }

    fn authed_creds() -> Credentials {
        Credentials {
            authzid: String::new(),
            authcid: "alice".into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn auth_needs_an_explicit_answer() {
        let mut p = tls_auth_params();
        p.tls_active = true;
        let mut s = Server::new(p);
        s.input(b"EHLO c\r\n");
        s.poll();
        s.accept();
        s.take_output();
        // base64("\0alice\0pw")
        s.input(b"AUTH PLAIN AGFsaWNlAHB3\r\nNOOP\r\n");
        assert_eq!(
            s.poll(),
            Some(Event::Auth {
                mechanism: Mechanism::Plain,
                creds: authed_creds()
            })
        );
        // accept() must not authenticate anybody.
        s.accept();
        assert_eq!(s.poll(), None);
        assert_eq!(s.authenticated_user(), None);
        assert_eq!(out(&mut s), "");
        s.auth_ok();
        assert_eq!(s.authenticated_user(), Some("alice"));
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "235 2.7.0 Authentication successful\r\n250 2.0.0 Ok\r\n");
        // Authentication survives EHLO and RSET.
        s.input(b"RSET\r\nEHLO c\r\n");
        assert_eq!(s.poll(), Some(Event::Reset));
        assert!(matches!(s.poll(), Some(Event::Helo { .. })));
        s.accept();
        assert_eq!(s.authenticated_user(), Some("alice"));
    }

    #[test]
    fn auth_lockout_with_421_closes() {
        let mut p = tls_auth_params();
        p.auth_requires_tls = false;
        let mut s = Server::new(p);
        s.input(b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\nNOOP\r\n");
        s.poll();
        s.accept();
        assert!(matches!(
            s.poll(),
            Some(Event::Auth {
                mechanism: Mechanism::Login,
                ..
            })
        ));
        s.reject(Reply::new(
            421,
            "4.7.0 mx.example.org Error: too many failed authentication attempts",
        ));
        assert!(s.is_closed());
        assert_eq!(s.poll(), None);
        assert_eq!(s.authenticated_user(), None);
        assert!(out(&mut s).ends_with(
            "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n421 4.7.0 mx.example.org Error: too many failed authentication attempts\r\n"
        ));
    }

    #[test]
    fn long_lines_only_for_auth() {
        let mut p = tls_auth_params();
        p.auth_requires_tls = false;
        let mut s = Server::new(p);
        s.input(b"EHLO c\r\n");
        s.poll();
        s.accept();
        s.take_output();
        let mut noop = b"NOOP ".to_vec();
        noop.extend(vec![b'x'; 600]);
        noop.extend_from_slice(b"\r\n");
        s.input(&noop);
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "500 5.5.2 Error: line too long\r\n");
        // 12288 octets with CRLF: still framed, then refused as bad base64.
        let mut auth = b"AUTH PLAIN ".to_vec();
        auth.extend(vec![b'!'; SMTP_AUTH_LINE_BYTES_MAX - auth.len() - 2]);
        auth.extend_from_slice(b"\r\n");
        s.input(&auth);
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "501 5.5.2 Cannot decode response\r\n");
    }

    #[test]
    fn huge_bdat_chunk_streams() {
        let mut s = in_txn(params());
        s.input(b"BDAT 18446744073709551615\r\n");
        assert_eq!(s.poll(), Some(Event::DataStart));
        s.accept_data(Vec::new(), HeaderFix::default());
        let chunk = vec![b'x'; SESSION_READ_BYTES];
        for _ in 0..64 {
            s.input(&chunk);
            while let Some(ev) = s.poll() {
                assert!(matches!(ev, Event::Body(_)));
            }
            assert!(s.inbuf.len() <= chunk.len());
        }
        s.eof();
        assert_eq!(s.poll(), Some(Event::DataAborted(AbortReason::Disconnected)));
    }
}
