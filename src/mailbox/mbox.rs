//! An mbox file as a POP3 maildrop: the system mailbox of a system user
//! (`mail_spool_directory/USER` or `home_mailbox`), in the mboxrd format that
//! [`crate::delivery::mbox`] writes and documents (From_ lines, `>From ` quoting, X-UIDL).
//!
//! # The file
//!
//! [`MboxDrop::open`] takes an already open, already locked `File` (opened O_RDWR): one the
//! daemon opened and locked itself with [`crate::delivery::mbox::MboxLock`], or one the
//! privileged helper handed over while it holds the locks. The lock must be held for the
//! whole session (the caller's guard is kept inside the [`MboxDrop`] and dropped with it):
//! offsets found at open are used until UPDATE. No descriptor of the file is ever closed
//! while the session lasts (closing any descriptor of a file drops the process's fcntl lock
//! on it): messages are read with `pread` through a shared `Arc<File>`.
//!
//! # Listing
//!
//! One pass over the file ([`MboxReader::scan_lines`], bounded memory: one read buffer and
//! one 1 KiB line head) finds the messages ([`crate::delivery::mbox::starts_message`]) and,
//! per message, keeps 32 bytes of offsets plus its [`Listing`] entry: nothing of the message
//! itself.
//! Bytes before the first From_ line are not a message (reported as a warning, kept on
//! rewrite). At most [`MAILDROP_MESSAGES_MAX`] messages are listed; the rest of the file is
//! not read and is served in a later session.
//!
//! A message is the bytes after its From_ line up to the next From_ line, without the one
//! blank line before that From_ line (or before the end of the file), which separates
//! messages. RETR sends it un-quoted (one `>` less on lines matching `^>+From `).
//!
//! # Sizes
//!
//! RFC 1939 §11, exact: per line of the message, its stored bytes, minus one for a quoted
//! line (the `>` the reader removes), plus one for a bare LF (sent as CR LF), plus two when
//! the last line has no line end at all (the sender adds CR LF, RFC 1939 §3). (A quoted line
//! whose run of `>` is longer than the 1 KiB line head is not seen as quoted: off by one.)
//!
//! # Unique ids (RFC 1939 §7)
//!
//! 1. The first `X-UIDL:` header of the message when it is a valid unique-id (poshta's
//!    delivery writes one into every message; qpopper and others wrote them too).
//! 2. Otherwise the FNV-1a 128-bit hash (as in [`super::maildir`]) of: the From_ line
//!    (without its line end), `\0`, the first `Message-ID:` value, `\0`, the first `Date:`
//!    value (both with unfolding whitespace removed, 256 bytes at most), `\0`, and the decimal
//!    byte count of the stored body (after the header's blank line, without the message's
//!    final line end), as 32 lower-case hex digits. None of these change when the mbox is
//!    rewritten (messages are moved, never edited) or when mutt or Dovecot add or change
//!    `Status:`/`X-Status:`/`X-UID:` headers (headers other than those two are not hashed).
//! 3. Unique within the maildrop: an id already given to an earlier message (two copies of
//!    the same message, a copied X-UIDL) is replaced, for the k-th repeat (k = 1, 2, ...) of
//!    the same step-2 hash, by the hash of `HASH \0dup\0 k` (HASH the 32 hex digits). The ids
//!    of identical copies therefore depend on their order: deleting the first of two
//!    identical messages gives the second the first one's id (a client may download the
//!    same bytes again; it never misses a message).
//!
//! # UPDATE: deleting in place
//!
//! The deleted messages' byte ranges (From_ line to the next From_ line) are cut out by
//! copying every kept byte down over them (`pread`/`pwrite`, 64 KiB at a time), then the
//! file is fsynced, cut to its new length (`ftruncate`) and fsynced again. In place, so it
//! works on a descriptor alone (the helper's; no directory to rename in) and keeps the
//! file's inode, owner and mode. O_APPEND is cleared first (Linux `pwrite` ignores the
//! offset under O_APPEND). The file's length is read again after the copy: bytes appended
//! since the listing (only a writer ignoring the locks can do that) are copied too, never
//! cut off. Before anything is written, every deleted range must still start with `From `
//! and the file must not be shorter than at the listing; otherwise nothing is changed.
//! The copy is not journalled, so a crash of poshta or a power loss in the middle leaves
//! the part already copied down followed by the original bytes from the copy's write
//! position on: no byte of a kept message is lost, some are duplicated. Every kept message
//! wholly copied before the crash, and every one not reached yet, is whole (some twice);
//! the one being moved at that moment, when it is longer than the bytes deleted before it,
//! shows a slice of itself twice (and so does the last message if the crash comes between
//! the last copy and the truncation). That is the guarantee Dovecot's in-place mbox
//! rewrite gives ("data should never get lost (only duplicated)", its mbox format notes).
//! A journal, or copying the kept bytes past the end first, would close the window; not
//! done.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::delivery::mbox::{starts_message, x_uidl, Line, MboxReader, Unquoter};

