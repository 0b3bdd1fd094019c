//! Fuzz the POP3 server core: arbitrary client bytes, cut into arbitrary reads, answered
//! by a fixed world. Checks: no panic, the core never stalls while it has input to work
//! on, output stays proportional to the input, and after a login the maildrop is released
//! exactly once (one Update or one Closed) when the session ends.
//!
//! Input layout: byte 0 = flags (bit 0: plaintext logins allowed; bit 1: TLS active;
//! bit 2: time out at the end; bit 3: logins fail with IN-USE; bit 4: messages cannot be
//! opened; bit 5: reading fails after the first chunk; bit 6: UPDATE fails; bit 7: STLS
//! handshake fails), byte 1 = read-size seed, the rest = what the client sends. The fourth
//! message of the maildrop is the first 200 octets of that input (hostile line ends and
//! dots in RETR/TOP).
#![no_main]

use libfuzzer_sys::fuzz_target;
use poshta::proto::pop3::server::{Event, LoginFailure, MessageMeta, Pop3Params, Server};

const MESSAGES: [&[u8]; 3] = [
    b"Subject: one\n\nbody one\n",
    b"Subject: two\n\n.hidden dot\n..two dots\n.\nend\n",
    b"A: b\r\n\r\nline 1\rx\nline 2\r\n.\r\nno end",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, seed, input) = (data[0], data[1], &data[2..]);
    let fourth = &input[..input.len().min(200)];
    let maildrop: Vec<&[u8]> = MESSAGES.iter().copied().chain([fourth]).collect();
    let mut s = Server::new(Pop3Params {
        hostname: "pop.example.org".into(),
        tls_active: flags & 2 != 0,
        stls_offered: flags & 2 == 0,
        plaintext_login_allowed: flags & 1 != 0,
        autologout_secs: 600,
    });
    let mut out_bytes = s.take_output().len();
    let mut events = 0usize;
    let mut logged_in = false;
    let mut releases = 0usize;
    let mut tls_failed = false;
    let mut answer = |s: &mut Server, ev: Event, out_bytes: &mut usize| match ev {
        Event::Login { .. } if flags & 8 != 0 => s.login_failed(LoginFailure::InUse),
        Event::Login { .. } => {
            logged_in = true;
            s.login_ok(std::sync::Arc::new(
                maildrop
                    .iter()
                    .enumerate()
                    .map(|(i, m)| MessageMeta {
                        size: m.len() as u64,
                        uid: format!("uid{i}"),
                    })
                    .collect::<Vec<_>>(),
            ));
        }
        Event::StartTls if flags & 128 != 0 => {
            tls_failed = true;
            s.eof();
        }
        Event::StartTls => s.tls_started(true),
        Event::Retr { index, top_lines: _ } => {
            assert!(index < maildrop.len(), "Retr of index {index}");
            if flags & 16 != 0 {
                s.retr_failed();
                return;
            }
            s.retr_begin();
            *out_bytes += s.take_output().len();
            for chunk in maildrop[index].chunks(1 + usize::from(seed) % 13) {
                s.retr_chunk(chunk);
                let o = s.take_output();
                assert!(o.len() <= 2 * chunk.len() + 2, "{} for {}", o.len(), chunk.len());
                *out_bytes += o.len();
                if flags & 32 != 0 {
                    s.retr_failed();
                    return;
                }
            }
            s.retr_end();
        }
        Event::Update { deleted } => {
            assert!(deleted.windows(2).all(|w| w[0] < w[1]));
            assert!(deleted.iter().all(|&i| i < maildrop.len()));
            releases += 1;
            s.update_done(flags & 64 == 0);
        }
        Event::Closed => releases += 1,
    };
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
            assert!(events <= input.len() + 16, "event storm");
            answer(&mut s, ev, &mut out_bytes);
        }
        out_bytes += s.take_output().len();
    }
    if flags & 4 != 0 {
        s.timeout();
    } else {
        s.eof();
    }
    while let Some(ev) = s.poll() {
        assert!(matches!(ev, Event::Closed), "after close: {ev:?}");
        answer(&mut s, ev, &mut out_bytes);
    }
    out_bytes += s.take_output().len();
    assert!(s.is_closed() || !tls_failed);
    // Every reply comes from at least one input octet (a bare LF is a command); the longest
    // are CAPA, LIST/UIDL of four messages and RETR of the largest message.
    assert!(
        out_bytes <= 512 + 512 * input.len(),
        "output {out_bytes} for {} input",
        input.len()
    );
    if s.is_closed() {
        assert_eq!(releases, usize::from(logged_in), "lock released {releases} times");
    }
});
