//! Bounces and delay warnings parse as RFC 3464 reports and carry what the sender needs.

use mailparse::{parse_headers, parse_mail, MailHeaderMap, ParsedMail};
use poshta::delivery::dsn::{bounce, delay_warning, DiagnosticCode, Notice, RecipientStatus};

const ORIGINAL: &[u8] = b"From: Alice <alice@example.org>\n\
To: bob@example.net\n\
Subject: lunch\n\
Message-ID: <1@example.org>\n\
\n\
Are we still on for lunch?\n\
--\n\
Alice\n";

fn recipients() -> Vec<RecipientStatus<'static>> {
    vec![
        RecipientStatus {
            final_recipient: "bob@example.net",
            original_recipient: Some("Bob@Example.NET"),
            status: "5.1.1",
            remote_mta: Some("mx.example.net"),
            diagnostic: DiagnosticCode::Smtp("550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"),
        },
        RecipientStatus {
            final_recipient: "loop@example.org",
            original_recipient: None,
            status: "5.4.6",
            remote_mta: None,
            diagnostic: DiagnosticCode::Unix("mail forwarding loop for loop"),
        },
    ]
}

fn notice<'a>(rcpts: &'a [RecipientStatus<'a>]) -> Notice<'a> {
    Notice {
        myhostname: "mail.example.org",
        sender: "alice@example.org",
        queue_id: "4QbX1z2Yq",
        arrival_secs: 1_795_831_141,
        now_secs: 1_795_831_200,
        unique: "4QbX2AbCd",
        recipients: rcpts,
        headers_only: false,
        size_limit: 50_000,
        retry_until_secs: None,
    }
}

/// The per-message group and the per-recipient groups of a message/delivery-status body.
fn status_groups(part: &ParsedMail<'_>) -> Vec<Vec<(String, String)>> {
    let raw = part.get_body_raw().unwrap();
    let text = String::from_utf8(raw).unwrap();
    text.split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            let bytes = format!("{}\n\n", g.trim_end()).into_bytes();
            let (hs, _) = parse_headers(&bytes).unwrap();
            hs.iter().map(|h| (h.get_key(), h.get_value())).collect()
        })
        .collect()
}

fn get<'a>(g: &'a [(String, String)], k: &str) -> Option<&'a str> {
    g.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(k))
        .map(|(_, v)| v.as_str())
}

fn check_lines(msg: &[u8]) {
    for (i, line) in msg.split(|&b| b == b'\n').enumerate() {
        assert!(line.len() <= 998, "line {i} has {} octets", line.len());
        assert!(!line.contains(&b'\r'), "line {i} has a CR");
    }
}

