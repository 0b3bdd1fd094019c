//! On-disk format of the queue log.
//!
//! # Segments
//!
//! The queue directory holds segment files named `NNNNNNNN.log` (the segment number in 8
//! decimal digits, starting at 00000001). Numbers are contiguous: segments are deleted only as
//! a prefix (oldest first), so a gap means a segment was lost and recovery refuses to start.
//! Other files in the directory (the lock file) are ignored.
//!
//! A segment opens with a 16-byte header:
//!
//! ```text
//! offset 0   8 bytes   magic "POSHTAQ\0"
//! offset 8   u32 LE    format version (1)
//! offset 12  u32 LE    segment number (equals the number in the file name)
//! ```
//!
//! A new segment is created with O_EXCL, its header written, the file fsynced, then the
//! directory fsynced, before any record goes into it.
//!
//! # Records
//!
//! After the header come records, back to back:
//!
//! ```text
//! len    u32 LE   length of payload in bytes, 1..=limits::QUEUE_RECORD_BYTES_MAX
//! crc    u32 LE   CRC-32 (IEEE, crc32fast) of the payload
//! payload         postcard encoding of `Record` (exactly `len` bytes, no trailing bytes)
//! ```
//!
//! The payload is checked twice: before writing (`encode` refuses oversized records) and after
//! reading (length bound, checksum, then a complete decode).
//!
//! `Record` is a postcard enum: its variant index (a varint) is the record type. **The enum is
//! append-only**: new variants go at the end, existing variants and their fields never change
//! or move, so every old log stays readable. A change that cannot follow this rule bumps the
//! header's format version.
//!
//! One message's life in the log: `Accepted` (envelope), `Body`* (chunks, in order, each at
//! most limits::QUEUE_CHUNK_BYTES_MAX data bytes, never empty), `Commit` (total body size),
//! then per-recipient outcomes `Delivered` / `Deferred` / `Bounced` (rcpt = index in the
//! envelope), and `Done` once every recipient is final. `Aborted` ends a message that will
//! never be committed. Queue control (`poshta queue`) adds `Held` / `Released` (the last one
//! wins: a held message is not delivered) and `Deleted` (ends the message like `Done`).
//! `DelayWarned` says the sender got its one delay notice (delay_warning_time). Recipient outcomes may land in later segments than the envelope.
//!
//! # Recovery rules
//!
//! - A message without `Commit`, or whose body chunks do not add up to the committed size (a
//!   chunk lost in a failed write), is discarded.
//! - An incomplete or damaged record at the end of the last segment, with no valid record
//!   after it, is a torn write: the daemon truncates it. Anywhere else a damaged or
//!   undecodable record stops start-up (`QueueError::Corrupt`): mail is never dropped silently.
//! - The last segment may end in zeros after its last record: the writer fills the file
//!   with zeros ahead of its records (`log::FileSink`, so that a commit's fdatasync writes no
//!   metadata). A zero length is never a record, so they are never read as one; the daemon
//!   cuts them at start without calling them a torn write. Before a segment gets a successor
//!   it is cut to its records (fsynced), so zeros at the end of any other segment are damage.
//! - Records whose message has no `Accepted` (it was in a deleted segment) are ignored.

use serde::{Deserialize, Serialize};

use super::QueueId;
use crate::limits;

/// Segment magic.
pub const MAGIC: [u8; 8] = *b"POSHTAQ\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Segment header length.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Record header (len + crc) length.
pub const RECORD_HEADER_BYTES: usize = 8;