use super::{DeleteReport, Listing, MailboxError, UidAt, MAILDROP_MESSAGES_MAX, MAILDROP_WARNINGS_MAX};

/// Read/copy buffer.
const CHUNK_BYTES: usize = 64 * 1024;
/// The most bytes of a Message-ID or Date value that go into a hashed unique id.
const HASHED_FIELD_BYTES_MAX: usize = 256;
/// Passes re-reading the file length before truncating (each copies what was appended).
const TAIL_PASSES_MAX: usize = 8;
/// Tries at a unique id for one message before it is left out of the listing.
const UID_TRIES_MAX: u64 = 64;

/// Where a listed message is in the file.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Offset of its From_ line.
    offset: u64,
    /// First byte after the From_ line.
    body_start: u64,
    /// End of the message (before the separating blank line).
    end: u64,
    /// Start of the next message, or the end of the listed part of the file: what
    /// deleting it removes.
    range_end: u64,
}

/// Something the session keeps alive while the mailbox is open (the lock).
pub type Guard = Box<dyn std::any::Any + Send + Sync>;

/// One POP3 session's view of an mbox (see the module doc).
pub struct MboxDrop {
    origin: PathBuf,
    file: Option<Arc<File>>,
    entries: Arc<Listing>,
    spans: Vec<Span>,
    /// Bytes of the file the listing covers.
    scanned_bytes: u64,
    warnings: Vec<String>,
    /// Declared last: released after the file is closed.
    _guard: Option<Guard>,
}

impl std::fmt::Debug for MboxDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MboxDrop")
            .field("origin", &self.origin)
            .field("messages", &self.entries.len())
            .field("scanned_bytes", &self.scanned_bytes)
            .finish()
    }
}

/// Which header a continuation line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MessageId,
    Date,
}

/// The message being scanned.
#[derive(Default)]
struct Current {
    offset: u64,
    body_start: u64,
    /// CRLF size so far (lines after the From_ line).
    size: u64,
    in_header: bool,
    /// Offset after the header's blank line.
    header_end: Option<u64>,
    uidl: Option<String>,
    from_line: Vec<u8>,
    message_id: Option<Vec<u8>>,
    date: Option<Vec<u8>>,
    capturing: Option<Field>,
    /// End of the last line seen, and that line's line-end bytes (0, 1 or 2).
    end: u64,
    last_eol: u64,
    /// The line-end bytes of the line before the last one.
    prev_eol: u64,
    /// The last line seen was blank: its bytes, and its contribution to `size`.
    blank: Option<(u64, u64)>,
}

/// What the scan collects before unique ids are assigned.
struct Listed {
    size: u64,
    span: Span,
    uidl: Option<String>,
    hash: u128,
}

struct Scan {
    listed: Vec<Listed>,
    cur: Option<Current>,
    prev_blank: bool,
    leading_junk: u64,
    more: bool,
}

fn trim_ws(v: &[u8]) -> impl Iterator<Item = &u8> {
    v.iter().filter(|b| !b.is_ascii_whitespace())
}

fn header_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let n = name.len();
    (head.len() > n && head[..n].eq_ignore_ascii_case(name)).then(|| &head[n..])
}

fn push_bounded(to: &mut Vec<u8>, bytes: &[u8]) {
    for &b in trim_ws(bytes) {
        if to.len() >= HASHED_FIELD_BYTES_MAX {
            break;
        }
        to.push(b);
    }
}

/// FNV-1a 128 (the parameters of [`super::maildir`]'s ids), fed in pieces.
struct Fnv(u128);

impl Fnv {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = (1 << 88) + 0x13b;

    fn new() -> Fnv {
        Fnv(Self::OFFSET_BASIS)
    }

    fn feed(&mut self, bytes: &[u8]) -> &mut Fnv {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }
}

impl Current {
    fn start(line: &Line<'_>) -> Current {
        let mut from_line = line.head.to_vec();
        while matches!(from_line.last(), Some(b'\n' | b'\r')) {
            from_line.pop();
        }
        Current {
            offset: line.start,
            body_start: line.start + line.len,
            in_header: true,
            from_line,
            end: line.start + line.len,
            ..Current::default()
        }
    }

