//! The DATA decoder (RFC 5321 §4.1.1.4, §4.5.2) and the CRLF normaliser used for BDAT.
//!
//! Wire format of DATA content: lines ended by CR LF; a line that starts with "." has had
//! one more "." put in front by the sender (dot-stuffing); the line "." alone ends the data.
//! The end is recognised only as CR LF "." CR LF, where the first CR LF is the end of the
//! previous line or of the DATA command itself. Never LF "." LF, LF "." CR LF, CR LF "." LF
//! or CR "." CR: a server that ends data on any of these while the next hop does not (or the
//! other way round) lets a client smuggle a second message (RFC 5321 §2.3.8, the 2023 SMTP
//! smuggling attacks).
//!
//! Output: message bytes with the stuffed dots removed and every CR LF turned into LF.
//!
//! Bare line ends (LF without CR, CR without LF):
//! - `reject_bare = true`: decoding stops with [`Stop::BareLf`] / [`Stop::BareCr`].
//! - `reject_bare = false` (Postfix `normalize`): a bare LF ends a line like CR LF, so the
//!   next line is dot-unstuffed too, but a line after a bare LF can never end the data, and
//!   a "." line ended by a bare LF is not an end either. Such a non-ending "." line is
//!   unstuffed to an empty line, as Postfix does. A bare CR is message data and does not
//!   end a line.
//!
//! The decoder holds at most two bytes of lookahead (a "." and a CR at the start of a
//! line), as state, never buffered data.

/// Why decoding stopped before the input was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// CR LF . CR LF: the end of the data. The bytes after it are the next command.
    End,
    /// A bare LF, in reject mode.
    BareLf,
    /// A bare CR, in reject mode.
    BareCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line; `crlf`: the previous line ended with CR LF (or this is the
    /// first line after the DATA command), so a "." line here may be the end.
    LineStart { crlf: bool },
    /// Seen "." at the start of a line.
    Dot { crlf: bool },
    /// Seen "." CR at the start of a line.
    DotCr { crlf: bool },
    /// Inside a line.
    Mid,
    /// Inside a line, after a CR.
    MidCr,
}

/// Streaming decoder for one DATA transfer.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    st: St,
    reject_bare: bool,
    /// Octets consumed so far, as received (stuffing dots and CRs included).
    raw_bytes: u64,
    ended: bool,
}

impl DotDecoder {
    pub fn new(reject_bare: bool) -> DotDecoder {
        // The CR LF of the DATA command counts as the line end before the first line.
        DotDecoder {
            st: St::LineStart { crlf: true },
            reject_bare,
            raw_bytes: 0,
            ended: false,
        }
    }

    /// Decode from `input`, appending message bytes to `out`. Returns how many bytes were
    /// consumed and why decoding stopped early, if it did. After `Stop::End` the rest of
    /// `input` is not part of the data.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Stop>) {
        if self.ended {
            return (0, Some(Stop::End));
        }
        let mut i = 0;
        let mut stop = None;
        while i < input.len() {
            if self.st == St::Mid {
                // Fast path: copy the run of ordinary bytes.
                let rest = &input[i..];
                let n = rest
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n')
                    .unwrap_or(rest.len());
                out.extend_from_slice(&rest[..n]);
                i += n;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            if let Some(s) = self.step(b, out) {
                stop = Some(s);
                break;
            }
        }
        self.raw_bytes += i as u64;
        if stop == Some(Stop::End) {
            self.ended = true;
        }
        (i, stop)
    }