/// One log record. Append-only enum: add variants only at the end (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record<'a> {
    /// A message was accepted: its envelope.
    Accepted {
        qid: QueueId,
        arrival_unix: u64,
        #[serde(borrow)]
        sender: &'a str,
        #[serde(borrow)]
        recipients: Vec<&'a str>,
        #[serde(borrow)]
        client: &'a str,
    },
    /// A chunk of the body (the next bytes after the previous chunk).
    Body {
        qid: QueueId,
        #[serde(borrow)]
        data: &'a [u8],
    },
    /// The message is complete: `size` body bytes in its chunks.
    Commit {
        qid: QueueId,
        size: u64,
    },
    Delivered {
        qid: QueueId,
        rcpt: u32,
    },
    Deferred {
        qid: QueueId,
        rcpt: u32,
        next_try_unix: u64,
        #[serde(borrow)]
        reason: &'a str,
    },
    Bounced {
        qid: QueueId,
        rcpt: u32,
        #[serde(borrow)]
        reason: &'a str,
    },
    /// Every recipient is final; the message is gone.
    Done {
        qid: QueueId,
    },
    /// The message will never be committed.
    Aborted {
        qid: QueueId,
    },
    /// `poshta queue hold`: not delivered until `Released` (postsuper -h).
    Held {
        qid: QueueId,
    },
    /// `poshta queue release`: delivered again (postsuper -H).
    Released {
        qid: QueueId,
    },
    /// `poshta queue delete`: the message is gone, whatever its recipients' states
    /// (postsuper -d). Recovery treats it like `Done`.
    Deleted {
        qid: QueueId,
    },
    /// A delay notice (delay_warning_time) was queued for the sender: never another one.
    DelayWarned {
        qid: QueueId,
    },
}

impl Record<'_> {
    pub fn qid(&self) -> QueueId {
        match self {
            Record::Accepted { qid, .. }
            | Record::Body { qid, .. }
            | Record::Commit { qid, .. }
            | Record::Delivered { qid, .. }
            | Record::Deferred { qid, .. }
            | Record::Bounced { qid, .. }
            | Record::Done { qid }
            | Record::Aborted { qid }
            | Record::Held { qid }
            | Record::Released { qid }
            | Record::Deleted { qid }
            | Record::DelayWarned { qid } => *qid,
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    TooLarge(usize),
    Postcard(String),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::TooLarge(n) => write!(f, "record of {} bytes over the limit", n),
            EncodeError::Postcard(e) => write!(f, "record encoding failed: {}", e),
        }
    }
}

/// Lets postcard append straight into a borrowed Vec (no intermediate buffer for chunks).
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

/// Append one framed record (`len | crc | payload`) to `out`; returns the framed length.
/// On error `out` is left as it was.
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) -> Result<u32, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    if let Err(e) = postcard::to_extend(rec, Append(out)) {
        out.truncate(start);
        return Err(EncodeError::Postcard(e.to_string()));
    }
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    // Checked before writing, so the reader's bound never rejects what we wrote.
    if payload_len == 0 || payload_len > limits::QUEUE_RECORD_BYTES_MAX {
        out.truncate(start);
        return Err(EncodeError::TooLarge(payload_len));
    }
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_BYTES..]);
    let len32 = payload_len as u32;
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok((payload_len + RECORD_HEADER_BYTES) as u32)
}

/// A record header as read: (payload length, crc).
pub fn parse_record_header(h: &[u8; RECORD_HEADER_BYTES]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// Check a payload against its header and decode it. The error says what is wrong.
pub fn check_and_decode(payload: &[u8], crc: u32) -> Result<Record<'_>, String> {
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {:08x}, computed {:08x})",
            crc, actual
        ));
    }
    decode(payload)
}

/// Decode a payload whose checksum was verified. Trailing bytes are an error.
pub fn decode(payload: &[u8]) -> Result<Record<'_>, String> {
    match postcard::take_from_bytes::<Record<'_>>(payload) {
        Ok((rec, [])) => Ok(rec),
        Ok((_, rest)) => Err(format!("undecodable record: {} trailing bytes", rest.len())),
        Err(e) => Err(format!("undecodable record: {}", e)),
    }
}

/// The 16-byte header of segment `number`.
pub fn segment_header(number: u32) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&number.to_le_bytes());
    h
}

/// Validate a segment header; the error says what is wrong.
pub fn check_segment_header(h: &[u8; SEGMENT_HEADER_BYTES as usize], number: u32) -> Result<(), String> {
    if h[..8] != MAGIC {
        return Err("bad segment magic (not a poshta queue segment)".to_string());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported segment format version {}", version));
    }
    let n = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if n != number {
        return Err(format!("segment header says number {}, file name says {}", n, number));
    }
    Ok(())
}

