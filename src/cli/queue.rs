//! `poshta queue` (and later `mailq`): the queue listed in the format of Postfix's
//! `postqueue -p`, so people's habits and scripts carry over:
//!
//! ```text
//! -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
//! 0677A2C00001*    1234 Sat Nov 28 00:52:32  sender@example.org
//!                                          (reason for the deferral, right-aligned to col 78)
//!                                          rcpt@example.net
//!
//! -- 2 Kbytes in 1 Request.
//! ```
//! After the id, `!` marks a held message and `*` one being delivered (Postfix's showq
//! marks). The null sender is shown as MAILER-DAEMON.
//!
//! Messages waiting in `maildrop/` (dropped by `sendmail` while the daemon was down) follow
//! the queued ones, one block per file and counted in the closing line. The id is the file
//! name, with no mark (as in Postfix's showq); size and time are the file's; the reason
//! line says it was not picked up yet:
//!
//! ```text
//! 3f9c0e...d1      512 Sat Nov 28 00:53:10  nick@example.org
//!                        (waiting for pickup: the mail system is not running)
//!                                          alice@example.org
//!
//! 5be2a1...07       40 Sat Nov 28 00:54:00  (maildrop queue, sender UID 1000)
//!                                   (damaged: not a poshta submission)
//! ```
//!
//! A file that cannot be picked up shows its owner (showq's text for a maildrop file it
//! cannot read) and why. Past limits::MAILQ_MAILDROP_FILES_MAX files (or
//! MAILQ_MAILDROP_TEXT_BYTES_MAX bytes of addresses) the rest are only counted:
//! `(N more files in maildrop/ not listed)`. Without the daemon, only root can list
//! maildrop/ (1733); other users get the queue and a warning on stderr.
//!
//! # Actions
//!
//! ```text
//! poshta queue [list]            the listing (postqueue -p)
//! poshta queue flush             every deferred message is due now (postqueue -f)
//! poshta queue hold ID|ALL...    not delivered until released (postsuper -h)
//! poshta queue release ID|ALL... (postsuper -H)
//! poshta queue delete ID|ALL...  removed from the queue (postsuper -d)
//! poshta queue show ID           envelope, then the message as queued (postcat -q)
//! ```
//!
//! They talk to the daemon over its control socket (`net::control` documents the protocol).
//! When the daemon is not running, the listing and `show` are read from the log read-only
//! (`queue::scan`, `queue::scan_message`: held messages are marked, nothing is in flight);
//! every other action fails with
//! `poshta: fatal: the mail system is down (no control socket at PATH)`. The listing also
//! falls back to the log (with a warning) when the daemon does not answer or the socket may
//! not be used (it is 0600: the control actions need the daemon's user).
//!
//! Exit status: 0 done; 1 an id was unknown (`poshta: ID: no such message`) or the daemon
//! refused the request; 64 usage; 69 the mail system is down; 75 the daemon did not answer
//! properly (timeout, short reply).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::net::pickup::WaitingList;
use crate::queue::{MessageInfo, RcptState};

const EXIT_NO_SUCH: i32 = 1;
const EXIT_USAGE: i32 = 64;
const EXIT_UNAVAILABLE: i32 = 69;
const EXIT_TEMPFAIL: i32 = 75;
/// The status line of a control response.
const STATUS_LINE_BYTES_MAX: u64 = 4096;
/// How long the CLI waits for each read or write on the control socket.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The reason line under a maildrop file when the daemon is running (it picks the file up
/// within limits::PICKUP_SCAN_SECS).
pub const WAITING_REASON: &str = "waiting for pickup";
/// The reason line under a maildrop file when the daemon is not running.
pub const WAITING_DOWN_REASON: &str = "waiting for pickup: the mail system is not running";

