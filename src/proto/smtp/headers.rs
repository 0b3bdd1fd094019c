//! Streaming header scan: add `Date:` and `Message-ID:` when the message has none
//! (RFC 5322 §3.6: Date is required, Message-ID SHOULD be present; Postfix's cleanup adds
//! both for mail from its clients).
//!
//! Input is the message with LF line ends. The header section is the lines from the start
//! up to the first empty line; a line that is not a header field also ends it (RFC 5322
//! §2.2: `field-name ":"`, field-name = printable US-ASCII except ":"; `Name :` with space
//! before the colon, the obsolete form of RFC 5322 §4.5, is accepted). A line starting with
//! a space or tab continues the previous field (RFC 5322 §2.2.3).
//!
//! The missing lines are inserted where the header section ends: before the empty line,
//! before the first non-header line, or at the end of the message when it is all headers
//! (then after an LF if the last line had none).
//!
//! Memory: only the start of a line is held back while deciding whether it is a header
//! (at most [`NAME_HOLD_BYTES_MAX`] bytes); everything else passes straight through.

use super::server::HeaderFix;

/// Longest field-name prefix held back; a longer run without ":" is not a header.
pub const NAME_HOLD_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a header-section line.
    LineStart,
    /// Holding the start of a line (`held`) until ":" shows it is a field.
    Name { space_seen: bool },
    /// Inside a field (after the colon, or a continuation line).
    Value,
    /// Past the header section: pass through.
    Body,
}

/// Adds missing Date:/Message-ID: lines to a streamed message.
#[derive(Debug, Clone)]
pub struct HeaderFixer {
    st: St,
    held: Vec<u8>,
    /// A field was seen, so a leading space continues it.
    any_field: bool,
    date: Option<String>,
    message_id: Option<String>,
}

impl HeaderFixer {
    pub fn new(fix: HeaderFix) -> HeaderFixer {
        // Nothing to add: nothing to look for, pass everything straight through.
        let st = if fix.date.is_none() && fix.message_id.is_none() {
            St::Body
        } else {
            St::LineStart
        };
        HeaderFixer {
            st,
            held: Vec::new(),
            any_field: false,
            date: fix.date.map(line),
            message_id: fix.message_id.map(line),
        }
    }

    /// Pass `input` through to `out`, inserting the missing lines where the header
    /// section ends.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            match self.st {
                St::Body => {
                    out.extend_from_slice(&input[i..]);
                    return;
                }
                St::Value => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(n) => {
                            out.extend_from_slice(&rest[..=n]);
                            i += n + 1;
                            self.st = St::LineStart;
                        }
                        None => {
                            out.extend_from_slice(rest);
                            return;
                        }
                    }
                }
                St::LineStart => {
                    let b = input[i];
                    i += 1;
                    match b {
                        // The empty line: the end of the header section.
                        b'\n' => {
                            self.insert(out);
                            out.push(b);
                            self.st = St::Body;
                        }
                        // RFC 5322 §2.2.3: folded continuation of the previous field.
                        b' ' | b'\t' if self.any_field => {
                            out.push(b);
                            self.st = St::Value;
                        }
                        b if is_name_byte(b) => {
                            self.held.clear();
                            self.held.push(b);
                            self.st = St::Name { space_seen: false };
                        }
                        _ => {
                            self.insert(out);
                            out.push(b);
                            self.st = St::Body;
                        }
                    }
                }
                St::Name { space_seen } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b':' => {
                            self.field_seen();
                            out.extend_from_slice(&self.held);
                            out.push(b);
                            self.held.clear();
                            self.st = St::Value;
                        }
                        b' ' | b'\t' if self.held.len() < NAME_HOLD_BYTES_MAX => {
                            self.held.push(b);
                            self.st = St::Name { space_seen: true };
                        }
                        b if !space_seen && is_name_byte(b) && self.held.len() < NAME_HOLD_BYTES_MAX => {
                            self.held.push(b);
                        }
                        // Not a field: the header section ended before this line.
                        _ => {
                            self.insert(out);
                            out.extend_from_slice(&self.held);
                            self.held.clear();
                            out.push(b);
                            self.st = St::Body;
                        }
                    }
                }
            }
        }
    }

    /// The end of the message: a header section still open ends here.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.st {
            St::Body => {}
            St::LineStart => self.insert(out),
            St::Name { .. } => {
                // A last line without ":" and without LF: not a field.
                self.insert(out);
                out.extend_from_slice(&self.held);
                self.held.clear();
            }
            St::Value => {
                // The last field has no LF; end it before adding lines after it.
                if self.date.is_some() || self.message_id.is_some() {
                    out.push(b'\n');
                }
                self.insert(out);
            }
        }
        self.st = St::Body;
    }

    /// A field name is complete in `held`: note Date and Message-ID.
    fn field_seen(&mut self) {
        self.any_field = true;
        let name = trim_wsp_end(&self.held);
        if name.eq_ignore_ascii_case(b"date") {
            self.date = None;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            self.message_id = None;
        }
    }

    /// Emit the lines still missing (each once).
    fn insert(&mut self, out: &mut Vec<u8>) {
        for l in [self.date.take(), self.message_id.take()].into_iter().flatten() {
            out.extend_from_slice(l.as_bytes());
        }
    }
}

