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
//! `*` after the id marks a message being delivered in Postfix; poshta reads the log
//! read-only, so it marks nothing. The null sender is shown as MAILER-DAEMON.

use crate::queue::{MessageInfo, RcptState};

/// Format a queue listing exactly like Postfix's showq.
pub fn format_mailq(msgs: &[MessageInfo]) -> String {
    if msgs.is_empty() {
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
        out.push_str(&format!(
            "{:<11} {:>7} {} {}\n",
            m.qid.to_string(),
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
    let n = msgs.len();
    out.push_str(&format!(
        "\n-- {} Kbytes in {} Request{}.\n",
        total / 1024,
        n,
        if n == 1 { "" } else { "s" }
    ));
    out
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
    let dir = &loaded.settings.queue_directory;
    if !dir.exists() {
        print!("{}", format_mailq(&[]));
        return 0;
    }
    match crate::queue::scan(dir) {
        Ok(msgs) => {
            print!("{}", format_mailq(&msgs));
            0
        }
        Err(e) => {
            eprintln!("poshta: fatal: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueId;

    #[test]
    fn empty() {
        assert_eq!(format_mailq(&[]), "Mail queue is empty\n");
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
        let s = format_mailq(&[m]);
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
}