/// Format a queue listing like Postfix's showq: the queued messages, then the files
/// waiting in maildrop/ with `reason` under each.
pub fn format_mailq(msgs: &[MessageInfo], maildrop: &WaitingList, reason: &str) -> String {
    let requests = msgs.len() as u64 + maildrop.files.len() as u64 + maildrop.more_files;
    if requests == 0 {
        return "Mail queue is empty\n".to_string();
    }
    let mut out = String::new();
    let mut total: u64 = 0;
    out.push_str(&format!(
        "{:<11} {:>7} {:<20} {}\n",
        "-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------"
    ));
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        total += m.size;
        let sender = if m.sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            m.sender.as_str()
        };
        // asctime() truncated to 20 characters, as showq prints it.
        let arrival = format!("{:<20.20}", crate::time::mailq(m.arrival_unix) + " ");
        // postqueue's showq_compat: "%-11s %7ld %20.20s %s" with the status mark after the id.
        let mark = if m.held {
            "!"
        } else if m.in_flight {
            "*"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<11} {:>7} {} {}\n",
            format!("{}{}", m.qid, mark),
            m.size,
            arrival,
            sender
        ));
        let mut last_reason: Option<&str> = None;
        for (rcpt, state) in &m.recipients {
            if let RcptState::Deferred { reason, .. } = state {
                if last_reason != Some(reason.as_str()) {
                    let pad = 76usize.saturating_sub(reason.chars().count());
                    out.push_str(&format!("{:pad$}({})\n", "", reason, pad = pad));
                    last_reason = Some(reason.as_str());
                }
            }
            out.push_str(&format!("{:<11} {:>7} {:<20} {}\n", "", "", "", rcpt));
        }
    }
    for (i, w) in maildrop.files.iter().enumerate() {
        if i > 0 || !msgs.is_empty() {
            out.push('\n');
        }
        total += w.size;
        let arrival = format!("{:<20.20}", crate::time::mailq(w.mtime_unix) + " ");
        // No mark after the name: Postfix's showq marks only active (`*`) and held (`!`)
        // messages, and a maildrop file is neither.
        let (sender, why) = match &w.head {
            Ok(sub) if sub.sender.is_empty() => ("MAILER-DAEMON".to_string(), reason.to_string()),
            Ok(sub) => (sub.sender.clone(), reason.to_string()),
            // showq's text for a maildrop file it cannot read.
            Err(e) => (
                format!("(maildrop queue, sender UID {})", w.uid),
                format!("damaged: {e}"),
            ),
        };
        out.push_str(&format!("{:<11} {:>7} {} {}\n", w.name, w.size, arrival, sender));
        let why: String = why.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let pad = 76usize.saturating_sub(why.chars().count());
        out.push_str(&format!("{:pad$}({})\n", "", why, pad = pad));
        if let Ok(sub) = &w.head {
            for rcpt in &sub.recipients {
                out.push_str(&format!("{:<11} {:>7} {:<20} {}\n", "", "", "", rcpt));
            }
        }
    }
    if maildrop.more_files > 0 {
        total += maildrop.more_bytes;
        out.push_str(&format!(
            "\n({} more file{} in maildrop/ not listed)\n",
            maildrop.more_files,
            if maildrop.more_files == 1 { "" } else { "s" }
        ));
    }
    out.push_str(&format!(
        "\n-- {} Kbytes in {} Request{}.\n",
        total / 1024,
        requests,
        if requests == 1 { "" } else { "s" }
    ));
    out
}

/// The part of `show ID` (postcat-like) before the message: the envelope, each recipient
/// with its state, and the contents marker. The daemon's SHOW and `show` from disk both
/// use it, so the two print the same.
pub fn format_show_head(info: &MessageInfo, env: &crate::queue::Envelope) -> String {
    let id = info.qid;
    let mut head = format!(
        "*** ENVELOPE RECORDS {id} ***\nmessage_size: {}\nmessage_arrival_time: {}\nclient: {}\nsender: {}\n",
        info.size,
        crate::time::mailq(env.arrival_unix),
        env.client,
        env.sender
    );
    for r in &env.recipients {
        match info.recipients.iter().find(|(a, _)| a == r).map(|(_, s)| s) {
            Some(RcptState::Deferred { reason, .. }) => {
                head.push_str(&format!("recipient: {r} (deferred: {reason})\n"))
            }
            Some(_) => head.push_str(&format!("recipient: {r}\n")),
            None => head.push_str(&format!("recipient: {r} (done)\n")),
        }
    }
    head.push_str(&format!("*** MESSAGE CONTENTS {id} ***\n"));
    head
}

/// Why a control request did not get an answer.
#[derive(Debug)]
pub(crate) enum CtlError {
    /// No daemon: no socket, or nobody listening on it.
    Down,
    /// The daemon said ERR.
    Refused(String),
    /// Anything else (timeout, short or malformed reply).
    Broken(String),
}

/// Ask the running daemon to reload (`RELOAD`, the same as SIGHUP): newaliases, and
/// `poshta user` after a change to the users file.
pub(crate) fn reload(sock: &Path) -> Result<(), CtlError> {
    request(sock, "RELOAD", &mut std::io::sink())
}

