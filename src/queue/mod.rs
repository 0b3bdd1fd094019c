//! The append-only log queue. On-disk format and recovery rules: see [`record`].
//!
//! Public surface used by the rest of poshta (the I/O shell and the delivery runner):
//! - [`Queue::open`] recovers the index from the segments (blocking; called once at start).
//! - [`Queue::run_writer`] is the one task that writes and fsyncs (group commit).
//! - [`Queue::begin`] / [`Incoming`] take a message in; `commit` returns only once durable.
//! - [`Queue::ready`], [`Queue::finish`], [`Queue::body`] feed delivery.
//! - [`Queue::list`] and [`scan`] feed `poshta queue` / mailq.
//!
//! Files: `record` (format), `log` (segment writer over `embedded_io::Write`, body reader),
//! `recover` (streaming recovery), `schedule` (index and backoff), `tests`.
//!
//! # Writing
//!
//! Appenders encode records into one pending buffer; every record has a log position (lsn:
//! bytes appended since the oldest segment, headers not counted). The writer task swaps the
//! buffer out and, in one `smol::unblock` call, writes it and fdatasyncs it (a group commit),
//! then wakes every waiter whose records end at or below the batch end. More than
//! limits::QUEUE_PENDING_BYTES_MAX pending bytes make `Incoming::write` wait.
//!
//! A batch is written only when something waits for it: a commit, a `sync`, delivery
//! results and administrative records (whose segments may then go), an Aborted record, or
//! an `Incoming::write` waiting for room. An envelope or a body chunk on its own stays
//! pending and goes with the next such batch, so a message costs one fdatasync, not one
//! per record that happened to be alone in the buffer. Nothing is lost by the wait: a
//! message is acknowledged only after its commit's batch, which carries its earlier
//! records too.
//!
//! Within a segment, file offset = header + (lsn - segment start), which is how body chunks
//! are found. A failed batch (ENOSPC: `QueueError::Full`) is truncated off the segment; every
//! waiter whose first record is before the failed batch's end fails (its message is aborted,
//! its commit returns the error); the next batch starts a new segment, so offsets and lsns
//! stay in step. Later batches succeed once space is back.
//!
//! # Deleting
//!
//! A segment goes only when it is not the current one, every older segment is gone, and no
//! live message (received, committed-not-done, or with its Done/Aborted not yet written) has
//! its first record in it or before it: a message's first record pins every segment from
//! there on. Otherwise a Done record could vanish while the envelope of the same message
//! survives, and the message would be delivered again. The directory is fsynced after each
//! deletion. Long-deferred messages pin old segments (compaction, copying them forward, is
//! not done yet).

pub mod log;
pub mod record;
pub mod recover;
pub mod schedule;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use event_listener::Event;

use crate::limits;
use log::{BodyReaderInner, ChunkLoc, DynSink, FsStorage, SegmentWriter, SinkError, Storage};
use record::Record;
use recover::{recover, Mode, SegMeta};
use schedule::Msg;

/// A queue id: unique in this queue for its lifetime. Shown as uppercase hex (mailq, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012X}", self.0)
    }
}

/// The envelope of a message, as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path without brackets; "" is the null sender.
    pub sender: String,
    /// Forward paths as accepted (`local@domain`); routing is decided at delivery time.
    pub recipients: Vec<String>,
    /// Arrival time, seconds since the Unix epoch.
    pub arrival_unix: u64,
    /// `host[ip]` of the client, for logs and mailq.
    pub client: String,
}

/// The same recipient twice in one envelope: equal local parts (as sent: RFC 5321 §2.4 lets
/// the receiving host decide their case) and equal domains in any case (§2.4: domains are
/// case-insensitive). `local_ci` compares the local parts in any case too: for recipients
/// of this host, whose names poshta resolves without regard to case.
pub fn same_recipient(a: &str, b: &str, local_ci: bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => {
            (if local_ci {
                la.eq_ignore_ascii_case(lb)
            } else {
                la == lb
            }) && da.eq_ignore_ascii_case(db)
        }
        (None, None) => {
            if local_ci {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        }
        _ => false,
    }
}

/// Keep the first of recipients repeated in one envelope (Postfix's cleanup(8) does the
/// same): one message must not become many copies in one mailbox because a client (or a
/// `sendmail` command line) named the same address again, up to smtpd_recipient_limit times.
pub(crate) fn dedup_recipients(rcpts: &mut Vec<String>) {
    if rcpts.len() < 2 {
        return;
    }
    // One pass with a set, not n² comparisons on the event loop (an envelope may name up to
    // smtpd_recipient_limit addresses). The key is `same_recipient`'s rule without
    // `local_ci`: the local part as sent, the domain lowercased.
    let mut seen = std::collections::HashSet::with_capacity(rcpts.len());
    rcpts.retain(|r| {
        let key = match r.rsplit_once('@') {
            Some((l, d)) => format!("{l}@{}", d.to_ascii_lowercase()),
            None => r.clone(),
        };
        seen.insert(key)
    });
}

/// The state of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Deferred { reason: String, next_try_unix: u64 },
    Delivered,
    Bounced { reason: String },
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later; the queue computes the next try from the backoff settings.
    Deferred {
        reason: String,
    },
    Bounced {
        reason: String,
    },
}

