//! The SMTP client core (`proto::smtp::client`):
//! - in process against the SMTP server core (both sans-IO: bytes are piped between them):
//!   full deliveries, pipelined and not, a 1 MiB body in chunks, dot-stuffing, STARTTLS and
//!   AUTH, connection reuse;
//! - scripted fake-server transcripts (tests/client_transcripts/*.txt, format in its
//!   README.md), each run step by step and again with the server's bytes fed one at a time.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use poshta::proto::reply::Reply;
use poshta::proto::smtp::client::{
    self, Client, ClientParams, Message, RcptResult, SaslLogin, Stage, Status, TlsPolicy,
};
use poshta::proto::smtp::server::{self, BareNewline, HeaderFix, Server, SessionParams};

fn client_params() -> ClientParams {
    ClientParams {
        helo_name: "client.example".into(),
        peer: "mx.example.org[127.0.0.1]:25".into(),
        tls: TlsPolicy::None,
        tls_active: false,
        auth: None,
        auth_needs_tls: true,
        auth_soft_bounce: true,
    }
}

fn server_params() -> SessionParams {
    SessionParams {
        hostname: "mx.example.org".into(),
        client_ip: IpAddr::from([127, 0, 0, 1]),
        client_name: "localhost".into(),
        bare_newline: BareNewline::Reject,
        message_size_limit: 0,
        recipient_limit: 1000,
        extra_ehlo: Vec::new(),
        tls_active: false,
        starttls_offered: false,
        auth_offered: false,
        auth_requires_tls: true,
        auth_required: false,
    }
}

/// What the in-process server stored and saw.
#[derive(Default)]
struct Seen {
    /// Stored messages (LF line ends), one per DataEnd.
    bodies: Vec<Vec<u8>>,
    current: Vec<u8>,
    /// (sender, recipients) per MAIL.
    envelopes: Vec<(String, Vec<String>)>,
    /// Largest single write from the client (checks batching and chunking).
    client_writes: Vec<usize>,
    mail_size: Vec<Option<u64>>,
    auth_user: Option<String>,
    tls: bool,
}

struct Peer {
    /// Strip PIPELINING from the EHLO reply (the server core always offers it).
    no_pipelining: bool,
    /// The client's body chunk size.
    chunk: usize,
}

/// Pipe bytes between a client and a server until the client closes. Returns the client's
/// Done results and its Closed failure.
fn run(
    mut c: Client,
    mut s: Server,
    mut messages: Vec<(Message, Vec<u8>)>,
    peer: &Peer,
) -> (Vec<Vec<RcptResult>>, Option<client::Failure>, Seen) {
    messages.reverse();
    let mut seen = Seen::default();
    let mut dones = Vec::new();
    let mut closed = None;
    let mut body: Vec<u8> = Vec::new();
    for _round in 0..10_000 {
        // Client side.
        while let Some(ev) = c.poll() {
            match ev {
                client::Event::Ready => match messages.pop() {
                    Some((m, b)) => {
                        body = b;
                        c.send(m);
                    }
                    None => c.quit(),
                },
                client::Event::SendBody => {
                    for piece in body.chunks(peer.chunk.max(1)) {
                        c.body_chunk(piece);
                        let o = c.take_output();
                        seen.client_writes.push(o.len());
                        s.input(&o);
                        serve(&mut s, &mut seen);
                    }
                    c.body_end();
                }
                client::Event::StartTls => {
                    // The server's 220 reached the client: both sides do the handshake.
                    assert!(c.take_output().is_empty());
                    s.tls_started();
                    c.tls_started();
                    seen.tls = true;
                }
                client::Event::Done(r) => dones.push(r),
                client::Event::Closed(f) => {
                    closed = Some(f);
                }
            }
        }
        let o = c.take_output();
        if !o.is_empty() {
            seen.client_writes.push(o.len());
        }
        s.input(&o);
        serve(&mut s, &mut seen);
        let mut so = s.take_output();
        if peer.no_pipelining {
            let t = String::from_utf8(so)
                .expect("utf8 reply")
                .replace("250-PIPELINING\r\n", "");
            so = t.into_bytes();
        }
        if let Some(f) = closed.take() {
            return (dones, f, seen);
        }
        if s.is_closed() && so.is_empty() && o.is_empty() {
            c.eof();
        }
        c.input(&so);
    }
    panic!("no end after 10000 rounds");
}

