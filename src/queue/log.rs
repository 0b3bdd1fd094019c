//! Segment files: the low-level writer (generic over `embedded_io::Write`, so tests inject
//! faults), the real file sink, and the body reader. The format is in `record`.
//!
//! Write discipline (okaywal / TigerBeetle): a batch of framed records is written with one
//! `write_all` and made durable with one `flush` (fdatasync for real files; the file is
//! zero-filled ahead so that flush writes no metadata, see [`FileSink`]). If either fails,
//! the segment is truncated back to the last durable length, so nothing half-written ever
//! follows a good record; if even that fails, the tail is a torn write that recovery cuts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::record::{self, Record, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::QueueId;
use crate::limits;

/// An I/O error carried through `embedded_io` (whose own error kinds cannot say "disk full").
#[derive(Debug)]
pub struct SinkError(pub io::Error);

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SinkError {}

impl embedded_io::Error for SinkError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self.0.kind() {
            io::ErrorKind::NotFound => embedded_io::ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => embedded_io::ErrorKind::PermissionDenied,
            io::ErrorKind::InvalidData => embedded_io::ErrorKind::InvalidData,
            io::ErrorKind::InvalidInput => embedded_io::ErrorKind::InvalidInput,
            io::ErrorKind::Interrupted => embedded_io::ErrorKind::Interrupted,
            io::ErrorKind::WriteZero => embedded_io::ErrorKind::WriteZero,
            io::ErrorKind::OutOfMemory => embedded_io::ErrorKind::OutOfMemory,
            _ => embedded_io::ErrorKind::Other,
        }
    }
}

impl From<io::Error> for SinkError {
    fn from(e: io::Error) -> Self {
        SinkError(e)
    }
}

/// Durable truncation (the rollback after a failed batch).
pub trait Truncate: embedded_io::ErrorType {
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error>;
}

/// Appends batches of framed records to one segment. `flush()` of `W` must mean durable.
pub struct SegmentWriter<W: embedded_io::Write> {
    sink: W,
    number: u32,
    path: PathBuf,
    /// Bytes known durable (header included).
    len: u64,
}

impl<W: embedded_io::Write> SegmentWriter<W> {
    /// Write and flush the header of a fresh segment.
    pub fn create(mut sink: W, number: u32, path: PathBuf) -> Result<Self, W::Error> {
        sink.write_all(&record::segment_header(number))?;
        sink.flush()?;
        Ok(SegmentWriter {
            sink,
            number,
            path,
            len: SEGMENT_HEADER_BYTES,
        })
    }

    /// Write a batch of framed records and make it durable. On error the durable length is
    /// unchanged (the caller rolls back).
    pub fn append(&mut self, batch: &[u8]) -> Result<(), W::Error> {
        self.sink.write_all(batch)?;
        self.sink.flush()?;
        self.len += batch.len() as u64;
        Ok(())
    }

    pub fn durable_len(&self) -> u64 {
        self.len
    }

