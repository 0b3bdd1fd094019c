//! Mailbox access for the POP3 server: one maildrop per session, locked for its duration.
//!
//! A session opens its maildrop (exclusive lock, a fixed list of messages with their sizes and
//! unique ids), reads messages by index, and at QUIT deletes the ones marked (RFC 1939 §6,
//! UPDATE state). Everything here is blocking `std::fs`/rustix code, meant to run inside
//! `smol::unblock`; every type is `Send`.
//!
//! Two backends: Maildir ([`maildir`], mailbox users and `home_mailbox = Maildir/`) and mbox
//! ([`mbox`], system users' `mail_spool_directory/USER`). [`Mailbox`] is the backend-neutral
//! face the POP3 shell holds: the same [`Listing`] (size as transmitted, unique id) and a
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
use std::sync::Arc;

/// Messages listed in one session. A bigger maildrop is served in parts: the rest appears once
/// listed messages are deleted (bounds memory: a [`Listing`] keeps 16 bytes per message and
/// its name or id).
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

/// The listing of one session's maildrop, in message-number order (message n, RFC 1939 §5,
/// is index n - 1). Per message 16 bytes, plus its name (Maildir) or unique id (mbox, agent)
/// back to back in one buffer. Shared (`Arc`) with the POP3 core, which reads sizes and ids
/// from it: a `Vec` of entries with a boxed name each, and the core's own copy of every id
/// and size, came to ~185 bytes per message (0.92 MB for 5,000 messages); this is ~80.
#[derive(Debug, Default)]
pub struct Listing {
    slots: Vec<Slot>,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    /// Where the name starts in `bytes`. With `OWN_UID` the id follows the name; without,
    /// the id is the name's first `uid_len` bytes.
    start: u32,
    name_len: u16,
    uid_len: u8,
    flags: u8,
}

const IN_NEW: u8 = 1;
const OWN_UID: u8 = 2;

/// One message of a [`Listing`].
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The backend's locator: for Maildir the file name (bytes: names need not be UTF-8) in
    /// `new/` or `cur/` as `in_new` says. Empty for the other backends.
    pub(crate) name: &'a [u8],
    uid: &'a str,
    size: u64,
    /// Maildir: the file was listed in `new/` (moved to `cur/` at UPDATE). False elsewhere.
    pub(crate) in_new: bool,
}

impl<'a> Entry<'a> {
    /// Size as transmitted with CRLF line ends (RFC 1939 §11).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// RFC 1939 §7 unique-id: 1..=70 characters in 0x21..=0x7E, stable across sessions.
    pub fn uid(&self) -> &'a str {
        self.uid
    }

    /// The backend's name for the message (Maildir: the file name in `new/` or `cur/`), for logs.
    pub fn name(&self) -> &'a OsStr {
        OsStr::from_bytes(self.name)
    }
}

/// Where a message's unique id is, for [`Listing::push`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum UidAt<'a> {
    /// The first n bytes of the name (checked by the caller to be a valid id).
    Prefix(usize),
    /// An id of its own (valid, checked by the caller).
    Own(&'a str),
}

