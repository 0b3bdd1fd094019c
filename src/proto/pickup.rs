//! The local submission format between `sendmail` and the daemon's pickup (the socket
//! `public/pickup` and files in `maildrop/`): the head that carries the envelope, its
//! limits, the sysexits codes of refusals, and the Received: line the daemon adds. Pure:
//! the I/O is in `net::pickup` (the module doc there describes the whole exchange).

use crate::limits;
use crate::queue::QueueId;

/// The first line of every submission.
pub const MAGIC: &str = "POSHTA-PICKUP 1";

/// sysexits.h codes used in `ERR` replies.
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOUSER: i32 = 67;
pub const EX_TEMPFAIL: i32 = 75;

/// The envelope of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// "" is the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Bytes of the message after the head.
    pub size: u64,
}

impl Submission {
    /// The head bytes (everything before the message).
    pub fn encode_head(&self) -> Vec<u8> {
        let mut h = format!("{MAGIC}\nsender {}\n", self.sender);
        for r in &self.recipients {
            h.push_str(&format!("rcpt {r}\n"));
        }
        h.push_str(&format!("size {}\n\n", self.size));
        h.into_bytes()
    }
}

/// Why a head was refused: the sysexits code for the reply and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i32,
    pub text: String,
}

/// A refusal with sysexits `code` and `text`.
pub fn refuse(code: i32, text: impl Into<String>) -> Refusal {
    Refusal {
        code,
        text: text.into(),
    }
}

/// Check an address as an SMTP path; returns it normalised. `sender`: "" is allowed.
pub fn check_address(addr: &str, sender: bool) -> Result<String, String> {
    use crate::proto::smtp::address::{parse_forward_path, parse_reverse_path};
    if addr.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("<{}>: bad address syntax", addr.escape_debug()));
    }
    let bracketed = format!("<{addr}>");
    let r = if sender {
        parse_reverse_path(&bracketed, true)
    } else {
        parse_forward_path(&bracketed, true)
    };
    r.map_err(|e| format!("<{addr}>: bad address syntax ({e:?})"))
}

/// Parse a head from the bytes received so far. `Ok(None)`: incomplete (read more);
/// `Ok(Some((submission, head_len)))`: complete, the message starts at `head_len`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Submission, usize)>, Refusal> {
    let Some(end) = buf.windows(2).position(|w| w == b"\n\n") else {
        if buf.len() >= limits::PICKUP_HEAD_BYTES_MAX {
            return Err(refuse(EX_DATAERR, "submission head too long"));
        }
        // The magic line must be right from the start (a stray client is told at once).
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC.as_bytes()[..n] {
            return Err(refuse(EX_USAGE, "not a poshta submission"));
        }
        return Ok(None);
    };
    if end + 2 > limits::PICKUP_HEAD_BYTES_MAX {
        return Err(refuse(EX_DATAERR, "submission head too long"));
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| refuse(EX_DATAERR, "head is not UTF-8"))?;
    let mut lines = head.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err(refuse(EX_USAGE, "not a poshta submission"));
    }
    let sender = match lines
        .next()
        .and_then(|l| l.strip_prefix("sender ").or((l == "sender").then_some("")))
    {
        Some(s) => check_address(s, true).map_err(|e| refuse(EX_USAGE, e))?,
        None => return Err(refuse(EX_USAGE, "missing sender line")),
    };
    let mut recipients = Vec::new();
    let mut size = None;
    for line in lines {
        if let Some(r) = line.strip_prefix("rcpt ") {
            if size.is_some() {
                return Err(refuse(EX_USAGE, "rcpt after size"));
            }
            if recipients.len() >= limits::PICKUP_RECIPIENTS_MAX {
                return Err(refuse(
                    EX_DATAERR,
                    format!("too many recipients (at most {})", limits::PICKUP_RECIPIENTS_MAX),
                ));
            }
            recipients.push(check_address(r, false).map_err(|e| refuse(EX_NOUSER, e))?);
        } else if let Some(n) = line.strip_prefix("size ") {
            if size.is_some() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(EX_USAGE, "bad size line"));
            }
            size = Some(n.parse::<u64>().map_err(|_| refuse(EX_USAGE, "bad size line"))?);
        } else {
            return Err(refuse(EX_USAGE, "bad head line"));
        }
    }
    let Some(size) = size else {
        return Err(refuse(EX_USAGE, "missing size line"));
    };
    if recipients.is_empty() {
        return Err(refuse(EX_USAGE, "no recipients"));
    }
    Ok(Some((
        Submission {
            sender,
            recipients,
            size,
        },
        end + 2,
    )))
}

/// Postfix pickup's trace header (RFC 5321 §4.4: a Received line for every hop; a local
/// submission has no client host, so it names the user id instead).
pub fn received_header(hostname: &str, uid: u32, qid: QueueId, date: &str) -> String {
    let clean = |s: &str| -> String { s.chars().map(|c| if c.is_control() { '?' } else { c }).collect() };
    format!(
        "Received: by {} (poshta, from userid {uid})\n\tid {qid}; {}\n",
        clean(hostname),
        clean(date)
    )
}