/// Settings the queue takes from main.cf.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// minimal_backoff_time (Postfix default 300s).
    pub minimal_backoff_secs: u64,
    /// maximal_backoff_time (Postfix default 4000s).
    pub maximal_backoff_secs: u64,
    /// Segment size target (limits::QUEUE_SEGMENT_BYTES_TARGET by default; small in tests).
    pub segment_bytes_target: u64,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub messages: usize,
    /// Messages without a commit record, discarded.
    pub discarded_uncommitted: usize,
    /// Bytes cut from a torn tail (segment path, offset) if any.
    pub truncated_tail: Option<(PathBuf, u64)>,
}

/// Errors, with the path and offset where they apply.
#[derive(Debug)]
pub enum QueueError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The disk is full (ENOSPC / EDQUOT): answer 452 4.3.1.
    Full {
        path: PathBuf,
    },
    /// A bad record before the tail: start-up must stop with this message.
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    UnknownId(QueueId),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            QueueError::Full { path } => write!(f, "{}: no space left on device", path.display()),
            QueueError::Corrupt { path, offset, what } => {
                write!(
                    f,
                    "{}: corrupt queue log at offset {}: {}",
                    path.display(),
                    offset,
                    what
                )
            }
            QueueError::UnknownId(id) => write!(f, "{}: no such message", id),
        }
    }
}

impl std::error::Error for QueueError {}

/// One message as listed by mailq.
#[derive(Debug, Clone)]
pub struct MessageInfo {
    pub qid: QueueId,
    pub size: u64,
    pub arrival_unix: u64,
    pub sender: String,
    /// On hold (`poshta queue hold`): mailq marks it with `!`.
    pub held: bool,
    /// A delivery attempt is running (only the daemon knows; mailq marks it with `*`).
    pub in_flight: bool,
    /// Recipients not yet final, with their state.
    pub recipients: Vec<(String, RcptState)>,
}

/// What `Queue::delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Gone from the queue.
    Deleted,
    /// A delivery attempt is running: the `Deleted` record is written, so it stays deleted
    /// after a restart, but the attempt in progress completes (it may still deliver); the
    /// message leaves the index when the attempt finishes.
    AfterAttempt,
}

/// A delivery job: one message with the recipients due now.
#[derive(Debug, Clone)]
pub struct Job {
    pub qid: QueueId,
    pub sender: String,
    pub arrival_unix: u64,
    pub size: u64,
    /// (index in the envelope, address)
    pub recipients: Vec<(usize, String)>,
    /// The sender already got its delay notice.
    pub delay_warned: bool,
}

/// A failed batch, as told to every waiter whose record was in it (or after it, in the same
/// message).
#[derive(Debug, Clone)]
struct Failure {
    path: PathBuf,
    full: bool,
    kind: std::io::ErrorKind,
    text: String,
}

impl Failure {
    fn new(path: PathBuf, e: &std::io::Error) -> Failure {
        Failure {
            path,
            full: log::is_full(e),
            kind: e.kind(),
            text: e.to_string(),
        }
    }

    fn to_error(&self) -> QueueError {
        if self.full {
            QueueError::Full {
                path: self.path.clone(),
            }
        } else {
            QueueError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(self.kind, self.text.clone()),
            }
        }
    }
}

/// Someone waiting for records up to `end_lsn` to be durable.
struct Waiter {
    /// The first record this waiter depends on: any failed batch after it fails the waiter.
    start_lsn: u64,
    end_lsn: u64,
    /// For a commit: the message to index once durable.
    msg: Option<Msg>,
    tx: AnswerTx,
}

/// A waiter's answer, on the loop's thread (the queue's state is an `Rc`). A
/// `smol::channel` per commit was an allocation in a size class that musl's allocator
/// unmapped and mapped again message after message (gdb on munmap, c=2: 0.27 a message);
/// this is one small `Rc`.
#[derive(Default)]
struct AnswerSlot {
    value: Cell<Option<Result<(), Failure>>>,
    waker: Cell<Option<std::task::Waker>>,
}

/// The writer's end: answers once. Dropped without an answer (the writer stopped), the
/// waiter hears `None`.
struct AnswerTx(Rc<AnswerSlot>);

impl AnswerTx {
    fn send(self, r: Result<(), Failure>) {
        self.0.value.set(Some(r));
        // Drop wakes the waiter.
    }
}

impl Drop for AnswerTx {
    fn drop(&mut self) {
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
    }
}

/// The waiting end.
struct AnswerRx(Rc<AnswerSlot>);

