//! Recovery: read every segment in order, streaming, and rebuild the index.
//!
//! Memory stays bounded by the live messages' envelopes and their chunk locations: a body
//! record is checked (length, checksum, decode) and then only its location is kept.
//! The rules (torn tail vs corruption, discarding uncommitted messages) are in `record`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::log::sync_dir;
use super::record::{self, Record, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::schedule::Msg;
use super::{QueueError, QueueId, RcptState, RecoveryReport};
use crate::limits;

/// A damaged record further than this from the end of the last segment cannot be the tail of
/// one interrupted batch (a batch is about limits::QUEUE_PENDING_BYTES_MAX plus a record), so
/// it is corruption. Also bounds the memory of the tail check.
pub const TAIL_SCAN_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Whether recovery may repair (truncate a torn tail) or only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon at start: truncate a torn tail.
    Repair,
    /// `poshta queue` while the daemon may be writing: change nothing, skip an unfinished tail
    /// and segments deleted under us.
    ReadOnly,
}

/// One segment as recovered: its record bytes occupy log positions `start_lsn..end_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegMeta {
    pub number: u32,
    pub path: PathBuf,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// The result of recovery.
#[derive(Debug)]
pub struct Recovered {
    pub segments: Vec<SegMeta>,
    /// Committed, not done, oldest first.
    pub messages: Vec<Msg>,
    /// The largest queue id seen in any record.
    pub max_qid: u64,
    /// The log position after the last record.
    pub next_lsn: u64,
    pub report: RecoveryReport,
}

/// A message while its records are being read.
struct Partial {
    msg: Msg,
    body_bytes: u64,
    committed: Option<u64>,
    last_deferred_next: Option<u64>,
}

fn io_err(path: &Path, source: io::Error) -> QueueError {
    QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Segment numbers and paths in the directory, ascending; a gap is corruption.
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, QueueError> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(record::parse_segment_file_name) {
            segs.push((n, entry.path()));
        }
    }
    segs.sort();
    for w in segs.windows(2) {
        if w[1].0 != w[0].0.saturating_add(1) {
            return Err(QueueError::Corrupt {
                path: dir.join(record::segment_file_name(w[0].0.saturating_add(1))),
                offset: 0,
                what: format!("segment missing between {} and {}", w[0].0, w[1].0),
            });
        }
    }
    Ok(segs)
}

/// Is there a valid record (length in bounds, checksum, decode) starting anywhere in
/// `bytes[1..]`? Used to tell a torn tail from damage followed by good data.
fn valid_record_after(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len()).find(|&i| {
        let Some(h) = bytes.get(i..i + RECORD_HEADER_BYTES) else {
            return false;
        };
        let mut hh = [0u8; RECORD_HEADER_BYTES];
        hh.copy_from_slice(h);
        let (len, crc) = record::parse_record_header(&hh);
        let len = len as usize;
        if len == 0 || len > limits::QUEUE_RECORD_BYTES_MAX {
            return false;
        }
        let start = i + RECORD_HEADER_BYTES;
        match bytes.get(start..start + len) {
            Some(p) => record::check_and_decode(p, crc).is_ok(),
            None => false,
        }
    })
}

/// What ends the last segment after its last good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Only zeros: space the writer filled ahead (`log::FileSink`), no write was interrupted.
    Zeros,
    /// Part of an interrupted batch.
    Torn,
}

/// Decide whether the damage at `offset` of the last segment is a torn tail (or only the
/// zeros written ahead). Err = corruption.
fn check_torn(file: &mut File, path: &Path, offset: u64, file_len: u64, what: &str) -> Result<Tail, QueueError> {
    let corrupt = |what: String| QueueError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let rest = file_len - offset;
    if rest > TAIL_SCAN_BYTES_MAX {
        return Err(corrupt(format!(
            "{} ({} bytes before the end: not a torn write)",
            what, rest
        )));
    }
    let mut bytes = Vec::with_capacity(rest as usize);
    file.seek(SeekFrom::Start(offset)).map_err(|e| io_err(path, e))?;
    file.take(rest).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    if bytes.iter().all(|b| *b == 0) {
        return Ok(Tail::Zeros);
    }
    if let Some(i) = valid_record_after(&bytes) {
        return Err(corrupt(format!(
            "{} (a valid record follows at offset {})",
            what,
            offset + i as u64
        )));
    }
    Ok(Tail::Torn)
}

