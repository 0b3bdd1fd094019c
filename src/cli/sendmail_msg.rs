//! The message a local program gives `sendmail`, made ready for the queue (what Postfix's
//! sendmail and cleanup(8) do between them). Sans-IO: bytes in, bytes out to a `Write`.
//!
//! Input handling (Postfix's choices unless said otherwise):
//! - Lines end with LF; CRs right before the LF are removed (sendmail_fix_line_endings =
//!   always). A last line without LF gets one.
//! - Leading `From ` lines (also `>From `) are dropped: they are mbox separators, not
//!   headers.
//! - Without -i / -oi, a line with only `.` ends the input; the rest is not read.
//! - Any line length is accepted; lines are processed in pieces of
//!   limits::SENDMAIL_LINE_PIECE_BYTES, so memory stays bounded. Body lines pass unchanged;
//!   a header field longer than limits::SENDMAIL_HEADER_FIELD_BYTES_MAX (Postfix's
//!   header_size_limit) is cut there (with -t that is an error, as for Postfix:
//!   recipients could be lost).
//! - The header section ends at the first empty line. A line that is neither a header
//!   field (`name:`) nor a continuation (leading space or tab) also ends it; then an empty
//!   line is inserted before it, so it becomes the first body line (Postfix's mime_state
//!   does the same). A message without any header/body separator is thus all headers (if
//!   every line is a field) or gets its separator where the first non-field line starts.
//! - NUL bytes: removed from header fields (Postfix effectively cuts a header at a NUL);
//!   body bytes, NULs included, are delivered unchanged (Postfix is binary-transparent for
//!   local mail).
//!
//! Header rewriting:
//! - Bare names in address headers (From, Sender, Reply-To, To, Cc, Bcc, and their
//!   Resent- forms) are qualified with myorigin (Postfix's append_at_myorigin); the rest of
//!   each field is kept byte for byte.
//! - Return-Path: is removed (the delivery agent writes it). Bcc: and Resent-Bcc: are
//!   removed (Postfix's cleanup removes them always).
//! - Missing Message-ID:, Date: and From: are added at the end of the header section
//!   (Resent-Message-ID/-Date/-From when the message has Resent- headers).
//! - -t: recipients come from To, Cc and Bcc; when any Resent-To/-Cc/-Bcc is present, from
//!   those only (Postfix). They are added to the command-line recipients.

use std::io::Write;

use crate::limits::{PICKUP_RECIPIENTS_MAX, SENDMAIL_HEADER_FIELD_BYTES_MAX, SENDMAIL_LINE_PIECE_BYTES};

/// How to process one message.
#[derive(Debug, Clone)]
pub struct Options {
    /// -t: take recipients from the headers.
    pub extract: bool,
    /// A line with only "." ends the input (no -i).
    pub dot_ends: bool,
    /// Appended to bare names (`nick2` -> `nick2@myorigin`).
    pub myorigin: String,
    /// message_size_limit (0: none), counted on the output.
    pub size_limit: u64,
    /// Values for headers that are missing: `<id@host>`, an RFC 5322 date, and the From:
    /// value (`addr (Full Name)`).
    pub message_id: String,
    pub date: String,
    pub from: String,
}

#[derive(Debug)]
pub enum MsgError {
    /// Over message_size_limit.
    TooBig,
    /// -t and a header field over the limit: recipients could be lost.
    HeaderTooLong,
    TooManyRecipients,
    Write(std::io::Error),
}

impl std::fmt::Display for MsgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MsgError::TooBig => f.write_str("message file too big"),
            MsgError::HeaderTooLong => {
                f.write_str("unable to extract recipients: message header length exceeds safety limit")
            }
            MsgError::TooManyRecipients => write!(f, "too many recipients (at most {PICKUP_RECIPIENTS_MAX})"),
            MsgError::Write(e) => write!(f, "error writing queue file: {e}"),
        }
    }
}

/// Where the processor is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Still at the very start: leading "From " lines are dropped here.
    Start,
    Headers,
    Body,
    /// A lone "." ended the input.
    Ended,
}