impl AnswerRx {
    async fn recv(self) -> Option<Result<(), Failure>> {
        std::future::poll_fn(|cx| {
            if let Some(v) = self.0.value.take() {
                return std::task::Poll::Ready(Some(v));
            }
            // No answer, and the writer's end is gone (the slot's only other owner).
            if Rc::strong_count(&self.0) == 1 {
                return std::task::Poll::Ready(None);
            }
            self.0.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await
    }
}

fn answer() -> (AnswerTx, AnswerRx) {
    let slot = Rc::new(AnswerSlot::default());
    (AnswerTx(slot.clone()), AnswerRx(slot))
}

/// The writer's side: moved into `smol::unblock` for each batch and back.
struct Disk {
    dir: PathBuf,
    storage: Box<dyn Storage>,
    seg: SegmentWriter<DynSink>,
    /// Start a new segment before the next write (after a failed write: log positions and
    /// file offsets must stay in step within a segment).
    rotate: bool,
    /// A failed batch could not be cut off yet; retry before writing anything after it.
    needs_rollback: bool,
}

impl Disk {
    /// Create segment `number` (O_EXCL), header, fsync file, fsync directory.
    fn create_segment(
        dir: &Path,
        storage: &mut dyn Storage,
        number: u32,
    ) -> Result<SegmentWriter<DynSink>, (PathBuf, std::io::Error)> {
        let path = dir.join(record::segment_file_name(number));
        let sink = match storage.create(&path) {
            Ok(s) => s,
            // Only a leftover of our own failed attempt can be there: we hold the lock and
            // `number` is past the last segment.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&path).map_err(|e| (path.clone(), e))?;
                storage.create(&path).map_err(|e| (path.clone(), e))?
            }
            Err(e) => return Err((path, e)),
        };
        match SegmentWriter::create(sink, number, path.clone()) {
            Ok(w) => {
                log::sync_dir(dir).map_err(|e| (path.clone(), e))?;
                Ok(w)
            }
            Err(SinkError(e)) => {
                // Best effort: a leftover is removed by the next attempt.
                let _ = std::fs::remove_file(&path);
                Err((path, e))
            }
        }
    }

    /// Write one batch durably. Returns the new segment if one was started, and the result.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: &[u8],
        target: u64,
    ) -> (Option<(u32, PathBuf)>, Result<(), (PathBuf, std::io::Error)>) {
        if self.needs_rollback {
            if let Err(SinkError(e)) = self.seg.rollback() {
                return (None, Err((self.seg.path().to_path_buf(), e)));
            }
            self.needs_rollback = false;
        }
        let mut new_segment = None;
        let has_records = self.seg.durable_len() > record::SEGMENT_HEADER_BYTES;
        if self.rotate || (has_records && self.seg.durable_len() >= target) {
            // Only the last segment may end in preallocated zeros (`record`): cut them before
            // there is a next one. Failing, nothing is written and the rotation is retried.
            if let Err(SinkError(e)) = self.seg.seal() {
                self.rotate = true;
                return (None, Err((self.seg.path().to_path_buf(), e)));
            }
            let number = self.seg.number().saturating_add(1);
            match Disk::create_segment(&self.dir, self.storage.as_mut(), number) {
                Ok(w) => {
                    new_segment = Some((number, w.path().to_path_buf()));
                    self.seg = w;
                    self.rotate = false;
                }
                Err(e) => return (None, Err(e)),
            }
        }
        match self.seg.append(batch) {
            Ok(()) => (new_segment, Ok(())),
            Err(SinkError(e)) => {
                // Nothing half-written may stay in front of later records.
                if self.seg.rollback().is_err() {
                    self.needs_rollback = true;
                }
                self.rotate = true;
                (new_segment, Err((self.seg.path().to_path_buf(), e)))
            }
        }
    }
}

struct Inner {
    dir: PathBuf,
    opts: QueueOptions,
    /// Committed messages not done, by id (= arrival order).
    index: BTreeMap<QueueId, Msg>,
    next_qid: u64,
    /// Encoded records not yet handed to the writer; `pending[0]` is at log position `taken_lsn`.
    pending: Vec<u8>,
    spare: Vec<u8>,
    taken_lsn: u64,
    /// Every batch up to here has been written (or failed).
    resolved_lsn: u64,
    /// End of the most recent failed batch (0: none) and what failed.
    failure_end_lsn: u64,
    failure: Option<Failure>,
    waiters: Vec<Waiter>,
    /// The waiters a batch answers, and those it leaves waiting, sorted out of `waiters`
    /// into these two (kept empty between batches so their room is reused: two new Vecs
    /// per batch were one more churning allocation class).
    answering: Vec<Waiter>,
    waiters_spare: Vec<Waiter>,
    /// Messages that still need their records: first log position -> id. Receiving ones too.
    live: BTreeMap<u64, QueueId>,
    /// (end of the Done/Aborted record, first position): leave `live` once that is written.
    retire: VecDeque<(u64, u64)>,
    /// Oldest first; the last one is the writer's current segment.
    segments: VecDeque<SegMeta>,
    /// None while the writer has it.
    disk: Option<Disk>,
    /// Held for the life of the queue: one writer per directory.
    _lock: std::fs::File,
    /// This opening of the queue, unique in the process: the segment descriptor body
    /// readers share is kept for one opening only (`log::open_segment`).
    generation: u64,
    /// The writer task was dropped in the middle of a batch: the segment writer went with it,
    /// so nothing more can be written.
    writer_lost: bool,
    /// Something waits for the pending records (a commit, a sync, delivery results, room
    /// for a body): the writer writes a batch. Records nobody waits for yet (an envelope,
    /// body chunks) stay pending and go with the next such batch: at concurrency 1 each
    /// message took 1.2 batches (fdatasync and two thread hand-offs each), now one.
    flush_wanted: bool,
}

impl Inner {
    fn append(&mut self, rec: &Record<'_>) -> Result<(u64, u64), QueueError> {
        let lsn = self.taken_lsn + self.pending.len() as u64;
        let n = record::encode(rec, &mut self.pending).map_err(|e| QueueError::Io {
            path: self.dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        Ok((lsn, lsn + n as u64))
    }

    fn writer_lost_error(&self) -> QueueError {
        QueueError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("queue writer stopped"),
        }
    }

    fn appended_lsn(&self) -> u64 {
        self.taken_lsn + self.pending.len() as u64
    }

    /// End a message that will not be committed: log Aborted, release its segments later.
    fn abort(&mut self, qid: QueueId, first_lsn: u64) {
        // Written soon, so that its segments can go.
        self.flush_wanted = true;
        let end = match self.append(&Record::Aborted { qid }) {
            Ok((_, end)) => end,
            // Cannot happen for a fixed-size record; without it recovery still discards the
            // uncommitted message.
            Err(_) => self.appended_lsn(),
        };
        self.retire.push_back((end, first_lsn));
    }

    /// Has a batch failed since `lsn` (or can nothing be written any more)?
    fn failed_since(&self, lsn: u64) -> Option<QueueError> {
        if self.writer_lost {
            return Some(self.writer_lost_error());
        }
        if self.failure_end_lsn > lsn {
            return Some(self.failure.as_ref().map(Failure::to_error).unwrap_or(QueueError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("queue write failed"),
            }));
        }
        None
    }