/// Apply one record to the messages being rebuilt.
fn apply(parts: &mut HashMap<QueueId, Partial>, rec: Record<'_>, lsn: u64, framed_len: u32) -> Result<(), String> {
    match rec {
        Record::Accepted {
            qid,
            arrival_unix,
            sender,
            recipients,
            client,
        } => {
            if parts.contains_key(&qid) {
                return Err(format!("second envelope for message {}", qid));
            }
            let n = recipients.len();
            let msg = Msg {
                qid,
                sender: sender.to_string(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
                arrival_unix,
                client: client.to_string(),
                size: 0,
                states: vec![RcptState::Pending; n],
                deferrals: 0,
                chunks: Vec::new(),
                first_lsn: lsn,
                in_flight: false,
                held: false,
                deleted: false,
                delay_warned: false,
            };
            parts.insert(
                qid,
                Partial {
                    msg,
                    body_bytes: 0,
                    committed: None,
                    last_deferred_next: None,
                },
            );
        }
        Record::Body { qid, data } => {
            if let Some(p) = parts.get_mut(&qid) {
                if p.committed.is_none() {
                    p.msg.chunks.push((lsn, framed_len));
                    p.body_bytes += data.len() as u64;
                }
            }
        }
        Record::Commit { qid, size } => {
            if let Some(p) = parts.get_mut(&qid) {
                p.committed = Some(size);
            }
        }
        Record::Delivered { qid, rcpt } => set_state(parts, qid, rcpt, RcptState::Delivered),
        Record::Bounced { qid, rcpt, reason } => set_state(
            parts,
            qid,
            rcpt,
            RcptState::Bounced {
                reason: reason.to_string(),
            },
        ),
        Record::Deferred {
            qid,
            rcpt,
            next_try_unix,
            reason,
        } => {
            if let Some(p) = parts.get_mut(&qid) {
                // One attempt defers all its recipients with the same next try: count attempts.
                if p.last_deferred_next != Some(next_try_unix) {
                    p.msg.deferrals = p.msg.deferrals.saturating_add(1);
                    p.last_deferred_next = Some(next_try_unix);
                }
            }
            set_state(
                parts,
                qid,
                rcpt,
                RcptState::Deferred {
                    reason: reason.to_string(),
                    next_try_unix,
                },
            )
        }
        Record::Done { qid } | Record::Aborted { qid } | Record::Deleted { qid } => {
            parts.remove(&qid);
        }
        Record::Held { qid } => {
            if let Some(p) = parts.get_mut(&qid) {
                p.msg.held = true;
            }
        }
        Record::Released { qid } => {
            if let Some(p) = parts.get_mut(&qid) {
                p.msg.held = false;
            }
        }
        Record::DelayWarned { qid } => {
            if let Some(p) = parts.get_mut(&qid) {
                p.msg.delay_warned = true;
            }
        }
    }
    Ok(())
}

fn set_state(parts: &mut HashMap<QueueId, Partial>, qid: QueueId, rcpt: u32, st: RcptState) {
    if let Some(p) = parts.get_mut(&qid) {
        if let Some(s) = p.msg.states.get_mut(rcpt as usize) {
            // A final state stays final.
            if !matches!(s, RcptState::Delivered | RcptState::Bounced { .. }) {
                *s = st;
            }
        }
    }
}

/// Read and rebuild. In `Mode::Repair` a torn tail is truncated (and fsynced).
pub fn recover(dir: &Path, mode: Mode) -> Result<Recovered, QueueError> {
    let listed = list_segments(dir)?;
    let mut report = RecoveryReport::default();
    let mut parts: HashMap<QueueId, Partial> = HashMap::new();
    let mut segments = Vec::new();
    let mut max_qid = 0u64;
    let mut lsn_base = 0u64;
    let mut payload = Vec::new();
    let count = listed.len();
    for (i, (number, path)) in listed.into_iter().enumerate() {
        let last = i + 1 == count;
        let opened = match mode {
            Mode::Repair => OpenOptions::new().read(true).write(true).open(&path),
            Mode::ReadOnly => File::open(&path),
        };
        let mut file = match opened {
            Ok(f) => f,
            // Deleted by the daemon while we listed: all its mail is done.
            Err(e) if mode == Mode::ReadOnly && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path, e)),
        };
        let file = &mut file;
        let file_len = file.metadata().map_err(|e| io_err(&path, e))?.len();

        // Header.
        let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
        let header_problem = if file_len < SEGMENT_HEADER_BYTES {
            Some("incomplete segment header".to_string())
        } else {
            file.read_exact(&mut h).map_err(|e| io_err(&path, e))?;
            record::check_segment_header(&h, number).err()
        };
        if let Some(what) = header_problem {
            // Only the header of a segment being created can be torn: what is there must be a
            // prefix of the right header, the rest unwritten (zeros). Anything else is not ours.
            let expected = record::segment_header(number);
            let torn_header =
                file_len < SEGMENT_HEADER_BYTES || h.iter().zip(expected.iter()).all(|(a, b)| *a == 0 || a == b);
            if !last || !torn_header {
                return Err(QueueError::Corrupt { path, offset: 0, what });
            }
            // A segment whose creation was interrupted (header not yet durable).
            let _ = check_torn(file, &path, 0, file_len, &what)?;
            if mode == Mode::Repair {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                sync_dir(dir).map_err(|e| io_err(dir, e))?;
                report.truncated_tail = Some((path, 0));
            }
            break;
        }

        // Records, streaming.
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut damage: Option<String> = None;
        {
            let mut reader = BufReader::with_capacity(64 * 1024, &mut *file);
            // Bounded: every iteration advances `offset` by at least one record header.
            while offset < file_len {
                let rest = file_len - offset;
                if rest < RECORD_HEADER_BYTES as u64 {
                    damage = Some("incomplete record header".to_string());
                    break;
                }
                let mut rh = [0u8; RECORD_HEADER_BYTES];
                reader.read_exact(&mut rh).map_err(|e| io_err(&path, e))?;
                let (len, crc) = record::parse_record_header(&rh);
                if len == 0 || len as usize > limits::QUEUE_RECORD_BYTES_MAX {
                    damage = Some(format!("record length {} out of bounds", len));
                    break;
                }
                if len as u64 > rest - RECORD_HEADER_BYTES as u64 {
                    damage = Some("incomplete record".to_string());
                    break;
                }
                payload.resize(len as usize, 0);
                reader.read_exact(&mut payload).map_err(|e| io_err(&path, e))?;
                let actual = crc32fast::hash(&payload);
                if actual != crc {
                    damage = Some(format!(
                        "checksum mismatch (stored {:08x}, computed {:08x})",
                        crc, actual
                    ));
                    break;
                }
                // A record with a good checksum that does not decode is never a torn write.
                let rec = record::decode(&payload).map_err(|what| QueueError::Corrupt {
                    path: path.clone(),
                    offset,
                    what,
                })?;
                max_qid = max_qid.max(rec.qid().0);
                let framed = len + RECORD_HEADER_BYTES as u32;
                let lsn = lsn_base + (offset - SEGMENT_HEADER_BYTES);
                apply(&mut parts, rec, lsn, framed).map_err(|what| QueueError::Corrupt {
                    path: path.clone(),
                    offset,
                    what,
                })?;
                offset += framed as u64;
            }
        }
        if let Some(what) = damage {
            if !last {
                return Err(QueueError::Corrupt { path, offset, what });
            }
            let tail = check_torn(file, &path, offset, file_len, &what)?;
            if mode == Mode::Repair {
                // The next start writes a new segment: this one must end at its records.
                file.set_len(offset).map_err(|e| io_err(&path, e))?;
                file.sync_all().map_err(|e| io_err(&path, e))?;
                if tail == Tail::Torn {
                    report.truncated_tail = Some((path.clone(), offset));
                }
            }
        }
        let end_lsn = lsn_base + (offset - SEGMENT_HEADER_BYTES);
        segments.push(SegMeta {
            number,
            path,
            start_lsn: lsn_base,
            end_lsn,
        });
        lsn_base = end_lsn;
    }

    let mut messages = Vec::new();
    for (_, p) in parts {
        let all_final = p
            .msg
            .states
            .iter()
            .all(|s| matches!(s, RcptState::Delivered | RcptState::Bounced { .. }));
        match p.committed {
            // Every recipient final but no Done record yet (crash in between): it is done.
            Some(size) if size == p.body_bytes && all_final => {}
            Some(size) if size == p.body_bytes => {
                let mut msg = p.msg;
                msg.size = size;
                messages.push(msg);
            }
            _ => report.discarded_uncommitted += 1,
        }
    }
    messages.sort_by_key(|m| m.qid);
    report.segments = segments.len();
    report.messages = messages.len();
    Ok(Recovered {
        segments,
        messages,
        max_qid,
        next_lsn: lsn_base,
        report,
    })
}
