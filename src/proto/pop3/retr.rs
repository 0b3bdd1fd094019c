//! The RETR/TOP body encoder (RFC 1939 §3, §7): stored message bytes in, the multi-line
//! response body out.
//!
//! Input: a message as stored (Maildir or mbox), lines ended by LF or by CR LF, possibly
//! with a last line that has no line end. Output, streamed chunk by chunk:
//! - every line ends with CR LF (a bare LF becomes CR LF; a CR not followed by LF is
//!   message data and is kept as it is);
//! - a line that begins with "." gets one more "." in front (byte-stuffing, RFC 1939 §3);
//! - for TOP n k: the header section, the blank line after it and at most `k` body lines,
//!   then nothing more (RFC 1939 §7);
//! - at [`RetrEncoder::finish`], an unterminated last line gets its CR LF. The caller
//!   appends the terminating ".\r\n".
//!
//! The encoder holds one byte of lookahead (a CR whose LF may come in the next chunk) as
//! state, never buffered data: its output for a chunk is at most twice the chunk plus two.

/// What is being passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The header section (TOP needs to find its end).
    Headers,
    /// The body; `remaining` lines to pass (None: all of them).
    Body { remaining: Option<u64> },
    /// TOP has sent its lines; the rest of the message is ignored.
    Done,
}

/// Streaming LF -> CR LF, dot-stuffing and TOP truncation for one message.
#[derive(Debug, Clone)]
pub struct RetrEncoder {
    phase: Phase,
    /// `Some(k)` for TOP n k.
    top_lines: Option<u64>,
    /// Nothing of the current line has been written yet.
    at_line_start: bool,
    /// A CR was seen last; whether it ends the line depends on the next byte.
    cr_pending: bool,
    /// Octets written so far (for the session's counters).
    out_bytes: u64,
}

impl RetrEncoder {
    /// `top_lines`: None for RETR, `Some(k)` for TOP n k.
    pub fn new(top_lines: Option<u64>) -> RetrEncoder {
        RetrEncoder {
            phase: Phase::Headers,
            top_lines,
            at_line_start: true,
            cr_pending: false,
            out_bytes: 0,
        }
    }

    /// Octets written so far (the terminating ".\r\n" is not the encoder's).
    pub fn out_bytes(&self) -> u64 {
        self.out_bytes
    }

    /// Encode one chunk of the stored message, appending to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        // The most this chunk can become: every byte a line (CR LF for each LF, a stuffed
        // dot), plus a held CR. Reserved once, so the copies below never reallocate.
        if self.phase != Phase::Done {
            out.reserve(input.len().saturating_mul(2).saturating_add(2));
        }
        while !input.is_empty() && self.phase != Phase::Done {
            if self.cr_pending {
                self.cr_pending = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    self.end_line(out);
                    continue;
                }
                // A CR inside a line is data.
                self.content(b"\r", out);
            }
            match find_line_break(input) {
                None => {
                    self.content(input, out);
                    input = &[];
                }
                Some(i) => {
                    self.content(&input[..i], out);
                    if input[i] == b'\n' {
                        // RFC 1939 §3: lines end with CR LF; the store may use bare LF.
                        self.end_line(out);
                    } else {
                        self.cr_pending = true;
                    }
                    input = &input[i + 1..];
                }
            }
        }
        self.out_bytes += (out.len() - start) as u64;
    }

    /// The end of the stored message: a held CR and an unterminated last line are written.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.phase == Phase::Done {
            return;
        }
        let start = out.len();
        if self.cr_pending {
            self.cr_pending = false;
            self.content(b"\r", out);
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        self.out_bytes += (out.len() - start) as u64;
    }

    /// Bytes inside a line (no LF; a CR only when it is data).
    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let Some(&first) = bytes.first() else { return };
        if self.at_line_start {
            // RFC 1939 §3: byte-stuff a line that begins with the termination octet.
            if first == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
        }
        extend_short(out, bytes);
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        let blank = self.at_line_start;
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
        self.phase = match self.phase {
            // RFC 1939 §7 (TOP): the headers and the blank line, then `k` body lines.
            Phase::Headers if blank => match self.top_lines {
                Some(0) => Phase::Done,
                k => Phase::Body { remaining: k },
            },
            Phase::Body { remaining: Some(n) } if n <= 1 => Phase::Done,
            Phase::Body { remaining: Some(n) } => Phase::Body { remaining: Some(n - 1) },
            p => p,
        };
    }
}

