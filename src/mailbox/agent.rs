//! A system user's home mailbox served by a per-session agent running as that user
//! (`poshta maildrop-agent`), and the daemon's [`RemoteDrop`] that talks to it.
//!
//! # Why an agent
//!
//! Started as root, poshta runs its sessions as mail_owner, which cannot (and must not) enter
//! users' homes; root must never walk a home either (the user controls every directory on
//! the path: see [`crate::delivery::local`]). So for a `home_mailbox` (a Maildir or an mbox
//! in the home) the privileged helper starts, per POP3 session, `/proc/self/exe
//! maildrop-agent` with the user's uid and gid (`std::process::Command`, which also clears
//! supplementary groups), its standard input one end of a `socketpair(AF_UNIX,
//! SOCK_STREAM)`. The helper writes the [`Job`] (which mailbox, which uid, the idle limit)
//! into the other end, passes that end to the daemon with SCM_RIGHTS and is done: the
//! session then talks to the agent directly, and the single helper is free for deliveries.
//! The job comes from root's own reading of main.cf and passwd, never from the daemon.
//!
//! The agent opens the mailbox with the code the daemon uses when it runs as a normal user
//! ([`super::system::open_place`]: the same Maildir and mbox maildrops, the same locks, so
//! local delivery and mail(1) stay compatible and a second session gets `[IN-USE]`), and
//! serves the protocol below until the socket closes (SIGHUP, SIGINT and SIGTERM are
//! swallowed, as in the helper, so an UPDATE is never cut short). It exits at end of file, after
//! [`Ask::Commit`] or [`Ask::Close`], or when the daemon says nothing for `idle_secs` (the
//! POP3 autologout plus a margin). A connection that ends without `Commit` changes nothing
//! (RFC 1939 §6): nothing deleted, nothing moved from a Maildir's `new/`.
//!
//! # Wire format
//!
//! The frames of [`crate::privsep`] (`length:u32 BE | postcard payload`, 1 ..=
//! PRIVSEP_FRAME_BYTES_MAX bytes). First, helper → agent: [`Job`]. Then the agent speaks:
//!
//! ```text
//! agent:  Ready { messages: M, warnings: W }  | InUse | Failed(reason)   (then it exits)
//! agent:  Listing([{size, uid}; 1..=512]) ... until M entries, in message order
//! agent:  Warning(text) x W                    (each at most 512 bytes)
//! daemon: Open { index }  -> Chunk { data, last } | Gone | Failed(reason)
//! daemon: Next            -> Chunk { data, last } | Failed(reason)
//! daemon: Mark([index; 1..=8192])              (no answer; repeated as needed)
//! daemon: Commit          -> Committed { deleted, already_gone, failed } | Failed(reason)
//! daemon: Close           -> Closed
//! ```
//!
//! `Chunk.data` is at most [`CHUNK_BYTES`] of the message as stored (the POP3 core converts
//! line ends and dot-stuffs); only the last chunk may be empty. `Commit` is the UPDATE of
//! every QUIT, also with no `Mark` (RFC 1939 §6): it removes the marked messages and, for a
//! Maildir, moves the listed survivors from `new/` to `cur/` (a mark out of range fails the
//! whole commit, nothing removed or moved), releases the mailbox and its locks, answers, and
//! ends the agent; `Close` (a session that ended without QUIT) only releases. Sizes and unique ids are the backends' own (RFC 1939 §7, §11), so a listing
//! is the same whether served locally or by an agent.
//!
//! # The agent is not trusted
//!
//! It runs as the user, who may replace it (ptrace) with anything. The daemon therefore
//! checks every answer: at most [`MAILDROP_MESSAGES_MAX`] messages and
//! [`MAILDROP_WARNINGS_MAX`] warnings; every listing frame non-empty and within the count
//! announced; every unique id 1..=70 characters in 0x21..=0x7E and unique; a message's data
//! not longer than its listed size (the CRLF size is never less than the stored bytes), an
//! empty chunk only as the last; delete counts within the marks sent; text from the agent
//! cut to 512 bytes and escaped before it is logged. Every read and write on the socket has
//! a time limit ([`crate::limits::POP3_AGENT_ANSWER_SECS`]). The first violation breaks the
//! connection: the maildrop answers errors from then on (`-ERR` to the client), the agent
//! sees end of file and exits, nothing is deleted.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    DeleteReport, Listing, Mailbox, MailboxError, Message, UidAt, MAILDROP_MESSAGES_MAX, MAILDROP_WARNINGS_MAX,
    UID_BYTES_MAX,
};
use crate::privsep::{read_frame, write_frame, EOF};