    /// Segments that may go now: a prefix, never the current one, each free of live messages.
    fn deletable_prefix(&self) -> Vec<PathBuf> {
        let min_live = self.live.keys().next().copied().unwrap_or(u64::MAX);
        let keep_last = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .take(keep_last)
            .take_while(|s| s.end_lsn <= min_live && s.end_lsn <= self.resolved_lsn)
            .map(|s| s.path.clone())
            .collect()
    }

    fn locate(&self, lsn: u64) -> Option<&SegMeta> {
        let i = self.segments.partition_point(|s| s.start_lsn <= lsn).checked_sub(1)?;
        self.segments.get(i).filter(|s| lsn < s.end_lsn)
    }
}

/// Delete segments in order, fsyncing the directory after each so the on-disk set stays a
/// prefix-trimmed run even across a crash. Returns how many went.
fn remove_prefix(dir: &Path, paths: &[PathBuf]) -> usize {
    let mut n = 0;
    for p in paths {
        let removed = match std::fs::remove_file(p) {
            Ok(()) => true,
            // Already gone (an earlier attempt whose result was not recorded).
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        // Its descriptor kept for body readers goes too (after the removal: a reader cannot
        // open it again then).
        log::forget_segment(p);
        if !removed || log::sync_dir(dir).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Notices a writer dropped mid-batch, and fails the waiters instead of leaving them hanging.
struct WriterGuard<'a>(&'a Shared);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.0.inner.try_borrow_mut() {
            if inner.disk.is_none() {
                inner.writer_lost = true;
                // Dropping the senders wakes every waiter with an error.
                inner.waiters.clear();
                drop(inner);
                // Sessions held back by backpressure must not wait for a writer that is gone.
                self.0.drained.notify(usize::MAX);
            }
        }
    }
}

struct Shared {
    inner: RefCell<Inner>,
    /// Records were appended: the writer has work.
    work: Event,
    /// The writer took the pending bytes: appenders may go on.
    drained: Event,
    /// A message was committed or a job finished.
    changed: Event,
}

impl Shared {
    /// Ask the writer for a batch (call with no borrow of `inner` held).
    fn want_flush(&self) {
        self.inner.borrow_mut().flush_wanted = true;
        self.work.notify(1);
    }
}

/// Handle to the queue (cheap to clone; single-threaded: Rc inside).
#[derive(Clone)]
pub struct Queue {
    shared: Rc<Shared>,
}

/// A message being received.
pub struct Incoming {
    shared: Rc<Shared>,
    qid: QueueId,
    first_lsn: u64,
    env: Envelope,
    chunks: Vec<(u64, u32)>,
    size: u64,
    /// Committed or aborted: nothing left for Drop.
    closed: bool,
}

/// Reads a committed message's body from the segments, verifying each record's checksum.
/// `Send`, so it can be used inside `smol::unblock`.
pub struct BodyReader {
    inner: BodyReaderInner,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::io::BufRead for BodyReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n)
    }
}

/// Reasons come from remote servers: keep what is logged bounded.
const REASON_BYTES_MAX: usize = 1000;

fn bounded(reason: &str) -> &str {
    if reason.len() <= REASON_BYTES_MAX {
        return reason;
    }
    let mut end = REASON_BYTES_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Take the queue directory's lock (flock on `DIR/lock`): two writers would corrupt the log.
fn lock_dir(dir: &Path) -> Result<std::fs::File, QueueError> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| QueueError::Io {
            path: path.clone(),
            source: e,
        })?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| QueueError::Io {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::Error::from(e).kind(),
            "queue directory is in use by another poshta process",
        ),
    })?;
    Ok(f)
}

impl Queue {
    /// Open (creating the directory if needed) and recover. Blocking: call before the loop.
    pub fn open(dir: &Path, opts: QueueOptions, now_unix: u64) -> Result<(Queue, RecoveryReport), QueueError> {
        Queue::open_with(dir, opts, now_unix, Box::new(FsStorage))
    }