    /// Message size as received so far: every octet consumed except the lookahead of a
    /// possible end line, and after the end, without the final "." CR LF.
    pub fn message_bytes(&self) -> u64 {
        let pending = if self.ended {
            3
        } else {
            match self.st {
                St::Dot { .. } => 1,
                St::DotCr { .. } => 2,
                _ => 0,
            }
        };
        self.raw_bytes.saturating_sub(pending)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Option<Stop> {
        match self.st {
            St::LineStart { crlf } => {
                if b == b'.' {
                    self.st = St::Dot { crlf };
                    None
                } else {
                    self.mid(b, out)
                }
            }
            St::Dot { crlf } => match b {
                b'\r' => {
                    self.st = St::DotCr { crlf };
                    None
                }
                // RFC 5321 §4.1.1.4: "." LF is not the end of the data.
                b'\n' => {
                    if self.reject_bare {
                        return Some(Stop::BareLf);
                    }
                    out.push(b'\n');
                    self.st = St::LineStart { crlf: false };
                    None
                }
                // RFC 5321 §4.5.2: the first "." of a line with more on it is deleted.
                _ => self.mid(b, out),
            },
            St::DotCr { crlf } => {
                if b == b'\n' {
                    if crlf {
                        // RFC 5321 §4.1.1.4: CR LF . CR LF, the only end of the data.
                        return Some(Stop::End);
                    }
                    // LF . CR LF: the line before ended with a bare LF; not an end.
                    out.push(b'\n');
                    self.st = St::LineStart { crlf: true };
                    None
                } else {
                    if self.reject_bare {
                        return Some(Stop::BareCr);
                    }
                    // "." CR x: a bare CR after a stuffed dot; the dot goes, the CR stays.
                    out.push(b'\r');
                    self.mid(b, out)
                }
            }
            St::Mid => self.mid(b, out),
            St::MidCr => {
                if b == b'\n' {
                    out.push(b'\n');
                    self.st = St::LineStart { crlf: true };
                    None
                } else {
                    if self.reject_bare {
                        return Some(Stop::BareCr);
                    }
                    out.push(b'\r');
                    self.mid(b, out)
                }
            }
        }
    }

    /// A byte inside a line.
    fn mid(&mut self, b: u8, out: &mut Vec<u8>) -> Option<Stop> {
        match b {
            b'\r' => self.st = St::MidCr,
            b'\n' => {
                // RFC 5321 §2.3.8: a bare LF is not a line end; reject or normalise.
                if self.reject_bare {
                    return Some(Stop::BareLf);
                }
                out.push(b'\n');
                self.st = St::LineStart { crlf: false };
            }
            _ => {
                out.push(b);
                self.st = St::Mid;
            }
        }
        None
    }
}

/// CR LF -> LF for raw (BDAT) content, across chunk boundaries. Bare CR and bare LF are
/// kept as they are: a BDAT chunk is counted, not delimited, so there is no end marker to
/// smuggle past (RFC 3030 §2).
#[derive(Debug, Clone, Default)]
pub struct CrlfToLf {
    cr_pending: bool,
}

impl CrlfToLf {
    pub fn new() -> CrlfToLf {
        CrlfToLf { cr_pending: false }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        for &b in input {
            if self.cr_pending {
                self.cr_pending = false;
                if b == b'\n' {
                    out.push(b'\n');
                    continue;
                }
                out.push(b'\r');
            }
            if b == b'\r' {
                self.cr_pending = true;
            } else {
                out.push(b);
            }
        }
    }

    /// The end of the content: a CR held back waiting for LF is data after all.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr_pending {
            self.cr_pending = false;
            out.push(b'\r');
        }
    }
}

