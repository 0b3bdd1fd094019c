//! The POP3 server core (RFC 1939, RFC 2449, RFC 2595, RFC 5034), sans-IO.
//!
//! Contract (the I/O shell drives it, like `proto::smtp::server`):
//! ```text
//! let mut s = Server::new(params);          // queues the +OK greeting
//! loop {
//!     while let Some(ev) = s.poll() {       // consumes buffered input, one command at a time
//!         match ev { ... answer with login_ok()/login_failed()/tls_started()/
//!                        retr_begin()+retr_chunk()*+retr_end() or retr_failed()/update_done() }
//!     }
//!     write(s.take_output());
//!     if s.is_closed() { break }
//!     s.input(read_from_socket());          // or s.eof() / s.timeout()
//! }
//! ```
//! After an event that needs an answer (`Event::needs_answer`), `poll` returns `None` until
//! the shell answers; input stays buffered meanwhile (bounded by
//! `limits::SESSION_INPUT_BYTES_MAX`: the shell must not feed more while `wants_input()` is
//! false). Answers given after the session closed are accepted and ignored, except that a
//! late `login_ok` makes `poll` report `Event::Closed`, so the shell releases the maildrop.
//!
//! RETR/TOP: on `Event::Retr` the shell opens the message, then calls `retr_begin()` (the
//! core writes `+OK`), streams the stored bytes through `retr_chunk()` (taking the output
//! after each chunk: memory stays bounded by one chunk), and ends with `retr_end()` (the
//! core writes the terminating "."). If the message cannot be opened, `retr_failed()`
//! before `retr_begin()` answers `-ERR [SYS/TEMP]` and the session goes on; after
//! `retr_begin()` it closes the session (a half-sent message cannot be taken back).
//!
//! The maildrop lock: after `login_ok` the session ends with exactly one of
//! `Event::Update` (QUIT: the shell deletes the listed messages, calls `update_done`, then
//! releases the lock) or `Event::Closed` (dropped, timed out, failed: nothing is deleted,
//! RFC 1939 §6).
//!
//! Structure (after OpenSMTPD): each verb has a `check` that looks at the state and the
//! arguments and mutates nothing (`Result<Cmd, Refusal>`), then `apply` changes the state.
//! The session's phase lives in `State`; what the core waits for lives in `Wait`.
//!
//! Reply texts follow Dovecot where it has one; unlike Dovecot, client input is never
//! echoed in a reply.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use super::retr::RetrEncoder;
use crate::limits::{
    POP3_AUTH_LINE_BYTES_MAX, POP3_COMMAND_LINE_BYTES_MAX, POP3_MAILDROP_MESSAGES_MAX, POP3_UID_BYTES_MAX,
    SESSION_INPUT_BYTES_MAX,
};
use crate::proto::line::{Frame, LineReader};
use crate::proto::sasl::{Exchange, Mechanism, SaslError, Step};

/// The largest output buffer a session keeps between writes (see `recycle_output`).
pub const OUTPUT_KEEP_BYTES: usize = 256 * 1024;

/// Fixed facts about one session, given by the shell.
#[derive(Debug, Clone)]
pub struct Pop3Params {
    /// Our name (myhostname); used in the temporary-failure reply.
    pub hostname: String,
    /// The connection is TLS (port 995, or after STLS).
    pub tls_active: bool,
    /// STLS is possible (a certificate is configured) and TLS is not active yet.
    pub stls_offered: bool,
    /// USER/PASS and AUTH PLAIN/LOGIN are allowed: decided by the shell (TLS active, a
    /// loopback client, or configured so). When false they are refused unverified.
    pub plaintext_login_allowed: bool,
    /// RFC 1939 §3 autologout timer, at least 600 seconds; the shell runs the clock and
    /// calls `timeout()`. Kept here for the docs and logs only.
    pub autologout_secs: u64,
}

/// One message of the maildrop, as listed by the shell at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// Octets as sent: with CR LF line ends, before byte-stuffing (RFC 1939 §5 LIST).
    pub size: u64,
    /// RFC 1939 §7 unique-id: 1 to 70 octets in 0x21..0x7E (others are replaced by `_`).
    pub uid: String,
}

/// The maildrop's listing as the shell made it at login: message number n (RFC 1939 §5) is
/// index n - 1. The core keeps it for the session (shared with the shell, which reads the
/// messages through its own copy of the `Arc`) and marks deletions beside it.
pub trait Messages: Send + Sync {
    /// Messages listed.
    fn count(&self) -> usize;
    /// Message `index`'s octets as sent (RFC 1939 §5 LIST); `index < count()`.
    fn size(&self, index: usize) -> u64;
    /// Message `index`'s RFC 1939 §7 unique-id; `index < count()`. The core sends characters
    /// outside 0x21..0x7E as `_` (a bad id must not break the reply's framing).
    fn uid(&self, index: usize) -> &str;
}

/// A listing built by hand (tests, fuzzing).
impl Messages for Vec<MessageMeta> {
    fn count(&self) -> usize {
        self.len()
    }
    fn size(&self, index: usize) -> u64 {
        self.get(index).map_or(0, |m| m.size)
    }
    fn uid(&self, index: usize) -> &str {
        self.get(index).map_or("", |m| m.uid.as_str())
    }
}

/// Why a login failed (the shell verified, or could not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong user or password: `-ERR [AUTH]` (RFC 3206 §4).
    BadCredentials,
    /// The maildrop is locked by another session: `-ERR [IN-USE]` (RFC 2449 §8.1.2).
    InUse,
    /// A temporary failure (the users file or the maildrop could not be read):
    /// `-ERR [SYS/TEMP]` (RFC 3206 §4).
    SysTemp,
    /// Logins come too often: `-ERR [LOGIN-DELAY]` (RFC 2449 §8.1.1).
    LoginDelay,
}