/// The test world's server policy: recipients starting with `bad` get 550, `later` 450.
fn serve(s: &mut Server, seen: &mut Seen) {
    while let Some(ev) = s.poll() {
        match ev {
            server::Event::Helo { .. } => s.accept(),
            server::Event::Mail { from, size, .. } => {
                seen.envelopes.push((from, Vec::new()));
                seen.mail_size.push(size);
                s.accept();
            }
            server::Event::Rcpt { to } => {
                if to.starts_with("bad") {
                    s.reject(Reply::owned(
                        550,
                        format!("5.1.1 <{to}>: Recipient address rejected: User unknown"),
                    ));
                } else if to.starts_with("later") {
                    s.reject(Reply::new(450, "4.2.0 try later"));
                } else {
                    if let Some(e) = seen.envelopes.last_mut() {
                        e.1.push(to);
                    }
                    s.accept();
                }
            }
            server::Event::DataStart => s.accept_data(Vec::new(), HeaderFix::default()),
            server::Event::Body(b) => seen.current.extend_from_slice(&b),
            server::Event::DataEnd { .. } => {
                seen.bodies.push(std::mem::take(&mut seen.current));
                s.finish_data(Reply::new(250, "2.0.0 Ok: queued as TESTQID"));
            }
            server::Event::Auth { creds, .. } => {
                if creds.authcid == "alice" && creds.password == "alice-pw" {
                    seen.auth_user = Some(creds.authcid);
                    s.auth_ok();
                } else {
                    s.auth_failed();
                }
            }
            server::Event::StartTls => {}
            server::Event::Reset | server::Event::Quit | server::Event::DataAborted(_) => {
                seen.current.clear();
            }
        }
    }
}

