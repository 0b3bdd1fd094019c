//! Command line framing (RFC 5321 §2.3.8, §4.5.3.1.4).
//!
//! A command line is a run of octets ended by LF. When the LF is preceded by CR the pair is
//! the line end (CRLF); otherwise the LF is "bare" and the caller decides (reject or treat
//! it as CRLF, Postfix's `smtpd_forbid_bare_newline`). A line longer than the limit
//! (counted with its CRLF) is discarded up to the next LF and reported once, so the
//! session can keep serving (RFC 5321 §4.5.3.1.4: a command line is at most 512 octets).
//!
//! The reader keeps no bytes itself: it looks at the caller's buffer and says how many
//! bytes to consume. Its only state is "inside an over-long line".

/// What the front of the buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// No complete line yet; nothing to consume.
    Incomplete,
    /// A complete line. Its text is `buf[..content_len]` (without CR LF or bare LF);
    /// `consumed` bytes (text and line end) are to be dropped from the buffer.
    Line {
        content_len: usize,
        consumed: usize,
        bare_lf: bool,
    },
    /// Part of an over-long line: drop `consumed` bytes. `done` is true once its LF was
    /// seen; that is the moment to answer `500 5.5.2 Error: line too long`.
    TooLong { consumed: usize, done: bool },
}

/// Splits a byte stream into command lines of bounded length.
#[derive(Debug, Default)]
pub struct LineReader {
    /// Inside an over-long line: everything up to the next LF is dropped.
    discarding: bool,
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader { discarding: false }
    }

    /// Look at the front of `buf`. `line_bytes_max` counts the line end as two octets
    /// (CRLF), also when the line ended with a bare LF.
    pub fn next(&mut self, buf: &[u8], line_bytes_max: usize) -> Frame {
        if buf.is_empty() {
            return Frame::Incomplete;
        }
        if self.discarding {
            return match find_lf(buf) {
                Some(i) => {
                    self.discarding = false;
                    Frame::TooLong {
                        consumed: i + 1,
                        done: true,
                    }
                }
                None => Frame::TooLong {
                    consumed: buf.len(),
                    done: false,
                },
            };
        }
        let window = &buf[..buf.len().min(line_bytes_max)];
        match find_lf(window) {
            Some(i) => {
                let bare_lf = i == 0 || buf[i - 1] != b'\r';
                let content_len = if bare_lf { i } else { i - 1 };
                // RFC 5321 §4.5.3.1.4: the limit includes the CRLF.
                if content_len + 2 > line_bytes_max {
                    Frame::TooLong {
                        consumed: i + 1,
                        done: true,
                    }
                } else {
                    Frame::Line {
                        content_len,
                        consumed: i + 1,
                        bare_lf,
                    }
                }
            }
            None if buf.len() >= line_bytes_max => match find_lf(buf) {
                // The LF is already buffered past the limit: drop exactly this line.
                Some(i) => Frame::TooLong {
                    consumed: i + 1,
                    done: true,
                },
                None => {
                    self.discarding = true;
                    Frame::TooLong {
                        consumed: buf.len(),
                        done: false,
                    }
                }
            },
            None => Frame::Incomplete,
        }
    }
}

fn find_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_line() {
        let mut r = LineReader::new();
        assert_eq!(
            r.next(b"NOOP\r\nQUIT", 512),
            Frame::Line {
                content_len: 4,
                consumed: 6,
                bare_lf: false
            }
        );
    }

    #[test]
    fn bare_lf_line() {
        let mut r = LineReader::new();
        assert_eq!(
            r.next(b"NOOP\n", 512),
            Frame::Line {
                content_len: 4,
                consumed: 5,
                bare_lf: true
            }
        );
        assert_eq!(
            r.next(b"\n", 512),
            Frame::Line {
                content_len: 0,
                consumed: 1,
                bare_lf: true
            }
        );
    }

    #[test]
    fn incomplete() {
        let mut r = LineReader::new();
        assert_eq!(r.next(b"", 512), Frame::Incomplete);
        assert_eq!(r.next(b"NOOP\r", 512), Frame::Incomplete);
    }

    #[test]
    fn exactly_at_limit_is_accepted() {
        let mut r = LineReader::new();
        let mut line = vec![b'a'; 510];
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            r.next(&line, 512),
            Frame::Line {
                content_len: 510,
                consumed: 512,
                bare_lf: false
            }
        );
    }

    #[test]
    fn one_over_limit_is_too_long() {
        let mut r = LineReader::new();
        let mut line = vec![b'a'; 511];
        line.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            r.next(&line, 512),
            Frame::TooLong {
                consumed: 513,
                done: true
            }
        );
        assert_eq!(
            r.next(&line[513..], 512),
            Frame::Line {
                content_len: 4,
                consumed: 6,
                bare_lf: false
            }
        );
    }

    #[test]
    fn long_line_across_reads_is_discarded_then_resyncs() {
        let mut r = LineReader::new();
        let big = vec![b'x'; 600];
        assert_eq!(
            r.next(&big, 512),
            Frame::TooLong {
                consumed: 600,
                done: false
            }
        );
        assert_eq!(
            r.next(&big, 512),
            Frame::TooLong {
                consumed: 600,
                done: false
            }
        );
        assert_eq!(
            r.next(b"xx\r\nNOOP\r\n", 512),
            Frame::TooLong {
                consumed: 4,
                done: true
            }
        );
        assert_eq!(
            r.next(b"NOOP\r\n", 512),
            Frame::Line {
                content_len: 4,
                consumed: 6,
                bare_lf: false
            }
        );
    }

    #[test]
    fn bare_lf_counts_as_two_octets() {
        let mut r = LineReader::new();
        let mut line = vec![b'a'; 511];
        line.push(b'\n');
        assert_eq!(
            r.next(&line, 512),
            Frame::TooLong {
                consumed: 512,
                done: true
            }
        );
    }
}