    /// `open` writing segments through `storage` (tests inject faults here).
    pub(crate) fn open_with(
        dir: &Path,
        opts: QueueOptions,
        now_unix: u64,
        mut storage: Box<dyn Storage>,
    ) -> Result<(Queue, RecoveryReport), QueueError> {
        std::fs::create_dir_all(dir).map_err(|e| QueueError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let lock = lock_dir(dir)?;
        let rec = recover(dir, Mode::Repair)?;
        // Every start writes to a fresh segment; the recovered ones are only read from now on.
        let number = rec.segments.last().map(|s| s.number.saturating_add(1)).unwrap_or(1);
        let seg = Disk::create_segment(dir, storage.as_mut(), number).map_err(|(path, e)| {
            if log::is_full(&e) {
                QueueError::Full { path }
            } else {
                QueueError::Io { path, source: e }
            }
        })?;
        let mut segments: VecDeque<SegMeta> = rec.segments.into();
        segments.push_back(SegMeta {
            number,
            path: seg.path().to_path_buf(),
            start_lsn: rec.next_lsn,
            end_lsn: rec.next_lsn,
        });
        let mut live = BTreeMap::new();
        let mut index = BTreeMap::new();
        for m in rec.messages {
            live.insert(m.first_lsn, m.qid);
            index.insert(m.qid, m);
        }
        let next_qid = rec.max_qid.saturating_add(1).max(now_unix.saturating_mul(1 << 20));
        let disk = Disk {
            dir: dir.to_path_buf(),
            storage,
            seg,
            rotate: false,
            needs_rollback: false,
        };
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            opts,
            index,
            next_qid,
            pending: Vec::new(),
            spare: Vec::new(),
            taken_lsn: rec.next_lsn,
            resolved_lsn: rec.next_lsn,
            failure_end_lsn: 0,
            failure: None,
            waiters: Vec::new(),
            answering: Vec::new(),
            waiters_spare: Vec::new(),
            live,
            retire: VecDeque::new(),
            segments,
            disk: Some(disk),
            _lock: lock,
            generation: {
                static OPENINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                OPENINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            writer_lost: false,
            flush_wanted: false,
        };
        // Segments left fully done by the last run can go right away.
        let doomed = inner.deletable_prefix();
        let n = remove_prefix(dir, &doomed);
        inner.segments.drain(..n);
        let shared = Rc::new(Shared {
            inner: RefCell::new(inner),
            work: Event::new(),
            drained: Event::new(),
            changed: Event::new(),
        });
        Ok((Queue { shared }, rec.report))
    }

    /// The writer task: run it on the LocalExecutor for the life of the process.
    /// Call `sync` before dropping it at shutdown: dropped in the middle of a batch, it takes
    /// the segment writer with it, and every later write fails with an I/O error.
    pub async fn run_writer(&self) {
        let _guard = WriterGuard(&self.shared);
        // Runs for the life of the process; each turn writes one batch or sleeps.
        loop {
            let listener = self.shared.work.listen();
            let job = {
                let mut inner = self.shared.inner.borrow_mut();
                if inner.pending.is_empty() || !inner.flush_wanted {
                    None
                } else if let Some(disk) = inner.disk.take() {
                    inner.flush_wanted = false;
                    let spare = std::mem::take(&mut inner.spare);
                    let batch = std::mem::replace(&mut inner.pending, spare);
                    let start = inner.taken_lsn;
                    inner.taken_lsn += batch.len() as u64;
                    Some((disk, batch, start, inner.opts.segment_bytes_target))
                } else {
                    None
                }
            };
            let Some((mut disk, batch, start, target)) = job else {
                listener.await;
                continue;
            };
            self.shared.drained.notify(usize::MAX);
            let end = start + batch.len() as u64;
            // One blocking call: write the whole batch and fdatasync it (group commit).
            let (disk, mut batch, (new_segment, result)) = smol::unblock(move || {
                let r = disk.write_batch(&batch, target);
                (disk, batch, r)
            })
            .await;
            let doomed = self.after_batch(disk, &mut batch, start, end, new_segment, result);
            if !doomed.is_empty() {
                let dir = self.shared.inner.borrow().dir.clone();
                let n = smol::unblock(move || remove_prefix(&dir, &doomed)).await;
                let mut inner = self.shared.inner.borrow_mut();
                // Only this task changes the front of `segments`, so the prefix is unchanged.
                let n = n.min(inner.segments.len().saturating_sub(1));
                inner.segments.drain(..n);
            }
        }
    }

    /// Book-keeping after a batch: wake waiters, index commits, pick segments to delete.
    #[allow(clippy::type_complexity)]
    fn after_batch(
        &self,
        disk: Disk,
        batch: &mut Vec<u8>,
        start: u64,
        end: u64,
        new_segment: Option<(u32, PathBuf)>,
        result: Result<(), (PathBuf, std::io::Error)>,
    ) -> Vec<PathBuf> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.disk = Some(disk);
        // Reuse the buffer unless a burst made it big.
        if batch.capacity() <= 2 * limits::QUEUE_PENDING_BYTES_MAX && inner.spare.capacity() == 0 {
            batch.clear();
            inner.spare = std::mem::take(batch);
        }
        if let Some((number, path)) = new_segment {
            inner.segments.push_back(SegMeta {
                number,
                path,
                start_lsn: start,
                end_lsn: start,
            });
        }
        match result {
            Ok(()) => {
                if let Some(cur) = inner.segments.back_mut() {
                    cur.end_lsn = end;
                }
            }
            Err((path, e)) => {
                inner.failure_end_lsn = end;
                inner.failure = Some(Failure::new(path, &e));
            }
        }
        inner.resolved_lsn = end;
        let mut all = std::mem::take(&mut inner.waiters);
        let mut keep = std::mem::take(&mut inner.waiters_spare);
        let mut done = std::mem::take(&mut inner.answering);
        for w in all.drain(..) {
            if w.end_lsn <= end {
                done.push(w);
            } else {
                keep.push(w);
            }
        }
        inner.waiters = keep;
        inner.waiters_spare = all;
        let mut committed = false;
        for w in done.drain(..) {
            // A failed batch anywhere from the waiter's first record on fails it: a commit
            // must never stand on a lost envelope or body chunk.
            let result = match &inner.failure {
                Some(f) if w.start_lsn < inner.failure_end_lsn => Err(f.clone()),
                _ => Ok(()),
            };
            match (w.msg, result.is_ok()) {
                (Some(m), true) => {
                    inner.index.insert(m.qid, m);
                    committed = true;
                }
                (Some(m), false) => inner.abort(m.qid, m.first_lsn),
                (None, _) => {}
            }
            // The session may have gone away; the outcome above stands either way.
            w.tx.send(result);
        }
        inner.answering = done;
        // Records that made messages finished are written: their segments may go.
        while let Some(&(e, first)) = inner.retire.front() {
            if e > inner.resolved_lsn {
                break;
            }
            inner.retire.pop_front();
            inner.live.remove(&first);
        }
        if committed {
            self.shared.changed.notify(usize::MAX);
        }
        if !inner.pending.is_empty() && inner.flush_wanted {
            self.shared.work.notify(1);
        }
        inner.deletable_prefix()
    }