/// CR LF -> LF for a complete buffer.
pub fn crlf_to_lf(input: &[u8]) -> Vec<u8> {
    let mut n = CrlfToLf::new();
    let mut out = Vec::with_capacity(input.len());
    n.feed(input, &mut out);
    n.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` in one piece.
    fn decode(input: &[u8], reject: bool) -> (Vec<u8>, usize, Option<Stop>) {
        let mut d = DotDecoder::new(reject);
        let mut out = Vec::new();
        let (n, stop) = d.feed(input, &mut out);
        (out, n, stop)
    }

    /// Decode `input` one byte at a time; must agree with the one-piece result.
    fn decode_bytewise(input: &[u8], reject: bool) -> (Vec<u8>, usize, Option<Stop>) {
        let mut d = DotDecoder::new(reject);
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            let (n, stop) = d.feed(std::slice::from_ref(b), &mut out);
            assert_eq!(n, 1);
            if stop.is_some() {
                return (out, i + 1, stop);
            }
        }
        (out, input.len(), None)
    }

    fn both(input: &[u8], reject: bool) -> (Vec<u8>, usize, Option<Stop>) {
        let a = decode(input, reject);
        assert_eq!(a, decode_bytewise(input, reject), "split decoding differs");
        a
    }

    #[test]
    fn simple_message_and_end() {
        let (out, n, stop) = both(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", false);
        assert_eq!(out, b"Subject: x\n\nhello\n");
        assert_eq!(stop, Some(Stop::End));
        assert_eq!(n, 24);
    }

    #[test]
    fn empty_message() {
        let mut d = DotDecoder::new(true);
        let mut out = Vec::new();
        assert_eq!(d.feed(b".\r\n", &mut out), (3, Some(Stop::End)));
        assert!(out.is_empty());
        assert_eq!(d.message_bytes(), 0);
    }

    #[test]
    fn size_counts_raw_bytes_without_terminator() {
        let mut d = DotDecoder::new(true);
        let mut out = Vec::new();
        d.feed(b"..a\r\n", &mut out);
        assert_eq!(d.message_bytes(), 5);
        d.feed(b".", &mut out);
        assert_eq!(d.message_bytes(), 5);
        d.feed(b"\r\n", &mut out);
        assert_eq!(d.message_bytes(), 5);
        assert_eq!(out, b".a\n");
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, stop) = both(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n", true);
        assert_eq!(out, b".\n..x\ny\na.b\n");
        assert_eq!(stop, Some(Stop::End));
    }

    #[test]
    fn smuggling_lf_dot_lf_is_not_an_end() {
        let (out, _, stop) = both(b"a\n.\nMAIL FROM:<x@y>\r\n", false);
        assert_eq!(stop, None);
        assert_eq!(out, b"a\n\nMAIL FROM:<x@y>\n");
    }

    #[test]
    fn smuggling_lf_dot_crlf_is_not_an_end() {
        let (out, _, stop) = both(b"a\n.\r\nMAIL FROM:<x@y>\r\n", false);
        assert_eq!(stop, None);
        assert_eq!(out, b"a\n\nMAIL FROM:<x@y>\n");
    }

    #[test]
    fn smuggling_crlf_dot_lf_is_not_an_end() {
        let (out, _, stop) = both(b"a\r\n.\nb\r\n", false);
        assert_eq!(stop, None);
        assert_eq!(out, b"a\n\nb\n");
    }

    #[test]
    fn smuggling_cr_dot_cr_is_not_an_end() {
        let (out, _, stop) = both(b"a\r.\rMAIL\r\n", false);
        assert_eq!(stop, None);
        assert_eq!(out, b"a\r.\rMAIL\n");
    }

    #[test]
    fn dot_cr_then_other_in_normalize_keeps_cr() {
        let (out, _, stop) = both(b".\rx\r\n", false);
        assert_eq!(stop, None);
        assert_eq!(out, b"\rx\n");
    }

    #[test]
    fn reject_mode_stops_on_bare_lf_and_cr() {
        assert_eq!(both(b"a\nb", true).2, Some(Stop::BareLf));
        assert_eq!(both(b"a\rb", true).2, Some(Stop::BareCr));
        assert_eq!(both(b"\r\n.\n", true).2, Some(Stop::BareLf));
        assert_eq!(both(b".\rx", true).2, Some(Stop::BareCr));
        assert_eq!(both(b"a\r\r\n", true).2, Some(Stop::BareCr));
    }

    #[test]
    fn feeding_after_end_consumes_nothing() {
        let mut d = DotDecoder::new(false);
        let mut out = Vec::new();
        assert_eq!(d.feed(b".\r\nX", &mut out), (3, Some(Stop::End)));
        assert_eq!(d.feed(b"X", &mut out), (0, Some(Stop::End)));
    }

    #[test]
    fn crlf_normaliser_across_chunks() {
        let mut n = CrlfToLf::new();
        let mut out = Vec::new();
        n.feed(b"a\r", &mut out);
        n.feed(b"\nb\r", &mut out);
        n.feed(b"\r", &mut out);
        n.feed(b"c\n", &mut out);
        n.feed(b"\r", &mut out);
        n.finish(&mut out);
        assert_eq!(out, b"a\nb\r\rc\n\r");
        assert_eq!(crlf_to_lf(b"x\r\ny\r\n"), b"x\ny\n");
    }
}
