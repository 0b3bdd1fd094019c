//! Delivery status notifications (RFC 3464): bounces and delay warnings.
//!
//! [`bounce`] and [`delay_warning`] build one complete message (LF line ends, as messages
//! are stored in the queue) to the original envelope sender. The caller queues it with the
//! null sender (`MAIL FROM:<>`, RFC 5321 §4.5.5) so a notification never causes another.
//! Everything is passed in — times, ids, host name — and nothing is read from the system.
//!
//! # Structure
//!
//! ```text
//! From: MAILER-DAEMON@myhostname (Mail Delivery System)
//! To: <sender>
//! Subject: Undelivered Mail Returned to Sender     | Delayed Mail (still being retried)
//! Date:, Message-ID: <now.unique@myhostname>
//! Auto-Submitted: auto-replied                     (RFC 3834 §5)
//! MIME-Version: 1.0
//! Content-Type: multipart/report; report-type=delivery-status; boundary="..."  (RFC 6522)
//!
//! part 1  text/plain; charset=utf-8: Postfix's explanation, one line per recipient
//! part 2  message/delivery-status (RFC 3464 §2): Reporting-MTA, Arrival-Date, then per
//!         recipient Final-Recipient, Original-Recipient, Action, Status, Remote-MTA,
//!         Diagnostic-Code (smtp; or x-unix;), Will-Retry-Until for a delay
//! part 3  message/rfc822 (the whole original, when it is at most `size_limit` bytes and
//!         RET=HDRS was not asked) or text/rfc822-headers (its header only: RFC 3462)
//! ```
//!
//! # Text rules
//!
//! - Generated fields are folded at whitespace to 78 columns where possible and never
//!   exceed 998 octets (RFC 5322 §2.1.1); a word longer than that is split with a folding
//!   space (which adds a space when unfolded: only hostile diagnostics are that long).
//! - message/delivery-status is US-ASCII (RFC 3464 §2.1.1): a non-ASCII character in a
//!   diagnostic or address is written `\x{HEX}` (RFC 6533 §3's encoding); control
//!   characters, CR and LF become spaces (so a remote reply cannot inject fields).
//!   Diagnostics are cut to [`DSN_DIAGNOSTIC_BYTES_MAX`] bytes.
//! - The text part keeps UTF-8 (charset=utf-8, 8bit when it has any).
//! - The boundary is `{unique}/{myhostname}={n}=` with the smallest `n` whose boundary
//!   occurs nowhere in the content, so it can never appear inside a part.
//! - The original is included byte for byte (8bit when it has 8-bit bytes); header-only
//!   returns cut at the end of the header, or at the last line that fits the limit.

use std::io::Read;

use crate::limits::{DSN_DIAGNOSTIC_BYTES_MAX, DSN_RECIPIENTS_MAX};

/// RFC 5322 §2.1.1: preferred line length.
const FOLD_COLUMNS: usize = 78;
/// RFC 5322 §2.1.1: hard line limit without CRLF, with room to spare.
const LINE_OCTETS_MAX: usize = 990;
/// RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
const BOUNDARY_BASE_CHARS_MAX: usize = 56;

/// How the failure was diagnosed (RFC 3464 §2.3.6 diagnostic-type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticCode<'a> {
    /// A reply from a remote SMTP server (`smtp; 550 5.1.1 <x>: user unknown`).
    Smtp(&'a str),
    /// A local problem (`x-unix; mail forwarding loop for a`).
    Unix(&'a str),
}

/// One recipient's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientStatus<'a> {
    /// The address delivery was attempted to (after alias expansion).
    pub final_recipient: &'a str,
    /// The address as the client gave it (DSN ORCPT, or the RCPT TO address), if known.
    pub original_recipient: Option<&'a str>,
    /// RFC 3463 status, e.g. `5.1.1`; an invalid one becomes `5.0.0` (failed) or `4.0.0`
    /// (delayed). A failure may carry 4.x.x (e.g. 4.4.7, expired in the queue).
    pub status: &'a str,
    /// The remote server's host name, when one answered.
    pub remote_mta: Option<&'a str>,
    pub diagnostic: DiagnosticCode<'a>,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy)]
pub struct Notice<'a> {
    /// Our host name (Reporting-MTA, From:, Message-ID).
    pub myhostname: &'a str,
    /// The original envelope sender: the notification goes to it. Empty (or `<>`): none.
    pub sender: &'a str,
    /// The original message's queue id (X-Poshta-Queue-ID).
    pub queue_id: &'a str,
    /// When the original arrived (Unix seconds).
    pub arrival_secs: u64,
    /// Now (Unix seconds): Date:, Message-ID, the delay in a warning.
    pub now_secs: u64,
    /// Unique per notification (e.g. its own queue id): Message-ID and boundary.
    pub unique: &'a str,
    pub recipients: &'a [RecipientStatus<'a>],
    /// RFC 3461 §4.3 RET=HDRS: return the header only.
    pub headers_only: bool,
    /// bounce_size_limit: most bytes of the original returned whole (else header only).
    pub size_limit: usize,
    /// For a delay warning: until when delivery is retried (Will-Retry-Until).
    pub retry_until_secs: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failed,
    Delayed,
}