    /// Start receiving a message (allocates its id, appends its envelope record).
    pub fn begin(&self, mut env: Envelope) -> Result<Incoming, QueueError> {
        dedup_recipients(&mut env.recipients);
        let mut inner = self.shared.inner.borrow_mut();
        if inner.writer_lost {
            return Err(inner.writer_lost_error());
        }
        // Ids grow with arrival time and never repeat: (arrival << 20 | counter), monotonic.
        let qid = QueueId(inner.next_qid.max(env.arrival_unix.saturating_mul(1 << 20)));
        let rcpts: Vec<&str> = env.recipients.iter().map(String::as_str).collect();
        let (first_lsn, _) = inner.append(&Record::Accepted {
            qid,
            arrival_unix: env.arrival_unix,
            sender: &env.sender,
            recipients: rcpts,
            client: &env.client,
        })?;
        inner.next_qid = qid.0.saturating_add(1);
        inner.live.insert(first_lsn, qid);
        drop(inner);
        // No batch for this record alone: it goes with the next one something waits for.
        Ok(Incoming {
            shared: self.shared.clone(),
            qid,
            first_lsn,
            env,
            chunks: Vec::new(),
            size: 0,
            closed: false,
        })
    }

    /// Messages with recipients due at `now_unix`, not in flight, at most `max`; they are
    /// marked in flight until `finish`.
    pub fn ready(&self, now_unix: u64, max: usize) -> Vec<Job> {
        schedule::take_ready(&mut self.shared.inner.borrow_mut().index, now_unix, max)
    }

    /// How many messages `ready` would return now, counting at most `max`.
    pub fn ready_count(&self, now_unix: u64, max: usize) -> usize {
        schedule::count_ready(&self.shared.inner.borrow().index, now_unix, max)
    }

    /// The earliest next-try time among waiting messages (for the runner's timer). A message
    /// with a never-tried recipient counts as due since its arrival.
    pub fn next_due(&self) -> Option<u64> {
        schedule::next_due(&self.shared.inner.borrow().index)
    }

    /// Resolves when a message was committed or a job finished (the runner then polls `ready`).
    pub async fn changed(&self) {
        self.shared.changed.listen().await
    }

    /// Wake whoever waits in `changed` (e.g. after a reload un-pauses delivery).
    pub fn poke(&self) {
        self.shared.changed.notify(usize::MAX);
    }

    /// Record the outcomes of a job; the message is done when every recipient is final.
    /// The records are not waited for: delivery is at-least-once.
    pub fn finish(&self, qid: QueueId, outcomes: &[(usize, Outcome)], now_unix: u64) {
        let mut inner = self.shared.inner.borrow_mut();
        let opts = inner.opts.clone();
        let Some(m) = inner.index.get_mut(&qid) else {
            return;
        };
        if m.deleted {
            // Deleted during the attempt: its Deleted record is already in the log.
            let first_lsn = m.first_lsn;
            inner.index.remove(&qid);
            let end = inner.appended_lsn();
            inner.retire.push_back((end, first_lsn));
            drop(inner);
            self.shared.want_flush();
            self.shared.changed.notify(usize::MAX);
            return;
        }
        let changes = schedule::apply_outcomes(&opts, m, outcomes, now_unix);
        let all_final = m.all_final();
        let first_lsn = m.first_lsn;
        for (rcpt, st) in &changes {
            let rec = match st {
                RcptState::Delivered => Record::Delivered { qid, rcpt: *rcpt },
                RcptState::Bounced { reason } => Record::Bounced {
                    qid,
                    rcpt: *rcpt,
                    reason: bounded(reason),
                },
                RcptState::Deferred { reason, next_try_unix } => Record::Deferred {
                    qid,
                    rcpt: *rcpt,
                    next_try_unix: *next_try_unix,
                    reason: bounded(reason),
                },
                RcptState::Pending => continue,
            };
            // Bounded reasons keep these far below the record limit.
            let _ = inner.append(&rec);
        }
        if all_final {
            inner.index.remove(&qid);
            let end = match inner.append(&Record::Done { qid }) {
                Ok((_, end)) => end,
                Err(_) => inner.appended_lsn(),
            };
            inner.retire.push_back((end, first_lsn));
        }
        drop(inner);
        self.shared.want_flush();
        self.shared.changed.notify(usize::MAX);
    }

    /// A reader for the body of a committed message.
    pub fn body(&self, qid: QueueId) -> Result<BodyReader, QueueError> {
        let inner = self.shared.inner.borrow();
        let m = inner.index.get(&qid).ok_or(QueueError::UnknownId(qid))?;
        let (paths, chunks) = chunk_locations(&m.chunks, |lsn| inner.locate(lsn), &inner.dir, qid)?;
        Ok(BodyReader {
            inner: BodyReaderInner::new(qid, inner.generation, paths, chunks),
        })
    }

    /// Every message in the queue, oldest first.
    pub fn list(&self) -> Vec<MessageInfo> {
        self.shared
            .inner
            .borrow()
            .index
            .values()
            .filter(|m| !m.deleted)
            .map(Msg::info)
            .collect()
    }