/// The position of the first CR or LF, eight bytes at a time (a message is mostly line
/// content: a byte-by-byte search was most of the encoder's time).
fn find_line_break(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const LF: u64 = ONES * b'\n' as u64;
    const CR: u64 = ONES * b'\r' as u64;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let Ok(w) = <[u8; 8]>::try_from(w) else { break };
        let w = u64::from_le_bytes(w);
        // A zero byte in w ^ LF is an LF (the lowest flagged byte is always a true one).
        let (a, b) = (w ^ LF, w ^ CR);
        let hits = (a.wrapping_sub(ONES) & !a | b.wrapping_sub(ONES) & !b) & HIGH;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    s[at..].iter().position(|&b| b == b'\r' || b == b'\n').map(|p| at + p)
}

/// `out.extend_from_slice(bytes)` in 16-byte blocks of known size, which the compiler copies
/// inline: one libc `memcpy` call per line of a message (musl's starts with `rep movsq`)
/// cost as much as the rest of the encoding.
fn extend_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut blocks = bytes.chunks_exact(16);
    for b in &mut blocks {
        if let Ok(b) = <&[u8; 16]>::try_from(b) {
            out.extend_from_slice(b);
        }
    }
    let mut rest = blocks.remainder();
    if let Some((b, tail)) = rest.split_first_chunk::<8>() {
        out.extend_from_slice(b);
        rest = tail;
    }
    for &b in rest {
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(input: &[u8], top: Option<u64>) -> Vec<u8> {
        let mut e = RetrEncoder::new(top);
        let mut out = Vec::new();
        e.push(input, &mut out);
        e.finish(&mut out);
        assert_eq!(e.out_bytes(), out.len() as u64);
        out
    }

    /// The same result for every way of cutting the input into two or three pieces.
    fn check_splits(input: &[u8], top: Option<u64>, want: &[u8]) {
        assert_eq!(
            String::from_utf8_lossy(&encode(input, top)),
            String::from_utf8_lossy(want),
            "whole input {:?}",
            String::from_utf8_lossy(input)
        );
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut e = RetrEncoder::new(top);
                let mut out = Vec::new();
                e.push(&input[..a], &mut out);
                e.push(&input[a..b], &mut out);
                e.push(&input[b..], &mut out);
                e.finish(&mut out);
                assert_eq!(out, want, "cut at {a},{b} of {:?}", String::from_utf8_lossy(input));
                assert_eq!(e.out_bytes(), out.len() as u64);
            }
        }
        // One byte at a time.
        let mut e = RetrEncoder::new(top);
        let mut out = Vec::new();
        for b in input {
            e.push(std::slice::from_ref(b), &mut out);
        }
        e.finish(&mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn lf_becomes_crlf_and_crlf_stays() {
        check_splits(
            b"A: 1\nB: 2\r\n\nbody\r\nx\n",
            None,
            b"A: 1\r\nB: 2\r\n\r\nbody\r\nx\r\n",
        );
    }

    #[test]
    fn dots_are_stuffed_at_line_start_only() {
        check_splits(
            b".a\n..b\nc.d\n.\n\r\n.\r\n",
            None,
            b"..a\r\n...b\r\nc.d\r\n..\r\n\r\n..\r\n",
        );
    }

    #[test]
    fn first_line_dot() {
        check_splits(b".", None, b"..\r\n");
    }

    #[test]
    fn unterminated_last_line_and_held_cr() {
        check_splits(b"S: x\n\nend", None, b"S: x\r\n\r\nend\r\n");
        check_splits(b"S: x\n\nend\r", None, b"S: x\r\n\r\nend\r\r\n");
        check_splits(b"", None, b"");
    }

    #[test]
    fn bare_cr_is_data_and_does_not_start_a_line() {
        check_splits(b"a\rb\n\r.x\n", None, b"a\rb\r\n\r.x\r\n");
    }

    #[test]
    fn top_zero_sends_headers_and_blank_line() {
        check_splits(b"A: 1\nB: 2\n\nl1\nl2\n", Some(0), b"A: 1\r\nB: 2\r\n\r\n");
        check_splits(b"A: 1\r\n\r\n.l1\r\n", Some(0), b"A: 1\r\n\r\n");
    }

    #[test]
    fn top_counts_body_lines() {
        let msg = b"S: t\n\nl1\n.l2\nl3\nl4\n";
        check_splits(msg, Some(2), b"S: t\r\n\r\nl1\r\n..l2\r\n");
        check_splits(msg, Some(4), b"S: t\r\n\r\nl1\r\n..l2\r\nl3\r\nl4\r\n");
        check_splits(msg, Some(99), b"S: t\r\n\r\nl1\r\n..l2\r\nl3\r\nl4\r\n");
        check_splits(msg, Some(u64::MAX), b"S: t\r\n\r\nl1\r\n..l2\r\nl3\r\nl4\r\n");
    }

    #[test]
    fn top_of_a_message_without_body_or_blank_line() {
        check_splits(b"A: 1\nB: 2", Some(1), b"A: 1\r\nB: 2\r\n");
        check_splits(b"\nbody\nmore\n", Some(1), b"\r\nbody\r\n");
    }

    #[test]
    fn every_split_of_a_hostile_mix() {
        let input = b"\r\r\n.\r\r.\n\n\r.\r\n..\n\0.\n";
        let want = encode(input, None);
        assert_eq!(want, b"\r\r\n..\r\r.\r\n\r\n\r.\r\n...\r\n\0.\r\n");
        check_splits(input, None, &want);
        for k in 0..4 {
            let want = encode(input, Some(k));
            check_splits(input, Some(k), &want);
        }
    }

    /// The word-at-a-time search and the block copy agree with the plain ones at every
    /// position and length around their 8- and 16-byte steps.
    #[test]
    fn line_break_search_and_copy_match_the_simple_ones() {
        for len in 0..40 {
            for at in 0..=len {
                for brk in [b'\n', b'\r', b'.', 0x8a, 0x0b, 0xff] {
                    let mut s: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    if at < len {
                        s[at] = brk;
                    }
                    let want = s.iter().position(|&b| b == b'\r' || b == b'\n');
                    assert_eq!(find_line_break(&s), want, "len {len} at {at} byte {brk}");
                    let mut out = b"xy".to_vec();
                    extend_short(&mut out, &s);
                    assert_eq!(&out[2..], &s[..]);
                }
            }
        }
        // Two breaks in one word: the first is found.
        assert_eq!(find_line_break(b"abc\r\ndefgh"), Some(3));
        assert_eq!(find_line_break(b"abcdefg\n\n"), Some(7));
        // Bytes that differ from CR/LF by one bit or by a borrow are not breaks.
        assert_eq!(
            find_line_break(&[0x0b, 0x0c, 0x0e, 0x09, 0x8a, 0x8d, 0x00, 0x01, 0x0a]),
            Some(8)
        );
    }

    #[test]
    fn long_lines_encode_as_the_byte_by_byte_rules_say() {
        let mut msg = Vec::new();
        for i in 0..200usize {
            msg.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 37));
            msg.extend_from_slice(match i % 5 {
                0 => b"\n".as_slice(),
                1 => b"\r\n",
                2 => b"\n.",
                3 => b"\r",
                _ => b"\n..",
            });
        }
        // The rules, one byte at a time.
        let mut want = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < msg.len() {
            let b = msg[i];
            if b == b'\n' || (b == b'\r' && msg.get(i + 1) == Some(&b'\n')) {
                want.extend_from_slice(b"\r\n");
                i += if b == b'\r' { 2 } else { 1 };
                line_start = true;
                continue;
            }
            if line_start && b == b'.' {
                want.push(b'.');
            }
            want.push(b);
            line_start = false;
            i += 1;
        }
        if !line_start {
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(encode(&msg, None), want);
        for cut in [1, 7, 8, 9, 15, 16, 17, 100, 1000] {
            let mut e = RetrEncoder::new(None);
            let mut out = Vec::new();
            for piece in msg.chunks(cut) {
                e.push(piece, &mut out);
            }
            e.finish(&mut out);
            assert_eq!(out, want, "pieces of {cut}");
        }
    }

    #[test]
    fn output_is_bounded_per_chunk() {
        // Worst case: every byte a bare LF or a line-starting dot.
        let mut e = RetrEncoder::new(None);
        let chunk = b"\n.\n.\n.".repeat(1000);
        let mut out = Vec::new();
        for _ in 0..10 {
            out.clear();
            e.push(&chunk, &mut out);
            assert!(out.len() <= 2 * chunk.len() + 2);
        }
    }

    #[test]
    fn ignored_after_top_is_done() {
        let mut e = RetrEncoder::new(Some(0));
        let mut out = Vec::new();
        e.push(b"A: 1\n\n", &mut out);
        let n = out.len();
        e.push(&vec![b'x'; 100_000], &mut out);
        e.finish(&mut out);
        assert_eq!(out.len(), n);
    }
}