/// What the core needs the shell to decide or know.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// PASS after USER, or a finished AUTH exchange. `mechanism` is `USER`, `PLAIN` or
    /// `LOGIN`. Answer: `login_ok(listing)` or `login_failed(why)`.
    Login {
        user: String,
        password: String,
        mechanism: &'static str,
    },
    /// STLS was accepted: the core replied `+OK` and dropped every byte that came after the
    /// STLS line (RFC 2595 §4; CVE-2011-0411), and ignores input until the answer.
    /// Answer: `tls_started(plaintext_login_allowed)` once the handshake is done; if it
    /// fails, drop the connection (`eof()`).
    StartTls,
    /// RETR (`top_lines` None) or TOP n k (`Some(k)`); `index` is 0-based in the listing.
    /// Answer: `retr_begin()` once the message is open, then `retr_chunk()`s and
    /// `retr_end()`; or `retr_failed()`.
    Retr { index: usize, top_lines: Option<u64> },
    /// QUIT in TRANSACTION (RFC 1939 §6): delete these messages (0-based, ascending; may be
    /// empty), then `update_done(ok)` and release the maildrop.
    Update { deleted: Vec<usize> },
    /// The session ended after login without UPDATE (eof, timeout, a failed RETR): nothing
    /// is deleted; release the maildrop. No answer.
    Closed,
}

impl Event {
    pub fn needs_answer(&self) -> bool {
        !matches!(self, Event::Closed)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The password is never printed.
            Event::Login { user, mechanism, .. } => f
                .debug_struct("Login")
                .field("user", user)
                .field("password", &"<hidden>")
                .field("mechanism", mechanism)
                .finish(),
            Event::StartTls => f.write_str("StartTls"),
            Event::Retr { index, top_lines } => f
                .debug_struct("Retr")
                .field("index", index)
                .field("top_lines", top_lines)
                .finish(),
            Event::Update { deleted } => f.debug_struct("Update").field("deleted", deleted).finish(),
            Event::Closed => f.write_str("Closed"),
        }
    }
}

/// Counters for the logout log line (Dovecot's `top=N/B, retr=N/B, del=N/M, size=S`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub retr_count: u64,
    /// Octets of message data sent for RETR (after CR LF and byte-stuffing).
    pub retr_bytes: u64,
    pub top_count: u64,
    pub top_bytes: u64,
    /// Messages handed to UPDATE for deletion, and their listed sizes.
    pub deleted_count: u64,
    pub deleted_bytes: u64,
    /// The maildrop at login.
    pub messages: u64,
    pub size_bytes: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "top={}/{} retr={}/{} del={}/{} size={}",
            self.top_count,
            self.top_bytes,
            self.retr_count,
            self.retr_bytes,
            self.deleted_count,
            self.deleted_bytes,
            self.size_bytes
        )
    }
}

/// A reply line, without CR LF.
type Line = Cow<'static, str>;

// Reply texts (Dovecot's words unless said otherwise).
const GREETING: &str = "+OK poshta POP3 server ready";
const OK: &str = "+OK";
const LOGGED_IN: &str = "+OK Logged in.";
const BYE: &str = "+OK Logging out.";
const BYE_DELETED: &str = "+OK Logging out, messages deleted.";
// RFC 1939 §6: "-ERR some deleted messages not removed".
const UPDATE_FAILED: &str = "-ERR [SYS/TEMP] Some deleted messages were not removed.";
const BEGIN_TLS: &str = "+OK Begin TLS negotiation now.";
const TLS_ACTIVE: &str = "-ERR TLS is already active.";
const TLS_DISABLED: &str = "-ERR TLS support isn't enabled.";
const UNKNOWN: &str = "-ERR Unknown command.";
const BAD_LINE: &str = "-ERR Invalid command line.";
const TOO_LONG: &str = "-ERR Line too long.";
const NOT_LOGGED_IN: &str = "-ERR Not logged in.";
const LOGGED_IN_ALREADY: &str = "-ERR Already logged in.";
const PLAINTEXT_DISABLED: &str = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";
const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";
const IN_USE: &str = "-ERR [IN-USE] Mailbox is locked by another session.";
const LOGIN_DELAY: &str = "-ERR [LOGIN-DELAY] Logging in too often, try again later.";
const AUTH_ABORTED: &str = "-ERR Authentication aborted by client.";
const BAD_BASE64: &str = "-ERR [AUTH] Invalid base64 data in response.";
const BAD_MECH: &str = "-ERR Unsupported authentication mechanism.";
const NO_USER: &str = "-ERR No username given.";
const NO_PASSWORD: &str = "-ERR No password given.";
const BAD_USER: &str = "-ERR Invalid username.";
const BAD_MSGNUM: &str = "-ERR Invalid message number.";
const MSGNUM_TOO_LARGE: &str = "-ERR Message number too large.";
const MSGNUM_NOISE: &str = "-ERR Noise after message number.";
const BAD_SIZE: &str = "-ERR Invalid size.";
const SIZE_TOO_LARGE: &str = "-ERR Size too large.";
const SIZE_NOISE: &str = "-ERR Noise after size.";
const DELETED: &str = "-ERR Message is deleted.";
const MARKED: &str = "+OK Marked to be deleted.";
const RETR_FAILED: &str = "-ERR [SYS/TEMP] Couldn't read the message.";
// RFC 1939 §3: the autologout timer expired; no UPDATE.
const INACTIVITY: &str = "-ERR Disconnected for inactivity.";

/// The phase of the session.
enum State {
    /// RFC 1939 §4: before login. `user`: the name from an accepted USER.
    Authorization { user: Option<String> },
    /// Inside an AUTH exchange: the next line is a SASL response (RFC 5034 §4).
    Sasl { ex: Exchange, mech: Mechanism },
    /// RFC 1939 §5: logged in.
    Transaction(Maildrop),
    /// QUIT sent the maildrop to UPDATE, or the session ended.
    Ended,
}

/// The listing: the shell's own (shared, not copied: a copy of the unique-ids and sizes
/// was a third of a 5,000-message session's memory) and one deletion mark per message.
struct Maildrop {
    list: Arc<dyn Messages>,
    /// Messages served: the listing's, at most POP3_MAILDROP_MESSAGES_MAX.
    deleted: Vec<bool>,
}

impl Maildrop {
    /// Messages not marked deleted: (index, size).
    fn live(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (self.deleted.iter().enumerate())
            .filter(|(_, d)| !**d)
            .map(|(i, _)| (i, self.list.size(i)))
    }

    /// Message `index`: whether it is marked deleted; None for no such message.
    fn deleted(&self, index: usize) -> Option<bool> {
        self.deleted.get(index).copied()
    }

    /// Message `index`'s size as listed (0 for no such message).
    fn size(&self, index: usize) -> u64 {
        if index < self.deleted.len() {
            self.list.size(index)
        } else {
            0
        }
    }