impl Listing {
    /// An empty listing with room for `messages` and `bytes` of names and ids.
    pub(crate) fn with_capacity(messages: usize, bytes: usize) -> Listing {
        Listing {
            slots: Vec::with_capacity(messages),
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Append a message. False (nothing added) for what the compact form cannot hold: a
    /// name over 65,535 bytes, an id over 255 or longer than the name it prefixes, more than
    /// 4 GiB of names (none of which a listing within MAILDROP_MESSAGES_MAX meets).
    pub(crate) fn push(&mut self, name: &[u8], uid: UidAt<'_>, size: u64, in_new: bool) -> bool {
        let (uid_len, own) = match uid {
            UidAt::Prefix(n) if n <= name.len() => (n, None),
            UidAt::Prefix(_) => return false,
            UidAt::Own(u) => (u.len(), Some(u)),
        };
        let total = self.bytes.len() + name.len() + own.map_or(0, str::len);
        let (Ok(start), Ok(name_len), Ok(uid_len), Ok(_)) = (
            u32::try_from(self.bytes.len()),
            u16::try_from(name.len()),
            u8::try_from(uid_len),
            u32::try_from(total),
        ) else {
            return false;
        };
        self.bytes.extend_from_slice(name);
        if let Some(u) = own {
            self.bytes.extend_from_slice(u.as_bytes());
        }
        let mut flags = 0;
        if in_new {
            flags |= IN_NEW;
        }
        if own.is_some() {
            flags |= OWN_UID;
        }
        self.slots.push(Slot {
            size,
            start,
            name_len,
            uid_len,
            flags,
        });
        true
    }

    /// Give back what pushing reserved beyond the listing (the session keeps it as it is).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.bytes.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Message `index` (0-based).
    pub fn get(&self, index: usize) -> Option<Entry<'_>> {
        let s = self.slots.get(index)?;
        let start = s.start as usize;
        let name = self
            .bytes
            .get(start..start + usize::from(s.name_len))
            .unwrap_or_default();
        let uid_start = if s.flags & OWN_UID != 0 {
            start + usize::from(s.name_len)
        } else {
            start
        };
        let uid = (self.bytes.get(uid_start..uid_start + usize::from(s.uid_len)))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        Some(Entry {
            name,
            uid,
            size: s.size,
            in_new: s.flags & IN_NEW != 0,
        })
    }

    /// The messages in order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl crate::proto::pop3::server::Messages for Listing {
    fn count(&self) -> usize {
        self.len()
    }
    fn size(&self, index: usize) -> u64 {
        self.slots.get(index).map_or(0, |s| s.size)
    }
    fn uid(&self, index: usize) -> &str {
        self.get(index).map_or("", |e| e.uid)
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
        self.listing().len()
    }

    pub fn is_empty(&self) -> bool {
        self.listing().is_empty()
    }

    /// The listing made at open (shared with the POP3 core for the session).
    pub fn listing(&self) -> &Arc<Listing> {
        match self {
            Mailbox::Maildir(m) => m.listing(),
            Mailbox::Mbox(m) => m.listing(),
            Mailbox::Agent(m) => m.listing(),
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
    fn listing_keeps_names_ids_and_flags_compactly() {
        use crate::proto::pop3::server::Messages;
        let mut l = Listing::with_capacity(3, 0);
        assert!(l.push(b"1700000000.M1P1Q1.h:2,S", UidAt::Prefix(19), 12, false));
        assert!(l.push(b"odd name", UidAt::Own("0123abcd"), 7, true));
        assert!(l.push(b"", UidAt::Own("x-uidl-1"), 3, false));
        // What the compact form cannot hold is refused, and nothing is added.
        assert!(!l.push(&vec![b'a'; 70_000], UidAt::Prefix(1), 1, false));
        assert!(!l.push(b"ab", UidAt::Prefix(3), 1, false));
        assert!(!l.push(b"", UidAt::Own(&"u".repeat(256)), 1, false));
        assert_eq!(l.len(), 3);
        let e: Vec<_> = l.iter().map(|e| (e.name, e.uid(), e.size(), e.in_new)).collect();
        assert_eq!(
            e,
            [
                (&b"1700000000.M1P1Q1.h:2,S"[..], "1700000000.M1P1Q1.h", 12, false),
                (&b"odd name"[..], "0123abcd", 7, true),
                (&b""[..], "x-uidl-1", 3, false),
            ]
        );
        assert_eq!((l.count(), l.size(1), l.uid(2)), (3, 7, "x-uidl-1"));
        assert!(l.get(3).is_none());
        assert_eq!((l.size(3), l.uid(3)), (0, ""));
        assert_eq!(std::mem::size_of::<Slot>(), 16);
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