fn msg(to: &[&str], body: &[u8]) -> (Message, Vec<u8>) {
    (
        Message {
            sender: "sender@example.com".into(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            size: body.len() as u64,
            eight_bit: body.iter().any(|&b| b > 127),
        },
        body.to_vec(),
    )
}

/// A body of about `n` bytes with tricky lines: leading dots, a lone dot, 8-bit text.
fn big_body(n: usize) -> Vec<u8> {
    let mut b = b"Subject: big\nFrom: <sender@example.com>\n\n".to_vec();
    let lines: [&[u8]; 5] = [
        b".\n",
        b"..two dots\n",
        b"plain line of text that is not very interesting at all\n",
        b".leading dot\n",
        "8-bit: \u{00e9}t\u{00e9}\n".as_bytes(),
    ];
    let mut i = 0;
    while b.len() < n {
        b.extend_from_slice(lines[i % lines.len()]);
        i += 1;
    }
    b
}

#[test]
fn pipelined_delivery_of_a_1mib_body_in_chunks() {
    let body = big_body(1024 * 1024);
    let peer = Peer {
        no_pipelining: false,
        chunk: 16 * 1024,
    };
    let (dones, failure, seen) = run(
        Client::new(client_params()),
        Server::new(server_params()),
        vec![msg(&["alice@example.org", "bob@example.org"], &body)],
        &peer,
    );
    assert_eq!(failure, None);
    assert_eq!(dones.len(), 1);
    assert!(dones[0].iter().all(|r| r.status == Status::Sent), "{:?}", dones[0]);
    assert_eq!(dones[0][0].text, "250 2.0.0 Ok: queued as TESTQID");
    assert_eq!(seen.bodies.len(), 1);
    assert!(seen.bodies[0] == body, "stored body differs");
    assert_eq!(seen.mail_size, vec![Some(body.len() as u64)]);
    // MAIL, both RCPTs and DATA went out in one write (RFC 2920).
    assert!(seen
        .client_writes
        .iter()
        .any(|&n| n == "MAIL FROM:<sender@example.com> SIZE=1048576 BODY=8BITMIME\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n".len()));
    // The output per body chunk stays near the chunk size.
    assert!(
        seen.client_writes.iter().all(|&n| n <= 20 * 1024),
        "{:?}",
        seen.client_writes
    );
}

#[test]
fn unpipelined_delivery_and_mixed_recipients() {
    let body = b"Subject: x\n\n.\n..\n.x\nno final newline".to_vec();
    for no_pipelining in [true, false] {
        let peer = Peer {
            no_pipelining,
            chunk: 3,
        };
        let (dones, failure, seen) = run(
            Client::new(client_params()),
            Server::new(server_params()),
            vec![msg(
                &[
                    "alice@example.org",
                    "bad@example.org",
                    "later@example.org",
                    "bob@example.org",
                ],
                &body,
            )],
            &peer,
        );
        assert_eq!(failure, None);
        let st: Vec<(Status, &str)> = dones[0].iter().map(|r| (r.status, r.dsn.as_str())).collect();
        assert_eq!(
            st,
            vec![
                (Status::Sent, "2.0.0"),
                (Status::Bounced, "5.1.1"),
                (Status::Deferred, "4.2.0"),
                (Status::Sent, "2.0.0")
            ]
        );
        assert_eq!(
            dones[0][1].text,
            "host mx.example.org[127.0.0.1]:25 said: 550 5.1.1 <bad@example.org>: Recipient address rejected: User unknown (in reply to RCPT TO command)"
        );
        assert_eq!(
            dones[0][1].diagnostic_code(),
            "smtp; 550 5.1.1 <bad@example.org>: Recipient address rejected: User unknown"
        );
        // Dot-stuffing round trip; the missing last line end was added.
        let mut expect = body.clone();
        expect.push(b'\n');
        assert_eq!(seen.bodies, vec![expect]);
        assert_eq!(
            seen.envelopes,
            vec![(
                "sender@example.com".into(),
                vec!["alice@example.org".into(), "bob@example.org".into()]
            )]
        );
        let most = seen.client_writes.iter().copied().max().unwrap_or(0);
        if no_pipelining {
            // One command per write.
            assert!(most < 64, "{:?}", seen.client_writes);
        }
    }
}

#[test]
fn all_recipients_refused_sends_no_data() {
    for no_pipelining in [true, false] {
        let peer = Peer {
            no_pipelining,
            chunk: 100,
        };
        let (dones, failure, seen) = run(
            Client::new(client_params()),
            Server::new(server_params()),
            vec![msg(&["bad1@example.org", "later@example.org"], b"hi\n")],
            &peer,
        );
        assert_eq!(failure, None);
        assert_eq!(dones[0][0].status, Status::Bounced);
        assert_eq!(dones[0][1].status, Status::Deferred);
        assert!(seen.bodies.is_empty());
    }
}

#[test]
fn connection_reuse_sends_rset_between_messages() {
    for no_pipelining in [true, false] {
        let peer = Peer {
            no_pipelining,
            chunk: 7,
        };
        let (dones, failure, seen) = run(
            Client::new(client_params()),
            Server::new(server_params()),
            vec![
                msg(&["alice@example.org"], b"one\n"),
                msg(&["bad@example.org"], b"two\n"),
                msg(&["bob@example.org"], b"three\n"),
            ],
            &peer,
        );
        assert_eq!(failure, None);
        assert_eq!(dones.len(), 3);
        assert_eq!(dones[0][0].status, Status::Sent);
        assert_eq!(dones[1][0].status, Status::Bounced);
        assert_eq!(dones[2][0].status, Status::Sent);
        assert_eq!(seen.bodies, vec![b"one\n".to_vec(), b"three\n".to_vec()]);
    }
}

#[test]
fn starttls_then_auth_plain() {
    let mut sp = server_params();
    sp.starttls_offered = true;
    sp.auth_offered = true;
    let mut cp = client_params();
    cp.tls = TlsPolicy::Required;
    cp.auth = Some(SaslLogin {
        user: "alice".into(),
        password: "alice-pw".into(),
    });
    let peer = Peer {
        no_pipelining: false,
        chunk: 100,
    };
    let (dones, failure, seen) = run(
        Client::new(cp.clone()),
        Server::new(sp.clone()),
        vec![msg(&["bob@example.org"], b"hi\n")],
        &peer,
    );
    assert_eq!(failure, None);
    assert!(seen.tls);
    assert_eq!(seen.auth_user.as_deref(), Some("alice"));
    assert_eq!(dones[0][0].status, Status::Sent);

    // A wrong password: temporary by default (smtp_sasl_auth_soft_bounce = yes).
    cp.auth = Some(SaslLogin {
        user: "alice".into(),
        password: "wrong".into(),
    });
    let (dones, failure, seen) = run(Client::new(cp.clone()), Server::new(sp.clone()), vec![], &peer);
    assert!(dones.is_empty());
    let f = failure.expect("auth failure");
    assert_eq!(f.status, Status::Deferred);
    assert_eq!(f.dsn, "4.7.8");
    assert!(f
        .text
        .starts_with("SASL authentication failed; server mx.example.org[127.0.0.1]:25 said: 535 5.7.8"));
    assert_eq!(seen.auth_user, None);
    cp.auth_soft_bounce = false;
    let (_, failure, _) = run(Client::new(cp), Server::new(sp), vec![], &peer);
    assert_eq!(
        failure.map(|f| (f.status, f.dsn)),
        Some((Status::Bounced, "5.7.8".into()))
    );
}

#[test]
fn credentials_never_go_out_in_the_clear() {
    let mut sp = server_params();
    sp.auth_offered = true;
    sp.auth_requires_tls = false;
    let mut cp = client_params();
    cp.tls = TlsPolicy::May;
    cp.auth = Some(SaslLogin {
        user: "alice".into(),
        password: "alice-pw".into(),
    });
    let peer = Peer {
        no_pipelining: false,
        chunk: 100,
    };
    let (_, failure, seen) = run(Client::new(cp.clone()), Server::new(sp.clone()), vec![], &peer);
    assert_eq!(failure.map(|f| f.status), Some(Status::Deferred));
    assert_eq!(seen.auth_user, None);
    // Allowed explicitly: AUTH goes out.
    cp.auth_needs_tls = false;
    let (dones, failure, seen) = run(
        Client::new(cp),
        Server::new(sp),
        vec![msg(&["bob@example.org"], b"x\n")],
        &peer,
    );
    assert_eq!(failure, None);
    assert_eq!(seen.auth_user.as_deref(), Some("alice"));
    assert_eq!(dones[0][0].status, Status::Sent);
}

#[test]
fn size_limit_and_smtputf8_refusals_before_mail() {
    let mut sp = server_params();
    sp.message_size_limit = 10;
    let peer = Peer {
        no_pipelining: false,
        chunk: 100,
    };
    let (dones, failure, seen) = run(
        Client::new(client_params()),
        Server::new(sp),
        vec![msg(&["alice@example.org"], b"much more than ten bytes\n")],
        &peer,
    );
    assert_eq!(failure, None);
    assert_eq!(dones[0][0].status, Status::Bounced);
    assert_eq!(dones[0][0].dsn, "5.3.4");
    assert!(seen.envelopes.is_empty());
}

// ---- scripted fake-server transcripts ----

#[derive(Debug, Clone)]
enum Step {
    /// The server sends these bytes.
    Send(Vec<u8>),
    /// The client sends this line (glob).
    Expect(String),
    /// The client sent nothing more.
    ExpectNothing,
    Eof,
    Timeout,
}

#[derive(Debug, Default)]
struct Script {
    name: String,
    params_tls: Option<TlsPolicy>,
    tls_fail: bool,
    auth: Option<SaslLogin>,
    auth_hard: bool,
    messages: Vec<Message>,
    body: Vec<u8>,
    /// Per Done event: (status, dsn) per recipient.
    done: Vec<Vec<(Status, String)>>,
    /// Closed: None = "ok" (no failure); Some((status, dsn, text glob)).
    closed: Option<Option<(Status, String, String)>>,
    /// A glob one of the result texts must match.
    texts: Vec<String>,
    steps: Vec<Step>,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'x' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex");
                    out.push(u8::from_str_radix(h, 16).expect("hex escape"));
                    i += 2;
                }
                c => out.push(c),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

fn status_of(s: &str) -> (Status, String) {
    let (st, dsn) = s.split_once(':').unwrap_or((s, ""));
    let st = match st {
        "sent" => Status::Sent,
        "deferred" => Status::Deferred,
        "bounced" => Status::Bounced,
        other => panic!("bad status {other}"),
    };
    (st, dsn.to_string())
}

fn parse_script(path: &Path) -> Script {
    let text = std::fs::read_to_string(path).expect("read transcript");
    let mut sc = Script {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Script::default()
    };
    assert!(
        text.starts_with("# "),
        "{}: must start with a comment saying why",
        sc.name
    );
    for line in text.lines() {
        if line.trim().is_empty() || (line.starts_with('#') && !line.starts_with("#!")) {
            continue;
        }
        if let Some(d) = line.strip_prefix("#! ") {
            let (k, v) = d.split_once(' ').unwrap_or((d, ""));
            match k {
                "tls" => {
                    sc.params_tls = Some(match v {
                        "none" => TlsPolicy::None,
                        "may" => TlsPolicy::May,
                        "required" => TlsPolicy::Required,
                        other => panic!("{}: bad tls {other}", sc.name),
                    })
                }
                "tls-fail" => sc.tls_fail = true,
                "auth" => {
                    let (u, p) = v.split_once(':').expect("auth user:password");
                    sc.auth = Some(SaslLogin {
                        user: u.into(),
                        password: p.into(),
                    });
                }
                "auth-hard" => sc.auth_hard = true,
                "message" => {
                    let (from, to) = v.split_once(" -> ").expect("message FROM -> TO,TO");
                    sc.messages.push(Message {
                        sender: if from == "<>" { String::new() } else { from.into() },
                        recipients: to.split(',').map(|s| s.trim().to_string()).collect(),
                        size: 0,
                        eight_bit: false,
                    });
                }
                "body" => sc.body = unescape(v),
                "done" => sc.done.push(v.split_whitespace().map(status_of).collect()),
                "closed" => {
                    sc.closed = Some(if v == "ok" {
                        None
                    } else {
                        let (st, text) = v.split_once(' ').unwrap_or((v, "*"));
                        let (s, dsn) = status_of(st);
                        Some((s, dsn, text.to_string()))
                    })
                }
                "text" => sc.texts.push(v.to_string()),
                other => panic!("{}: unknown directive {other}", sc.name),
            }
            continue;
        }
        let step = if line == "C: <nothing>" {
            Step::ExpectNothing
        } else if let Some(t) = line.strip_prefix("S: ") {
            let mut b = t.as_bytes().to_vec();
            b.extend_from_slice(b"\r\n");
            Step::Send(b)
        } else if let Some(t) = line.strip_prefix("S! ") {
            Step::Send(unescape(t))
        } else if let Some(t) = line.strip_prefix("C: ") {
            Step::Expect(t.to_string())
        } else if line == "C:" {
            Step::Expect(String::new())
        } else if line == "X: eof" {
            Step::Eof
        } else if line == "X: timeout" {
            Step::Timeout
        } else {
            panic!("{}: bad line {line:?}", sc.name)
        };
        sc.steps.push(step);
    }
    let size = sc.body.len() as u64;
    let eight = sc.body.iter().any(|&b| b > 127);
    for m in &mut sc.messages {
        m.size = size;
        m.eight_bit = eight;
    }
    assert!(sc.closed.is_some(), "{}: needs a #! closed directive", sc.name);
    sc
}

/// `*` matches any run of characters.
fn glob(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

struct Outcome {
    dones: Vec<Vec<RcptResult>>,
    closed: Option<Option<client::Failure>>,
}

/// Run a script. `bytewise`: feed each server step one byte at a time, polling in between.
fn run_script(sc: &Script, bytewise: bool) -> Outcome {
    let mut p = client_params();
    if let Some(t) = sc.params_tls {
        p.tls = t;
    }
    p.auth = sc.auth.clone();
    p.auth_needs_tls = false;
    p.auth_soft_bounce = !sc.auth_hard;
    let mut c = Client::new(p);
    let mut messages: Vec<Message> = sc.messages.iter().rev().cloned().collect();
    let mut out = Outcome {
        dones: Vec::new(),
        closed: None,
    };
    let mut client_bytes: Vec<u8> = Vec::new();
    let handle = |c: &mut Client, out: &mut Outcome, messages: &mut Vec<Message>, client_bytes: &mut Vec<u8>| {
        let mut tls_pending = false;
        for _ in 0..1000 {
            let Some(ev) = c.poll() else { break };
            match ev {
                client::Event::Ready => match messages.pop() {
                    Some(m) => c.send(m),
                    None => c.quit(),
                },
                client::Event::SendBody => {
                    for piece in sc.body.chunks(5) {
                        c.body_chunk(piece);
                    }
                    c.body_end();
                }
                // The handshake happens after the server's current write (see README).
                client::Event::StartTls => tls_pending = true,
                client::Event::Done(r) => out.dones.push(r),
                client::Event::Closed(f) => out.closed = Some(f),
            }
        }
        client_bytes.extend(c.take_output());
        tls_pending
    };
    let mut tls_pending = false;
    handle(&mut c, &mut out, &mut messages, &mut client_bytes);
    for step in &sc.steps {
        match step {
            Step::Send(b) => {
                if bytewise {
                    for byte in b {
                        c.input(std::slice::from_ref(byte));
                        tls_pending |= handle(&mut c, &mut out, &mut messages, &mut client_bytes);
                    }
                } else {
                    c.input(b);
                    tls_pending |= handle(&mut c, &mut out, &mut messages, &mut client_bytes);
                }
                if std::mem::take(&mut tls_pending) {
                    if sc.tls_fail {
                        c.tls_failed("certificate verify failed");
                    } else {
                        c.tls_started();
                    }
                    handle(&mut c, &mut out, &mut messages, &mut client_bytes);
                }
            }
            Step::Expect(pat) => {
                let Some(lf) = client_bytes.iter().position(|&b| b == b'\n') else {
                    panic!(
                        "{}: expected client line {pat:?}, got {:?}",
                        sc.name,
                        String::from_utf8_lossy(&client_bytes)
                    )
                };
                let line: Vec<u8> = client_bytes.drain(..=lf).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line
                    .strip_suffix("\r\n")
                    .unwrap_or_else(|| panic!("{}: bare LF in {line:?}", sc.name));
                assert!(glob(pat, line), "{}: expected {pat:?}, client sent {line:?}", sc.name);
            }
            Step::ExpectNothing => assert!(
                client_bytes.is_empty(),
                "{}: client sent {:?}",
                sc.name,
                String::from_utf8_lossy(&client_bytes)
            ),
            Step::Eof => {
                c.eof();
                handle(&mut c, &mut out, &mut messages, &mut client_bytes);
            }
            Step::Timeout => {
                c.timeout();
                handle(&mut c, &mut out, &mut messages, &mut client_bytes);
            }
        }
    }
    assert!(
        client_bytes.is_empty(),
        "{}: client sent more than the script expects: {:?}",
        sc.name,
        String::from_utf8_lossy(&client_bytes)
    );
    assert_eq!(
        c.stage() == Stage::Closed,
        out.closed.is_some(),
        "{}: closed state",
        sc.name
    );
    out
}

fn check(sc: &Script, o: &Outcome) {
    let got: Vec<Vec<(Status, String)>> = o
        .dones
        .iter()
        .map(|d| d.iter().map(|r| (r.status, r.dsn.clone())).collect())
        .collect();
    // A done directive without a dsn matches any dsn.
    assert_eq!(got.len(), sc.done.len(), "{}: Done events {got:?}", sc.name);
    for (g, e) in got.iter().zip(&sc.done) {
        assert_eq!(g.len(), e.len(), "{}: {g:?} vs {e:?}", sc.name);
        for (gr, er) in g.iter().zip(e) {
            assert_eq!(gr.0, er.0, "{}: {g:?} vs {e:?}", sc.name);
            if !er.1.is_empty() {
                assert_eq!(gr.1, er.1, "{}: {g:?} vs {e:?}", sc.name);
            }
        }
    }
    let closed = o
        .closed
        .as_ref()
        .unwrap_or_else(|| panic!("{}: session did not close", sc.name));
    match (&sc.closed, closed) {
        (Some(None), None) => {}
        (Some(Some((st, dsn, text))), Some(f)) => {
            assert_eq!(f.status, *st, "{}: {f:?}", sc.name);
            if !dsn.is_empty() {
                assert_eq!(&f.dsn, dsn, "{}: {f:?}", sc.name);
            }
            assert!(glob(text, &f.text), "{}: closed text {:?} !~ {text:?}", sc.name, f.text);
        }
        (want, got) => panic!("{}: closed {got:?}, want {want:?}", sc.name),
    }
    let mut all: Vec<String> = o.dones.iter().flatten().map(|r| r.text.clone()).collect();
    if let Some(f) = closed {
        all.push(f.text.clone());
    }
    for t in &sc.texts {
        assert!(
            all.iter().any(|x| glob(t, x)),
            "{}: no result text matches {t:?}: {all:?}",
            sc.name
        );
    }
}

fn transcripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client_transcripts");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/client_transcripts")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    v.sort();
    v
}