/// Message bytes per `Chunk` (fits a PRIVSEP_FRAME_BYTES_MAX frame with its framing).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Entries per `Listing` frame (each at most 10 + 1 + 70 bytes encoded: 42 KB a frame).
pub const ENTRIES_PER_FRAME: usize = 512;
/// Indexes per `Mark` frame (each at most 5 bytes encoded).
pub const MARKS_PER_FRAME: usize = 8192;
/// Bytes of agent text (a warning, a reason) kept for the log.
pub const TEXT_BYTES_MAX: usize = 512;
/// Longest idle life the agent accepts from a job (a day).
const IDLE_SECS_MAX: u64 = 86_400;
/// How long the agent waits for its job.
const JOB_WAIT: Duration = Duration::from_secs(30);
/// How long a session waits for `Closed` when it releases the mailbox.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Which mailbox the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    Maildir(PathBuf),
    Mbox(PathBuf),
}

/// Helper → agent, the first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub place: Place,
    /// The user's uid (mailbox files and the Maildir must belong to it).
    pub uid: u32,
    /// Exit when the daemon sends nothing for this long.
    pub idle_secs: u64,
}

/// Daemon → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Open { index: u32 },
    Next,
    Mark(Vec<u32>),
    Commit,
    Close,
}

/// One message of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub size: u64,
    pub uid: String,
}

/// Agent → daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Ready {
        messages: u32,
        warnings: u32,
    },
    InUse,
    Failed(String),
    Listing(Vec<Listed>),
    Warning(String),
    Chunk {
        data: Vec<u8>,
        last: bool,
    },
    Gone,
    Committed {
        deleted: u32,
        already_gone: u32,
        failed: Vec<String>,
    },
    Closed,
}

impl Answer {
    /// The variant's name, for "unexpected ..." errors (never the agent's data).
    fn kind(&self) -> &'static str {
        match self {
            Answer::Ready { .. } => "Ready",
            Answer::InUse => "InUse",
            Answer::Failed(_) => "Failed",
            Answer::Listing(_) => "Listing",
            Answer::Warning(_) => "Warning",
            Answer::Chunk { .. } => "Chunk",
            Answer::Gone => "Gone",
            Answer::Committed { .. } => "Committed",
            Answer::Closed => "Closed",
        }
    }
}

/// Agent text for the log: at most [`TEXT_BYTES_MAX`] bytes, control characters escaped.
fn clean(text: &str) -> String {
    let mut end = text.len().min(TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].escape_debug().to_string()
}

// ---------------------------------------------------------------------------------------
// The agent (runs as the user).

/// `poshta maildrop-agent`: serve the session on standard input (a socket). See the module doc.
pub fn agent_main() -> i32 {
    use std::os::fd::AsFd;
    // As the helper: a terminal's or a service manager's signals must not end the agent in
    // the middle of an UPDATE; it ends at end of file, when the session is gone.
    let _signals = async_signal::Signals::new([
        async_signal::Signal::Hup,
        async_signal::Signal::Int,
        async_signal::Signal::Term,
    ]);
    match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => serve(UnixStream::from(fd)),
        Err(e) => {
            eprintln!("poshta maildrop-agent: stdin: {e}");
            1
        }
    }
}

fn send(sock: &UnixStream, a: &Answer) -> std::io::Result<()> {
    let mut w = sock;
    write_frame(&mut w, a)
}