/// Streams a message through the rules above.
pub struct Processor<W: Write> {
    opts: Options,
    out: W,
    part: Part,
    /// The line being assembled (at most one piece).
    line: Vec<u8>,
    /// The current line started in an earlier piece.
    line_continued: bool,
    /// Dropping the rest of a leading "From " line.
    skipping: bool,
    /// The header field being collected, and whether it was cut.
    field: Vec<u8>,
    field_cut: bool,
    resent: bool,
    seen: Seen,
    recipients: Vec<String>,
    resent_recipients: Vec<String>,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    date: bool,
    message_id: bool,
    from: bool,
    resent_date: bool,
    resent_message_id: bool,
    resent_from: bool,
}

impl<W: Write> Processor<W> {
    pub fn new(opts: Options, out: W) -> Processor<W> {
        Processor {
            opts,
            out,
            part: Part::Start,
            line: Vec::new(),
            line_continued: false,
            skipping: false,
            field: Vec::new(),
            field_cut: false,
            resent: false,
            seen: Seen::default(),
            recipients: Vec::new(),
            resent_recipients: Vec::new(),
            size: 0,
        }
    }

    /// The input ended with a lone "." line: the caller need not read more.
    pub fn ended(&self) -> bool {
        self.part == Part::Ended
    }

    /// Feed input bytes.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), MsgError> {
        while !data.is_empty() && self.part != Part::Ended {
            let room = SENDMAIL_LINE_PIECE_BYTES.saturating_sub(self.line.len()).max(1);
            let take = &data[..data.len().min(room)];
            match take.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&take[..i]);
                    data = &data[i + 1..];
                    while self.line.last() == Some(&b'\r') {
                        self.line.pop();
                    }
                    let line = std::mem::take(&mut self.line);
                    self.record(&line, true)?;
                    self.line = line;
                    self.line.clear();
                    self.line_continued = false;
                }
                None => {
                    self.line.extend_from_slice(take);
                    data = &data[take.len()..];
                    if self.line.len() >= SENDMAIL_LINE_PIECE_BYTES {
                        // Emit a piece, but keep trailing CRs: an LF may follow them.
                        let keep = self.line.iter().rev().take_while(|&&b| b == b'\r').count();
                        if keep < self.line.len() {
                            let tail = self.line.split_off(self.line.len() - keep);
                            let piece = std::mem::replace(&mut self.line, tail);
                            self.record(&piece, false)?;
                            self.line_continued = true;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The end of the input: finish the last line and the header section. Returns the
    /// recipients found in the headers (-t) and the output.
    pub fn finish(mut self) -> Result<(Vec<String>, W, u64), MsgError> {
        if self.part != Part::Ended && (!self.line.is_empty() || self.line_continued) {
            // The last line had no LF: it gets one (a lone "." still ends the input).
            let line = std::mem::take(&mut self.line);
            self.record(&line, true)?;
        }
        if matches!(self.part, Part::Start | Part::Headers) {
            self.end_headers(false)?;
        }
        self.out.flush().map_err(MsgError::Write)?;
        let rcpts = if self.resent {
            std::mem::take(&mut self.resent_recipients)
        } else {
            std::mem::take(&mut self.recipients)
        };
        Ok((rcpts, self.out, self.size))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), MsgError> {
        self.size += bytes.len() as u64;
        if self.opts.size_limit > 0 && self.size > self.opts.size_limit {
            return Err(MsgError::TooBig);
        }
        self.out.write_all(bytes).map_err(MsgError::Write)
    }

    /// One line (`complete`: it ended here) or one piece of a long line.
    fn record(&mut self, bytes: &[u8], complete: bool) -> Result<(), MsgError> {
        let first_piece = !self.line_continued;
        if self.skipping {
            if complete {
                self.skipping = false;
            }
            return Ok(());
        }
        if self.opts.dot_ends && first_piece && complete && bytes == b"." {
            if matches!(self.part, Part::Start | Part::Headers) {
                self.end_headers(false)?;
            }
            self.part = Part::Ended;
            return Ok(());
        }
        if self.part == Part::Start && first_piece {
            let unquoted = &bytes[bytes.iter().take_while(|&&b| b == b'>').count()..];
            if unquoted.starts_with(b"From ") {
                self.skipping = !complete;
                return Ok(());
            }
        }
        if matches!(self.part, Part::Start | Part::Headers) {
            self.part = Part::Headers;
            if !first_piece {
                // The rest of a long line: it belongs to whatever its start was.
                self.field_append(bytes);
                return Ok(());
            }
            if bytes.is_empty() && complete {
                self.end_headers(true)?;
                return Ok(());
            }
            if matches!(bytes.first(), Some(b' ' | b'\t')) && !self.field.is_empty() {
                // RFC 5322 §2.2.3: a folded continuation of the field.
                self.field_append(b"\n");
                self.field_append(bytes);
                return Ok(());
            }
            if is_field_start(bytes) {
                self.flush_field()?;
                self.field_append(bytes);
                return Ok(());
            }
            // Not a field: the header section ended before this line; it starts the body
            // after an inserted empty line.
            self.end_headers(true)?;
        }
        // Body: unchanged.
        self.write(bytes)?;
        if complete {
            self.write(b"\n")?;
        }
        Ok(())
    }

    fn field_append(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == 0 {
                continue;
            }
            if self.field.len() >= SENDMAIL_HEADER_FIELD_BYTES_MAX {
                self.field_cut = true;
                return;
            }
            self.field.push(b);
        }
    }

    /// End of the header section: the last field, the missing fields, the empty line
    /// (`separator`: also when the input had none, before the first body line).
    fn end_headers(&mut self, separator: bool) -> Result<(), MsgError> {
        self.flush_field()?;
        let p = if self.resent { "Resent-" } else { "" };
        let (has_id, has_date, has_from) = if self.resent {
            (
                self.seen.resent_message_id,
                self.seen.resent_date,
                self.seen.resent_from,
            )
        } else {
            (self.seen.message_id, self.seen.date, self.seen.from)
        };
        // RFC 5322 §3.6: Date and From are required; Message-ID SHOULD be there.
        if !has_id {
            let l = format!("{p}Message-ID: {}\n", clean(&self.opts.message_id));
            self.write(l.as_bytes())?;
        }
        if !has_date {
            let l = format!("{p}Date: {}\n", clean(&self.opts.date));
            self.write(l.as_bytes())?;
        }
        if !has_from {
            let l = format!("{p}From: {}\n", clean(&self.opts.from));
            self.write(l.as_bytes())?;
        }
        if separator {
            self.write(b"\n")?;
        }
        self.part = Part::Body;
        Ok(())
    }

    /// Write out (or drop) the collected header field.
    fn flush_field(&mut self) -> Result<(), MsgError> {
        if self.field.is_empty() {
            return Ok(());
        }
        let mut field = std::mem::take(&mut self.field);
        let cut = std::mem::replace(&mut self.field_cut, false);
        if cut && self.opts.extract {
            return Err(MsgError::HeaderTooLong);
        }
        let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
        let name = String::from_utf8_lossy(trim_end(&field[..colon])).to_ascii_lowercase();
        let value_at = (colon + 1).min(field.len());
        match name.as_str() {
            "date" => self.seen.date = true,
            "message-id" => self.seen.message_id = true,
            "from" => self.seen.from = true,
            "resent-date" => self.seen.resent_date = true,
            "resent-message-id" => self.seen.resent_message_id = true,
            "resent-from" => self.seen.resent_from = true,
            _ => {}
        }
        if name.starts_with("resent-") {
            self.resent = true;
        }
        let recipient_header = matches!(name.as_str(), "to" | "cc" | "bcc");
        let resent_recipient_header = matches!(name.as_str(), "resent-to" | "resent-cc" | "resent-bcc");
        let address_header = recipient_header
            || resent_recipient_header
            || matches!(
                name.as_str(),
                "from" | "sender" | "reply-to" | "resent-from" | "resent-sender" | "resent-reply-to"
            );
        if address_header {
            let mut found = Vec::new();
            if let Some(v) = rewrite_address_list(&field[value_at..], &self.opts.myorigin, &mut found) {
                field.truncate(value_at);
                field.extend_from_slice(&v);
            }
            if self.opts.extract && (recipient_header || resent_recipient_header) {
                let list = if resent_recipient_header {
                    &mut self.resent_recipients
                } else {
                    &mut self.recipients
                };
                for a in found {
                    if list.len() >= PICKUP_RECIPIENTS_MAX {
                        return Err(MsgError::TooManyRecipients);
                    }
                    list.push(a);
                }
            }
        }
        // Bcc never shows; Return-Path is the delivery agent's to write (RFC 5321 §4.4).
        if matches!(name.as_str(), "bcc" | "resent-bcc" | "return-path") {
            return Ok(());
        }
        field.push(b'\n');
        self.write(&field)
    }
}

/// `name:` (RFC 5322 §2.2: printable ASCII except ":"), also `name :` (RFC 5322 §4.5).
fn is_field_start(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && b != b':')
        .count();
    if name_len == 0 {
        return false;
    }
    let rest = &line[name_len..];
    let ws = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    rest.get(ws) == Some(&b':')
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Text that goes into a header we write: no control characters (no line breaks).
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A token of an address list (RFC 5322 §3.4), with its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Word,
    Quoted,
    Comment,
    Literal,
    Ws,
    Lt,
    Gt,
    Comma,
    Colon,
    Semi,
    At,
}