/// `NNNNNNNN.log`.
pub fn segment_file_name(number: u32) -> String {
    format!("{:08}.log", number)
}

/// The number in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_every_variant() {
        let q = QueueId(0x1234_5678);
        let recs = [
            Record::Accepted {
                qid: q,
                arrival_unix: 7,
                sender: "a@b",
                recipients: vec!["c@d", "e@f"],
                client: "h[1.2.3.4]",
            },
            Record::Body {
                qid: q,
                data: b"hello\r\n",
            },
            Record::Commit { qid: q, size: 7 },
            Record::Delivered { qid: q, rcpt: 0 },
            Record::Deferred {
                qid: q,
                rcpt: 1,
                next_try_unix: 99,
                reason: "later",
            },
            Record::Bounced {
                qid: q,
                rcpt: 1,
                reason: "no",
            },
            Record::Done { qid: q },
            Record::Aborted { qid: q },
            Record::Held { qid: q },
            Record::Released { qid: q },
            Record::Deleted { qid: q },
            Record::DelayWarned { qid: q },
        ];
        for r in &recs {
            let mut out = vec![0xAA];
            let n = encode(r, &mut out).expect("encode");
            assert_eq!(out.len(), 1 + n as usize);
            let mut h = [0u8; 8];
            h.copy_from_slice(&out[1..9]);
            let (len, crc) = parse_record_header(&h);
            assert_eq!(len as usize, out.len() - 9);
            assert_eq!(&check_and_decode(&out[9..], crc).expect("decode"), r);
            assert_eq!(r.qid(), q);
        }
    }

    #[test]
    fn variant_indexes_never_move() {
        // The first payload byte is the variant index (append-only enum): old logs must
        // keep decoding, so each variant keeps its number.
        let q = QueueId(1);
        for (r, idx) in [
            (Record::Done { qid: q }, 6u8),
            (Record::Aborted { qid: q }, 7),
            (Record::Held { qid: q }, 8),
            (Record::Released { qid: q }, 9),
            (Record::Deleted { qid: q }, 10),
            (Record::DelayWarned { qid: q }, 11),
        ] {
            let mut out = Vec::new();
            encode(&r, &mut out).expect("encode");
            assert_eq!(out[RECORD_HEADER_BYTES], idx, "{r:?}");
        }
    }

    #[test]
    fn oversized_record_is_refused_and_leaves_buffer() {
        let big = vec![0u8; limits::QUEUE_RECORD_BYTES_MAX + 1];
        let mut out = vec![1, 2, 3];
        let r = Record::Body {
            qid: QueueId(1),
            data: &big,
        };
        assert!(matches!(encode(&r, &mut out), Err(EncodeError::TooLarge(_))));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn hostile_payloads_do_not_decode() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[200]).is_err());
        // Body claiming more bytes than present.
        assert!(decode(&[1, 1, 0xFF, 0xFF, 0x03]).is_err());
        // Valid Done then trailing garbage.
        assert!(decode(&[6, 1, 0]).is_err());
        assert!(check_and_decode(&[6, 1], 0).is_err());
    }

    #[test]
    fn segment_names_and_headers() {
        assert_eq!(segment_file_name(3), "00000003.log");
        assert_eq!(parse_segment_file_name("00000003.log"), Some(3));
        assert_eq!(parse_segment_file_name("0000003.log"), None);
        assert_eq!(parse_segment_file_name("0000000a.log"), None);
        assert_eq!(parse_segment_file_name("00000003.tmp"), None);
        let h = segment_header(5);
        assert!(check_segment_header(&h, 5).is_ok());
        assert!(check_segment_header(&h, 6).is_err());
        let mut bad = h;
        bad[8] = 2;
        assert!(check_segment_header(&bad, 5).is_err());
        bad = h;
        bad[0] = b'X';
        assert!(check_segment_header(&bad, 5).is_err());
    }
}