/// Serve one session on `sock`: read the job, open the mailbox, answer until the end.
/// Exit status: 0 after a clean end (end of file, Commit, Close, a refusal), 1 otherwise.
pub fn serve(sock: UnixStream) -> i32 {
    let _ = sock.set_read_timeout(Some(JOB_WAIT));
    let mut r = &sock;
    let job: Job = match read_frame(&mut r) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("poshta maildrop-agent: no job: {e}");
            return 1;
        }
    };
    let idle = Duration::from_secs(job.idle_secs.clamp(1, IDLE_SECS_MAX));
    let _ = sock.set_read_timeout(Some(idle));
    let _ = sock.set_write_timeout(Some(idle));
    let mb = match super::system::open_place(&job.place, job.uid) {
        Ok(mb) => mb,
        // RFC 1939 §8 / RFC 2449 §8.1.1: another session, mail(1) or a delivery has it.
        Err(MailboxError::InUse) => return i32::from(send(&sock, &Answer::InUse).is_err()),
        Err(e) => return i32::from(send(&sock, &Answer::Failed(clean(&e.to_string()))).is_err()),
    };
    if send_listing(&sock, &mb).is_err() {
        return 1;
    }
    let mut s = Served {
        mb: Some(mb),
        reading: None,
        marks: Vec::new(),
        bad_mark: None,
    };
    s.run(&sock)
}

fn send_listing(sock: &UnixStream, mb: &Mailbox) -> std::io::Result<()> {
    let warnings: Vec<String> = mb
        .warnings()
        .iter()
        .take(MAILDROP_WARNINGS_MAX)
        .map(|w| clean(w))
        .collect();
    // The backends list at most MAILDROP_MESSAGES_MAX (< u32::MAX) messages.
    let messages = u32::try_from(mb.len()).unwrap_or(u32::MAX);
    send(
        sock,
        &Answer::Ready {
            messages,
            warnings: warnings.len() as u32,
        },
    )?;
    let listing = mb.listing();
    let mut from = 0;
    while from < listing.len() {
        let to = listing.len().min(from + ENTRIES_PER_FRAME);
        let part = (from..to)
            .filter_map(|i| listing.get(i))
            .map(|e| Listed {
                size: e.size(),
                uid: e.uid().to_string(),
            })
            .collect();
        send(sock, &Answer::Listing(part))?;
        from = to;
    }
    for w in warnings {
        send(sock, &Answer::Warning(w))?;
    }
    Ok(())
}

/// The agent's session state.
struct Served {
    /// None once released (Commit, Close).
    mb: Option<Mailbox>,
    reading: Option<Message>,
    marks: Vec<usize>,
    bad_mark: Option<u32>,
}

impl Served {
    fn run(&mut self, sock: &UnixStream) -> i32 {
        loop {
            let mut r = sock;
            let ask: Ask = match read_frame(&mut r) {
                Ok(a) => a,
                // RFC 1939 §6: the session ended without QUIT: nothing is deleted.
                Err(e) if e == EOF => return 0,
                Err(e) => {
                    eprintln!("poshta maildrop-agent: {e}; exiting, nothing deleted");
                    return 1;
                }
            };
            let answer = match ask {
                Ask::Open { index } => {
                    self.reading = None;
                    let Some(mb) = &self.mb else { return 1 };
                    match mb.open_message(index as usize) {
                        Ok(m) => {
                            self.reading = Some(m);
                            self.chunk()
                        }
                        Err(MailboxError::Gone) => Answer::Gone,
                        Err(e) => Answer::Failed(clean(&e.to_string())),
                    }
                }
                Ask::Next => self.chunk(),
                Ask::Mark(list) => {
                    let count = self.mb.as_ref().map_or(0, Mailbox::len);
                    for i in list {
                        if (i as usize) >= count || self.marks.len() >= count {
                            self.bad_mark.get_or_insert(i);
                        } else {
                            self.marks.push(i as usize);
                        }
                    }
                    continue;
                }
                Ask::Commit => {
                    self.reading = None;
                    let Some(mb) = self.mb.take() else { return 1 };
                    let answer = match self.bad_mark {
                        Some(i) => Answer::Failed(format!("no message at index {i}: nothing deleted")),
                        None => {
                            self.marks.sort_unstable();
                            self.marks.dedup();
                            // RFC 1939 §6: UPDATE.
                            match mb.update(&self.marks) {
                                Ok(r) => Answer::Committed {
                                    deleted: r.deleted as u32,
                                    already_gone: r.already_gone as u32,
                                    failed: r.failed.iter().take(MAILDROP_WARNINGS_MAX).map(|f| clean(f)).collect(),
                                },
                                Err(e) => Answer::Failed(clean(&e.to_string())),
                            }
                        }
                    };
                    // The locks go before the daemon hears the answer: the next session
                    // finds the mailbox free.
                    drop(mb);
                    return i32::from(send(sock, &answer).is_err());
                }
                Ask::Close => {
                    self.reading = None;
                    drop(self.mb.take());
                    return i32::from(send(sock, &Answer::Closed).is_err());
                }
            };
            if send(sock, &answer).is_err() {
                return 1;
            }
        }
    }