    /// Message `index`'s unique-id, as the shell listed it ("" for no such message).
    fn uid(&self, index: usize) -> &str {
        if index < self.deleted.len() {
            self.list.uid(index)
        } else {
            ""
        }
    }
}

/// The answer the core waits for.
enum Wait {
    Login {
        user: String,
    },
    Tls,
    Retr {
        index: usize,
        top_lines: Option<u64>,
    },
    /// Between retr_begin and retr_end.
    Streaming {
        enc: RetrEncoder,
        top: bool,
    },
    Update {
        any: bool,
    },
}

/// A parsed, allowed command.
enum Cmd {
    Capa,
    User(String),
    Pass(String),
    AuthList,
    Auth { mech: Mechanism, initial: Option<String> },
    Stls,
    Quit,
    Stat,
    List(Option<usize>),
    Uidl(Option<usize>),
    Retr(usize),
    Top(usize, u64),
    Dele(usize),
    Rset,
    Noop,
}

type Check = fn(&Server, &str) -> Result<Cmd, Line>;

/// The command table: verb and its check.
const COMMANDS: &[(&str, Check)] = &[
    ("CAPA", Server::check_capa),
    ("USER", Server::check_user),
    ("PASS", Server::check_pass),
    ("AUTH", Server::check_auth),
    ("STLS", Server::check_stls),
    ("QUIT", Server::check_quit),
    ("STAT", Server::check_stat),
    ("LIST", Server::check_list),
    ("UIDL", Server::check_uidl),
    ("RETR", Server::check_retr),
    ("TOP", Server::check_top),
    ("DELE", Server::check_dele),
    ("RSET", Server::check_rset),
    ("NOOP", Server::check_noop),
];

/// The POP3 server state machine for one connection.
pub struct Server {
    params: Pop3Params,
    state: State,
    wait: Option<Wait>,
    lines: LineReader,
    /// Unread input is `inbuf[pos..]`.
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    events: VecDeque<Event>,
    closed: bool,
    user: Option<String>,
    stats: Stats,
}

impl Server {
    /// A new session; the greeting is queued in the output (RFC 1939 §4; no APOP banner).
    pub fn new(params: Pop3Params) -> Server {
        let mut s = Server {
            params,
            state: State::Authorization { user: None },
            wait: None,
            lines: LineReader::new(),
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            events: VecDeque::new(),
            closed: false,
            user: None,
            stats: Stats::default(),
        };
        s.line(GREETING);
        s
    }