#[test]
fn client_transcripts() {
    let files = transcripts();
    assert!(files.len() >= 10, "transcripts missing: {files:?}");
    for f in files {
        let sc = parse_script(&f);
        for bytewise in [false, true] {
            let o = run_script(&sc, bytewise);
            check(&sc, &o);
        }
    }
}

#[test]
fn hostile_replies_are_bounded() {
    // Endless continuation lines: malformed after SMTP_REPLY_LINES_MAX, never unbounded.
    let mut c = Client::new(client_params());
    let line = b"220-spam spam spam\r\n";
    let mut closed = None;
    for _ in 0..1000 {
        c.input(line);
        while let Some(ev) = c.poll() {
            if let client::Event::Closed(f) = ev {
                closed = Some(f);
            }
        }
        if closed.is_some() {
            break;
        }
    }
    let f = closed.flatten().expect("malformed reply failure");
    assert_eq!(f.status, Status::Deferred);
    assert!(f.text.starts_with("malformed reply from"), "{}", f.text);
    // A line without LF longer than the limit.
    let mut c = Client::new(client_params());
    c.input(&vec![b'2'; 600]);
    assert!(matches!(c.poll(), Some(client::Event::Closed(Some(_)))));
    // Input is bounded while nobody polls.
    let mut c = Client::new(client_params());
    let mut fed = 0usize;
    for _ in 0..10_000 {
        if !c.wants_input() {
            break;
        }
        c.input(&[b'x'; 4096]);
        fed += 4096;
    }
    assert!(fed <= poshta::limits::SESSION_INPUT_BYTES_MAX + 4096);
}