fn tokenize(v: &[u8]) -> Vec<(Tok, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = i;
        let b = v[i];
        let tok = match b {
            b'(' => {
                // Nested comments with quoted pairs (RFC 5322 §3.2.2); unclosed runs to the end.
                let mut depth = 0usize;
                while i < v.len() {
                    match v[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                Tok::Comment
            }
            b'"' => {
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                Tok::Quoted
            }
            b'[' => {
                while i < v.len() && v[i] != b']' {
                    if v[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                Tok::Literal
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                while i < v.len() && matches!(v[i], b' ' | b'\t' | b'\r' | b'\n') {
                    i += 1;
                }
                Tok::Ws
            }
            b'<' | b'>' | b',' | b':' | b';' | b'@' => {
                i += 1;
                match b {
                    b'<' => Tok::Lt,
                    b'>' => Tok::Gt,
                    b',' => Tok::Comma,
                    b':' => Tok::Colon,
                    b';' => Tok::Semi,
                    _ => Tok::At,
                }
            }
            _ => {
                while i < v.len() && !b"()\"[ \t\r\n<>,:;@".contains(&v[i]) {
                    i += 1;
                }
                Tok::Word
            }
        };
        out.push((tok, start, i.min(v.len())));
    }
    out
}

/// Qualify bare names in an address list with `origin`; every address found (qualified)
/// goes to `found`. Returns the rewritten value, or None when nothing changed.
pub fn rewrite_address_list(v: &[u8], origin: &str, found: &mut Vec<String>) -> Option<Vec<u8>> {
    let toks = tokenize(v);
    let mut inserts: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        // One element: up to a top-level "," / ";" / group ":" (not inside <...>).
        let start = i;
        let mut angle = false;
        let mut group_name = false;
        while i < toks.len() {
            match toks[i].0 {
                Tok::Lt => angle = true,
                Tok::Gt => angle = false,
                Tok::Comma | Tok::Semi if !angle => break,
                Tok::Colon if !angle => {
                    group_name = true;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let elem = &toks[start..i];
        i += 1;
        if group_name {
            continue;
        }
        if let Some(lt) = elem.iter().position(|t| t.0 == Tok::Lt) {
            let gt = elem.iter().position(|t| t.0 == Tok::Gt);
            let inner_end = gt.unwrap_or(elem.len());
            let mut inner = &elem[lt + 1..inner_end];
            // An obsolete route (<@a,@b:user@host>) is dropped (RFC 5322 §4.4).
            if let Some(c) = inner.iter().rposition(|t| t.0 == Tok::Colon) {
                inner = &inner[c + 1..];
            }
            let at_end = match gt {
                Some(g) => elem[g].1,
                None => elem.last().map_or(v.len(), |t| t.2),
            };
            take_address(v, inner, at_end, origin, found, &mut inserts);
        } else {
            // A bare addr-spec; words separated by white space are a phrase, not an address.
            let sig: Vec<&(Tok, usize, usize)> = elem.iter().filter(|t| t.0 != Tok::Comment).collect();
            let first = sig.iter().position(|t| t.0 != Tok::Ws);
            let last = sig.iter().rposition(|t| t.0 != Tok::Ws);
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            if sig[first..=last].iter().any(|t| t.0 == Tok::Ws) {
                continue;
            }
            let inner: Vec<(Tok, usize, usize)> = sig[first..=last].iter().map(|t| **t).collect();
            let at_end = inner.last().map_or(0, |t| t.2);
            take_address(v, &inner, at_end, origin, found, &mut inserts);
        }
    }
    if inserts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(v.len() + inserts.len() * (origin.len() + 1));
    let mut prev = 0;
    for at in inserts {
        out.extend_from_slice(&v[prev..at]);
        out.push(b'@');
        out.extend_from_slice(origin.as_bytes());
        prev = at;
    }
    out.extend_from_slice(&v[prev..]);
    Some(out)
}

/// The address in `toks` (comments and white space ignored): record it, qualified, and
/// note where "@origin" goes when it has no domain.
fn take_address(
    v: &[u8],
    toks: &[(Tok, usize, usize)],
    at_end: usize,
    origin: &str,
    found: &mut Vec<String>,
    inserts: &mut Vec<usize>,
) {
    let mut addr = Vec::new();
    let mut has_at = false;
    for t in toks {
        match t.0 {
            Tok::Comment | Tok::Ws => {}
            Tok::At => {
                has_at = true;
                addr.push(b'@');
            }
            _ => addr.extend_from_slice(&v[t.1..t.2]),
        }
    }
    if addr.is_empty() {
        return;
    }
    let mut a = String::from_utf8_lossy(&addr).into_owned();
    if !has_at {
        a.push('@');
        a.push_str(origin);
        inserts.push(at_end);
    }
    found.push(a);
}

/// Addresses on the command line: each argument is parsed like an address header, as
/// Postfix's sendmail does (`a, b`, `Name <a>`); bare names are qualified.
pub fn command_line_addresses(arg: &str, origin: &str) -> Vec<String> {
    let mut found = Vec::new();
    rewrite_address_list(arg.as_bytes(), origin, &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(extract: bool, dot_ends: bool) -> Options {
        Options {
            extract,
            dot_ends,
            myorigin: "mx.example.org".into(),
            size_limit: 0,
            message_id: "<id@mx>".into(),
            date: "D".into(),
            from: "nick2@mx.example.org (Nick Two)".into(),
        }
    }

    fn run(o: Options, input: &[u8]) -> (Vec<String>, String) {
        let mut p = Processor::new(o.clone(), Vec::new());
        p.push(input).unwrap();
        let (r, out, size) = p.finish().unwrap();
        assert_eq!(size, out.len() as u64);
        // Byte by byte gives the same.
        let mut p2 = Processor::new(o, Vec::new());
        for b in input {
            p2.push(std::slice::from_ref(b)).unwrap();
        }
        let (r2, out2, _) = p2.finish().unwrap();
        assert_eq!((&r, &out), (&r2, &out2), "bytewise differs");
        (r, String::from_utf8_lossy(&out).into_owned())
    }

    const ADDED: &str = "Message-ID: <id@mx>\nDate: D\nFrom: nick2@mx.example.org (Nick Two)\n";

    #[test]
    fn adds_missing_headers_and_fixes_line_ends() {
        let (_, out) = run(opts(false, true), b"Subject: hi\r\n\r\nbody\r\nline 2");
        assert_eq!(out, format!("Subject: hi\n{ADDED}\nbody\nline 2\n"));
    }

    #[test]
    fn keeps_present_headers() {
        let (_, out) = run(
            opts(false, true),
            b"From: a@b\nDate: x\nMessage-Id: <m>\nSubject: s\n\nb\n",
        );
        assert_eq!(out, "From: a@b\nDate: x\nMessage-Id: <m>\nSubject: s\n\nb\n");
    }

    #[test]
    fn lone_dot_ends_input_unless_i() {
        let (_, out) = run(opts(false, true), b"Subject: s\n\nbody\n.\nnot read\n");
        assert_eq!(out, format!("Subject: s\n{ADDED}\nbody\n"));
        let (_, out) = run(opts(false, true), b"Subject: s\n\nbody\n.\r\nnot read\n");
        assert_eq!(out, format!("Subject: s\n{ADDED}\nbody\n"));
        let (_, out) = run(opts(false, false), b"Subject: s\n\nbody\n.\nread\n");
        assert_eq!(out, format!("Subject: s\n{ADDED}\nbody\n.\nread\n"));
        // ".." and ". " are not the end.
        let (_, out) = run(opts(false, true), b"\n..\n. \n");
        assert_eq!(out, format!("{ADDED}\n..\n. \n"));
        // A lone dot in the headers ends the input there.
        let (_, out) = run(opts(false, true), b"Subject: s\n.\n");
        assert_eq!(out, format!("Subject: s\n{ADDED}"));
    }

    #[test]
    fn no_separator() {
        // All headers: the added fields go at the end, no empty line needed.
        let (_, out) = run(opts(false, true), b"Subject: only headers\n");
        assert_eq!(out, format!("Subject: only headers\n{ADDED}"));
        // A non-header line: an empty line is inserted before it (Postfix).
        let (_, out) = run(opts(false, true), b"Subject: s\nhello world\n");
        assert_eq!(out, format!("Subject: s\n{ADDED}\nhello world\n"));
        let (_, out) = run(opts(false, true), b"just text\n");
        assert_eq!(out, format!("{ADDED}\njust text\n"));
        let (_, out) = run(opts(false, true), b"");
        assert_eq!(out, ADDED);
    }

    #[test]
    fn leading_from_lines_dropped() {
        let (_, out) = run(
            opts(false, true),
            b"From nick2 Sat Nov 28\n>From x\nSubject: s\n\nFrom me\n",
        );
        assert_eq!(out, format!("Subject: s\n{ADDED}\nFrom me\n"));
    }

    #[test]
    fn extract_recipients_and_drop_bcc() {
        let (r, out) = run(
            opts(true, true),
            b"To: alice, Bob <bob@example.org>\nCc: \"Carol C\" <carol>,\n dave@example.org\nBcc: eve\nSubject: s\n\nb\n",
        );
        assert_eq!(
            r,
            vec![
                "alice@mx.example.org",
                "bob@example.org",
                "carol@mx.example.org",
                "dave@example.org",
                "eve@mx.example.org"
            ]
        );
        assert!(!out.contains("Bcc"), "{out}");
        assert!(out.starts_with(
            "To: alice@mx.example.org, Bob <bob@example.org>\nCc: \"Carol C\" <carol@mx.example.org>,\n dave@example.org\nSubject: s\n"
        ));
    }

    #[test]
    fn resent_headers_win() {
        let (r, out) = run(
            opts(true, true),
            b"To: alice\nResent-To: bob\nFrom: x@y\nDate: d\nMessage-ID: <m>\n\nb\n",
        );
        assert_eq!(r, vec!["bob@mx.example.org"]);
        assert!(out.contains("Resent-Message-ID: <id@mx>\nResent-Date: D\nResent-From: nick2@"));
    }

    #[test]
    fn bcc_dropped_without_t_and_return_path_too() {
        let (r, out) = run(opts(false, true), b"Return-Path: <x>\nBcc: a\nTo: b\n\nc\n");
        assert!(r.is_empty());
        assert_eq!(out, format!("To: b@mx.example.org\n{ADDED}\nc\n"));
    }

    #[test]
    fn groups_comments_and_phrases() {
        let mut f = Vec::new();
        let v = rewrite_address_list(b" undisclosed-recipients:;", "o", &mut f);
        assert_eq!((v, f.len()), (None, 0));
        let mut f = Vec::new();
        let v = rewrite_address_list(b" team: a, b@x; c (the boss)", "o", &mut f).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), " team: a@o, b@x; c@o (the boss)");
        assert_eq!(f, vec!["a@o", "b@x", "c@o"]);
        let mut f = Vec::new();
        assert_eq!(rewrite_address_list(b" Nick Two", "o", &mut f), None);
        assert!(f.is_empty());
        let mut f = Vec::new();
        let v = rewrite_address_list(b"<@route,@r2:u@h>, \"a,b\" <x>", "o", &mut f).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), "<@route,@r2:u@h>, \"a,b\" <x@o>");
        assert_eq!(f, vec!["u@h", "x@o"]);
        assert_eq!(command_line_addresses("nick2", "o"), vec!["nick2@o"]);
        assert_eq!(command_line_addresses("a@b, Name <c>", "o"), vec!["a@b", "c@o"]);
    }

    #[test]
    fn long_lines() {
        // A 2 MB body line passes whole; memory holds one piece at a time.
        let mut input = b"Subject: s\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
        input.extend_from_slice(b"\r\nend\n");
        let mut p = Processor::new(opts(false, true), Vec::new());
        for c in input.chunks(10_000) {
            p.push(c).unwrap();
        }
        let (_, out, _) = p.finish().unwrap();
        let body = &out[out.len() - 2 * 1024 * 1024 - 5..];
        assert!(body[..2 * 1024 * 1024].iter().all(|&b| b == b'x'));
        assert_eq!(&body[2 * 1024 * 1024..], b"\nend\n");
        // A header longer than header_size_limit is cut (with -t it is an error).
        let mut h = b"X-Long: ".to_vec();
        h.extend(std::iter::repeat_n(b'y', 300_000));
        h.extend_from_slice(b"\n\nb\n");
        let mut p = Processor::new(opts(false, true), Vec::new());
        p.push(&h).unwrap();
        let (_, out, _) = p.finish().unwrap();
        assert_eq!(
            out.iter().filter(|&&b| b == b'y').count(),
            SENDMAIL_HEADER_FIELD_BYTES_MAX - 8
        );
        let mut p = Processor::new(opts(true, true), Vec::new());
        assert!(matches!(p.push(&h), Err(MsgError::HeaderTooLong)));
        // A CR at a piece boundary before the LF is still a line end.
        let mut s = b"\n".to_vec();
        s.extend(std::iter::repeat_n(b'z', SENDMAIL_LINE_PIECE_BYTES - 1));
        s.extend_from_slice(b"\r\r\nq\n");
        let (_, out) = run(opts(false, true), &s);
        assert!(out.ends_with("zz\nq\n"), "{}", &out[out.len() - 10..]);
    }

    #[test]
    fn nul_bytes() {
        let (_, out) = run(opts(false, true), b"Subject: a\0b\n\nbody\0nul\n");
        assert_eq!(out.as_bytes(), format!("Subject: ab\n{ADDED}\nbody\0nul\n").as_bytes());
    }

    #[test]
    fn size_limit() {
        let mut o = opts(false, true);
        o.size_limit = 100;
        let mut p = Processor::new(o, Vec::new());
        let r = p.push(&[b'a'; 200]).and_then(|()| p.finish().map(|_| ()));
        assert!(matches!(r, Err(MsgError::TooBig)));
    }

    #[test]
    fn folded_header_with_continuation_recipients() {
        let (r, _) = run(opts(true, false), b"To: a,\n\tb\nSubject: x\n\n");
        assert_eq!(r, vec!["a@mx.example.org", "b@mx.example.org"]);
    }
}