    /// Bytes received from the client. Ignored once closed, and while STLS waits for the
    /// handshake (RFC 2595 §4: nothing sent in plaintext after STLS may be acted on).
    pub fn input(&mut self, data: &[u8]) {
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

    /// The client closed its side. After login, `poll` reports `Closed` (nothing is
    /// deleted), unless UPDATE is already under way.
    pub fn eof(&mut self) {
        if !self.closed {
            self.close();
        }
    }

    /// The autologout timer fired (RFC 1939 §3): `-ERR` and close without UPDATE. While a
    /// message is being sent nothing is written (it would land inside the message); while
    /// UPDATE runs the timer is ignored (its reply comes from `update_done`).
    pub fn timeout(&mut self) {
        if self.closed {
            return;
        }
        match self.wait {
            Some(Wait::Update { .. }) => {}
            Some(Wait::Streaming { .. }) => self.close(),
            _ => {
                self.line(INACTIVITY);
                self.close();
            }
        }
    }

    /// The next event, or None when more input (or an answer) is needed.
    pub fn poll(&mut self) -> Option<Event> {
        // Each round either returns or consumes input: bounded by the buffered input.
        let rounds = self.buffered() + 2;
        for _ in 0..rounds {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.wait.is_some() || self.closed {
                return None;
            }
            if !self.step() {
                return None;
            }
        }
        self.events.pop_front()
    }

    /// Positive answer to `Login`: the maildrop listing, in message-number order.
    pub fn login_ok(&mut self, listing: Arc<dyn Messages>) {
        let Some(Wait::Login { user }) = self.wait.take() else {
            return;
        };
        if self.closed {
            // The client left while the shell verified: it holds the lock now, release it.
            self.events.push_back(Event::Closed);
            return;
        }
        let n = listing.count().min(POP3_MAILDROP_MESSAGES_MAX);
        self.stats.messages = n as u64;
        // Sizes come from the shell; saturate rather than trust them not to overflow.
        self.stats.size_bytes = (0..n).fold(0u64, |t, i| t.saturating_add(listing.size(i)));
        self.user = Some(user);
        self.state = State::Transaction(Maildrop {
            list: listing,
            deleted: vec![false; n],
        });
        self.line(LOGGED_IN);
    }

    /// Negative answer to `Login`; the session stays in AUTHORIZATION. Counting failures
    /// and closing after too many is the shell's business.
    pub fn login_failed(&mut self, why: LoginFailure) {
        let Some(Wait::Login { .. }) = self.wait.take() else {
            return;
        };
        let text: Line = match why {
            LoginFailure::BadCredentials => AUTH_FAILED.into(),
            LoginFailure::InUse => IN_USE.into(),
            LoginFailure::SysTemp => format!(
                "-ERR [SYS/TEMP] Temporary authentication failure. [{}]",
                self.params.hostname
            )
            .into(),
            LoginFailure::LoginDelay => LOGIN_DELAY.into(),
        };
        self.line(&text);
    }

    /// The TLS handshake after STLS is done. CAPA and logins now follow the new facts
    /// (RFC 2595 §4: the client discards what it learned before).
    pub fn tls_started(&mut self, plaintext_login_allowed: bool) {
        let Some(Wait::Tls) = self.wait.take() else {
            return;
        };
        self.params.tls_active = true;
        self.params.stls_offered = false;
        self.params.plaintext_login_allowed = plaintext_login_allowed;
        self.state = State::Authorization { user: None };
    }

    /// The message for `Event::Retr` is open: write `+OK` (RFC 1939 §5 RETR, §7 TOP).
    pub fn retr_begin(&mut self) {
        let Some(Wait::Retr { index, top_lines }) = self.wait.take() else {
            return;
        };
        if self.closed {
            return;
        }
        let State::Transaction(md) = &self.state else {
            return;
        };
        let size = md.size(index);
        match top_lines {
            None => {
                self.stats.retr_count += 1;
                // Straight into the output (one per message: no string to allocate).
                let _ = write!(self.out, "+OK {size} octets\r\n");
            }
            Some(_) => {
                self.stats.top_count += 1;
                self.line(OK);
            }
        }
        self.wait = Some(Wait::Streaming {
            enc: RetrEncoder::new(top_lines),
            top: top_lines.is_some(),
        });
    }

    /// Stored message bytes (LF or CR LF line ends); converted output is appended to the
    /// output at once, so `take_output()` after each chunk keeps memory bounded.
    pub fn retr_chunk(&mut self, data: &[u8]) {
        if self.closed {
            return;
        }
        if let Some(Wait::Streaming { enc, .. }) = self.wait.as_mut() {
            enc.push(data, &mut self.out);
        }
    }

    /// The end of the stored message: the last line is terminated and "." written.
    pub fn retr_end(&mut self) {
        let Some(Wait::Streaming { mut enc, top }) = self.wait.take() else {
            return;
        };
        if self.closed {
            return;
        }
        enc.finish(&mut self.out);
        if top {
            self.stats.top_bytes += enc.out_bytes();
        } else {
            self.stats.retr_bytes += enc.out_bytes();
        }
        // RFC 1939 §3: a multi-line response ends with "." CR LF.
        self.line(".");
    }

    /// The message could not be opened (before `retr_begin`: `-ERR [SYS/TEMP]`, the session
    /// goes on) or read (after: the session is closed, the client sees a cut response).
    pub fn retr_failed(&mut self) {
        match self.wait.take() {
            Some(Wait::Retr { .. }) => self.line(RETR_FAILED),
            Some(Wait::Streaming { .. }) => {
                if !self.closed {
                    self.close();
                }
            }
            other => self.wait = other,
        }
    }

    /// Answer to `Update`: the deletions are done (`ok`) or some failed. Closes.
    pub fn update_done(&mut self, ok: bool) {
        let Some(Wait::Update { any }) = self.wait.take() else {
            return;
        };
        self.line(match (ok, any) {
            // RFC 1939 §6: "-ERR some deleted messages not removed". With nothing marked no
            // message can be left behind (a failed Maildir new/ → cur/ move loses nothing).
            (false, true) => UPDATE_FAILED,
            (true, true) => BYE_DELETED,
            (_, false) => BYE,
        });
        self.closed = true;
        self.drop_input();
    }

    /// Bytes to send to the client (drains the output buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Give back a buffer from [`Server::take_output`] once it is sent: the next replies
    /// are written into it instead of a new one grown from empty (a burst of pipelined
    /// RETRs fills tens of KiB). Kept only up to [`OUTPUT_KEEP_BYTES`] of capacity.
    pub fn recycle_output(&mut self, mut buf: Vec<u8>) {
        if self.out.is_empty() && buf.capacity() <= OUTPUT_KEEP_BYTES {
            buf.clear();
            self.out = buf;
        }
    }

    /// True once nothing more will be read: after QUIT, eof, timeout or a failed RETR.
    /// The shell sends the remaining output, then closes.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The logged-in user, for the logout log line.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Counters for the logout log line.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- internals ----

    fn buffered(&self) -> usize {
        self.inbuf.len() - self.pos
    }

    fn line(&mut self, text: &str) {
        if !self.closed {
            self.out.extend_from_slice(text.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn drop_input(&mut self) {
        self.inbuf = Vec::new();
        self.pos = 0;
    }

    /// End the session. After login without UPDATE nothing is deleted (RFC 1939 §6).
    fn close(&mut self) {
        self.closed = true;
        self.drop_input();
        if matches!(self.wait, Some(Wait::Update { .. })) {
            // UPDATE is under way: the shell answers it and releases the lock then.
            return;
        }
        if let State::Transaction(_) = std::mem::replace(&mut self.state, State::Ended) {
            self.events.push_back(Event::Closed);
        }
    }

    /// One command (or SASL response) from the buffered input; false when there is none.
    fn step(&mut self) -> bool {
        let sasl = matches!(self.state, State::Sasl { .. });
        let limit = if sasl {
            POP3_AUTH_LINE_BYTES_MAX
        } else {
            // RFC 2449 §4
            POP3_COMMAND_LINE_BYTES_MAX
        };
        match self.lines.next(&self.inbuf[self.pos..], limit) {
            Frame::Incomplete => false,
            Frame::TooLong { consumed, done } => {
                self.pos += consumed;
                if done {
                    if sasl {
                        self.state = State::Authorization { user: None };
                    }
                    self.line(TOO_LONG);
                }
                true
            }
            Frame::Line {
                content_len, consumed, ..
            } => {
                let line = self.inbuf[self.pos..self.pos + content_len].to_vec();
                self.pos += consumed;
                if sasl {
                    self.sasl_response(&line);
                } else {
                    self.command(&line);
                }
                true
            }
        }
    }

    fn command(&mut self, line: &[u8]) {
        // A CR inside the line, NUL or invalid UTF-8: nothing a POP3 client sends.
        if line.contains(&b'\r') || line.contains(&0) {
            return self.line(BAD_LINE);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return self.line(BAD_LINE);
        };
        // RFC 2449 §3: keyword, then arguments separated by single spaces. The raw rest is
        // kept: PASS takes it as is (RFC 1939 §7: a password may contain spaces).
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let Some((_, check)) = COMMANDS.iter().find(|(name, _)| verb.eq_ignore_ascii_case(name)) else {
            return self.line(UNKNOWN);
        };
        match check(self, arg) {
            Ok(cmd) => self.apply(cmd),
            Err(reply) => self.line(&reply),
        }
    }

    fn sasl_response(&mut self, line: &[u8]) {
        let State::Sasl { mut ex, mech } = std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            return;
        };
        // Invalid UTF-8 cannot be base64.
        let step = match std::str::from_utf8(line) {
            Ok(text) if !text.contains('\r') => ex.step(text),
            _ => Step::Failed(SaslError::BadBase64),
        };
        self.sasl_step(ex, mech, step);
    }

    fn sasl_step(&mut self, ex: Exchange, mech: Mechanism, step: Step) {
        match step {
            Step::Challenge(b64) => {
                // RFC 5034 §4: continue-req = "+" SP [base64] CRLF
                self.line(&format!("+ {b64}"));
                self.state = State::Sasl { ex, mech };
            }
            // RFC 5034 §4: "*" cancels; the server answers -ERR.
            Step::Failed(SaslError::Cancelled) => self.line(AUTH_ABORTED),
            Step::Failed(SaslError::BadBase64) => self.line(BAD_BASE64),
            Step::Failed(SaslError::Malformed) => self.line(AUTH_FAILED),
            Step::Done(c) => {
                // Logging in as another user (an authzid) is not offered.
                if !c.authzid.is_empty() && c.authzid != c.authcid {
                    return self.line(AUTH_FAILED);
                }
                self.login(c.authcid, c.password, mech.name());
            }
        }
    }

    fn login(&mut self, user: String, password: String, mechanism: &'static str) {
        self.events.push_back(Event::Login {
            user: user.clone(),
            password,
            mechanism,
        });
        self.wait = Some(Wait::Login { user });
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Capa => self.capa(),
            Cmd::User(name) => {
                self.state = State::Authorization { user: Some(name) };
                self.line(OK);
            }
            Cmd::Pass(password) => {
                let user = match &mut self.state {
                    State::Authorization { user } => user.take(),
                    _ => None,
                };
                if let Some(user) = user {
                    self.login(user, password, "USER");
                }
            }
            Cmd::AuthList => {
                // RFC 5034 §4 leaves AUTH without a mechanism open; Outlook's discovery
                // expects the list (Dovecot).
                let mut text = String::from("+OK\r\n");
                if self.params.plaintext_login_allowed {
                    text.push_str("PLAIN\r\nLOGIN\r\n");
                }
                text.push('.');
                self.line(&text);
            }
            Cmd::Auth { mech, initial } => {
                self.state = State::Authorization { user: None };
                let (ex, step) = Exchange::start(mech, initial.as_deref());
                self.sasl_step(ex, mech, step);
            }
            Cmd::Stls => {
                self.line(BEGIN_TLS);
                // RFC 2595 §4, CVE-2011-0411: whatever was pipelined after STLS came in
                // plaintext and is dropped, not run after the handshake.
                self.pos = self.inbuf.len();
                self.events.push_back(Event::StartTls);
                self.wait = Some(Wait::Tls);
            }
            Cmd::Quit => self.quit(),
            Cmd::Stat => {
                let (n, size) = self.maildrop().map_or((0, 0), |md| {
                    md.live()
                        .fold((0u64, 0u64), |(n, s), (_, size)| (n + 1, s.saturating_add(size)))
                });
                // RFC 1939 §5 STAT: deleted messages are not counted.
                self.line(&format!("+OK {n} {size}"));
            }
            Cmd::List(None) => {
                // Written straight into the output: a listing of 5,000 messages built as a
                // string first was held twice.
                if let (State::Transaction(md), false) = (&self.state, self.closed) {
                    let out = &mut self.out;
                    let _ = write!(out, "+OK {} messages:\r\n", md.live().count());
                    for (i, size) in md.live() {
                        let _ = write!(out, "{} {size}\r\n", i + 1);
                    }
                    out.extend_from_slice(b".\r\n");
                }
            }
            Cmd::List(Some(i)) => {
                let size = self.maildrop().map_or(0, |md| md.size(i));
                self.line(&format!("+OK {} {size}", i + 1));
            }
            Cmd::Uidl(None) => {
                if let (State::Transaction(md), false) = (&self.state, self.closed) {
                    let out = &mut self.out;
                    out.extend_from_slice(b"+OK\r\n");
                    for (i, _) in md.live() {
                        let _ = write!(out, "{} ", i + 1);
                        push_clean_uid(out, md.uid(i));
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b".\r\n");
                }
            }
            Cmd::Uidl(Some(i)) => {
                if let (State::Transaction(md), false) = (&self.state, self.closed) {
                    let _ = write!(self.out, "+OK {} ", i + 1);
                    push_clean_uid(&mut self.out, md.uid(i));
                    self.out.extend_from_slice(b"\r\n");
                }
            }
            Cmd::Retr(index) => {
                self.events.push_back(Event::Retr { index, top_lines: None });
                self.wait = Some(Wait::Retr { index, top_lines: None });
            }
            Cmd::Top(index, k) => {
                self.events.push_back(Event::Retr {
                    index,
                    top_lines: Some(k),
                });
                self.wait = Some(Wait::Retr {
                    index,
                    top_lines: Some(k),
                });
            }
            Cmd::Dele(i) => {
                // RFC 1939 §5 DELE: marked now, deleted in UPDATE.
                if let State::Transaction(md) = &mut self.state {
                    if let Some(d) = md.deleted.get_mut(i) {
                        *d = true;
                    }
                }
                self.line(MARKED);
            }
            Cmd::Rset => {
                // RFC 1939 §5 RSET
                if let State::Transaction(md) = &mut self.state {
                    md.deleted.fill(false);
                }
                self.line(OK);
            }
            Cmd::Noop => self.line(OK),
        }
    }

    fn quit(&mut self) {
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Transaction(md) => {
                // RFC 1939 §6: QUIT in TRANSACTION enters UPDATE.
                let deleted: Vec<usize> = (md.deleted.iter().enumerate())
                    .filter(|(_, d)| **d)
                    .map(|(i, _)| i)
                    .collect();
                self.stats.deleted_count = deleted.len() as u64;
                self.stats.deleted_bytes = deleted.iter().fold(0u64, |t, &i| t.saturating_add(md.size(i)));
                self.wait = Some(Wait::Update {
                    any: !deleted.is_empty(),
                });
                self.events.push_back(Event::Update { deleted });
                self.drop_input();
            }
            _ => {
                // RFC 1939 §4: QUIT in AUTHORIZATION ends the session, no UPDATE.
                self.line(BYE);
                self.closed = true;
                self.drop_input();
            }
        }
    }

    fn capa(&mut self) {
        // RFC 2449 §5: the capabilities for the current state.
        let mut t = String::from(
            "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n",
        );
        if matches!(self.state, State::Authorization { .. }) {
            if self.params.stls_offered && !self.params.tls_active {
                t.push_str("STLS\r\n");
            }
            if self.params.plaintext_login_allowed {
                t.push_str("USER\r\nSASL PLAIN LOGIN\r\n");
            }
        }
        t.push_str("IMPLEMENTATION poshta\r\n.");
        self.line(&t);
    }

    fn maildrop(&self) -> Option<&Maildrop> {
        match &self.state {
            State::Transaction(md) => Some(md),
            _ => None,
        }
    }

    // ---- checks: look at state and arguments, change nothing ----

    fn authorization(&self) -> Result<(), Line> {
        match self.state {
            State::Authorization { .. } => Ok(()),
            _ => Err(LOGGED_IN_ALREADY.into()),
        }
    }

    fn transaction(&self) -> Result<&Maildrop, Line> {
        self.maildrop().ok_or(NOT_LOGGED_IN.into())
    }

    fn plaintext(&self) -> Result<(), Line> {
        if self.params.plaintext_login_allowed {
            Ok(())
        } else {
            // Refused before anything is verified: not a failed attempt.
            Err(PLAINTEXT_DISABLED.into())
        }
    }

    fn check_capa(&self, _arg: &str) -> Result<Cmd, Line> {
        Ok(Cmd::Capa)
    }

    fn check_user(&self, arg: &str) -> Result<Cmd, Line> {
        self.authorization()?;
        self.plaintext()?;
        // RFC 1939 §7: USER name
        let name = arg.trim_matches(' ');
        if name.is_empty() {
            return Err(NO_USER.into());
        }
        if name.len() > crate::proto::sasl::FIELD_BYTES_MAX || name.contains(|c: char| c.is_control()) {
            return Err(BAD_USER.into());
        }
        Ok(Cmd::User(name.to_string()))
    }

    fn check_pass(&self, arg: &str) -> Result<Cmd, Line> {
        self.authorization()?;
        self.plaintext()?;
        let State::Authorization { user: Some(_) } = &self.state else {
            return Err(NO_USER.into());
        };
        if arg.is_empty() {
            return Err(NO_PASSWORD.into());
        }
        Ok(Cmd::Pass(arg.to_string()))
    }

    fn check_auth(&self, arg: &str) -> Result<Cmd, Line> {
        self.authorization()?;
        let arg = arg.trim_matches(' ');
        if arg.is_empty() {
            return Ok(Cmd::AuthList);
        }
        self.plaintext()?;
        // RFC 5034 §4: AUTH mechanism [initial-response]
        let (name, initial) = match arg.split_once(' ') {
            Some((n, i)) => (n, Some(i.trim_matches(' ').to_string())),
            None => (arg, None),
        };
        let mech = Mechanism::parse(name).ok_or(BAD_MECH)?;
        Ok(Cmd::Auth { mech, initial })
    }

    fn check_stls(&self, _arg: &str) -> Result<Cmd, Line> {
        // RFC 2595 §4: STLS only in AUTHORIZATION.
        self.authorization()?;
        if self.params.tls_active {
            return Err(TLS_ACTIVE.into());
        }
        if !self.params.stls_offered {
            return Err(TLS_DISABLED.into());
        }
        Ok(Cmd::Stls)
    }

    fn check_quit(&self, _arg: &str) -> Result<Cmd, Line> {
        Ok(Cmd::Quit)
    }

    fn check_stat(&self, _arg: &str) -> Result<Cmd, Line> {
        self.transaction()?;
        Ok(Cmd::Stat)
    }

    fn check_list(&self, arg: &str) -> Result<Cmd, Line> {
        let md = self.transaction()?;
        if arg.trim_matches(' ').is_empty() {
            return Ok(Cmd::List(None));
        }
        Ok(Cmd::List(Some(msgnum(md, arg, false)?.0)))
    }

    fn check_uidl(&self, arg: &str) -> Result<Cmd, Line> {
        let md = self.transaction()?;
        if arg.trim_matches(' ').is_empty() {
            return Ok(Cmd::Uidl(None));
        }
        Ok(Cmd::Uidl(Some(msgnum(md, arg, false)?.0)))
    }

    fn check_retr(&self, arg: &str) -> Result<Cmd, Line> {
        let md = self.transaction()?;
        Ok(Cmd::Retr(msgnum(md, arg, false)?.0))
    }

    fn check_top(&self, arg: &str) -> Result<Cmd, Line> {
        let md = self.transaction()?;
        // RFC 1939 §7: TOP msg n
        let (index, rest) = msgnum(md, arg, true)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(BAD_SIZE.into());
        }
        let k = rest[..digits].parse::<u64>().map_err(|_| SIZE_TOO_LARGE)?;
        if !rest[digits..].trim_end_matches(' ').is_empty() {
            return Err(SIZE_NOISE.into());
        }
        Ok(Cmd::Top(index, k))
    }

