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
//!
//! The event loop's thread batches: its lines are kept and written together before the
//! next reply to a client leaves (`net::send_all`, so a client that got a reply finds its
//! log line) or when the loop has run a batch of tasks ([`flush`], called by `net::serve`
//! after every poll of the executor): at concurrency 50, three `write`s a message instead
//! of five (docs/decisions.md, "Log lines are written in batches by the event loop"). A line
//! from any other thread first writes what is kept, so the order of lines is kept too.
//! A panic hook writes what is kept before the process aborts.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Kept bytes beyond this are written at once (a burst of lines stays bounded).
const KEPT_BYTES_MAX: usize = 16 * 1024;

thread_local! {
    /// This thread's lines are kept until [`flush`] (the event loop's thread).
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

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
    /// `TAG/SERVICE[PID]: ` by service, made once (a handful of services log).
    prefixes: Vec<(String, String)>,
    /// Lines kept for stderr and for the file (see the module doc).
    kept_err: Vec<u8>,
    kept_file: Vec<u8>,
}

/// At most this many prefixes are kept (more services than poshta has: start over).
const PREFIXES_KEPT: usize = 32;

impl Sink {
    /// `TAG/SERVICE[PID]: ` for this line.
    fn prefix(&mut self, service: &str) -> &str {
        let i = match self.prefixes.iter().position(|(s, _)| s == service) {
            Some(i) => i,
            None => {
                if self.prefixes.len() >= PREFIXES_KEPT {
                    self.prefixes.clear();
                }
                let prefix = format!("{}/{service}[{}]: ", self.tag, crate::pid());
                self.prefixes.push((service.to_string(), prefix));
                self.prefixes.len() - 1
            }
        };
        &self.prefixes[i].1
    }

    fn write_kept(&mut self) {
        if !self.kept_err.is_empty() {
            let _ = std::io::stderr().write_all(&self.kept_err);
            self.kept_err.clear();
        }
        if !self.kept_file.is_empty() {
            if let Some(f) = self.file.as_mut() {
                let _ = f.write_all(&self.kept_file);
            }
            self.kept_file.clear();
        }
        // A burst does not stay allocated.
        if self.kept_err.capacity() > 2 * KEPT_BYTES_MAX {
            self.kept_err = Vec::new();
        }
        if self.kept_file.capacity() > 2 * KEPT_BYTES_MAX {
            self.kept_file = Vec::new();
        }
    }
}

/// Keep this thread's lines until [`flush`] (the event loop's thread; see the module doc).
pub fn batch_this_thread() {
    BATCHING.with(|b| b.set(true));
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: the panic may have come from inside `line`, holding the lock.
            if let Ok(mut g) = SINK.try_lock() {
                if let Some(sink) = g.as_mut() {
                    sink.write_kept();
                }
            }
            previous(info);
        }));
    });
}

/// Write the lines kept so far (cheap when there are none).
pub fn flush() {
    let mut g = match SINK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(sink) = g.as_mut() {
        sink.write_kept();
    }
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
        prefixes: Vec::new(),
        kept_err: Vec::new(),
        kept_file: Vec::new(),
    };
    if let Ok(mut g) = SINK.lock() {
        // Lines kept under the old settings go out first.
        if let Some(old) = g.as_mut() {
            old.write_kept();
        }
        *g = Some(sink);
    }
    Ok(())
}

/// Write one line for `service` (smtpd, local, qmgr, cleanup, ...).
pub fn line(service: &str, text: std::fmt::Arguments<'_>) {
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
            buf.push_str(sink.prefix(service));
            let _ = writeln!(buf, "{text}");
            let stderr_line = if sink.journal { &buf[body_at..] } else { &buf[..] };
            if BATCHING.with(Cell::get) {
                sink.kept_err.extend_from_slice(stderr_line.as_bytes());
                if sink.file.is_some() {
                    sink.kept_file.extend_from_slice(buf.as_bytes());
                }
                if sink.kept_err.len() > KEPT_BYTES_MAX || sink.kept_file.len() > KEPT_BYTES_MAX {
                    sink.write_kept();
                }
            } else {
                // What the loop kept precedes this line.
                sink.write_kept();
                let _ = std::io::stderr().write_all(stderr_line.as_bytes());
                if let Some(f) = sink.file.as_mut() {
                    let _ = f.write_all(buf.as_bytes());
                }
            }
            // A huge line (a long list in a warning) does not stay allocated.
            if buf.capacity() <= 4096 {
                sink.buf = buf;
            }
        }
        None => {
            let body = format!("poshta/{service}[{}]: {text}\n", crate::pid());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// The loop's lines wait for `flush`; a line from another thread writes them first, so
    /// the file keeps the order in which lines were made.
    #[test]
    fn batched_lines_wait_for_flush_and_keep_their_order() {
        let path = std::env::temp_dir().join(format!("poshta-log-test-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        init("mx.example.org", "poshta-test", Some(&path)).unwrap();
        let tag = format!("batch-test-{}", std::process::id());
        let p = path.clone();
        let (before, middle, last) = std::thread::spawn(move || {
            batch_this_thread();
            line("smtpd", format_args!("{tag} one"));
            line("smtpd", format_args!("{tag} two"));
            let before = read(&p);
            let t = tag.clone();
            std::thread::spawn(move || line("local", format_args!("{t} three")))
                .join()
                .unwrap();
            let middle = read(&p);
            line("smtpd", format_args!("{tag} four"));
            let unflushed = read(&p);
            flush();
            assert!(!unflushed.contains("four"), "{unflushed}");
            (before, middle, read(&p))
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(!before.contains("one"), "written before flush: {before}");
        let at = |text: &str, what: &str| text.find(what).unwrap_or_else(|| panic!("no {what:?} in {text}"));
        assert!(at(&middle, "one") < at(&middle, "two") && at(&middle, "two") < at(&middle, "three"));
        assert!(at(&last, "three") < at(&last, "four"));
        assert!(last.contains("poshta-test/smtpd["), "{last}");
    }
}
