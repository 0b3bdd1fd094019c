//! The SMTP server core (RFC 5321), sans-IO.
//!
//! Contract (the I/O shell in `net::smtp` drives it):
//! ```text
//! let mut s = Server::new(params);          // queues the 220 greeting
//! loop {
//!     while let Some(ev) = s.poll() {       // consumes buffered input, one command at a time
//!         match ev { ... answer with accept()/reject()/accept_data()/finish_data() ... }
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

use core::net::IpAddr;

use crate::proto::reply::Reply;

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
    Mail { from: String, size: Option<u64>, body: BodyType, smtputf8: bool },
    /// RCPT TO. `to` is `local@domain` (source route dropped, RFC 5321 §4.1.1.3) or
    /// `postmaster` (RFC 5321 §4.5.1). Answer: `accept()` (250 2.1.5 Ok) or `reject(reply)`.
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
    /// RSET, or a new HELO/EHLO: forget the transaction. No answer (the core replied).
    Reset,
    /// QUIT: the core replied 221 and is closed. No answer.
    Quit,
}

impl Event {
    pub fn needs_answer(&self) -> bool {
        matches!(
            self,
            Event::Helo { .. }
                | Event::Mail { .. }
                | Event::Rcpt { .. }
                | Event::DataStart
                | Event::DataEnd { .. }
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

/// The SMTP server state machine for one connection.
pub struct Server {
    _params: SessionParams,
}

impl Server {
    /// A new session; the 220 greeting is queued in the output.
    pub fn new(params: SessionParams) -> Server {
        let _ = params;
        todo!("proto helper implements")
    }

    /// Bytes received from the client.
    pub fn input(&mut self, data: &[u8]) {
        let _ = data;
        todo!()
    }

    /// Whether the shell may read and feed more input now.
    pub fn wants_input(&self) -> bool {
        todo!()
    }

    /// The client closed its side. Next `poll` returns `DataAborted(Disconnected)` if data was
    /// in progress; the session is closed.
    pub fn eof(&mut self) {
        todo!()
    }

    /// The idle timer (smtpd_timeout) fired: queues `421 4.4.2 <host> Error: timeout exceeded`
    /// and closes; `poll` then reports `DataAborted(Timeout)` if data was in progress.
    pub fn timeout(&mut self) {
        todo!()
    }

    /// The next event, or None when more input (or an answer) is needed.
    pub fn poll(&mut self) -> Option<Event> {
        todo!()
    }

    /// Positive answer to the pending Helo, Mail or Rcpt event.
    pub fn accept(&mut self) {
        todo!()
    }

    /// Negative answer to any pending event. A 421 reply also closes the session.
    pub fn reject(&mut self, reply: Reply) {
        let _ = reply;
        todo!()
    }

    /// Positive answer to DataStart: `prefix` (the Received: header, CRLF or LF ended) is
    /// emitted first; headers in `fix` are added at the end of the header section when the
    /// message has none of that name.
    pub fn accept_data(&mut self, prefix: Vec<u8>, fix: HeaderFix) {
        let _ = (prefix, fix);
        todo!()
    }

    /// Answer to DataEnd (250 once durable; 452 4.3.1 when the disk is full, ...).
    pub fn finish_data(&mut self, reply: Reply) {
        let _ = reply;
        todo!()
    }

    /// Bytes to send to the client (drains the output buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        todo!()
    }

    /// True once nothing more will be read: after QUIT, a 421, a 521, eof or timeout.
    /// The shell sends the remaining output, then closes.
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}