    /// The envelope of a queued message (`poshta queue show`).
    pub fn envelope(&self, qid: QueueId) -> Result<Envelope, QueueError> {
        let inner = self.shared.inner.borrow();
        let m = inner
            .index
            .get(&qid)
            .filter(|m| !m.deleted)
            .ok_or(QueueError::UnknownId(qid))?;
        Ok(Envelope {
            sender: m.sender.clone(),
            recipients: m.recipients.clone(),
            arrival_unix: m.arrival_unix,
            client: m.client.clone(),
        })
    }

    /// Append a control record for a queued (not deleted) message; the caller `sync`s.
    fn control(&self, qid: QueueId, rec: Record<'_>, f: impl FnOnce(&mut Msg)) -> Result<(), QueueError> {
        let mut inner = self.shared.inner.borrow_mut();
        if inner.writer_lost {
            return Err(inner.writer_lost_error());
        }
        match inner.index.get(&qid) {
            Some(m) if !m.deleted => {}
            _ => return Err(QueueError::UnknownId(qid)),
        }
        inner.append(&rec)?;
        if let Some(m) = inner.index.get_mut(&qid) {
            f(m);
        }
        drop(inner);
        self.shared.want_flush();
        Ok(())
    }

    /// Put a message on hold (postsuper -h): it is not offered for delivery until released;
    /// an attempt already running completes. Logged (`Held`), so it survives a restart.
    /// Holding a held message is a no-op. Call `sync` for durability.
    pub fn hold(&self, qid: QueueId) -> Result<(), QueueError> {
        if self
            .shared
            .inner
            .borrow()
            .index
            .get(&qid)
            .is_some_and(|m| m.held && !m.deleted)
        {
            return Ok(());
        }
        self.control(qid, Record::Held { qid }, |m| m.held = true)
    }

    /// Release a held message (postsuper -H); releasing one not held is a no-op.
    pub fn release(&self, qid: QueueId) -> Result<(), QueueError> {
        if self
            .shared
            .inner
            .borrow()
            .index
            .get(&qid)
            .is_some_and(|m| !m.held && !m.deleted)
        {
            return Ok(());
        }
        self.control(qid, Record::Released { qid }, |m| m.held = false)?;
        self.poke();
        Ok(())
    }

    /// Remember that the sender got its delay notice (`DelayWarned`, survives a restart);
    /// the caller `sync`s when it needs durability.
    pub fn delay_warned(&self, qid: QueueId) -> Result<(), QueueError> {
        self.control(qid, Record::DelayWarned { qid }, |m| m.delay_warned = true)
    }

    /// Delete a message (postsuper -d): logged (`Deleted`), so it stays deleted after a
    /// restart. See [`Deletion`] for a message being delivered. Call `sync` for durability.
    pub fn delete(&self, qid: QueueId) -> Result<Deletion, QueueError> {
        self.control(qid, Record::Deleted { qid }, |m| m.deleted = true)?;
        let mut inner = self.shared.inner.borrow_mut();
        let Some(m) = inner.index.get(&qid) else {
            return Ok(Deletion::Deleted);
        };
        if m.in_flight {
            return Ok(Deletion::AfterAttempt);
        }
        let first_lsn = m.first_lsn;
        inner.index.remove(&qid);
        let end = inner.appended_lsn();
        inner.retire.push_back((end, first_lsn));
        Ok(Deletion::Deleted)
    }

    /// postqueue -f: every deferred recipient of a message not held is due now; wakes the
    /// runner. Returns how many messages became due. Not logged (a restart retries anyway
    /// what is due by then).
    pub fn flush(&self, now_unix: u64) -> usize {
        let n = schedule::flush(&mut self.shared.inner.borrow_mut().index, now_unix);
        self.poke();
        n
    }

    /// Write and fsync everything pending (shutdown).
    pub async fn sync(&self) -> Result<(), QueueError> {
        let rx = {
            let mut inner = self.shared.inner.borrow_mut();
            if inner.writer_lost {
                return Err(inner.writer_lost_error());
            }
            let end = inner.appended_lsn();
            if end == inner.resolved_lsn {
                return Ok(());
            }
            let (tx, rx) = answer();
            let start_lsn = inner.resolved_lsn;
            inner.waiters.push(Waiter {
                start_lsn,
                end_lsn: end,
                msg: None,
                tx,
            });
            rx
        };
        self.shared.want_flush();
        self.wait(rx).await
    }

    async fn wait(&self, rx: AnswerRx) -> Result<(), QueueError> {
        match rx.recv().await {
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(f.to_error()),
            None => Err(QueueError::Io {
                path: self.shared.inner.borrow().dir.clone(),
                source: std::io::Error::other("queue writer stopped"),
            }),
        }
    }

    /// Test hook: the writer holds no batch and nothing waits to be written.
    #[cfg(test)]
    pub(crate) fn writer_idle(&self) -> bool {
        let inner = self.shared.inner.borrow();
        inner.disk.is_some() && inner.pending.is_empty()
    }

    /// Test hook: the directory's segment numbers as the writer sees them.
    #[cfg(test)]
    pub(crate) fn segment_numbers(&self) -> Vec<u32> {
        self.shared.inner.borrow().segments.iter().map(|s| s.number).collect()
    }
}

impl Incoming {
    pub fn qid(&self) -> QueueId {
        self.qid
    }