/// RFC 5322 §3.6.8 field-name: printable US-ASCII except ":".
fn is_name_byte(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A header line as given (with or without line end) -> one LF-ended line.
fn line(s: String) -> String {
    let mut s = s.trim_end_matches(['\r', '\n']).replace("\r\n", "\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix() -> HeaderFix {
        HeaderFix {
            date: Some("Date: D".into()),
            message_id: Some("Message-ID: <m@x>".into()),
        }
    }

    fn run(input: &[u8], fix: HeaderFix) -> Vec<u8> {
        let mut h = HeaderFixer::new(fix.clone());
        let mut out = Vec::new();
        h.push(input, &mut out);
        h.finish(&mut out);
        // Every split into single bytes gives the same result.
        let mut h2 = HeaderFixer::new(fix);
        let mut out2 = Vec::new();
        for b in input {
            h2.push(std::slice::from_ref(b), &mut out2);
        }
        h2.finish(&mut out2);
        assert_eq!(out, out2, "bytewise differs");
        out
    }

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn adds_both_before_empty_line() {
        let out = run(b"Subject: hi\n\nbody\nDate: no\n", fix());
        assert_eq!(s(out), "Subject: hi\nDate: D\nMessage-ID: <m@x>\n\nbody\nDate: no\n");
    }

    #[test]
    fn keeps_existing_case_insensitive() {
        let out = run(b"DATE: x\nmessage-id: <y>\n\nb\n", fix());
        assert_eq!(s(out), "DATE: x\nmessage-id: <y>\n\nb\n");
        let out = run(b"Date : x\n\nb\n", fix());
        assert_eq!(s(out), "Date : x\nMessage-ID: <m@x>\n\nb\n");
    }

    #[test]
    fn folded_fields() {
        let out = run(b"Subject: a\n b\n\tc\nDate: x\n\nbody\n", fix());
        assert_eq!(s(out), "Subject: a\n b\n\tc\nDate: x\nMessage-ID: <m@x>\n\nbody\n");
    }

    #[test]
    fn non_header_line_ends_section() {
        let out = run(b"Subject: a\nhello world\n", fix());
        assert_eq!(s(out), "Subject: a\nDate: D\nMessage-ID: <m@x>\nhello world\n");
        let out = run(b"hello\n", fix());
        assert_eq!(s(out), "Date: D\nMessage-ID: <m@x>\nhello\n");
        let out = run(b" leading space\n", fix());
        assert_eq!(s(out), "Date: D\nMessage-ID: <m@x>\n leading space\n");
        let out = run(b":x\n", fix());
        assert_eq!(s(out), "Date: D\nMessage-ID: <m@x>\n:x\n");
    }

    #[test]
    fn no_body_separator() {
        assert_eq!(
            s(run(b"Subject: a\n", fix())),
            "Subject: a\nDate: D\nMessage-ID: <m@x>\n"
        );
        assert_eq!(s(run(b"Subject: a", fix())), "Subject: a\nDate: D\nMessage-ID: <m@x>\n");
        assert_eq!(s(run(b"Subj", fix())), "Date: D\nMessage-ID: <m@x>\nSubj");
        assert_eq!(s(run(b"", fix())), "Date: D\nMessage-ID: <m@x>\n");
        assert_eq!(s(run(b"Subject: a", HeaderFix::default())), "Subject: a");
    }

    #[test]
    fn long_name_is_not_a_header() {
        let mut input = vec![b'x'; 300];
        input.extend_from_slice(b": v\n\n");
        let out = run(&input, fix());
        assert!(out.starts_with(b"Date: D\nMessage-ID: <m@x>\nxxx"));
        assert_eq!(out.len(), input.len() + 26);
    }

    #[test]
    fn eight_bit_and_controls_never_panic() {
        let out = run(b"\xff\xfe: x\n\x00\n", fix());
        assert_eq!(out, b"Date: D\nMessage-ID: <m@x>\n\xff\xfe: x\n\x00\n");
    }

    #[test]
    fn only_missing_one() {
        let f = HeaderFix {
            date: Some("Date: D\r\n".into()),
            message_id: None,
        };
        assert_eq!(s(run(b"A: b\n\nc", f)), "A: b\nDate: D\n\nc");
    }
}
