//! Maillog-style logging: one line per event, `TAG/SERVICE[PID]: text`, as Postfix's
//! maillog, so people's greps and fail2ban filters carry over. TAG is syslog_name, by
//! default `postfix-poshta`: Postfix's multi-instance form (`postfix-NAME`), which the stock
//! fail2ban, logwatch and pflogsumm patterns (`postfix(-\w+)?/`) recognise.
//!
//! Lines go to stderr. Under systemd (JOURNAL_STREAM set) journald adds the time and host,
//! so the line starts at `poshta/...`; otherwise it is prefixed with a syslog timestamp and
//! the host name (`Nov 28 00:52:32 mx poshta/smtpd[123]: ...`). When maillog_file is set,
//! every line is also appended there in the prefixed form (Postfix 3.4+ key).
//! Warnings carry Postfix's `warning: ` prefix in the text.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

struct Sink {
    hostname: String,
    tag: String,
    journal: bool,
    file: Option<File>,
    /// The line being written, reused: a busy server logs several lines a message, and two
    /// allocations a line were a visible part of its CPU time (bench/smtp-deliver.sh).
    buf: String,
    /// The second `stamp` was made for (the prefix changes once a second).
    stamp_unix: u64,
    /// `TIMESTAMP HOST ` for `stamp_unix`.
    stamp: String,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Set the host name and the optional maillog_file. Safe to call again (reload).
pub fn init(hostname: &str, syslog_name: &str, maillog_file: Option<&Path>) -> std::io::Result<()> {
    let file = match maillog_file {
        Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let short = hostname.split('.').next().unwrap_or(hostname).to_string();
    let tag = if syslog_name.is_empty() {
        "poshta".to_string()
    } else {
        syslog_name.to_string()
    };
    let sink = Sink {
        hostname: short,
        tag,
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        file,
        buf: String::new(),
        stamp_unix: u64::MAX,
        stamp: String::new(),
    };
    if let Ok(mut g) = SINK.lock() {
        *g = Some(sink);
    }
    Ok(())
}

/// Write one line for `service` (smtpd, local, qmgr, cleanup, ...).
pub fn line(service: &str, text: std::fmt::Arguments<'_>) {
    // getpid is a system call in glibc; a busy server logs several lines a message.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let now = crate::time::now_unix();
    let mut g = match SINK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match g.as_mut() {
        Some(sink) => {
            use std::fmt::Write as _;
            if sink.stamp_unix != now {
                sink.stamp_unix = now;
                sink.stamp = format!("{} {} ", crate::time::syslog(now), sink.hostname);
            }
            let mut buf = std::mem::take(&mut sink.buf);
            buf.clear();
            buf.push_str(&sink.stamp);
            let body_at = buf.len();
            let _ = writeln!(buf, "{}/{service}[{pid}]: {text}", sink.tag);
            let stderr_line = if sink.journal { &buf[body_at..] } else { &buf[..] };
            let _ = std::io::stderr().write_all(stderr_line.as_bytes());
            if let Some(f) = sink.file.as_mut() {
                let _ = f.write_all(buf.as_bytes());
            }
            // A huge line (a long list in a warning) does not stay allocated.
            if buf.capacity() <= 4096 {
                sink.buf = buf;
            }
        }
        None => {
            let body = format!("poshta/{service}[{pid}]: {text}\n");
            let _ = std::io::stderr().write_all(body.as_bytes());
        }
    }
}

/// `mlog!("smtpd", "connect from {}[{}]", name, ip)`
#[macro_export]
macro_rules! mlog {
    ($service:expr, $($arg:tt)*) => {
        $crate::log::line($service, format_args!($($arg)*))
    };
}