    /// The next piece of the message being read.
    fn chunk(&mut self) -> Answer {
        let Some(m) = self.reading.as_mut() else {
            return Answer::Failed("no message is open".into());
        };
        // Up to one chunk; a short one is the message's end.
        let mut data = Vec::new();
        match m.take(CHUNK_BYTES as u64).read_to_end(&mut data) {
            Ok(n) => {
                let last = n < CHUNK_BYTES;
                if last {
                    self.reading = None;
                }
                Answer::Chunk { data, last }
            }
            Err(e) => {
                self.reading = None;
                Answer::Failed(clean(&e.to_string()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon's side.

/// The socket to the agent; `None` once closed or broken.
#[derive(Debug)]
struct Conn {
    sock: Option<UnixStream>,
    /// Counts `Open`s: a message reader from before the latest one may not ask for more.
    opened: u64,
}

impl Conn {
    /// Forget the socket (the agent sees end of file) and say why.
    fn broken(&mut self, why: impl std::fmt::Display) -> String {
        self.sock = None;
        format!("maildrop agent: {why}")
    }

    fn send(&mut self, ask: &Ask) -> Result<(), String> {
        let Some(sock) = self.sock.as_ref() else {
            return Err("maildrop agent: connection closed".into());
        };
        let mut w = sock;
        write_frame(&mut w, ask).map_err(|e| self.broken(e))
    }

    fn recv(&mut self) -> Result<Answer, String> {
        let Some(sock) = self.sock.as_ref() else {
            return Err("maildrop agent: connection closed".into());
        };
        let mut r = sock;
        read_frame(&mut r).map_err(|e| self.broken(e))
    }

    fn call(&mut self, ask: &Ask) -> Result<Answer, String> {
        self.send(ask)?;
        self.recv()
    }
}

fn lock(conn: &Mutex<Conn>) -> std::sync::MutexGuard<'_, Conn> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A home mailbox served by an agent (see the module doc): the daemon's maildrop.
pub struct RemoteDrop {
    origin: PathBuf,
    conn: Arc<Mutex<Conn>>,
    entries: Arc<Listing>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for RemoteDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDrop")
            .field("origin", &self.origin)
            .field("messages", &self.entries.len())
            .finish()
    }
}

/// RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E.
fn valid_uid(uid: &str) -> bool {
    (1..=UID_BYTES_MAX).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl RemoteDrop {
    /// Read the agent's listing on `sock` (blocking); `origin` names the mailbox in logs.
    pub fn connect(sock: UnixStream, origin: &Path) -> Result<RemoteDrop, MailboxError> {
        Self::connect_with(sock, origin, Duration::from_secs(crate::limits::POP3_AGENT_ANSWER_SECS))
    }

    /// [`RemoteDrop::connect`] with a time limit per read and write.
    pub fn connect_with(sock: UnixStream, origin: &Path, limit: Duration) -> Result<RemoteDrop, MailboxError> {
        let io = |why: String| MailboxError::io(origin, std::io::Error::other(why));
        sock.set_read_timeout(Some(limit))
            .and_then(|()| sock.set_write_timeout(Some(limit)))
            .map_err(|e| MailboxError::io(origin, e))?;
        let mut conn = Conn {
            sock: Some(sock),
            opened: 0,
        };
        let (messages, warnings) = match conn.recv().map_err(io)? {
            Answer::Ready { messages, warnings } => (messages as usize, warnings as usize),
            // RFC 1939 §8: "-ERR [IN-USE]".
            Answer::InUse => return Err(MailboxError::InUse),
            Answer::Failed(why) => return Err(io(clean(&why))),
            other => return Err(io(conn.broken(format_args!("unexpected {} before Ready", other.kind())))),
        };
        if messages > MAILDROP_MESSAGES_MAX || warnings > MAILDROP_WARNINGS_MAX {
            return Err(io(conn.broken(format_args!(
                "announces {messages} messages and {warnings} warnings (at most {MAILDROP_MESSAGES_MAX} and {MAILDROP_WARNINGS_MAX})"
            ))));
        }
        let mut entries = Listing::with_capacity(messages.min(ENTRIES_PER_FRAME), 0);
        while entries.len() < messages {
            let part = match conn.recv().map_err(io)? {
                Answer::Listing(p) if !p.is_empty() && p.len() <= messages - entries.len() => p,
                Answer::Listing(p) => {
                    return Err(io(conn.broken(format_args!(
                        "a listing frame of {} entries after {} of {messages}",
                        p.len(),
                        entries.len()
                    ))))
                }
                other => {
                    return Err(io(
                        conn.broken(format_args!("unexpected {} in the listing", other.kind()))
                    ))
                }
            };
            for l in part {
                if !valid_uid(&l.uid) {
                    return Err(io(
                        conn.broken(format_args!("invalid unique id {:?} (RFC 1939 §7)", clean(&l.uid)))
                    ));
                }
                // valid_uid bounds its length: the compact listing always holds it.
                entries.push(b"", UidAt::Own(&l.uid), l.size, false);
            }
        }
        entries.shrink_to_fit();
        let mut seen = HashSet::with_capacity(entries.len());
        if let Some(dup) = entries.iter().find(|e| !seen.insert(e.uid())) {
            let why = format!("unique id {} listed twice", dup.uid());
            return Err(io(conn.broken(why)));
        }
        drop(seen);
        let mut notes = Vec::with_capacity(warnings);
        for _ in 0..warnings {
            match conn.recv().map_err(io)? {
                Answer::Warning(w) => notes.push(clean(&w)),
                other => {
                    return Err(io(
                        conn.broken(format_args!("unexpected {} among warnings", other.kind()))
                    ))
                }
            }
        }
        Ok(RemoteDrop {
            origin: origin.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            entries: Arc::new(entries),
            warnings: notes,
        })
    }

    pub fn listing(&self) -> &Arc<Listing> {
        &self.entries
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn io(&self, why: String) -> MailboxError {
        MailboxError::io(&self.origin, std::io::Error::other(why))
    }

    /// Message `index` (0-based): the agent opens it and sends its first chunk.
    pub fn open_message(&self, index: usize) -> Result<RemoteMessage, MailboxError> {
        let entry = self.entries.get(index).ok_or(MailboxError::Gone)?;
        let budget = entry.size();
        let mut conn = lock(&self.conn);
        conn.opened += 1;
        let mut m = RemoteMessage {
            conn: self.conn.clone(),
            generation: conn.opened,
            origin: self.origin.clone(),
            budget,
            data: Vec::new(),
            pos: 0,
            last: false,
        };
        let answer = conn.call(&Ask::Open { index: index as u32 }).map_err(|e| self.io(e))?;
        match answer {
            Answer::Gone => Err(MailboxError::Gone),
            Answer::Failed(why) => Err(self.io(clean(&why))),
            a => {
                m.accept(&mut conn, a).map_err(|e| self.io(e))?;
                Ok(m)
            }
        }
    }

    /// RFC 1939 §6 (UPDATE): the agent removes the messages at `indexes` (may be empty) and
    /// moves a Maildir's survivors to `cur/`, then releases the mailbox and ends.
    pub fn update(&self, indexes: &[usize]) -> Result<DeleteReport, MailboxError> {
        let mut conn = lock(&self.conn);
        let mut marks = Vec::with_capacity(indexes.len().min(MARKS_PER_FRAME));
        for part in indexes.chunks(MARKS_PER_FRAME) {
            marks.clear();
            for &i in part {
                if i >= self.entries.len() {
                    return Err(MailboxError::Gone);
                }
                marks.push(i as u32);
            }
            conn.send(&Ask::Mark(marks.clone())).map_err(|e| self.io(e))?;
        }
        let answer = conn.call(&Ask::Commit).map_err(|e| self.io(e))?;
        // The agent ends after Commit, whatever it answered.
        conn.sock = None;
        match answer {
            Answer::Committed {
                deleted,
                already_gone,
                failed,
            } if (deleted as usize)
                .saturating_add(already_gone as usize)
                .saturating_add(failed.len())
                <= indexes.len() + 1 =>
            {
                Ok(DeleteReport {
                    deleted: deleted as usize,
                    already_gone: already_gone as usize,
                    failed: failed
                        .iter()
                        .take(MAILDROP_WARNINGS_MAX + 1)
                        .map(|f| clean(f))
                        .collect(),
                })
            }
            Answer::Committed { .. } => Err(self.io("maildrop agent: counts more deletions than asked".into())),
            Answer::Failed(why) => Err(self.io(clean(&why))),
            other => Err(self.io(format!("maildrop agent: unexpected {} after Commit", other.kind()))),
        }
    }
}

impl Drop for RemoteDrop {
    fn drop(&mut self) {
        let mut conn = lock(&self.conn);
        if conn.sock.is_none() {
            return;
        }
        if super::system::may_block() {
            // Released before the session answers QUIT: the next session finds it free.
            if let Some(s) = conn.sock.as_ref() {
                let _ = s.set_read_timeout(Some(CLOSE_WAIT));
            }
            let _ = conn.call(&Ask::Close);
        }
        // Otherwise (dropped on the event loop) closing the socket is enough: the agent
        // sees end of file and exits, nothing deleted.
        conn.sock = None;
    }
}

/// A message streamed from the agent.
#[derive(Debug)]
pub struct RemoteMessage {
    conn: Arc<Mutex<Conn>>,
    /// The `Open` this reader belongs to.
    generation: u64,
    origin: PathBuf,
    /// Bytes the agent may still send: the listed size (never less than the stored bytes).
    budget: u64,
    data: Vec<u8>,
    pos: usize,
    last: bool,
}

impl RemoteMessage {
    /// Check one answer to Open/Next and keep its data.
    fn accept(&mut self, conn: &mut Conn, a: Answer) -> Result<(), String> {
        match a {
            Answer::Chunk { data, last } => {
                if data.len() > CHUNK_BYTES {
                    return Err(conn.broken(format_args!("a chunk of {} bytes", data.len())));
                }
                if data.is_empty() && !last {
                    return Err(conn.broken("an empty chunk that is not the last"));
                }
                if data.len() as u64 > self.budget {
                    return Err(conn.broken(format_args!(
                        "more bytes than the listed size of {}",
                        self.origin.display()
                    )));
                }
                self.budget -= data.len() as u64;
                self.data = data;
                self.pos = 0;
                self.last = last;
                Ok(())
            }
            Answer::Failed(why) => {
                self.last = true;
                Err(clean(&why))
            }
            other => Err(conn.broken(format_args!("unexpected {} while reading a message", other.kind()))),
        }
    }
}

impl Read for RemoteMessage {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        // Each round gets a non-empty chunk or the last one: bounded by the listed size.
        loop {
            if self.pos < self.data.len() {
                let n = out.len().min(self.data.len() - self.pos);
                out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.last || out.is_empty() {
                return Ok(0);
            }
            let conn = self.conn.clone();
            let mut conn = lock(&conn);
            if conn.opened != self.generation {
                return Err(std::io::Error::other("another message was opened since"));
            }
            let a = conn.call(&Ask::Next).map_err(std::io::Error::other)?;
            self.accept(&mut conn, a).map_err(std::io::Error::other)?;
        }
    }
}

#[cfg(test)]
mod tests;