#[test]
fn bounce_structure() {
    let rc = recipients();
    let msg = bounce(&notice(&rc), &mut &ORIGINAL[..]).unwrap().unwrap();
    check_lines(&msg);
    let m = parse_mail(&msg).unwrap();
    let h = &m.headers;
    assert_eq!(
        h.get_first_value("From").unwrap(),
        "MAILER-DAEMON@mail.example.org (Mail Delivery System)"
    );
    assert_eq!(h.get_first_value("To").unwrap(), "<alice@example.org>");
    assert_eq!(
        h.get_first_value("Subject").unwrap(),
        "Undelivered Mail Returned to Sender"
    );
    assert_eq!(h.get_first_value("Auto-Submitted").unwrap(), "auto-replied");
    assert_eq!(h.get_first_value("Date").unwrap(), "Sat, 28 Nov 2026 02:00:00 +0000");
    assert_eq!(h.get_first_value("MIME-Version").unwrap(), "1.0");
    let mid = h.get_first_value("Message-ID").unwrap();
    assert!(mid.starts_with('<') && mid.ends_with("@mail.example.org>"), "{mid}");
    assert_eq!(m.ctype.mimetype, "multipart/report");
    assert_eq!(m.ctype.params.get("report-type").unwrap(), "delivery-status");
    let boundary = m.ctype.params.get("boundary").unwrap().clone();
    assert!(boundary.len() <= 70);
    assert_eq!(m.subparts.len(), 3);

    let text = m.subparts[0].get_body().unwrap();
    assert_eq!(m.subparts[0].ctype.mimetype, "text/plain");
    assert!(
        text.starts_with("This is the mail system at host mail.example.org."),
        "{text}"
    );
    assert!(text.contains("I'm sorry to have to inform you"));
    assert!(
        text.contains("<bob@example.net>: host mx.example.net said: 550 5.1.1 <bob@example.net>:"),
        "{text}"
    );
    assert!(text.contains("<loop@example.org>: mail forwarding loop for loop"));

    assert_eq!(m.subparts[1].ctype.mimetype, "message/delivery-status");
    let groups = status_groups(&m.subparts[1]);
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(get(&groups[0], "Reporting-MTA"), Some("dns; mail.example.org"));
    assert_eq!(get(&groups[0], "Arrival-Date"), Some("Sat, 28 Nov 2026 01:59:01 +0000"));
    let bob = &groups[1];
    assert_eq!(get(bob, "Final-Recipient"), Some("rfc822; bob@example.net"));
    assert_eq!(get(bob, "Original-Recipient"), Some("rfc822; Bob@Example.NET"));
    assert_eq!(get(bob, "Action"), Some("failed"));
    assert_eq!(get(bob, "Status"), Some("5.1.1"));
    assert_eq!(get(bob, "Remote-MTA"), Some("dns; mx.example.net"));
    assert_eq!(
        get(bob, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown")
    );
    let lp = &groups[2];
    assert_eq!(get(lp, "Original-Recipient"), None);
    assert_eq!(get(lp, "Remote-MTA"), None);
    assert_eq!(get(lp, "Status"), Some("5.4.6"));
    assert_eq!(
        get(lp, "Diagnostic-Code"),
        Some("x-unix; mail forwarding loop for loop")
    );

    assert_eq!(m.subparts[2].ctype.mimetype, "message/rfc822");
    let returned = m.subparts[2].get_body_raw().unwrap();
    assert!(returned.starts_with(ORIGINAL), "{}", String::from_utf8_lossy(&returned));
    let inner = parse_mail(&returned).unwrap();
    assert_eq!(inner.headers.get_first_value("Subject").unwrap(), "lunch");

    // The boundary occurs only as delimiters.
    let delim = format!("--{boundary}");
    let s = String::from_utf8(msg.clone()).unwrap();
    assert_eq!(s.matches(&boundary).count(), 5); // the parameter, 3 delimiters, the close
    assert_eq!(s.matches(&format!("\n{delim}\n")).count(), 3);
    assert!(s.ends_with(&format!("\n{delim}--\n")));
    assert!(msg.is_ascii());
    assert!(s.contains("Content-Transfer-Encoding: 7bit"));
}

#[test]
fn null_sender_gets_nothing() {
    let rc = recipients();
    for null in ["", "<>", "  "] {
        let mut n = notice(&rc);
        n.sender = null;
        assert!(bounce(&n, &mut &ORIGINAL[..]).unwrap().is_none());
        assert!(delay_warning(&n, &mut &ORIGINAL[..]).unwrap().is_none());
    }
    let n = Notice {
        recipients: &[],
        ..notice(&rc)
    };
    assert!(bounce(&n, &mut &ORIGINAL[..]).unwrap().is_none());
}

#[test]
fn boundary_never_occurs_in_content() {
    let rc = recipients();
    // Build the bounce once to learn the boundary, then put it (and its successors) into
    // the original: the next bounce must pick another.
    let first = bounce(&notice(&rc), &mut &ORIGINAL[..]).unwrap().unwrap();
    let b = parse_mail(&first)
        .unwrap()
        .ctype
        .params
        .get("boundary")
        .unwrap()
        .clone();
    let base = b.trim_end_matches('=').trim_end_matches(|c: char| c.is_ascii_digit());
    let mut hostile = ORIGINAL.to_vec();
    for k in 0..5 {
        hostile.extend_from_slice(format!("--{base}{k}=\n--{base}{k}=--\n").as_bytes());
    }
    let msg = bounce(&notice(&rc), &mut &hostile[..]).unwrap().unwrap();
    let m = parse_mail(&msg).unwrap();
    let b2 = m.ctype.params.get("boundary").unwrap().clone();
    assert_ne!(b, b2);
    assert!(!hostile.windows(b2.len()).any(|w| w == b2.as_bytes()));
    assert_eq!(m.subparts.len(), 3);
    assert_eq!(m.subparts[2].get_body_raw().unwrap(), hostile);
}

#[test]
fn long_and_hostile_diagnostics() {
    let long = format!("550-5.7.1 {}\r\n550 5.7.1 end", "blocked because reasons ".repeat(200));
    let unbroken = "Z".repeat(5000);
    let injected = "550 no\r\nX-Injected: yes\r\n\r\nAction: delivered";
    let rc = vec![
        RecipientStatus {
            final_recipient: "a@example.net",
            original_recipient: None,
            status: "5.7.1",
            remote_mta: Some("mx.example.net"),
            diagnostic: DiagnosticCode::Smtp(&long),
        },
        RecipientStatus {
            final_recipient: "b@example.net",
            original_recipient: None,
            status: "not-a-status",
            remote_mta: None,
            diagnostic: DiagnosticCode::Unix(&unbroken),
        },
        RecipientStatus {
            final_recipient: "c@example.net\r\nBcc: evil@example.com",
            original_recipient: None,
            status: "5.0.0",
            remote_mta: None,
            diagnostic: DiagnosticCode::Smtp(injected),
        },
    ];
    let msg = bounce(&notice(&rc), &mut &ORIGINAL[..]).unwrap().unwrap();
    check_lines(&msg);
    let m = parse_mail(&msg).unwrap();
    assert!(m.headers.get_first_value("Bcc").is_none());
    let groups = status_groups(&m.subparts[1]);
    assert_eq!(groups.len(), 4, "{groups:?}");
    let d0 = get(&groups[1], "Diagnostic-Code").unwrap();
    assert!(d0.starts_with("smtp; 550-5.7.1 blocked because reasons"), "{d0}");
    assert!(d0.len() <= poshta::limits::DSN_DIAGNOSTIC_BYTES_MAX + 20);
    assert_eq!(get(&groups[2], "Status"), Some("5.0.0"));
    assert!(get(&groups[2], "Diagnostic-Code").unwrap().starts_with("x-unix; ZZZZ"));
    let g3 = &groups[3];
    assert_eq!(get(g3, "Action"), Some("failed"));
    assert!(get(g3, "X-Injected").is_none());
    assert_eq!(
        get(g3, "Diagnostic-Code"),
        Some("smtp; 550 no X-Injected: yes Action: delivered")
    );
    assert_eq!(
        get(g3, "Final-Recipient"),
        Some("rfc822; c@example.net Bcc: evil@example.com")
    );
    // Folded: most generated lines stay within 78 columns.
    let status_raw = String::from_utf8(m.subparts[1].get_body_raw().unwrap()).unwrap();
    let long_lines = status_raw.lines().filter(|l| l.len() > 78).count();
    assert!(long_lines <= 6, "{long_lines} long lines");
}

#[test]
fn utf8_diagnostic() {
    let rc = vec![RecipientStatus {
        final_recipient: "jörg@bücher.example",
        original_recipient: None,
        status: "5.2.2",
        remote_mta: None,
        diagnostic: DiagnosticCode::Unix("Postfach voll — mailbox full"),
    }];
    let msg = bounce(&notice(&rc), &mut &ORIGINAL[..]).unwrap().unwrap();
    check_lines(&msg);
    let m = parse_mail(&msg).unwrap();
    let text = m.subparts[0].get_body().unwrap();
    assert!(
        text.contains("<jörg@bücher.example>: Postfach voll — mailbox full"),
        "{text}"
    );
    assert_eq!(m.subparts[0].ctype.charset, "utf-8");
    let status = m.subparts[1].get_body_raw().unwrap();
    assert!(status.is_ascii());
    let groups = status_groups(&m.subparts[1]);
    assert_eq!(
        get(&groups[1], "Final-Recipient"),
        Some("rfc822; j\\x{F6}rg@b\\x{FC}cher.example")
    );
    assert_eq!(
        get(&groups[1], "Diagnostic-Code"),
        Some("x-unix; Postfach voll \\x{2014} mailbox full")
    );
    assert!(String::from_utf8_lossy(&msg).contains("Content-Transfer-Encoding: 8bit"));
}

#[test]
fn large_original_returns_headers_only() {
    let rc = recipients();
    let mut big = ORIGINAL.to_vec();
    for i in 0..10_000 {
        big.extend_from_slice(format!("body line {i}\n").as_bytes());
    }
    assert!(big.len() > 50_000);
    let msg = bounce(&notice(&rc), &mut &big[..]).unwrap().unwrap();
    assert!(msg.len() < 10_000, "{}", msg.len());
    let m = parse_mail(&msg).unwrap();
    assert_eq!(m.subparts[2].ctype.mimetype, "text/rfc822-headers");
    let hdrs = m.subparts[2].get_body_raw().unwrap();
    let (hs, _) = parse_headers(&hdrs).unwrap();
    assert_eq!(hs.get_first_value("Subject").unwrap(), "lunch");
    assert_eq!(hs.get_first_value("Message-ID").unwrap(), "<1@example.org>");
    assert!(!String::from_utf8_lossy(&hdrs).contains("body line"));

    // RET=HDRS: headers even for a small message.
    let n = Notice {
        headers_only: true,
        ..notice(&rc)
    };
    let msg = bounce(&n, &mut &ORIGINAL[..]).unwrap().unwrap();
    let m = parse_mail(&msg).unwrap();
    assert_eq!(m.subparts[2].ctype.mimetype, "text/rfc822-headers");
    assert!(!String::from_utf8_lossy(&m.subparts[2].get_body_raw().unwrap()).contains("lunch?"));

    // A header larger than the limit: cut at a line end.
    let mut fat = Vec::new();
    for i in 0..5000 {
        fat.extend_from_slice(format!("X-Junk-{i}: yes\n").as_bytes());
    }
    fat.extend_from_slice(b"\nbody\n");
    let n = Notice {
        size_limit: 1000,
        ..notice(&rc)
    };
    let msg = bounce(&n, &mut &fat[..]).unwrap().unwrap();
    let m = parse_mail(&msg).unwrap();
    let hdrs = m.subparts[2].get_body_raw().unwrap();
    assert!(
        hdrs.len() <= 1001 && hdrs.starts_with(b"X-Junk-0: yes\n"),
        "{}",
        hdrs.len()
    );
}

#[test]
fn eight_bit_original() {
    let rc = recipients();
    let orig = "Subject: =?utf-8?q?caf=C3=A9?=\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nCafé\n";
    let msg = bounce(&notice(&rc), &mut orig.as_bytes()).unwrap().unwrap();
    let m = parse_mail(&msg).unwrap();
    assert_eq!(m.headers.get_first_value("Content-Transfer-Encoding").unwrap(), "8bit");
    assert_eq!(m.subparts[2].get_body_raw().unwrap(), orig.as_bytes());
}

#[test]
fn delay_warning_structure() {
    let rc = vec![RecipientStatus {
        final_recipient: "bob@example.net",
        original_recipient: None,
        status: "4.4.1",
        remote_mta: Some("mx.example.net"),
        diagnostic: DiagnosticCode::Smtp("421 4.4.1 try later"),
    }];
    let n = Notice {
        now_secs: 1_795_831_141 + 4 * 3600,
        retry_until_secs: Some(1_795_831_141 + 5 * 86400),
        ..notice(&rc)
    };
    let msg = delay_warning(&n, &mut &ORIGINAL[..]).unwrap().unwrap();
    check_lines(&msg);
    let m = parse_mail(&msg).unwrap();
    assert_eq!(
        m.headers.get_first_value("Subject").unwrap(),
        "Delayed Mail (still being retried)"
    );
    assert_eq!(m.headers.get_first_value("Auto-Submitted").unwrap(), "auto-replied");
    let text = m.subparts[0].get_body().unwrap();
    assert!(text.contains("THIS IS A WARNING ONLY"));
    assert!(text.contains("could not be delivered for 4.0 hours"), "{text}");
    let groups = status_groups(&m.subparts[1]);
    assert_eq!(get(&groups[1], "Action"), Some("delayed"));
    assert_eq!(get(&groups[1], "Status"), Some("4.4.1"));
    assert_eq!(
        get(&groups[1], "Will-Retry-Until"),
        Some("Thu, 3 Dec 2026 01:59:01 +0000")
    );
    // A 5.x.x status in a delay warning is not allowed: 4.0.0.
    let rc5 = vec![RecipientStatus {
        status: "5.1.1",
        ..rc[0]
    }];
    let msg = delay_warning(&Notice { recipients: &rc5, ..n }, &mut &ORIGINAL[..])
        .unwrap()
        .unwrap();
    let groups = status_groups(&parse_mail(&msg).unwrap().subparts[1]);
    assert_eq!(get(&groups[1], "Status"), Some("4.0.0"));
}

#[test]
fn many_recipients_are_bounded() {
    let addrs: Vec<String> = (0..1500).map(|i| format!("user{i}@example.net")).collect();
    let rc: Vec<RecipientStatus<'_>> = addrs
        .iter()
        .map(|a| RecipientStatus {
            final_recipient: a,
            original_recipient: None,
            status: "5.1.1",
            remote_mta: None,
            diagnostic: DiagnosticCode::Unix("unknown user"),
        })
        .collect();
    let msg = bounce(&notice(&rc), &mut &ORIGINAL[..]).unwrap().unwrap();
    let m = parse_mail(&msg).unwrap();
    assert_eq!(
        status_groups(&m.subparts[1]).len(),
        1 + poshta::limits::DSN_RECIPIENTS_MAX
    );
    assert!(m.subparts[0]
        .get_body()
        .unwrap()
        .contains("... and 500 more recipients."));
}
