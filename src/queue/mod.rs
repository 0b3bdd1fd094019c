//! The append-only log queue. Format and rules: see `record` (on-disk format) and `log`.
//!
//! Public surface used by the rest of poshta (the I/O shell and the delivery runner):
//! - [`Queue::open`] recovers the index from the segments (blocking; called once at start).
//! - [`Queue::run_writer`] is the one task that writes and fsyncs (group commit).
//! - [`Queue::begin`] / [`Incoming`] take a message in; `commit` returns only once durable.
//! - [`Queue::ready`], [`Queue::finish`], [`Queue::body`] feed delivery.
//! - [`Queue::list`] and [`scan`] feed `poshta queue` / mailq.

pub mod record;

use std::fmt;
use std::path::{Path, PathBuf};

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
    /// Recipients not yet final, with their state.
    pub recipients: Vec<(String, RcptState)>,
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
}

/// Handle to the queue (cheap to clone; single-threaded: Rc inside).
#[derive(Clone)]
pub struct Queue {
    _p: (),
}

/// A message being received.
pub struct Incoming {
    _p: (),
}

/// Reads a committed message's body from the segments, verifying each record's checksum.
/// `Send`, so it can be used inside `smol::unblock`.
pub struct BodyReader {
    _p: (),
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

impl Queue {
    /// Open (creating the directory if needed) and recover. Blocking: call before the loop.
    pub fn open(dir: &Path, opts: QueueOptions, now_unix: u64) -> Result<(Queue, RecoveryReport), QueueError> {
        let _ = (dir, opts, now_unix);
        todo!()
    }

    /// The writer task: run it on the LocalExecutor for the life of the process.
    pub async fn run_writer(&self) {
        todo!()
    }

    /// Start receiving a message (allocates its id, appends its envelope record).
    pub fn begin(&self, env: Envelope) -> Result<Incoming, QueueError> {
        let _ = env;
        todo!()
    }

    /// Messages with recipients due at `now_unix`, not in flight, at most `max`; they are
    /// marked in flight until `finish`.
    pub fn ready(&self, now_unix: u64, max: usize) -> Vec<Job> {
        let _ = (now_unix, max);
        todo!()
    }

    /// The earliest next-try time among waiting messages (for the runner's timer).
    pub fn next_due(&self) -> Option<u64> {
        todo!()
    }

    /// Resolves when a message was committed or a job finished (the runner then polls `ready`).
    pub async fn changed(&self) {
        todo!()
    }

    /// Wake whoever waits in `changed` (e.g. after a reload un-pauses delivery).
    pub fn poke(&self) {
        todo!()
    }

    /// Record the outcomes of a job; the message is done when every recipient is final.
    pub fn finish(&self, qid: QueueId, outcomes: &[(usize, Outcome)], now_unix: u64) {
        let _ = (qid, outcomes, now_unix);
        todo!()
    }

    /// A reader for the body of a committed message.
    pub fn body(&self, qid: QueueId) -> Result<BodyReader, QueueError> {
        let _ = qid;
        todo!()
    }

    /// Every message in the queue, oldest first.
    pub fn list(&self) -> Vec<MessageInfo> {
        todo!()
    }

    /// Write and fsync everything pending (shutdown).
    pub async fn sync(&self) -> Result<(), QueueError> {
        todo!()
    }
}

impl Incoming {
    pub fn qid(&self) -> QueueId {
        todo!()
    }

    /// Append body bytes (split into records of at most limits::QUEUE_CHUNK_BYTES_MAX).
    /// May wait for the writer (backpressure).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        let _ = chunk;
        todo!()
    }

    /// Append the commit record and wait until it is durable (group commit).
    pub async fn commit(self) -> Result<(), QueueError> {
        todo!()
    }

    /// Give up on this message (nothing is delivered; recovery discards it).
    pub fn abort(self) {
        todo!()
    }
}

/// Read-only scan of a queue directory (no truncation, no locks): for `poshta queue`.
pub fn scan(dir: &Path) -> Result<Vec<MessageInfo>, QueueError> {
    let _ = dir;
    todo!()
}