    /// Wait while the writer is behind (backpressure bounds the pending bytes).
    async fn room(&self) {
        // Each wake-up follows a batch being taken, so this ends as the writer progresses.
        loop {
            let listener = self.shared.drained.listen();
            {
                let inner = self.shared.inner.borrow();
                // A lost writer is reported by the caller's failure check.
                if inner.pending.len() < limits::QUEUE_PENDING_BYTES_MAX || inner.writer_lost {
                    return;
                }
            }
            self.shared.want_flush();
            listener.await;
        }
    }

    /// Append body bytes (split into records of at most limits::QUEUE_CHUNK_BYTES_MAX).
    /// May wait for the writer (backpressure).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        for piece in chunk.chunks(limits::QUEUE_CHUNK_BYTES_MAX) {
            self.room().await;
            let mut inner = self.shared.inner.borrow_mut();
            // A lost earlier record dooms the message: say so now, not at the end.
            if let Some(e) = inner.failed_since(self.first_lsn) {
                return Err(e);
            }
            let (lsn, end) = inner.append(&Record::Body {
                qid: self.qid,
                data: piece,
            })?;
            drop(inner);
            self.chunks.push((lsn, (end - lsn) as u32));
            self.size += piece.len() as u64;
            // No batch for this record alone: it goes with the next one something waits for.
        }
        Ok(())
    }

    /// Append the commit record and wait until it is durable (group commit).
    pub async fn commit(mut self) -> Result<(), QueueError> {
        let rx = {
            let mut inner = self.shared.inner.borrow_mut();
            if let Some(e) = inner.failed_since(self.first_lsn) {
                drop(inner);
                return Err(e); // Drop logs Aborted
            }
            let (_, end) = inner.append(&Record::Commit {
                qid: self.qid,
                size: self.size,
            })?;
            let env = &self.env;
            let msg = Msg {
                qid: self.qid,
                sender: env.sender.clone(),
                recipients: env.recipients.clone(),
                arrival_unix: env.arrival_unix,
                client: env.client.clone(),
                size: self.size,
                states: vec![RcptState::Pending; env.recipients.len()],
                deferrals: 0,
                chunks: std::mem::take(&mut self.chunks),
                first_lsn: self.first_lsn,
                in_flight: false,
                held: false,
                deleted: false,
                delay_warned: false,
            };
            let (tx, rx) = answer();
            // The writer indexes the message (or aborts it) even if this future is dropped.
            inner.waiters.push(Waiter {
                start_lsn: self.first_lsn,
                end_lsn: end,
                msg: Some(msg),
                tx,
            });
            self.closed = true;
            rx
        };
        self.shared.want_flush();
        let q = Queue {
            shared: self.shared.clone(),
        };
        drop(self);
        q.wait(rx).await
    }

    /// Give up on this message (nothing is delivered; recovery discards it).
    pub fn abort(self) {
        // Drop does it.
    }

    /// Test hook: vanish as a crash would (no Aborted record).
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.closed = true;
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut() {
            inner.abort(self.qid, self.first_lsn);
        }
        self.shared.work.notify(1);
    }
}

/// Read-only scan of a queue directory (no truncation, no locks): for `poshta queue`.
pub fn scan(dir: &Path) -> Result<Vec<MessageInfo>, QueueError> {
    let rec = recover(dir, Mode::ReadOnly)?;
    Ok(rec.messages.iter().map(Msg::info).collect())
}

/// Read-only look at one message (no truncation, no locks): for `poshta queue show` when the
/// daemon is not running. None when no queued message has this id.
pub fn scan_message(dir: &Path, qid: QueueId) -> Result<Option<(MessageInfo, Envelope, BodyReader)>, QueueError> {
    let rec = recover(dir, Mode::ReadOnly)?;
    let Some(m) = rec.messages.iter().find(|m| m.qid == qid) else {
        return Ok(None);
    };
    let locate = |lsn: u64| {
        let i = rec.segments.partition_point(|s| s.start_lsn <= lsn).checked_sub(1)?;
        rec.segments.get(i).filter(|s| lsn < s.end_lsn)
    };
    let (paths, chunks) = chunk_locations(&m.chunks, locate, dir, qid)?;
    let env = Envelope {
        sender: m.sender.clone(),
        recipients: m.recipients.clone(),
        arrival_unix: m.arrival_unix,
        client: m.client.clone(),
    };
    let body = BodyReader {
        inner: BodyReaderInner::new(qid, 0, paths, chunks),
    };
    Ok(Some((m.info(), env, body)))
}

/// Where a message's body chunks are: the segment files they are in (in order, each once)
/// and each chunk's segment index and file offset. `locate` finds the segment holding a
/// log position.
fn chunk_locations<'a>(
    chunk_lsns: &[(u64, u32)],
    locate: impl Fn(u64) -> Option<&'a SegMeta>,
    dir: &Path,
    qid: QueueId,
) -> Result<(Vec<PathBuf>, Vec<ChunkLoc>), QueueError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut seg_numbers: Vec<u32> = Vec::new();
    let mut chunks = Vec::with_capacity(chunk_lsns.len());
    for &(lsn, framed_len) in chunk_lsns {
        let seg = locate(lsn).ok_or_else(|| QueueError::Corrupt {
            path: dir.to_path_buf(),
            offset: lsn,
            what: format!("body of {} points past the log", qid),
        })?;
        if seg_numbers.last() != Some(&seg.number) {
            seg_numbers.push(seg.number);
            paths.push(seg.path.clone());
        }
        chunks.push(ChunkLoc {
            seg: (paths.len() - 1) as u32,
            offset: record::SEGMENT_HEADER_BYTES + (lsn - seg.start_lsn),
            framed_len,
        });
    }
    Ok((paths, chunks))
}

#[cfg(test)]
mod tests;