/// A non-delivery report (Action: failed). None for the null sender (RFC 5321 §4.5.5,
/// RFC 3461 §6.2: never notify about a notification) or when no recipient is listed.
/// Err only when reading the original fails.
pub fn bounce(n: &Notice<'_>, original: &mut dyn Read) -> std::io::Result<Option<Vec<u8>>> {
    generate(n, Kind::Failed, original)
}

/// A delay warning (Action: delayed, Status 4.x.x) for delay_warning_time. None as for
/// [`bounce`].
pub fn delay_warning(n: &Notice<'_>, original: &mut dyn Read) -> std::io::Result<Option<Vec<u8>>> {
    generate(n, Kind::Delayed, original)
}

/// Is this the null sender?
pub fn is_null_sender(sender: &str) -> bool {
    let s = sender.trim();
    s.is_empty() || s == "<>"
}

/// Control characters (CR, LF, NUL, ...) to spaces; runs of whitespace to one space.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            if !space && !out.is_empty() {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Cut to at most `max` bytes on a character boundary, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// RFC 3464 fields are US-ASCII: non-ASCII as `\x{HEX}` (RFC 6533 §3), `\` itself too.
fn ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && c != '\\' {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

/// `Name: value`, folded (see the module doc), with its LF.
fn field(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut col = out.len();
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        // A word too long for any line: split it (hostile input only).
        while word.len() > LINE_OCTETS_MAX - 1 {
            let mut at = LINE_OCTETS_MAX - 1;
            while !word.is_char_boundary(at) {
                at -= 1;
            }
            out.push_str("\n ");
            out.push_str(&word[..at]);
            word = &word[at..];
            col = 1 + at;
        }
        if col + 1 + word.len() > FOLD_COLUMNS && col > name.len() + 1 {
            out.push_str("\n ");
            col = 1;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
    out
}

/// Wrap a text paragraph like [`field`], without a name.
fn wrap(text: &str) -> String {
    let f = field("", text);
    // field("") starts with ":"; the continuation lines start with a space: drop both.
    let body = f.strip_prefix(": ").or_else(|| f.strip_prefix(':')).unwrap_or(&f);
    body.replace("\n ", "\n")
}

/// RFC 3463 `class.subject.detail`.
fn valid_status(s: &str, classes: &[u8]) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0].len() == 1
        && classes.contains(&parts[0].as_bytes()[0])
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 2046 §5.1.1 bcharsnospace for the boundary base.
fn boundary_base(unique: &str, host: &str) -> String {
    let raw = format!("{unique}/{host}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "'()+_,-./:?".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(BOUNDARY_BASE_CHARS_MAX)
        .collect()
}

/// The first `{base}={n}=` that occurs in none of `parts` (see the module doc).
fn choose_boundary(base: &str, parts: &[&[u8]]) -> String {
    let prefix = format!("{base}=");
    let p = prefix.as_bytes();
    let mut used = std::collections::HashSet::new();
    for part in parts {
        let mut i = 0;
        while let Some(pos) = find(&part[i..], p) {
            let start = i + pos + p.len();
            let digits: Vec<u8> = part[start..]
                .iter()
                .take(20)
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if let Ok(n) = std::str::from_utf8(&digits).unwrap_or("").parse::<u64>() {
                used.insert(n);
            }
            i = i + pos + 1;
        }
    }
    // Each occurrence excludes at most one n, so this ends within used.len() + 1 steps.
    let n = (0..).find(|n| !used.contains(n)).unwrap_or(0);
    format!("{prefix}{n}=")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header of a message (through its blank line), or as many whole lines as fit.
fn header_part(data: &[u8], max: usize) -> &[u8] {
    let end = find(data, b"\n\n")
        .map(|p| p + 1)
        .or_else(|| find(data, b"\r\n\r\n").map(|p| p + 2));
    match end {
        Some(e) if e <= max => &data[..e],
        _ => {
            let lim = data.len().min(max);
            match data[..lim].iter().rposition(|&b| b == b'\n') {
                Some(p) => &data[..=p],
                None => &data[..0],
            }
        }
    }
}

fn human_line(r: &RecipientStatus<'_>) -> String {
    let addr = one_line(r.final_recipient);
    let why = match (r.diagnostic, r.remote_mta) {
        (DiagnosticCode::Smtp(reply), Some(mta)) => format!("host {} said: {}", one_line(mta), one_line(reply)),
        (DiagnosticCode::Smtp(reply), None) | (DiagnosticCode::Unix(reply), _) => one_line(reply),
    };
    wrap(&format!("<{addr}>: {}", cut(&why, DSN_DIAGNOSTIC_BYTES_MAX)))
}

fn generate(n: &Notice<'_>, kind: Kind, original: &mut dyn Read) -> std::io::Result<Option<Vec<u8>>> {
    // RFC 5321 §4.5.5, RFC 3461 §6.2: never a notification to the null sender.
    if is_null_sender(n.sender) || n.recipients.is_empty() {
        return Ok(None);
    }
    let host = one_line(n.myhostname);
    let sender = one_line(n.sender.trim().trim_start_matches('<').trim_end_matches('>'));
    let shown = &n.recipients[..n.recipients.len().min(DSN_RECIPIENTS_MAX)];

    // Part 1: for people.
    let mut text = format!("This is the mail system at host {host}.\n\n");
    match kind {
        Kind::Failed => text.push_str(
            "I'm sorry to have to inform you that your message could not\n\
             be delivered to one or more recipients. It's attached below.\n\n\
             For further assistance, please send mail to postmaster.\n\n\
             If you do so, please include this problem report. You can\n\
             delete your own text from the attached returned message.\n\n",
        ),
        Kind::Delayed => {
            let hours = n.now_secs.saturating_sub(n.arrival_secs) as f64 / 3600.0;
            text.push_str(
                "####################################################################\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n\
                 ####################################################################\n\n",
            );
            text.push_str(&format!("Your message could not be delivered for {hours:.1} hours.\n"));
            if let Some(until) = n.retry_until_secs {
                text.push_str(&format!("It will be retried until {}.\n", crate::time::rfc5322(until)));
            }
            text.push('\n');
        }
    }
    text.push_str("                   The mail system\n\n");
    for r in shown {
        text.push_str(&human_line(r));
        text.push('\n');
    }
    if n.recipients.len() > shown.len() {
        text.push_str(&format!(
            "... and {} more recipients.\n",
            n.recipients.len() - shown.len()
        ));
    }

    // Part 2: RFC 3464 §2.2 per-message fields, then §2.3 per-recipient fields.
    let mut status = String::new();
    status.push_str(&field("Reporting-MTA", &format!("dns; {}", ascii(&host))));
    status.push_str(&field("X-Poshta-Queue-ID", &ascii(&one_line(n.queue_id))));
    status.push_str(&field("X-Poshta-Sender", &format!("rfc822; {}", ascii(&sender))));
    status.push_str(&field("Arrival-Date", &crate::time::rfc5322(n.arrival_secs)));
    for r in shown {
        status.push('\n');
        status.push_str(&field(
            "Final-Recipient",
            &format!("rfc822; {}", ascii(&one_line(r.final_recipient))),
        ));
        if let Some(o) = r.original_recipient {
            status.push_str(&field(
                "Original-Recipient",
                &format!("rfc822; {}", ascii(&one_line(o))),
            ));
        }
        let (action, classes, fallback): (&str, &[u8], &str) = match kind {
            Kind::Failed => ("failed", b"45", "5.0.0"),
            Kind::Delayed => ("delayed", b"4", "4.0.0"),
        };
        status.push_str(&field("Action", action));
        let st = r.status.trim();
        status.push_str(&field("Status", if valid_status(st, classes) { st } else { fallback }));
        if let Some(mta) = r.remote_mta {
            status.push_str(&field("Remote-MTA", &format!("dns; {}", ascii(&one_line(mta)))));
        }
        let (ty, diag) = match r.diagnostic {
            DiagnosticCode::Smtp(d) => ("smtp", d),
            DiagnosticCode::Unix(d) => ("x-unix", d),
        };
        let diag = ascii(&cut(&one_line(diag), DSN_DIAGNOSTIC_BYTES_MAX));
        status.push_str(&field("Diagnostic-Code", &format!("{ty}; {diag}")));
        if kind == Kind::Delayed {
            if let Some(until) = n.retry_until_secs {
                status.push_str(&field("Will-Retry-Until", &crate::time::rfc5322(until)));
            }
        }
    }

    // Part 3: the original, bounded.
    let mut orig = Vec::with_capacity(n.size_limit.min(64 * 1024) + 1);
    original.take(n.size_limit as u64 + 1).read_to_end(&mut orig)?;
    let whole = !n.headers_only && orig.len() <= n.size_limit;
    let returned: &[u8] = if whole { &orig } else { header_part(&orig, n.size_limit) };
    let orig_8bit = returned.iter().any(|&b| b >= 0x80);
    let text_8bit = !text.is_ascii();

    let boundary = choose_boundary(
        &boundary_base(n.unique, &host),
        &[text.as_bytes(), status.as_bytes(), returned],
    );
    let cte = |eight: bool| if eight { "8bit" } else { "7bit" };

    let mut m = Vec::with_capacity(2048 + text.len() + status.len() + returned.len());
    let mut h = String::new();
    h.push_str(&field("From", &format!("MAILER-DAEMON@{host} (Mail Delivery System)")));
    h.push_str(&field("To", &format!("<{sender}>")));
    h.push_str(&field(
        "Subject",
        match kind {
            Kind::Failed => "Undelivered Mail Returned to Sender",
            Kind::Delayed => "Delayed Mail (still being retried)",
        },
    ));
    h.push_str(&field("Date", &crate::time::rfc5322(n.now_secs)));
    let id: String = format!("{}.{}", n.now_secs, one_line(n.unique))
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !"<>@\"\\".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    h.push_str(&field(
        "Message-ID",
        &format!("<{id}@{}>", ascii(&host).replace(['<', '>', ' '], "_")),
    ));
    // RFC 3834 §5: automatic responses are marked so that they are not answered.
    h.push_str("Auto-Submitted: auto-replied\n");
    h.push_str("MIME-Version: 1.0\n");
    // RFC 6522 §3: multipart/report with report-type.
    h.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
    ));
    h.push_str(&format!("Content-Transfer-Encoding: {}\n", cte(orig_8bit || text_8bit)));
    h.push_str("\nThis is a MIME-encapsulated message.\n\n");

    h.push_str(&format!("--{boundary}\n"));
    h.push_str("Content-Description: Notification\n");
    h.push_str("Content-Type: text/plain; charset=utf-8\n");
    h.push_str(&format!("Content-Transfer-Encoding: {}\n\n", cte(text_8bit)));
    h.push_str(&text);
    h.push_str(&format!("\n--{boundary}\n"));
    h.push_str("Content-Description: Delivery report\n");
    // RFC 3464 §2.1: message/delivery-status.
    h.push_str("Content-Type: message/delivery-status\n\n");
    h.push_str(&status);
    h.push_str(&format!("\n--{boundary}\n"));
    if whole {
        h.push_str("Content-Description: Undelivered Message\n");
        h.push_str("Content-Type: message/rfc822\n");
    } else {
        h.push_str("Content-Description: Undelivered Message Headers\n");
        // RFC 6522 §4 (was RFC 3462): the header of the returned message only.
        h.push_str("Content-Type: text/rfc822-headers\n");
    }
    h.push_str(&format!("Content-Transfer-Encoding: {}\n\n", cte(orig_8bit)));
    m.extend_from_slice(h.as_bytes());
    m.extend_from_slice(returned);
    if !returned.is_empty() && !returned.ends_with(b"\n") {
        m.push(b'\n');
    }
    m.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding() {
        let long = "word ".repeat(100);
        let f = field("Diagnostic-Code", &format!("smtp; {long}"));
        for line in f.lines() {
            assert!(line.len() <= FOLD_COLUMNS, "{line:?}");
        }
        assert_eq!(
            f.replace("\n ", " ").trim_end(),
            format!("Diagnostic-Code: smtp; {}", long.trim_end())
        );
        let huge = "x".repeat(3000);
        let f = field("D", &huge);
        assert!(f.lines().all(|l| l.len() <= 998));
        assert_eq!(f.replace("\n ", "").trim_end(), format!("D:{huge}"));
    }

    #[test]
    fn statuses_and_encoding() {
        assert!(valid_status("5.1.1", b"5") && valid_status("4.4.7", b"45"));
        assert!(!valid_status("4.4.7", b"5") && !valid_status("5.1", b"5") && !valid_status("5.1.1234", b"5"));
        assert!(!valid_status("6.1.1", b"5") && !valid_status("5.x.1", b"5"));
        assert_eq!(ascii("é\\a"), "\\x{E9}\\x{5C}a");
        assert_eq!(one_line("550 a\r\n550 b\0c "), "550 a 550 b c");
        assert_eq!(cut("ééé", 5), "é...");
        assert_eq!(cut("ééé", 4), "...");
    }

    #[test]
    fn boundary_avoids_content() {
        let b = choose_boundary("q/h", &[b"x q/h=0= q/h=1=", b"q/h=3="]);
        assert_eq!(b, "q/h=2=");
        assert_eq!(boundary_base("a b\"<", "h"), "a_b__/h");
    }

    #[test]
    fn header_parts() {
        assert_eq!(header_part(b"A: b\n\nbody", 100), b"A: b\n");
        assert_eq!(header_part(b"A: b\r\n\r\nbody", 100), b"A: b\r\n");
        assert_eq!(header_part(b"A: b\nC: d\nE: f\n\nbody", 12), b"A: b\nC: d\n");
        assert_eq!(header_part(b"xxxxxxxx", 4), b"");
    }
}