/// Send one request and copy the response body to `out`.
fn request(sock: &Path, line: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    let stream = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CtlError::Down)
        }
        Err(e) => return Err(CtlError::Broken(format!("{}: {e}", sock.display()))),
    };
    let broken = |e: std::io::Error| CtlError::Broken(format!("{}: {e}", sock.display()));
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(broken)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(broken)?;
    (&stream).write_all(format!("{line}\n").as_bytes()).map_err(broken)?;
    let mut r = BufReader::new(&stream);
    let mut status = String::new();
    (&mut r)
        .take(STATUS_LINE_BYTES_MAX)
        .read_line(&mut status)
        .map_err(broken)?;
    let status = status
        .strip_suffix('\n')
        .ok_or_else(|| CtlError::Broken("no reply from the daemon".into()))?;
    if let Some(text) = status.strip_prefix("ERR ") {
        return Err(CtlError::Refused(text.to_string()));
    }
    let len: u64 = status
        .strip_prefix("OK ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| CtlError::Broken(format!("bad reply from the daemon: {status:.80}")))?;
    let n = std::io::copy(&mut (&mut r).take(len), out).map_err(broken)?;
    if n != len {
        return Err(CtlError::Broken(format!("reply cut short after {n} of {len} bytes")));
    }
    Ok(())
}

/// Report a failed request; returns the exit status.
fn failed(sock: &Path, e: CtlError) -> i32 {
    match e {
        CtlError::Down => {
            eprintln!(
                "poshta: fatal: the mail system is down (no control socket at {})",
                sock.display()
            );
            EXIT_UNAVAILABLE
        }
        CtlError::Refused(t) => {
            eprintln!("poshta: fatal: {t}");
            EXIT_NO_SUCH
        }
        CtlError::Broken(t) => {
            eprintln!("poshta: fatal: {t}");
            EXIT_TEMPFAIL
        }
    }
}

fn list(dir: &Path, sock: &Path) -> i32 {
    let mut body = Vec::new();
    let reason = match request(sock, "LIST", &mut body) {
        Ok(()) => {
            let _ = std::io::stdout().write_all(&body);
            return 0;
        }
        // No daemon: read the log ourselves.
        Err(CtlError::Down) => WAITING_DOWN_REASON,
        // A daemon we may not talk to (another user) or that does not answer: the log
        // still tells what is queued, only in-flight marks are missing.
        Err(CtlError::Broken(why)) => {
            eprintln!("poshta: warning: {why}; listing the queue from disk");
            WAITING_REASON
        }
        Err(e) => return failed(sock, e),
    };
    let msgs = if dir.exists() {
        match crate::queue::scan(dir) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("poshta: fatal: {e}");
                return 1;
            }
        }
    } else {
        Vec::new()
    };
    // maildrop/ is 1733: only root and the daemon's user may list it. Anyone else still
    // gets the queue, and a note that waiting files may be missing from it.
    let maildrop_dir = crate::net::pickup::maildrop_dir(dir);
    let maildrop = crate::net::pickup::list_waiting(&maildrop_dir).unwrap_or_else(|e| {
        eprintln!(
            "poshta: warning: cannot read {}: {e} (messages waiting for pickup are not listed)",
            maildrop_dir.display()
        );
        WaitingList::default()
    });
    print!("{}", format_mailq(&msgs, &maildrop, reason));
    0
}

pub fn run(args: super::QueueArgs) -> i32 {
    let path = crate::config::config_path(args.config.as_deref());
    let loaded = match crate::config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("poshta: fatal: {}: {}", path.display(), e);
            return 1;
        }
    };
    run_in(&loaded.settings.queue_directory, &args.args)
}