    fn line(&mut self, l: &Line<'_>) {
        let blank = l.is_blank();
        // RFC 1939 §3/§11: sent with CR LF; the reader drops one '>' of a quoted line.
        let quoted = {
            let rest = l.head.iter().position(|&b| b != b'>').map(|i| (i, &l.head[i..]));
            matches!(rest, Some((i, r)) if i > 0 && r.starts_with(b"From "))
        };
        let mut size = l.len - u64::from(quoted);
        if l.lf && !l.crlf {
            size += 1;
        }
        if !l.lf {
            size += 2;
        }
        self.size += size;
        self.end = l.start + l.len;
        self.prev_eol = self.last_eol;
        self.last_eol = if l.crlf { 2 } else { u64::from(l.lf) };
        self.blank = blank.then_some((l.len, size));
        if self.in_header {
            if blank {
                self.in_header = false;
                self.header_end = Some(self.end);
                self.capturing = None;
            } else if matches!(l.head.first(), Some(b' ' | b'\t')) {
                // RFC 5322 §2.2.3: a folded continuation of the header before it.
                match self.capturing {
                    Some(Field::MessageId) => push_bounded(self.message_id.get_or_insert_with(Vec::new), l.head),
                    Some(Field::Date) => push_bounded(self.date.get_or_insert_with(Vec::new), l.head),
                    None => {}
                }
            } else {
                self.capturing = None;
                if self.uidl.is_none() {
                    if let Some(v) = x_uidl(l.head) {
                        self.uidl = Some(v);
                        return;
                    }
                }
                if self.message_id.is_none() {
                    if let Some(v) = header_value(l.head, b"message-id:") {
                        let mut to = Vec::new();
                        push_bounded(&mut to, v);
                        self.message_id = Some(to);
                        self.capturing = Some(Field::MessageId);
                        return;
                    }
                }
                if self.date.is_none() {
                    if let Some(v) = header_value(l.head, b"date:") {
                        let mut to = Vec::new();
                        push_bounded(&mut to, v);
                        self.date = Some(to);
                        self.capturing = Some(Field::Date);
                    }
                }
            }
        }
    }

    /// The message ends at `range_end` (the next From_ line or the end of the listing).
    fn finish(self, range_end: u64) -> Listed {
        let (mut end, mut size) = (self.end, self.size);
        let mut last_eol = self.last_eol;
        // The blank line before the next From_ line (or the end) separates messages: it is
        // not part of the message (as in MboxReader::scan).
        if let Some((bytes, contrib)) = self.blank {
            end -= bytes;
            size -= contrib;
            last_eol = self.prev_eol;
        }
        let header_end = self.header_end.unwrap_or(end).min(end);
        // Without the final line end: a damaged last message that delivery later completes
        // with "\n" keeps its id.
        let body = (end - header_end).saturating_sub(last_eol.min(end - header_end));
        let mut h = Fnv::new();
        h.feed(&self.from_line)
            .feed(b"\0")
            .feed(self.message_id.as_deref().unwrap_or_default())
            .feed(b"\0")
            .feed(self.date.as_deref().unwrap_or_default())
            .feed(b"\0")
            .feed(body.to_string().as_bytes());
        Listed {
            size,
            span: Span {
                offset: self.offset,
                body_start: self.body_start,
                end,
                range_end,
            },
            uidl: self.uidl,
            hash: h.0,
        }
    }
}

impl Scan {
    fn line(&mut self, l: &Line<'_>) -> bool {
        if starts_message(l.head, l.start == 0, self.prev_blank) {
            if let Some(cur) = self.cur.take() {
                self.listed.push(cur.finish(l.start));
            }
            if self.listed.len() >= MAILDROP_MESSAGES_MAX {
                self.more = true;
                return false;
            }
            self.cur = Some(Current::start(l));
            self.prev_blank = false;
            return true;
        }
        self.prev_blank = l.is_blank();
        match &mut self.cur {
            Some(cur) => cur.line(l),
            None => self.leading_junk = l.start + l.len,
        }
        true
    }
}

fn hex(h: u128) -> String {
    format!("{h:032x}")
}

impl MboxDrop {
    /// A maildrop with no messages (no mailbox file yet).
    pub fn empty(origin: &Path) -> MboxDrop {
        MboxDrop {
            origin: origin.to_path_buf(),
            file: None,
            entries: Arc::default(),
            spans: Vec::new(),
            scanned_bytes: 0,
            warnings: Vec::new(),
            _guard: None,
        }
    }

