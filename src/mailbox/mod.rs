//! Mailbox access for the POP3 server: one maildrop per session, locked for its duration.
//!
//! A session opens its maildrop (exclusive lock, a fixed list of messages with their sizes and
//! unique ids), reads messages by index, and at QUIT deletes the ones marked (RFC 1939 §6,
//! UPDATE state). Everything here is blocking `std::fs`/rustix code, meant to run inside
//! `smol::unblock`; every type is `Send`.
//!
//! Two backends: Maildir ([`maildir`], mailbox users and `home_mailbox = Maildir/`) and mbox
//! ([`mbox`], system users' `mail_spool_directory/USER`). [`Mailbox`] is the backend-neutral
//! face the POP3 shell holds: the same [`Entry`] (size as transmitted, unique id) and a
//! [`Message`] reader. [`system`] finds and opens a system user's mailbox; when poshta runs
//! as root, a home mailbox is served by an agent running as the user ([`agent`]), which
//! opens one of the two backends and forwards to it.
//!
//! # Sizes
//!
//! RFC 1939 §11: sizes reported by STAT and LIST are those of the message as transmitted,
//! with CRLF line ends (before byte-stuffing and without the terminating `.`). Messages are
//! stored with LF line ends, so the CRLF size is the file size plus the number of LFs not
//! already preceded by a CR ([`CrlfCounter`]). This is Dovecot's "virtual size" (`,W=` in a
//! Maildir name); like Dovecot, it does not count the CRLF a POP3 server must add before the
//! terminating `.` when a message does not end with a line end (RFC 1939 §3) — poshta's
//! deliveries always end with one, since SMTP bodies do.

pub mod agent;
pub mod maildir;
pub mod mbox;
pub mod system;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Messages listed in one session. A bigger maildrop is served in parts: the rest appears once
/// listed messages are deleted (bounds memory at roughly 150 bytes per message).
pub const MAILDROP_MESSAGES_MAX: usize = 200_000;
/// Warnings kept per open (skipped files, failed moves); further ones are only counted.
pub const MAILDROP_WARNINGS_MAX: usize = 64;
/// RFC 1939 §7: a unique-id is 1 to 70 characters.
pub const UID_BYTES_MAX: usize = 70;

/// Why a maildrop operation failed.
#[derive(Debug)]
pub enum MailboxError {
    /// Another session holds the maildrop (RFC 1939 §8: "-ERR maildrop already locked").
    InUse,
    /// The message was removed by someone else after the listing (or no such index).
    Gone,
    /// A file system error; `path` is for the log, never for the client.
    Io { path: PathBuf, source: std::io::Error },
}

impl MailboxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> MailboxError {
        MailboxError::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}

impl std::fmt::Display for MailboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailboxError::InUse => f.write_str("maildrop already locked by another session"),
            MailboxError::Gone => f.write_str("message no longer exists"),
            MailboxError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for MailboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MailboxError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One message of the listing. Message number n (RFC 1939 §5) is `entries()[n - 1]`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The backend's locator: for Maildir the file name (bytes: names need not be UTF-8) in
    /// `new/` or `cur/` as `in_new` says.
    name: Box<[u8]>,
    uid: Uid,
    size: u64,
    /// Maildir: the file was listed in `new/` (moved to `cur/` at UPDATE). False elsewhere.
    in_new: bool,
}

/// Where the unique id is kept: usually a prefix of the name (no second allocation).
#[derive(Debug, Clone)]
enum Uid {
    Prefix(usize),
    Hashed(Box<str>),
}

impl Entry {
    /// Size as transmitted with CRLF line ends (RFC 1939 §11).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// RFC 1939 §7 unique-id: 1..=70 characters in 0x21..=0x7E, stable across sessions.
    pub fn uid(&self) -> &str {
        match &self.uid {
            // The prefix was checked to be printable ASCII when the entry was made.
            Uid::Prefix(len) => std::str::from_utf8(&self.name[..*len]).unwrap_or(""),
            Uid::Hashed(h) => h,
        }
    }

    /// The backend's name for the message (Maildir: the file name in `new/` or `cur/`), for logs.
    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(&self.name)
    }
}

/// What happened at UPDATE (RFC 1939 §6).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Messages removed now.
    pub deleted: usize,
    /// Messages that were already gone (another client removed them): not an error.
    pub already_gone: usize,
    /// Messages that could not be removed, with the cause (for the log; the client gets
    /// "-ERR some deleted messages not removed").
    pub failed: Vec<String>,
}

/// Counts the CRLF size of a byte stream fed in chunks (see "Sizes" in the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct CrlfCounter {
    bytes: u64,
    bare_lf: u64,
    last: Option<u8>,
}

impl CrlfCounter {
    pub fn update(&mut self, chunk: &[u8]) {
        let mut prev = self.last;
        let mut bare = 0u64;
        for &b in chunk {
            if b == b'\n' && prev != Some(b'\r') {
                bare += 1;
            }
            prev = Some(b);
        }
        self.bare_lf += bare;
        self.bytes += chunk.len() as u64;
        if let Some(&b) = chunk.last() {
            self.last = Some(b);
        }
    }