/// Drive a client by hand to the body stage of one message to `a@example.org`.
fn at_body() -> Client {
    let mut c = Client::new(client_params());
    c.input(b"220 mx ESMTP\r\n");
    assert_eq!(c.poll(), None);
    assert_eq!(c.take_output(), b"EHLO client.example\r\n");
    c.input(b"250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(c.poll(), Some(client::Event::Ready));
    c.send(msg(&["a@example.org", "b@example.org"], b"x\n").0);
    assert_eq!(c.stage(), Stage::Mail);
    c.input(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
    assert_eq!(c.poll(), Some(client::Event::SendBody));
    assert_eq!(c.stage(), Stage::Body);
    assert_eq!(c.stage().timeout_key(), Some("smtp_data_xfer_timeout"));
    c.take_output();
    c
}

#[test]
fn connection_lost_while_sending_the_body() {
    let mut c = at_body();
    c.body_chunk(b"half a body");
    c.eof();
    let Some(client::Event::Done(r)) = c.poll() else {
        panic!("expected Done")
    };
    assert_eq!(r[0].status, Status::Deferred);
    assert_eq!(
        r[0].text,
        "lost connection with mx.example.org[127.0.0.1]:25 while sending message body"
    );
    // The recipient refused at RCPT keeps its bounce.
    assert_eq!((r[1].status, r[1].dsn.as_str()), (Status::Bounced, "5.1.1"));
    assert!(matches!(c.poll(), Some(client::Event::Closed(Some(_)))));
    assert_eq!(c.poll(), None);
    // Nothing more is accepted once closed.
    c.body_chunk(b"more");
    c.body_end();
    c.input(b"250 ok\r\n");
    assert_eq!(c.poll(), None);
    assert!(c.is_closed());
}

#[test]
fn timeout_while_sending_the_body_and_empty_messages() {
    let mut c = at_body();
    c.timeout();
    let Some(client::Event::Done(r)) = c.poll() else {
        panic!("expected Done")
    };
    assert!(
        r[0].text.ends_with("timed out while sending message body"),
        "{}",
        r[0].text
    );

    // A message without recipients finishes at once and the session stays usable.
    let mut c = Client::new(client_params());
    c.input(b"220 mx\r\n");
    c.poll();
    c.input(b"250 mx\r\n");
    assert_eq!(c.poll(), Some(client::Event::Ready));
    c.take_output();
    c.send(msg(&[], b"x\n").0);
    assert_eq!(c.poll(), Some(client::Event::Done(Vec::new())));
    assert_eq!(c.poll(), Some(client::Event::Ready));
    assert!(c.take_output().is_empty());
    // A recipient that cannot be written on a command line is refused locally.
    c.send(msg(&["a b@example.org"], b"x\n").0);
    let Some(client::Event::Done(r)) = c.poll() else {
        panic!("expected Done")
    };
    assert_eq!((r[0].status, r[0].dsn.as_str()), (Status::Bounced, "5.1.3"));
    assert!(c.take_output().is_empty());
}