    fn check_dele(&self, arg: &str) -> Result<Cmd, Line> {
        let md = self.transaction()?;
        Ok(Cmd::Dele(msgnum(md, arg, false)?.0))
    }

    fn check_rset(&self, _arg: &str) -> Result<Cmd, Line> {
        self.transaction()?;
        Ok(Cmd::Rset)
    }

    fn check_noop(&self, _arg: &str) -> Result<Cmd, Line> {
        self.transaction()?;
        Ok(Cmd::Noop)
    }
}

/// A message number (RFC 1939 §5: 1-based, a message not marked deleted). `more`: another
/// argument follows. Returns the 0-based index and the rest of the arguments.
fn msgnum<'a>(md: &Maildrop, arg: &'a str, more: bool) -> Result<(usize, &'a str), Line> {
    let arg = arg.trim_start_matches(' ');
    let digits = arg.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(BAD_MSGNUM.into());
    }
    let n = arg[..digits].parse::<usize>().map_err(|_| MSGNUM_TOO_LARGE)?;
    let rest = &arg[digits..];
    let ok_rest = if more {
        // TOP's second argument is checked by the caller.
        rest.is_empty() || rest.starts_with(' ')
    } else {
        rest.trim_end_matches(' ').is_empty()
    };
    if !ok_rest {
        return Err(MSGNUM_NOISE.into());
    }
    match n.checked_sub(1).and_then(|i| md.deleted(i)) {
        None => Err(format!("-ERR There's no message {n}.").into()),
        Some(true) => Err(DELETED.into()),
        Some(_) => Ok((n - 1, rest.trim_start_matches(' '))),
    }
}

