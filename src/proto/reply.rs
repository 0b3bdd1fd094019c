//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).
//!
//! A `Reply` is what the client sees. The internal cause of a failure is logged by the
//! caller and never put into a reply (no paths, no policy details).

use std::borrow::Cow;

/// One SMTP reply: a three-digit code and one or more text lines.
/// The enhanced status code, when there is one, is the first word of `text` of every line
/// (RFC 2034 §3: it appears on each line of a multi-line reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Lines of text, joined by '\n'. Each line is sent as `code-text` or `code text`.
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, text: String) -> Reply {
        Reply {
            code,
            text: Cow::Owned(text),
        }
    }

    /// 2xx and 3xx replies accept what they answer (RFC 5321 §4.2.1).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Append the wire form (CRLF line ends, `-` on all lines but the last) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Written piece by piece: a reply is encoded for every command, and a format! per
        // line was an allocation each (16 per message over EHLO's lines).
        let (digits, odd);
        let code: &[u8] = if (100..=999).contains(&self.code) {
            // RFC 5321 §4.2: a reply code is three digits.
            digits = [
                b'0' + (self.code / 100) as u8,
                b'0' + (self.code / 10 % 10) as u8,
                b'0' + (self.code % 10) as u8,
            ];
            &digits
        } else {
            // Never made here; written as it is.
            odd = self.code.to_string();
            odd.as_bytes()
        };
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { b'-' } else { b' ' };
            out.extend_from_slice(code);
            out.push(sep);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The first line as it would be logged: `550 5.1.1 <x@y>: Recipient address rejected`.
    pub fn first_line(&self) -> String {
        format!("{} {}", self.code, self.text.split('\n').next().unwrap_or(""))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_uses_dash_on_all_but_last() {
        let mut out = Vec::new();
        Reply::new(250, "mx.example\nPIPELINING\nSIZE 10240000").encode(&mut out);
        assert_eq!(out, b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n");
    }

    #[test]
    fn a_code_that_is_not_three_digits_is_written_as_it_is() {
        let mut out = Vec::new();
        Reply::new(42, "odd\nlines").encode(&mut out);
        assert_eq!(out, b"42-odd\r\n42 lines\r\n");
        out.clear();
        Reply::new(221, "").encode(&mut out);
        assert_eq!(out, b"221 \r\n");
    }

    #[test]
    fn classes() {
        assert!(Reply::new(354, "go ahead").is_positive());
        assert!(Reply::new(452, "4.3.1 full").is_transient());
        assert!(Reply::new(554, "5.7.1 no").is_permanent());
    }
}