/// The queue command for a queue directory (mailq and `sendmail -bp`/`-q` come here with
/// their own configuration lookup).
pub fn run_in(dir: &Path, args: &[String]) -> i32 {
    let sock = crate::net::control::socket_path(dir);
    let action = args.first().map(|a| a.to_ascii_lowercase());
    let ids = args.get(1..).unwrap_or(&[]);
    // Ids go on one request line: no spaces or line ends inside one.
    if ids
        .iter()
        .any(|i| i.is_empty() || i.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
    {
        eprintln!("poshta: fatal: bad queue id");
        return EXIT_USAGE;
    }
    let verb = match (action.as_deref(), ids.len()) {
        (None, _) | (Some("list"), 0) => return list(dir, &sock),
        (Some("flush"), 0) => "FLUSH",
        (Some("show"), 1) => "SHOW",
        (Some("hold"), 1..) => "HOLD",
        (Some("release"), 1..) => "RELEASE",
        (Some("delete"), 1..) => "DELETE",
        _ => {
            eprintln!("poshta: fatal: usage: poshta queue [list | flush | show ID | hold|release|delete ID|ALL...]");
            return EXIT_USAGE;
        }
    };
    let line = std::iter::once(verb)
        .chain(ids.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    if line.len() >= crate::limits::CONTROL_REQUEST_BYTES_MAX {
        eprintln!("poshta: fatal: too many queue ids in one command");
        return EXIT_USAGE;
    }
    if verb == "SHOW" {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        return match request(&sock, &line, &mut out) {
            Ok(()) => 0,
            // No daemon: read the log ourselves, as the listing does.
            Err(CtlError::Down) => show_from_disk(dir, ids.first().map(String::as_str).unwrap_or(""), &mut out),
            Err(e) => {
                let _ = out.flush();
                failed(&sock, e)
            }
        };
    }
    let mut body = Vec::new();
    if let Err(e) = request(&sock, &line, &mut body) {
        return failed(&sock, e);
    }
    if verb == "FLUSH" {
        return 0;
    }
    // "+ ID: what" / "- ID: no such message", one per message (postsuper logs the like).
    let mut status = 0;
    let mut count = 0usize;
    for l in String::from_utf8_lossy(&body).lines() {
        if let Some(ok) = l.strip_prefix("+ ") {
            eprintln!("poshta: {ok}");
            count += 1;
        } else if let Some(bad) = l.strip_prefix("- ") {
            eprintln!("poshta: {bad}");
            status = EXIT_NO_SUCH;
        }
    }
    let what = match verb {
        "HOLD" => "Placed on hold",
        "RELEASE" => "Released from hold",
        _ => "Deleted",
    };
    eprintln!("poshta: {what}: {count} message{}", if count == 1 { "" } else { "s" });
    status
}

/// `show ID` from the log when the daemon is not running, in the daemon's format
/// (`net::control`'s SHOW body).
fn show_from_disk(dir: &Path, id_text: &str, out: &mut dyn Write) -> i32 {
    let qid = crate::net::control::parse_id(id_text);
    let found = match qid {
        Some(q) if dir.exists() => crate::queue::scan_message(dir, q),
        _ => Ok(None),
    };
    let (info, env, mut body) = match found {
        Ok(Some(m)) => m,
        Ok(None) => {
            eprintln!("poshta: fatal: {id_text}: no such message");
            return EXIT_NO_SUCH;
        }
        Err(e) => {
            eprintln!("poshta: fatal: {e}");
            return 1;
        }
    };
    let id = info.qid;
    let head = format_show_head(&info, &env);
    let res = out
        .write_all(head.as_bytes())
        // Bounded by the message size; each read checks its record's checksum.
        .and_then(|()| std::io::copy(&mut (&mut body).take(info.size), out))
        .and_then(|n| {
            if n == info.size {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "body shorter than its size ({n} of {})",
                    info.size
                )))
            }
        })
        .and_then(|()| out.write_all(format!("\n*** MESSAGE FILE END {id} ***\n").as_bytes()))
        .and_then(|()| out.flush());
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("poshta: fatal: {id}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pickup::Waiting;
    use crate::queue::QueueId;

    #[test]
    fn empty() {
        assert_eq!(
            format_mailq(&[], &WaitingList::default(), WAITING_REASON),
            "Mail queue is empty\n"
        );
    }

    #[test]
    fn one_deferred_message() {
        let m = MessageInfo {
            qid: QueueId(0x1234),
            size: 2048,
            arrival_unix: 1_795_827_152,
            sender: String::new(),
            held: false,
            in_flight: false,
            recipients: vec![
                (
                    "a@remote.example".into(),
                    RcptState::Deferred {
                        reason: "no route".into(),
                        next_try_unix: 0,
                    },
                ),
                (
                    "b@remote.example".into(),
                    RcptState::Deferred {
                        reason: "no route".into(),
                        next_try_unix: 0,
                    },
                ),
            ],
        };
        let s = format_mailq(&[m], &WaitingList::default(), WAITING_REASON);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
        );
        assert_eq!(lines[1], "000000001234    2048 Sat Nov 28 00:52:32  MAILER-DAEMON");
        assert_eq!(lines[2].len(), 78);
        assert!(lines[2].ends_with("(no route)"));
        assert_eq!(lines[3], format!("{}a@remote.example", " ".repeat(41)));
        assert_eq!(lines[4], format!("{}b@remote.example", " ".repeat(41)));
        assert_eq!(lines[5], "");
        assert_eq!(lines[6], "-- 2 Kbytes in 1 Request.");
    }

    #[test]
    fn held_and_active_marks() {
        let mut m = MessageInfo {
            qid: QueueId(0xAB),
            size: 10,
            arrival_unix: 1_795_827_152,
            sender: "s@x".into(),
            held: true,
            in_flight: true,
            recipients: vec![("r@y".into(), RcptState::Pending)],
        };
        let s = format_mailq(std::slice::from_ref(&m), &WaitingList::default(), WAITING_REASON);
        assert_eq!(s.lines().nth(1), Some("0000000000AB!      10 Sat Nov 28 00:52:32  s@x"));
        m.held = false;
        let s = format_mailq(&[m], &WaitingList::default(), WAITING_REASON);
        assert_eq!(s.lines().nth(1), Some("0000000000AB*      10 Sat Nov 28 00:52:32  s@x"));
    }

    fn waiting(name: &str, size: u64, head: Result<crate::proto::pickup::Submission, String>) -> Waiting {
        Waiting {
            name: name.into(),
            size,
            mtime_unix: 1_795_827_190,
            uid: 1000,
            head,
        }
    }

    #[test]
    fn maildrop_files_follow_the_queue_and_are_counted() {
        let m = MessageInfo {
            qid: QueueId(0xAB),
            size: 1000,
            arrival_unix: 1_795_827_152,
            sender: "s@x".into(),
            held: false,
            in_flight: false,
            recipients: vec![("r@y".into(), RcptState::Pending)],
        };
        let sub = crate::proto::pickup::Submission {
            sender: "nick@example.org".into(),
            recipients: vec!["alice@example.org".into(), "bob@example.org".into()],
            size: 100,
        };
        let drop = WaitingList {
            files: vec![
                waiting("0f1e2d3c4b5a69788796a5b4c3d2e1f0", 1200, Ok(sub)),
                waiting("junk?name", 40, Err("not a poshta submission".into())),
            ],
            more_files: 2,
            more_bytes: 2048,
        };
        let s = format_mailq(&[m], &drop, WAITING_DOWN_REASON);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[1], "0000000000AB    1000 Sat Nov 28 00:52:32  s@x");
        assert_eq!(lines[3], "");
        // The file name as the id, with no mark; its size and mtime.
        assert_eq!(
            lines[4],
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0    1200 Sat Nov 28 00:53:10  nick@example.org"
        );
        assert_eq!(lines[5].len(), 78);
        assert_eq!(
            lines[5].trim_start(),
            "(waiting for pickup: the mail system is not running)"
        );
        assert_eq!(lines[6], format!("{}alice@example.org", " ".repeat(41)));
        assert_eq!(lines[7], format!("{}bob@example.org", " ".repeat(41)));
        assert_eq!(lines[8], "");
        assert_eq!(
            lines[9],
            "junk?name        40 Sat Nov 28 00:53:10  (maildrop queue, sender UID 1000)"
        );
        assert_eq!(lines[10].trim_start(), "(damaged: not a poshta submission)");
        assert_eq!(lines[11], "");
        assert_eq!(lines[12], "(2 more files in maildrop/ not listed)");
        assert_eq!(lines[13], "");
        // 1000 + 1200 + 40 + 2048 bytes; 1 queued + 2 listed + 2 counted.
        assert_eq!(lines[14], "-- 4 Kbytes in 5 Requests.");
        assert_eq!(lines.len(), 15);
    }

    #[test]
    fn maildrop_only() {
        let sub = crate::proto::pickup::Submission {
            sender: String::new(),
            recipients: vec!["alice@example.org".into()],
            size: 1,
        };
        let drop = WaitingList {
            files: vec![waiting("abc", 99, Ok(sub))],
            ..Default::default()
        };
        let s = format_mailq(&[], &drop, WAITING_REASON);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
        );
        assert_eq!(lines[1], "abc              99 Sat Nov 28 00:53:10  MAILER-DAEMON");
        assert_eq!(lines[2], format!("{}(waiting for pickup)", " ".repeat(58)));
        assert_eq!(lines[3].trim_start(), "alice@example.org");
        assert_eq!(&lines[4..], ["", "-- 0 Kbytes in 1 Request."]);
        // Only counted files still make the queue non-empty.
        let counted = WaitingList {
            more_files: 1,
            ..Default::default()
        };
        assert!(format_mailq(&[], &counted, WAITING_REASON).ends_with("-- 0 Kbytes in 1 Request.\n"));
    }

    #[test]
    fn daemon_down_is_reported() {
        let dir = crate::testutil::TempDir::new(&format!("poshta-qctl-{}", std::process::id()));
        let sock = dir.join("control");
        let mut out = Vec::new();
        assert!(matches!(request(&sock, "FLUSH", &mut out), Err(CtlError::Down)));
        // A stale socket file with nobody listening is "down" too.
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        assert!(matches!(request(&sock, "FLUSH", &mut out), Err(CtlError::Down)));
    }
}