    /// The sink (tests look at what reached it).
    pub fn get_ref(&self) -> &W {
        &self.sink
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<W: embedded_io::Write + Truncate> SegmentWriter<W> {
    /// Cut anything after the last durable batch.
    pub fn rollback(&mut self) -> Result<(), W::Error> {
        self.sink.truncate(self.len)
    }

    /// Before the next segment is created: cut this one to its records (the zeros written
    /// ahead go), durably, so that only the last segment can end in zeros (`record`).
    pub fn seal(&mut self) -> Result<(), W::Error> {
        self.sink.truncate(self.len)
    }
}

/// A segment file; `flush` is fdatasync.
///
/// Records go at the logical end with positioned writes, and the file is grown ahead of them
/// with written zeros, limits::QUEUE_PREALLOCATE_BYTES at a time (PostgreSQL zero-fills its
/// WAL segments for the same reason). fdatasync of a write that stays inside the file's size
/// and its allocated blocks only flushes the data: no inode (size, block map) and, on a
/// journalled filesystem, no journal commit. Measured here: 4.5k → 6.6k commits/s on ext4
/// without a journal, 1.3–2.3k → 3.7k with one (docs/decisions.md "Queue log preallocation").
/// fallocate(2) is not enough on ext4 with a journal: its unwritten extents are converted at
/// the first write, which is again a metadata change to commit.
///
/// The zeros after the last record are not records (a record's length is never 0): recovery
/// cuts them from the last segment without calling them a torn write, and a segment is cut
/// to its records before the next one is created ([`SegmentWriter::seal`]), so only the
/// last segment ever has them. Large writes (a big message's body) are appended as they
/// are: growing the file costs little next to them, and zero-filling would write them twice.
pub struct FileSink {
    file: File,
    /// The logical end: where the next write goes.
    pos: u64,
    /// The file's size; `pos..size` is zeros written ahead.
    size: u64,
}

impl FileSink {
    /// Create a new, empty segment file (O_EXCL). Not O_APPEND: Linux ignores pwrite's
    /// offset on an O_APPEND file.
    pub fn create_new(path: &Path) -> io::Result<FileSink> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(FileSink { file, pos: 0, size: 0 })
    }

    /// Zero-fill from the current size up to a multiple of the step covering `need`. On any
    /// error the file is cut back to the logical end (best effort) and writes go on without
    /// preallocation: a disk too full for the zeros may still take the records.
    fn grow(&mut self, need: u64) {
        use std::os::unix::fs::FileExt;
        let step = limits::QUEUE_PREALLOCATE_BYTES;
        let target = need.div_ceil(step).saturating_mul(step);
        let zeros = vec![0u8; limits::QUEUE_ZERO_FILL_BUFFER_BYTES];
        let mut at = self.size;
        // Bounded: each pass advances `at` by at least one byte or stops.
        while at < target {
            let n = ((target - at) as usize).min(zeros.len());
            match self.file.write_at(&zeros[..n], at) {
                Ok(0) => break,
                Ok(k) => at += k as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if at >= target {
            self.size = target;
        } else {
            let _ = self.file.set_len(self.pos);
            self.size = self.pos;
        }
    }
}

impl embedded_io::ErrorType for FileSink {
    type Error = SinkError;
}

impl embedded_io::Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, SinkError> {
        use std::os::unix::fs::FileExt;
        let end = self.pos.saturating_add(buf.len() as u64);
        if end > self.size && buf.len() <= limits::QUEUE_PREALLOCATE_WRITE_MAX {
            self.grow(end);
        }
        loop {
            match self.file.write_at(buf, self.pos) {
                Ok(0) if !buf.is_empty() => return Err(SinkError(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pos += n as u64;
                    self.size = self.size.max(self.pos);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SinkError(e)),
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.file.sync_data().map_err(SinkError)
    }
}

impl Truncate for FileSink {
    fn truncate(&mut self, len: u64) -> Result<(), SinkError> {
        self.file.set_len(len)?;
        self.file.sync_data()?;
        self.pos = len;
        self.size = len;
        Ok(())
    }
}

impl Drop for FileSink {
    /// A stopped daemon leaves its last segment at the length of its records (best effort,
    /// not synced: after a crash the zeros are cut by recovery instead).
    fn drop(&mut self) {
        if self.size > self.pos {
            let _ = self.file.set_len(self.pos);
        }
    }
}

/// What the queue writes segments through: real files, or a fault injector in tests.
pub trait Sink: embedded_io::Write<Error = SinkError> + Truncate + Send {}
impl<T: embedded_io::Write<Error = SinkError> + Truncate + Send> Sink for T {}

/// A boxed sink (the queue's writer is not generic).
pub struct DynSink(pub Box<dyn Sink>);

impl embedded_io::ErrorType for DynSink {
    type Error = SinkError;
}

impl embedded_io::Write for DynSink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, SinkError> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.0.flush()
    }
}

impl Truncate for DynSink {
    fn truncate(&mut self, len: u64) -> Result<(), SinkError> {
        self.0.truncate(len)
    }
}

/// Creates segment files. Real: [`FsStorage`]; tests wrap it to inject faults.
pub trait Storage: Send {
    /// Create a new, empty segment file (O_EXCL).
    fn create(&mut self, path: &Path) -> io::Result<DynSink>;
}

/// Real files.
pub struct FsStorage;

impl Storage for FsStorage {
    fn create(&mut self, path: &Path) -> io::Result<DynSink> {
        Ok(DynSink(Box::new(FileSink::create_new(path)?)))
    }
}

/// fsync a directory (after creating or deleting a file in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True for "disk full" and "quota exceeded".
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Where one body record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Index into `BodyReader::paths`.
    pub seg: u32,
    /// File offset of the record header.
    pub offset: u64,
    /// Framed record length (header + payload).
    pub framed_len: u32,
}

/// Reads a committed message's body, record by record, checking each.
pub struct BodyReaderInner {
    qid: QueueId,
    /// The queue it reads from (see `open_segment`).
    generation: u64,
    paths: Vec<PathBuf>,
    chunks: std::vec::IntoIter<ChunkLoc>,
    open: Option<(u32, std::sync::Arc<File>)>,
    /// The current record's payload, and the unread range of its data in it.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

fn invalid(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: offset {}: {}", path.display(), offset, what),
    )
}

impl BodyReaderInner {
    pub fn new(qid: QueueId, generation: u64, paths: Vec<PathBuf>, chunks: Vec<ChunkLoc>) -> Self {
        BodyReaderInner {
            qid,
            generation,
            paths,
            chunks: chunks.into_iter(),
            open: None,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Load the next chunk; false at the end of the body.
    fn next_chunk(&mut self) -> io::Result<bool> {
        let Some(loc) = self.chunks.next() else {
            // Read to the end: the next reader on this thread may have the buffer now
            // (a delivery batch reads its messages one after the other).
            self.release_buffer();
            return Ok(false);
        };
        let path = self
            .paths
            .get(loc.seg as usize)
            .ok_or_else(|| io::Error::other("body chunk names no segment"))?
            .clone();
        if self.open.as_ref().map(|(n, _)| *n) != Some(loc.seg) {
            self.open = Some((loc.seg, open_segment(&path, self.generation)?));
        }
        let Some((_, file)) = self.open.as_ref() else {
            return Err(io::Error::other("no segment open"));
        };
        // The index knows the framed length: header and payload in one pread (a seek and
        // two reads before; the delivery of a small message reads one record).
        let framed = loc.framed_len as usize;
        if framed < RECORD_HEADER_BYTES || framed - RECORD_HEADER_BYTES > limits::QUEUE_RECORD_BYTES_MAX {
            return Err(invalid(&path, loc.offset, "body record length out of range"));
        }
        if self.buf.capacity() == 0 {
            self.buf = READ_BUFFER.take();
        }
        self.buf.resize(framed, 0);
        std::os::unix::fs::FileExt::read_exact_at(&**file, &mut self.buf, loc.offset)?;
        let mut h = [0u8; RECORD_HEADER_BYTES];
        h.copy_from_slice(&self.buf[..RECORD_HEADER_BYTES]);
        let (len, crc) = record::parse_record_header(&h);
        if len as usize + RECORD_HEADER_BYTES != framed {
            return Err(invalid(&path, loc.offset, "body record length changed"));
        }
        let (start, dlen) = match record::check_and_decode(&self.buf[RECORD_HEADER_BYTES..], crc) {
            Ok(Record::Body { qid, data }) if qid == self.qid => {
                // `data` borrows from `buf`; keep only its position so `buf` can be reused.
                (data.as_ptr() as usize - self.buf.as_ptr() as usize, data.len())
            }
            Ok(_) => return Err(invalid(&path, loc.offset, "not a body record of this message")),
            Err(what) => return Err(invalid(&path, loc.offset, &what)),
        };
        self.pos = start;
        self.end = start + dlen;
        Ok(true)
    }
}

thread_local! {
    /// A record buffer handed on by the last body reader on this thread that finished (read
    /// to its end or dropped), for the next reader on it. Delivery reads a message's body
    /// twice (loop facts, then the copy), and a new buffer for each read made musl's
    /// allocator map and unmap memory, which on a multi-threaded process interrupts the
    /// other cores (docs/decisions.md, "Where a session's time goes").
    static READ_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The segment file a body was last read from, kept open for the next body (any thread):
/// delivery reads each message twice (loop facts, then the copy), most of them from the live
/// segment, and opening and closing it for every read were four system calls a message.
/// Keyed by the queue's opening (`generation`: a directory made anew under the same name, as
/// tests do, is never read through an old descriptor) and the path. The queue forgets it
/// when it deletes that segment ([`forget_segment`]), so no deleted file's space is held.
type KeptSegment = Option<(u64, PathBuf, std::sync::Arc<File>)>;
static SEGMENT: std::sync::Mutex<KeptSegment> = std::sync::Mutex::new(None);

fn kept_segment() -> std::sync::MutexGuard<'static, KeptSegment> {
    SEGMENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The queue deleted segment `path`: close the kept descriptor if it is that file.
pub fn forget_segment(path: &Path) {
    let mut k = kept_segment();
    if k.as_ref().is_some_and(|(_, p, _)| p == path) {
        *k = None;
    }
}

/// Open segment `path` for reading, or take the kept descriptor (`generation` 0: not kept).
fn open_segment(path: &Path, generation: u64) -> io::Result<std::sync::Arc<File>> {
    let cached = kept_segment()
        .as_ref()
        .filter(|(g, p, _)| generation != 0 && *g == generation && p == path)
        .map(|(_, _, f)| f.clone());
    if let Some(f) = cached {
        return Ok(f);
    }
    // rustix's open, not std's: musl's open(2) wrapper follows O_CLOEXEC with an
    // fcntl(F_SETFD) of its own, a second system call per message read.
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let f = std::sync::Arc::new(File::from(fd));
    if generation != 0 {
        *kept_segment() = Some((generation, path.to_path_buf(), f.clone()));
    }
    Ok(f)
}

/// A body record's buffer is kept for the next reader up to this capacity.
const READ_BUFFER_KEPT_BYTES_MAX: usize = 64 * 1024;

impl BodyReaderInner {
    fn release_buffer(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        (self.pos, self.end) = (0, 0);
        if buf.capacity() > 0 && buf.capacity() <= READ_BUFFER_KEPT_BYTES_MAX {
            // Holds message bytes; the next reader only reads what it wrote over them.
            READ_BUFFER.set(buf);
        }
    }
}

impl Drop for BodyReaderInner {
    fn drop(&mut self) {
        self.release_buffer();
    }
}

impl io::BufRead for BodyReaderInner {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Bounded: chunks are never empty, but skip any without looping forever.
        while self.pos >= self.end {
            if !self.next_chunk()? {
                return Ok(&[]);
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}

impl Read for BodyReaderInner {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use io::BufRead;
        if out.is_empty() {
            return Ok(0);
        }
        let data = self.fill_buf()?;
        let n = out.len().min(data.len());
        out[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}