    /// List the mbox open (O_RDWR) and locked in `file`; `guard` (the lock) is kept until
    /// the maildrop is dropped. `origin` names the mailbox in logs.
    pub fn open(file: File, origin: &Path, guard: Option<Guard>) -> Result<MboxDrop, MailboxError> {
        let mut scan = Scan {
            listed: Vec::new(),
            cur: None,
            prev_blank: false,
            leading_junk: 0,
            more: false,
        };
        let scanned_bytes = MboxReader::over(&file)
            .scan_lines(&mut |l| scan.line(l))
            .map_err(|e| MailboxError::io(origin, e))?;
        if let Some(cur) = scan.cur.take() {
            scan.listed.push(cur.finish(scanned_bytes));
        }
        let mut warnings = Vec::new();
        if scan.leading_junk > 0 {
            warnings.push(format!(
                "{} bytes before the first From_ line are not a message (kept)",
                scan.leading_junk
            ));
        }
        if scan.more {
            warnings.push(format!(
                "messages beyond the first {MAILDROP_MESSAGES_MAX} are not listed this session"
            ));
        }
        let (entries, spans) = assign_uids(scan.listed, &mut warnings);
        warnings.truncate(MAILDROP_WARNINGS_MAX);
        Ok(MboxDrop {
            origin: origin.to_path_buf(),
            file: Some(Arc::new(file)),
            entries: Arc::new(entries),
            spans,
            scanned_bytes,
            warnings,
            _guard: guard,
        })
    }

    pub fn listing(&self) -> &Arc<Listing> {
        &self.entries
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes of the file the listing covers.
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned_bytes
    }

    /// Message `index` (0-based), un-quoted, streamed from the file.
    pub fn open_message(&self, index: usize) -> Result<MboxMessage, MailboxError> {
        let span = self.spans.get(index).ok_or(MailboxError::Gone)?;
        let file = self.file.clone().ok_or(MailboxError::Gone)?;
        Ok(MboxMessage {
            file,
            pos: span.body_start,
            end: span.end,
            unquote: Unquoter::new(),
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            done: false,
        })
    }

    /// RFC 1939 §6 (UPDATE): cut the messages at `indexes` out of the file, in place (see
    /// the module doc). Durable (fsynced) when it returns Ok.
    pub fn update(&self, indexes: &[usize]) -> Result<DeleteReport, MailboxError> {
        let mut report = DeleteReport::default();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(indexes.len());
        for &i in indexes {
            match self.spans.get(i) {
                Some(s) => ranges.push((s.offset, s.range_end)),
                None => report.failed.push(format!("no message at index {i}")),
            }
        }
        ranges.sort_unstable();
        ranges.dedup();
        let Some(file) = &self.file else {
            return Ok(report);
        };
        if ranges.is_empty() {
            return Ok(report);
        }
        let io = |e: std::io::Error| MailboxError::io(&self.origin, e);
        let len = file.metadata().map_err(io)?.len();
        if len < self.scanned_bytes {
            return Err(io(std::io::Error::other(format!(
                "mailbox shrank from {} to {len} bytes during the session: nothing deleted",
                self.scanned_bytes
            ))));
        }
        let mut probe = [0u8; 5];
        for &(start, _) in &ranges {
            read_exact_at(file, &mut probe, start).map_err(io)?;
            if &probe != b"From " {
                return Err(io(std::io::Error::other(format!(
                    "no From_ line at offset {start} any more: mailbox changed, nothing deleted"
                ))));
            }
        }
        clear_append(file).map_err(io)?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut w = ranges[0].0;
        for (k, &(_, end)) in ranges.iter().enumerate() {
            let next = ranges.get(k + 1).map_or(self.scanned_bytes, |r| r.0);
            copy_down(file, end, next, &mut w, &mut buf).map_err(io)?;
        }
        // Whatever lies after the listing (more messages, or bytes a writer ignoring the
        // locks appended meanwhile) moves down too; look again until the length holds.
        let mut from = self.scanned_bytes;
        let mut stable = false;
        for _ in 0..TAIL_PASSES_MAX {
            let now = file.metadata().map_err(io)?.len();
            if now <= from {
                stable = true;
                break;
            }
            copy_down(file, from, now, &mut w, &mut buf).map_err(io)?;
            from = now;
        }
        if !stable {
            // Still growing: leave the file long (kept messages, some twice) rather than
            // cut what was just appended.
            return Err(io(std::io::Error::other("mailbox kept growing during the rewrite")));
        }
        // The moved bytes are durable before the old tail is cut off.
        crash_point(file, &[], 0).map_err(io)?;
        file.sync_data().map_err(io)?;
        file.set_len(w).map_err(io)?;
        file.sync_all().map_err(io)?;
        report.deleted = ranges.len();
        Ok(report)
    }
}

