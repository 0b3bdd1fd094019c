//! Fuzz the SMTP server core: arbitrary client bytes, cut into arbitrary reads, answered
//! by a fixed policy. Checks: no panic, the core never stalls while it has input to work
//! on, and output, message bytes and event counts stay proportional to the input.
//!
//! Input layout: byte 0 = flags (bit 0: reject bare newlines; bit 1: 64-octet size limit;
//! bit 2: time out at the end; bit 3: answer MAIL with 421; bit 4: reject DataStart;
//! bit 5: offer STARTTLS and AUTH (also without TLS); bit 6: answer AUTH with auth_ok, else
//! auth_failed; bit 7: submission, TLS from the start),
//! byte 1 = read-size seed, the rest = what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poshta::proto::reply::Reply;
use poshta::proto::smtp::server::{BareNewline, Event, HeaderFix, Server, SessionParams};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, seed, input) = (data[0], data[1], &data[2..]);
    let mut s = Server::new(SessionParams {
        hostname: "mx.example.org".into(),
        client_ip: [192, 0, 2, 1].into(),
        client_name: "unknown".into(),
        bare_newline: if flags & 1 != 0 {
            BareNewline::Reject
        } else {
            BareNewline::Normalize
        },
        message_size_limit: if flags & 2 != 0 { 64 } else { 0 },
        recipient_limit: 100,
        extra_ehlo: Vec::new(),
        tls_active: flags & 128 != 0,
        starttls_offered: flags & 32 != 0,
        auth_offered: flags & (32 | 128) != 0,
        auth_requires_tls: flags & 32 == 0,
        auth_required: flags & 128 != 0,
    });
    let mut out_bytes = s.take_output().len();
    let mut body_bytes = 0usize;
    let mut events = 0usize;
    let mut messages = 0usize;
    let mut starts = 0usize;
    let mut rest = input;
    let mut i = 0usize;
    while !rest.is_empty() && !s.is_closed() {
        assert!(s.wants_input(), "core stopped reading with nothing to answer");
        // Arbitrary read sizes: 1 to 257 octets, varying with the seed.
        let n = (1 + (usize::from(seed) * 31 + i * 17) % 257).min(rest.len());
        i += 1;
        s.input(&rest[..n]);
        rest = &rest[n..];
        while let Some(ev) = s.poll() {
            events += 1;
            assert!(events <= 4 * input.len() + 16, "event storm");
            match ev {
                Event::Helo { .. } => s.accept(),
                Event::Mail { .. } if flags & 8 != 0 => {
                    s.reject(Reply::new(421, "4.3.2 mx.example.org Service shutting down"))
                }
                Event::Mail { .. } => s.accept(),
                Event::Rcpt { to } if to.contains('x') => {
                    s.reject(Reply::owned(550, format!("5.1.1 <{to}>: User unknown")))
                }
                Event::Rcpt { .. } => s.accept(),
                Event::DataStart if flags & 16 != 0 => s.reject(Reply::new(451, "4.3.0 Error")),
                Event::DataStart => {
                    starts += 1;
                    s.accept_data(
                        b"Received: fuzz\r\n".to_vec(),
                        HeaderFix {
                            date: Some("Date: D".into()),
                            message_id: Some("Message-ID: <m@x>".into()),
                        },
                    )
                }
                Event::Body(b) => {
                    assert!(!b.is_empty());
                    body_bytes += b.len();
                }
                Event::DataEnd { size } => {
                    assert!(size <= input.len() as u64);
                    messages += 1;
                    s.finish_data(Reply::new(250, "2.0.0 Ok: queued as F"));
                }
                Event::DataAborted(_) | Event::Reset | Event::Quit => {}
                Event::StartTls => {
                    // CVE-2011-0411: nothing runs before the handshake completes.
                    s.input(b"NOOP\r\n");
                    assert_eq!(s.poll(), None, "input ran before the TLS handshake");
                    s.tls_started();
                    assert!(s.tls_active());
                }
                Event::Auth { creds, .. } => {
                    assert!(creds.authcid.len() <= 255 && creds.password.len() <= 255);
                    if flags & 64 != 0 {
                        s.auth_ok();
                        assert!(s.authenticated_user().is_some());
                    } else {
                        s.auth_failed();
                    }
                }
            }
        }
        out_bytes += s.take_output().len();
    }
    if flags & 4 != 0 {
        s.timeout();
    } else {
        s.eof();
    }
    while let Some(ev) = s.poll() {
        assert!(matches!(ev, Event::DataAborted(_)), "after close: {ev:?}");
    }
    out_bytes += s.take_output().len();
    // Replies: at most one EHLO-sized reply per input octet (a bare LF is a command).
    assert!(
        out_bytes <= 256 + 160 * input.len(),
        "output {out_bytes} for {} input",
        input.len()
    );
    // Body: the input (minus framing) plus prefix and two header lines per message.
    assert!(
        body_bytes <= input.len() + 64 * starts,
        "body {body_bytes} for {} input",
        input.len()
    );
    assert!(messages <= starts);
});