/// RFC 1939 §7: a unique-id is 1 to 70 octets in 0x21..0x7E. The shell makes them; this
/// keeps a bad one from breaking the reply framing.
#[cfg(test)]
fn clean_uid(uid: String) -> String {
    let mut s = Vec::new();
    push_clean_uid(&mut s, &uid);
    String::from_utf8(s).unwrap_or_default()
}

/// Append `uid` to `out` as an RFC 1939 §7 unique-id: characters outside 0x21..0x7E become
/// `_`, at most [`POP3_UID_BYTES_MAX`] of them, and an empty one is `_`.
fn push_clean_uid(out: &mut Vec<u8>, uid: &str) {
    let ok = |c: char| ('\x21'..='\x7e').contains(&c);
    if !uid.is_empty() && uid.len() <= POP3_UID_BYTES_MAX && uid.chars().all(ok) {
        out.extend_from_slice(uid.as_bytes());
        return;
    }
    let start = out.len();
    out.extend(
        uid.chars()
            .map(|c| if ok(c) { c as u8 } else { b'_' })
            .take(POP3_UID_BYTES_MAX),
    );
    if out.len() == start {
        out.push(b'_');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SESSION_READ_BYTES;

    fn params() -> Pop3Params {
        Pop3Params {
            hostname: "pop.example.org".into(),
            tls_active: false,
            stls_offered: true,
            plaintext_login_allowed: true,
            autologout_secs: 600,
        }
    }

    fn out(s: &mut Server) -> String {
        String::from_utf8(s.take_output()).unwrap()
    }

    fn listing(sizes: &[u64]) -> Vec<MessageMeta> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| MessageMeta {
                size,
                uid: format!("u{i}"),
            })
            .collect()
    }

    /// Logged in as alice with the given message sizes; output taken.
    fn logged_in(sizes: &[u64]) -> Server {
        let mut s = Server::new(params());
        s.input(b"USER alice\r\nPASS pw\r\n");
        assert_eq!(
            s.poll(),
            Some(Event::Login {
                user: "alice".into(),
                password: "pw".into(),
                mechanism: "USER"
            })
        );
        s.login_ok(Arc::new(listing(sizes)));
        assert_eq!(s.poll(), None);
        s.take_output();
        s
    }

    /// The unique-ids kept back to back: each message's own, cleaned, after deletions, in
    /// the list form and the single form, and nothing for a number out of range.
    #[test]
    fn uidl_answers_each_message_its_own_cleaned_id() {
        let mut s = Server::new(params());
        s.input(b"USER a\r\nPASS b\r\n");
        assert!(matches!(s.poll(), Some(Event::Login { .. })));
        let uids = ["first", "", "a b\r", "x", &"y".repeat(100), "last-one"];
        s.login_ok(Arc::new(
            uids.iter()
                .map(|u| MessageMeta {
                    size: 1,
                    uid: u.to_string(),
                })
                .collect::<Vec<_>>(),
        ));
        s.take_output();
        s.input(b"UIDL\r\nDELE 1\r\nDELE 4\r\nUIDL\r\nUIDL 3\r\nUIDL 5\r\nUIDL 6\r\nUIDL 1\r\nUIDL 7\r\n");
        assert_eq!(s.poll(), None);
        let y70 = "y".repeat(POP3_UID_BYTES_MAX);
        assert_eq!(
            out(&mut s),
            format!(
                "+OK\r\n1 first\r\n2 _\r\n3 a_b_\r\n4 x\r\n5 {y70}\r\n6 last-one\r\n.\r\n\
                 +OK Marked to be deleted.\r\n+OK Marked to be deleted.\r\n\
                 +OK\r\n2 _\r\n3 a_b_\r\n5 {y70}\r\n6 last-one\r\n.\r\n\
                 +OK 3 a_b_\r\n+OK 5 {y70}\r\n+OK 6 last-one\r\n\
                 {DELETED}\r\n-ERR There's no message 7.\r\n"
            )
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let ev = Event::Login {
            user: "alice".into(),
            password: "secret".into(),
            mechanism: "PLAIN",
        };
        let text = format!("{ev:?}");
        assert!(text.contains("alice") && !text.contains("secret"), "{text}");
    }

    #[test]
    fn poll_waits_for_the_login_answer_and_keeps_input() {
        let mut s = Server::new(params());
        s.input(b"USER a\r\nPASS b\r\nSTAT\r\n");
        assert!(matches!(s.poll(), Some(Event::Login { .. })));
        assert_eq!(s.poll(), None);
        s.login_ok(Arc::new(listing(&[10, 20])));
        assert_eq!(s.poll(), None);
        assert_eq!(
            out(&mut s),
            "+OK poshta POP3 server ready\r\n+OK\r\n+OK Logged in.\r\n+OK 2 30\r\n"
        );
        assert_eq!(s.user(), Some("a"));
    }

    #[test]
    fn stls_drops_pipelined_input_and_input_until_handshake() {
        let mut p = params();
        p.plaintext_login_allowed = false;
        let mut s = Server::new(p);
        s.take_output();
        s.input(b"STLS\r\nUSER a\r\nPASS b\r\n");
        assert_eq!(s.poll(), Some(Event::StartTls));
        assert_eq!(s.poll(), None);
        // Plaintext that arrives before the handshake finishes is dropped too.
        s.input(b"USER a\r\nPASS b\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "+OK Begin TLS negotiation now.\r\n");
        s.tls_started(true);
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "");
        s.input(b"USER a\r\nPASS b\r\n");
        assert!(matches!(s.poll(), Some(Event::Login { .. })));
    }

    #[test]
    fn eof_while_login_pending_then_ok_reports_closed() {
        let mut s = Server::new(params());
        s.input(b"USER a\r\nPASS b\r\n");
        assert!(matches!(s.poll(), Some(Event::Login { .. })));
        s.eof();
        assert!(s.is_closed());
        s.login_ok(Arc::new(listing(&[1])));
        assert_eq!(s.poll(), Some(Event::Closed));
        assert_eq!(s.poll(), None);
    }

    #[test]
    fn eof_during_update_still_finishes_it() {
        let mut s = logged_in(&[5, 6]);
        s.input(b"DELE 2\r\nQUIT\r\n");
        assert_eq!(s.poll(), Some(Event::Update { deleted: vec![1] }));
        s.eof();
        s.timeout();
        assert_eq!(s.poll(), None);
        s.update_done(true);
        assert_eq!(s.poll(), None);
        assert!(s.is_closed());
        assert_eq!(out(&mut s), "+OK Marked to be deleted.\r\n");
        let st = s.stats();
        assert_eq!(
            (st.deleted_count, st.deleted_bytes, st.messages, st.size_bytes),
            (1, 6, 2, 11)
        );
    }

    /// RFC 1939 §6: a failed UPDATE is "-ERR some deleted messages not removed" only when
    /// messages were marked; with none marked (a Maildir's new/ → cur/ move failed) nothing
    /// is left behind and QUIT is +OK.
    #[test]
    fn failed_update_is_err_only_when_messages_were_marked() {
        let mut s = logged_in(&[5, 6]);
        s.input(b"DELE 1\r\nQUIT\r\n");
        assert_eq!(s.poll(), Some(Event::Update { deleted: vec![0] }));
        s.update_done(false);
        assert!(out(&mut s).ends_with(&format!("{UPDATE_FAILED}\r\n")));
        let mut s = logged_in(&[5, 6]);
        s.input(b"QUIT\r\n");
        assert_eq!(s.poll(), Some(Event::Update { deleted: vec![] }));
        s.update_done(false);
        assert_eq!(out(&mut s), format!("{BYE}\r\n"));
    }

    #[test]
    fn timeout_mid_message_writes_nothing_into_it() {
        let mut s = logged_in(&[5]);
        s.input(b"RETR 1\r\n");
        assert_eq!(
            s.poll(),
            Some(Event::Retr {
                index: 0,
                top_lines: None
            })
        );
        s.retr_begin();
        s.retr_chunk(b"abc\n");
        s.timeout();
        s.retr_chunk(b"def\n");
        s.retr_end();
        assert_eq!(s.poll(), Some(Event::Closed));
        assert_eq!(out(&mut s), "+OK 5 octets\r\nabc\r\n");
    }

    #[test]
    fn big_message_streams_with_bounded_memory() {
        let mut s = logged_in(&[50 * 1024 * 1024]);
        s.input(b"RETR 1\r\nNOOP\r\n");
        assert!(matches!(s.poll(), Some(Event::Retr { .. })));
        s.retr_begin();
        assert_eq!(out(&mut s), "+OK 52428800 octets\r\n");
        let line = b".0123456789012345678901234567890123456789012345678901234567890123456789\n";
        let chunk = line.repeat(SESSION_READ_BYTES / line.len());
        let mut sent = 0u64;
        let rounds = 50 * 1024 * 1024 / chunk.len();
        for _ in 0..rounds {
            s.retr_chunk(&chunk);
            let o = s.take_output();
            assert!(o.len() <= 2 * chunk.len() + 2);
            sent += o.len() as u64;
        }
        s.retr_end();
        assert_eq!(out(&mut s), ".\r\n");
        // Each line: one stuffed dot and one CR more.
        let lines = (rounds * (chunk.len() / line.len())) as u64;
        assert_eq!(sent, lines * (line.len() as u64 + 2));
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "+OK\r\n");
        let st = s.stats();
        assert_eq!((st.retr_count, st.retr_bytes), (1, sent));
        assert_eq!(st.to_string(), format!("top=0/0 retr=1/{sent} del=0/0 size=52428800"));
    }

    #[test]
    fn retr_failed_mid_stream_closes_without_terminator() {
        let mut s = logged_in(&[5]);
        s.input(b"TOP 1 1\r\n");
        assert!(matches!(
            s.poll(),
            Some(Event::Retr {
                index: 0,
                top_lines: Some(1)
            })
        ));
        s.retr_begin();
        s.retr_chunk(b"A: b\n");
        s.retr_failed();
        assert!(s.is_closed());
        assert_eq!(s.poll(), Some(Event::Closed));
        assert_eq!(out(&mut s), "+OK\r\nA: b\r\n");
        assert_eq!(s.stats().top_count, 1);
    }

    #[test]
    fn answers_out_of_turn_are_ignored() {
        let mut s = Server::new(params());
        s.take_output();
        s.login_ok(Arc::new(Vec::new()));
        s.login_failed(LoginFailure::BadCredentials);
        s.retr_begin();
        s.retr_chunk(b"x");
        s.retr_end();
        s.retr_failed();
        s.update_done(true);
        s.tls_started(true);
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "");
        assert!(!s.is_closed());
    }

    #[test]
    fn bad_uids_cannot_break_framing() {
        assert_eq!(clean_uid("ok-1".into()), "ok-1");
        assert_eq!(clean_uid("a b\r\n".into()), "a_b__");
        assert_eq!(clean_uid(String::new()), "_");
        assert_eq!(clean_uid("x".repeat(100)).len(), POP3_UID_BYTES_MAX);
    }

    #[test]
    fn login_failure_texts() {
        for (why, want) in [
            (LoginFailure::BadCredentials, "-ERR [AUTH] Authentication failed.\r\n"),
            (
                LoginFailure::InUse,
                "-ERR [IN-USE] Mailbox is locked by another session.\r\n",
            ),
            (
                LoginFailure::SysTemp,
                "-ERR [SYS/TEMP] Temporary authentication failure. [pop.example.org]\r\n",
            ),
            (
                LoginFailure::LoginDelay,
                "-ERR [LOGIN-DELAY] Logging in too often, try again later.\r\n",
            ),
        ] {
            let mut s = Server::new(params());
            s.take_output();
            s.input(b"AUTH PLAIN AGEAYg==\r\n");
            assert!(matches!(s.poll(), Some(Event::Login { mechanism: "PLAIN", .. })));
            s.login_failed(why);
            assert_eq!(s.poll(), None);
            assert_eq!(out(&mut s), want);
        }
    }

    #[test]
    fn hostile_input_is_bounded() {
        let mut s = Server::new(params());
        s.take_output();
        // A megabyte without a line end: discarded in pieces, answered once.
        let junk = vec![b'A'; SESSION_READ_BYTES];
        for _ in 0..64 {
            s.input(&junk);
            assert_eq!(s.poll(), None);
            assert!(s.inbuf.len() <= junk.len());
        }
        s.input(b"\r\nQUIT\r\n");
        assert_eq!(s.poll(), None);
        assert_eq!(out(&mut s), "-ERR Line too long.\r\n+OK Logging out.\r\n");
        assert!(s.is_closed());
    }
}