/// `pread` until `buf` is full (EOF is an error: the file shrank).
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    file.read_exact_at(buf, at)
}

/// Clear O_APPEND (Linux `pwrite` appends under it, whatever the offset).
fn clear_append(file: &File) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    if flags.contains(rustix::fs::OFlags::APPEND) {
        rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::APPEND)?;
    }
    Ok(())
}

/// Copy `[from, to)` to `*w` (never above `from`), advancing `*w`.
fn copy_down(file: &File, mut from: u64, to: u64, w: &mut u64, buf: &mut [u8]) -> std::io::Result<()> {
    if *w == from {
        // Nothing deleted before this part: it stays where it is.
        *w = to;
        return Ok(());
    }
    while from < to {
        let n = usize::try_from(to - from).unwrap_or(usize::MAX).min(buf.len());
        file.read_exact_at(&mut buf[..n], from)?;
        crash_point(file, &buf[..n], *w)?;
        file.write_all_at(&buf[..n], *w)?;
        from += n as u64;
        *w += n as u64;
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Test hook: after this many more writes of the rewrite, behave as if poshta died in
    /// the next one (half of it written, then nothing more).
    static CRASH_AFTER_WRITES: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Where the rewrite may die (tests: `CRASH_AFTER_WRITES`); `chunk` is about to go to `at`.
#[cfg(test)]
fn crash_point(file: &File, chunk: &[u8], at: u64) -> std::io::Result<()> {
    match CRASH_AFTER_WRITES.with(|c| c.get()) {
        Some(0) => {
            // A write cut short by a kill: the kernel copies pages in order.
            file.write_all_at(&chunk[..chunk.len() / 2], at)?;
            Err(std::io::Error::other("simulated crash"))
        }
        Some(n) => {
            CRASH_AFTER_WRITES.with(|c| c.set(Some(n - 1)));
            Ok(())
        }
        None => Ok(()),
    }
}

#[cfg(not(test))]
#[inline(always)]
fn crash_point(_: &File, _: &[u8], _: u64) -> std::io::Result<()> {
    Ok(())
}

/// The set key of an id: its FNV-1a 128 hash (16 bytes per message instead of a string;
/// two different ids share one with probability around 2^-128).
fn key(uid: &str) -> u128 {
    Fnv::new().feed(uid.as_bytes()).0
}

/// RFC 1939 §7 ids, unique within the maildrop (see the module doc).
fn assign_uids(listed: Vec<Listed>, warnings: &mut Vec<String>) -> (Listing, Vec<Span>) {
    let mut seen: HashSet<u128> = HashSet::with_capacity(listed.len());
    let mut repeats: HashMap<u128, u64> = HashMap::new();
    // Ids are at most UID_BYTES_MAX; the 32-digit hashes are the common case.
    let mut entries = Listing::with_capacity(listed.len(), listed.len() * 32);
    let mut spans = Vec::with_capacity(listed.len());
    for l in listed {
        let uid = match l.uidl {
            Some(u) if !seen.contains(&key(&u)) => Some(u),
            _ => {
                let base = hex(l.hash);
                let k = repeats.entry(l.hash).or_insert(0);
                let mut found = None;
                for _ in 0..UID_TRIES_MAX {
                    let candidate = if *k == 0 {
                        base.clone()
                    } else {
                        let mut h = Fnv::new();
                        h.feed(base.as_bytes()).feed(b"\0dup\0").feed(k.to_string().as_bytes());
                        hex(h.0)
                    };
                    *k += 1;
                    if !seen.contains(&key(&candidate)) {
                        found = Some(candidate);
                        break;
                    }
                }
                found
            }
        };
        let Some(uid) = uid else {
            if warnings.len() < MAILDROP_WARNINGS_MAX {
                warnings.push(format!(
                    "message at offset {}: no unique id left, skipped",
                    l.span.offset
                ));
            }
            continue;
        };
        seen.insert(key(&uid));
        if entries.push(b"", UidAt::Own(&uid), l.size, false) {
            spans.push(l.span);
        }
    }
    entries.shrink_to_fit();
    (entries, spans)
}

/// One message being read: un-quoted bytes of its stored range, in bounded chunks.
#[derive(Debug)]
pub struct MboxMessage {
    file: Arc<File>,
    pos: u64,
    end: u64,
    unquote: Unquoter,
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    done: bool,
}

impl Read for MboxMessage {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = dst.len().min(self.out.len() - self.out_pos);
                dst[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if self.done || dst.is_empty() {
                return Ok(0);
            }
            self.out.clear();
            self.out_pos = 0;
            if self.pos >= self.end {
                self.unquote.finish(&mut self.out);
                self.done = true;
                continue;
            }
            if self.buf.is_empty() {
                self.buf.resize(CHUNK_BYTES, 0);
            }
            let want = usize::try_from(self.end - self.pos)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match self.file.read_at(&mut self.buf[..want], self.pos) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "mailbox shorter than at the listing",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            self.unquote.feed(&self.buf[..n], &mut self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module doc's promise for a crash in the middle of UPDATE, checked at every write
    /// of the rewrite (and between the last copy and the truncation): every kept message is
    /// still in the file whole, except at most the one being moved, and of that one no byte
    /// is lost: its copied head is followed by the rest of it, a slice as long as the bytes
    /// deleted before it repeated.
    #[test]
    fn a_crash_at_any_write_of_the_rewrite_loses_no_byte_of_a_kept_message() {
        let dir = std::env::temp_dir().join(format!("poshta-mbox-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mbox");
        // Sizes around the 64 KiB copy chunk; every line numbered, so no two slices look alike.
        let sizes = [3_000, 150_000, 200, 90_000, 1_000, 70_000];
        let msgs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut m = format!("From s{i}@x Sat Nov 28 01:59:0{i} 2026\nSubject: {i}\n\n").into_bytes();
                let mut k = 0;
                while m.len() < n {
                    m.extend_from_slice(format!("message {i} line {k:06} of its body\n").as_bytes());
                    k += 1;
                }
                m.push(b'\n');
                m
            })
            .collect();
        let original = msgs.concat();
        let (mut crashes, mut moving_damaged) = (0, 0);
        for deleted in [vec![0], vec![2], vec![0, 3], vec![1, 4], vec![0, 2, 4]] {
            let mut before = 0; // bytes deleted before each message
            let mut gap = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                gap.push(before);
                if deleted.contains(&i) {
                    before += m.len();
                }
            }
            for k in 0.. {
                std::fs::write(&path, &original).unwrap();
                let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
                let drop = MboxDrop::open(file, &path, None).unwrap();
                assert_eq!(drop.listing().len(), msgs.len());
                CRASH_AFTER_WRITES.with(|c| c.set(Some(k)));
                let r = drop.update(&deleted);
                CRASH_AFTER_WRITES.with(|c| c.set(None));
                std::mem::drop(drop);
                let after = std::fs::read(&path).unwrap();
                if r.is_ok() {
                    let kept: Vec<u8> = (0..msgs.len())
                        .filter(|i| !deleted.contains(i))
                        .flat_map(|i| msgs[i].clone())
                        .collect();
                    assert_eq!(after, kept, "{deleted:?}: the finished rewrite");
                    break;
                }
                crashes += 1;
                let mut damaged = 0;
                for (i, m) in msgs.iter().enumerate().filter(|(i, _)| !deleted.contains(i)) {
                    if find(&after, m).is_some() {
                        continue;
                    }
                    damaged += 1;
                    let d = gap[i];
                    let first_line = &m[..m.iter().position(|&b| b == b'\n').unwrap() + 1];
                    let p = find(&after, first_line).unwrap_or_else(|| panic!("{deleted:?} k={k}: message {i} gone"));
                    let x = after[p..].iter().zip(m.iter()).take_while(|(a, b)| a == b).count();
                    let whole =
                        (x.saturating_sub(64).max(d)..=x).any(|x| x >= d && after[p + x..].starts_with(&m[x - d..]));
                    assert!(
                        whole,
                        "{deleted:?} k={k}: message {i} lost bytes (copied {x} of {})",
                        m.len()
                    );
                }
                assert!(damaged <= 1, "{deleted:?} k={k}: {damaged} messages damaged");
                moving_damaged += damaged;
            }
        }
        // Both cases were met: crashes that left every message whole, and ones in a move.
        assert!(
            crashes > 20 && moving_damaged > 0 && moving_damaged < crashes,
            "{crashes} {moving_damaged}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
}
