//! Maildir delivery (users helper implements).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DeliveryError;

/// What to prepend and how to name the file.
pub struct MaildirDelivery<'a> {
    /// The Maildir (containing cur/ new/ tmp/; created when missing).
    pub maildir: &'a Path,
    /// Our host name, for the unique file name.
    pub hostname: &'a str,
    /// Header lines to prepend (Return-Path:, Delivered-To:), LF-ended.
    pub prepend: &'a [u8],
    /// Body size in bytes (LF-ended lines as stored in the queue), for the ,S= attribute.
    pub body_size: u64,
    /// Seconds and microseconds now (injected), and a per-process sequence number.
    pub now_secs: u64,
    pub now_micros: u32,
    pub seq: u64,
}

/// Blocking: write tmp/NAME (O_EXCL), fsync, rename to new/NAME, fsync new/.
/// Returns the final path.
pub fn deliver(d: &MaildirDelivery<'_>, body: &mut dyn Read) -> Result<PathBuf, DeliveryError> {
    let _ = (d, body);
    todo!("users helper")
}