    /// Bytes as stored.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes with every bare LF turned into CRLF (Dovecot's `,W=`).
    pub fn crlf_bytes(&self) -> u64 {
        self.bytes + self.bare_lf
    }

    /// Whether the stream is empty or its last byte is LF (else the POP3 sender must add a line
    /// end before the terminating `.`, RFC 1939 §3).
    pub fn ends_with_lf(&self) -> bool {
        matches!(self.last, None | Some(b'\n'))
    }
}

/// A maildrop of any backend.
#[derive(Debug)]
pub enum Mailbox {
    Maildir(maildir::Maildrop),
    Mbox(mbox::MboxDrop),
    /// A home mailbox opened by a `maildrop-agent` running as the user.
    Agent(agent::RemoteDrop),
}

impl Mailbox {
    /// Lock and list a Maildir (see [`maildir::Maildrop::open`]).
    pub fn open_maildir(path: &std::path::Path) -> Result<Mailbox, MailboxError> {
        maildir::Maildrop::open(path).map(Mailbox::Maildir)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        match self {
            Mailbox::Maildir(m) => m.entries(),
            Mailbox::Mbox(m) => m.entries(),
            Mailbox::Agent(m) => m.entries(),
        }
    }

    /// Problems met while opening (skipped broken files), for the log.
    pub fn warnings(&self) -> &[String] {
        match self {
            Mailbox::Maildir(m) => m.warnings(),
            Mailbox::Mbox(m) => m.warnings(),
            Mailbox::Agent(m) => m.warnings(),
        }
    }

    /// The message's stored bytes (LF line ends; the sender converts to CRLF and dot-stuffs).
    pub fn open_message(&self, index: usize) -> Result<Message, MailboxError> {
        match self {
            Mailbox::Maildir(m) => m.open_message(index).map(Message::File),
            Mailbox::Mbox(m) => m.open_message(index).map(Message::Mbox),
            Mailbox::Agent(m) => m.open_message(index).map(Message::Agent),
        }
    }

    /// [`Mailbox::open_message`], with the stored size in bytes where the backend knows it
    /// without reading (a Maildir file: its size at open); None for an mbox range (`>From `
    /// quoting is undone while reading) and an agent's stream.
    pub fn open_message_sized(&self, index: usize) -> Result<(Message, Option<u64>), MailboxError> {
        match self {
            Mailbox::Maildir(m) => m.open_message_sized(index).map(|(f, n)| (Message::File(f), Some(n))),
            _ => self.open_message(index).map(|m| (m, None)),
        }
    }

    /// RFC 1939 §6 (UPDATE): remove the messages marked as deleted. Called at every QUIT in
    /// TRANSACTION state, also with no index: a Maildir then moves its listed survivors from
    /// `new/` to `cur/` (an mbox does nothing with an empty set).
    pub fn update(&self, indexes: &[usize]) -> Result<DeleteReport, MailboxError> {
        match self {
            Mailbox::Maildir(m) => m.update(indexes),
            Mailbox::Mbox(m) => m.update(indexes),
            Mailbox::Agent(m) => m.update(indexes),
        }
    }
}

/// A message being read: a Maildir file, or a byte range of an mbox (un-quoted).
#[derive(Debug)]
pub enum Message {
    File(File),
    Mbox(mbox::MboxMessage),
    Agent(agent::RemoteMessage),
}

impl Read for Message {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Message::File(f) => f.read(buf),
            Message::Mbox(m) => m.read(buf),
            Message::Agent(m) => m.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(chunks: &[&[u8]]) -> CrlfCounter {
        let mut c = CrlfCounter::default();
        for ch in chunks {
            c.update(ch);
        }
        c
    }

    #[test]
    fn crlf_counts_bare_lfs_across_chunks() {
        let c = crlf(&[b"a\nb\r", b"\nc\n"]);
        assert_eq!((c.bytes(), c.crlf_bytes(), c.ends_with_lf()), (7, 9, true));
        let c = crlf(&[b"\n\n", b"", b"\r\n\rx"]);
        assert_eq!((c.bytes(), c.crlf_bytes(), c.ends_with_lf()), (6, 8, false));
        let c = crlf(&[]);
        assert_eq!((c.bytes(), c.crlf_bytes(), c.ends_with_lf()), (0, 0, true));
        // The counter agrees with a whole-buffer conversion, whatever the split.
        let data = b"x\r\n\n\r\r\n\nyy\n";
        let want = data.len() as u64 + 3;
        for cut in 0..=data.len() {
            assert_eq!(crlf(&[&data[..cut], &data[cut..]]).crlf_bytes(), want, "cut {cut}");
        }
    }

    #[test]
    fn error_display_names_the_cause() {
        let e = MailboxError::io("/m/cur", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.to_string().starts_with("/m/cur: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            MailboxError::InUse.to_string(),
            "maildrop already locked by another session"
        );
    }
}
