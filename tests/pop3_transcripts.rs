//! POP3 dialogue transcripts (tests/pop3_transcripts/*.txt, format and test world in
//! tests/pop3_transcripts/README.md) run against the POP3 server core in process.
//!
//! Each transcript runs once fed step by step (every `S:` block checked as it is reached),
//! then once per byte offset with the whole client input cut into two pieces there; every
//! run must give the same output and the same events (logins, UPDATE lists, Closed).
//!
//! The parsed [`Transcript`] and the fixed test world ([`World`]) are kept apart from the
//! in-process driver so a loopback runner against the built binary can reuse them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use poshta::limits::SESSION_READ_BYTES;
use poshta::proto::pop3::server::{Event, LoginFailure, MessageMeta, Pop3Params, Server};

mod common;
pub use common::{check_lines, glob, output_lines, unescape};

/// The test world (the loopback runner configures the binary the same way).
pub const HOSTNAME: &str = "pop.example.org";
/// Alice's maildrop, as stored (LF line ends, one message with CR LF and no final LF).
pub const ALICE_MESSAGES: [&[u8]; 3] = [
    b"Subject: one\n\nbody one\n",
    b"Subject: two\n\n.hidden dot\n..two dots\n.\nend\n",
    b"From: carol@example.org\r\nSubject: three\n\nline 1\nline 2\r\nline 3\nline 4\nline 5",
];
pub const ALICE_UIDS: [&str; 3] = ["1767225600.M1P100", "1767225601.M2P100", "1767225602.M3P100"];
/// Stored bytes are handed to the core in pieces this big (small, to cut lines and CR LF).
const RETR_CHUNK_BYTES: usize = 7;

/// One dialogue step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Client sends these bytes.
    Send(Vec<u8>),
    /// One server reply line (glob: `*` matches any run of characters).
    Expect(String),
    /// The server has closed the session.
    ExpectClosed,
    /// The client closes its side.
    Eof,
    /// The autologout timer fires (not possible over loopback: skip there).
    Timeout,
    /// The TLS handshake after STLS completes.
    Tls,
}

#[derive(Debug, Clone)]
pub struct Directives {
    pub client_ip: IpAddr,
    /// The connection is TLS from the start (port 995).
    pub tls: bool,
    /// STLS is offered (a certificate is configured).
    pub stls: bool,
    /// Message numbers (1-based) UPDATE must be asked to delete; `Some(empty)`: nothing may
    /// be deleted (no UPDATE, or an empty one).
    pub expect_deleted: Option<Vec<usize>>,
    /// UPDATE fails.
    pub update_fails: bool,
    /// This message (1-based) cannot be opened.
    pub unreadable: Option<usize>,
    /// Reading this message (1-based) fails after its first line.
    pub broken: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Transcript {
    pub name: String,
    /// The leading `#` comment: why this test exists.
    pub why: String,
    pub directives: Directives,
    pub steps: Vec<Step>,
}

fn parse_numbers(value: &str) -> Result<Vec<usize>, String> {
    if value.trim() == "none" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|n| n.trim().parse::<usize>().map_err(|e| format!("{n:?}: {e}")))
        .collect()
}

pub fn parse(name: &str, text: &str) -> Result<Transcript, String> {
    let mut why = String::new();
    let mut d = Directives {
        client_ip: IpAddr::from([127, 0, 0, 1]),
        tls: false,
        stls: true,
        expect_deleted: None,
        update_fails: false,
        unreadable: None,
        broken: None,
    };
    let mut steps = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let err = |m: String| format!("{name}:{}: {m}", n + 1);
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if let Some(dir) = line.strip_prefix("#!") {
            let dir = dir.trim_start();
            let (key, value) = dir.split_once(' ').unwrap_or((dir, ""));
            let number = |v: &str| v.trim().parse::<usize>().map_err(|e| err(format!("{e}")));
            match key {
                "client" => d.client_ip = value.trim().parse().map_err(|e| err(format!("{e}")))?,
                "tls" => d.tls = true,
                "no-stls" => d.stls = false,
                "expect-deleted" => d.expect_deleted = Some(parse_numbers(value).map_err(err)?),
                "update-fails" => d.update_fails = true,
                "unreadable" => d.unreadable = Some(number(value)?),
                "broken" => d.broken = Some(number(value)?),
                k => return Err(err(format!("unknown directive {k:?}"))),
            }
        } else if let Some(c) = line.strip_prefix('#') {
            if steps.is_empty() {
                why.push_str(c.trim());
                why.push(' ');
            }
        } else if let Some(t) = line.strip_prefix("C:") {
            let mut bytes = t.strip_prefix(' ').unwrap_or(t).as_bytes().to_vec();
            bytes.extend_from_slice(b"\r\n");
            steps.push(Step::Send(bytes));
        } else if let Some(t) = line.strip_prefix("C!") {
            steps.push(Step::Send(unescape(t.strip_prefix(' ').unwrap_or(t)).map_err(err)?));
        } else if let Some(t) = line.strip_prefix("S:") {
            let t = t.strip_prefix(' ').unwrap_or(t);
            steps.push(if t == "<closed>" {
                Step::ExpectClosed
            } else {
                Step::Expect(t.to_string())
            });
        } else if let Some(t) = line.strip_prefix("X:") {
            steps.push(match t.trim() {
                "eof" => Step::Eof,
                "timeout" => Step::Timeout,
                "tls" => Step::Tls,
                other => return Err(err(format!("unknown event {other:?}"))),
            });
        } else {
            return Err(err(format!("unparsable line {line:?}")));
        }
    }
    if why.trim().is_empty() {
        return Err(format!("{name}: must start with a `# why this test exists` comment"));
    }
    Ok(Transcript {
        name: name.to_string(),
        why: why.trim().to_string(),
        directives: d,
        steps,
    })
}

pub fn transcript_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pop3_transcripts")
}

pub fn load_all() -> Result<Vec<Transcript>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(transcript_dir())
        .map_err(|e| format!("read_dir: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parse(&name, &text)
        })
        .collect()
}

/// The size a message has on the wire: CR LF line ends, last line terminated, no stuffing.
pub fn wire_size(stored: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut prev = 0u8;
    for &b in stored {
        if b == b'\n' && prev != b'\r' {
            n += 1;
        }
        n += 1;
        prev = b;
    }
    if !stored.is_empty() && prev != b'\n' {
        n += 2;
    }
    n
}

/// The test world's users and maildrops.
pub struct World;

impl World {
    /// The maildrop of a user whose password is right, or why the login fails.
    pub fn login(user: &str, password: &str) -> Result<Vec<&'static [u8]>, LoginFailure> {
        match (user, password) {
            ("alice", "alice-pw") => Ok(ALICE_MESSAGES.to_vec()),
            ("bob", "bob-pw") => Ok(Vec::new()),
            ("carol", "carol-pw") => Err(LoginFailure::InUse),
            _ => Err(LoginFailure::BadCredentials),
        }
    }

    pub fn listing(msgs: &[&[u8]]) -> Vec<MessageMeta> {
        msgs.iter()
            .zip(ALICE_UIDS)
            .map(|(m, uid)| MessageMeta {
                size: wire_size(m),
                uid: uid.to_string(),
            })
            .collect()
    }
}

/// What one run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub output: Vec<u8>,
    /// (user, mechanism, succeeded)
    pub logins: Vec<(String, &'static str, bool)>,
    /// 0-based indexes of each Update event.
    pub updates: Vec<Vec<usize>>,
    pub closed_events: usize,
    pub closed: bool,
}

/// The server plus the world answering its events.
struct Harness {
    server: Server,
    d: Directives,
    maildrop: Vec<&'static [u8]>,
    tls_pending: bool,
    out: Outcome,
}

impl Harness {
    fn new(d: &Directives) -> Harness {
        let loopback = d.client_ip == IpAddr::from([127, 0, 0, 1]);
        let server = Server::new(Pop3Params {
            hostname: HOSTNAME.to_string(),
            tls_active: d.tls,
            stls_offered: d.stls && !d.tls,
            plaintext_login_allowed: d.tls || loopback,
            autologout_secs: 600,
        });
        let mut h = Harness {
            server,
            d: d.clone(),
            maildrop: Vec::new(),
            tls_pending: false,
            out: Outcome {
                output: Vec::new(),
                logins: Vec::new(),
                updates: Vec::new(),
                closed_events: 0,
                closed: false,
            },
        };
        // The greeting.
        h.out.output = h.server.take_output();
        h
    }

    fn retr(&mut self, index: usize) -> Result<(), String> {
        let n = index + 1;
        if self.d.unreadable == Some(n) {
            self.server.retr_failed();
            return Ok(());
        }
        let msg = *self.maildrop.get(index).ok_or(format!("Retr of index {index}"))?;
        self.server.retr_begin();
        self.out.output.extend(self.server.take_output());
        if self.d.broken == Some(n) {
            // The first line arrives, then the read fails.
            let first = msg.iter().position(|&b| b == b'\n').map_or(msg.len(), |i| i + 1);
            self.server.retr_chunk(&msg[..first]);
            self.server.retr_failed();
            return Ok(());
        }
        for chunk in msg.chunks(RETR_CHUNK_BYTES) {
            self.server.retr_chunk(chunk);
            // Streaming: each chunk's output is there at once and bounded by the chunk.
            let got = self.server.take_output();
            if got.len() > 2 * chunk.len() + 2 {
                return Err(format!("{} output bytes for a {}-byte chunk", got.len(), chunk.len()));
            }
            self.out.output.extend(got);
        }
        self.server.retr_end();
        Ok(())
    }

    fn pump(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            let Some(ev) = self.server.poll() else {
                self.out.output.extend(self.server.take_output());
                self.out.closed = self.server.is_closed();
                return Ok(());
            };
            match ev {
                Event::Login {
                    user,
                    password,
                    mechanism,
                } => match World::login(&user, &password) {
                    Ok(msgs) => {
                        self.out.logins.push((user, mechanism, true));
                        self.server.login_ok(std::sync::Arc::new(World::listing(&msgs)));
                        self.maildrop = msgs;
                    }
                    Err(why) => {
                        self.out.logins.push((user, mechanism, false));
                        self.server.login_failed(why);
                    }
                },
                Event::StartTls => self.tls_pending = true,
                Event::Retr { index, .. } => self.retr(index)?,
                Event::Update { deleted } => {
                    self.out.updates.push(deleted);
                    self.server.update_done(!self.d.update_fails);
                }
                Event::Closed => self.out.closed_events += 1,
            }
        }
        Err("more than 1e5 events".into())
    }

    /// Feed like a shell: reads of at most SESSION_READ_BYTES, only while wanted.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.server.is_closed() {
                return Ok(());
            }
            if !self.server.wants_input() {
                return Err("server stopped reading with nothing left to do".into());
            }
            let n = data.len().min(SESSION_READ_BYTES);
            self.server.input(&data[..n]);
            data = &data[n..];
            self.pump()?;
        }
        Ok(())
    }

    fn act(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Send(b) => self.feed(b),
            Step::Eof => {
                self.server.eof();
                self.pump()
            }
            Step::Timeout => {
                self.server.timeout();
                self.pump()
            }
            Step::Tls => {
                if !self.tls_pending {
                    return Err("X: tls without a StartTls event".into());
                }
                self.tls_pending = false;
                // Plaintext logins are always allowed under TLS.
                self.server.tls_started(true);
                self.pump()
            }
            Step::Expect(_) | Step::ExpectClosed => Ok(()),
        }
    }
}

/// Checks every run must pass: the maildrop lock is released exactly once after a login.
fn check_outcome(t: &Transcript, o: &Outcome) -> Result<(), String> {
    let logged_in = o.logins.iter().any(|l| l.2);
    let releases = o.updates.len() + o.closed_events;
    match (logged_in, o.closed) {
        (true, true) if releases != 1 => {
            return Err(format!(
                "{} Update and {} Closed events, want one",
                o.updates.len(),
                o.closed_events
            ))
        }
        (true, false) | (false, _) if releases != 0 => {
            return Err(format!(
                "{} Update and {} Closed events, want none",
                o.updates.len(),
                o.closed_events
            ))
        }
        _ => {}
    }
    if let Some(want) = &t.directives.expect_deleted {
        let got: Vec<usize> = o.updates.iter().flatten().map(|i| i + 1).collect();
        if &got != want {
            return Err(format!("deleted messages {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// Step by step, checking each `S:` block when it is reached.
fn run_stepwise(t: &Transcript) -> Result<Outcome, String> {
    let mut h = Harness::new(&t.directives);
    let mut want: Vec<&str> = Vec::new();
    let mut closed_seen = false;
    for (i, step) in t.steps.iter().enumerate() {
        h.act(step).map_err(|e| format!("step {}: {e}", i + 1))?;
        match step {
            Step::Expect(s) => want.push(s),
            Step::ExpectClosed => {
                if !h.out.closed {
                    return Err(format!("step {}: server not closed", i + 1));
                }
                closed_seen = true;
            }
            _ => {}
        }
        // Once the next step is not an expectation, everything so far must have arrived.
        let next_is_expect = matches!(t.steps.get(i + 1), Some(Step::Expect(_) | Step::ExpectClosed));
        if !next_is_expect && matches!(step, Step::Expect(_) | Step::ExpectClosed) {
            check_lines(&output_lines(&h.out.output)?, &want).map_err(|e| format!("after step {}: {e}", i + 1))?;
        }
    }
    check_lines(&output_lines(&h.out.output)?, &want)?;
    if h.out.closed && !closed_seen {
        return Err("server closed but the transcript has no `S: <closed>`".into());
    }
    check_outcome(t, &h.out)?;
    Ok(h.out)
}

/// The client input as one stream cut at `cut` (eof/timeout/tls stay where they are).
fn run_split(t: &Transcript, cut: usize) -> Result<Outcome, String> {
    let mut h = Harness::new(&t.directives);
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0usize;
    let flush = |h: &mut Harness, pending: &mut Vec<u8>, offset: &mut usize| -> Result<(), String> {
        let start = *offset;
        let end = start + pending.len();
        if start < cut && cut < end {
            let at = cut - start;
            h.feed(&pending[..at])?;
            h.feed(&pending[at..])?;
        } else {
            h.feed(pending)?;
        }
        *offset = end;
        pending.clear();
        Ok(())
    };
    for step in &t.steps {
        match step {
            Step::Send(b) => pending.extend_from_slice(b),
            Step::Eof | Step::Timeout | Step::Tls => {
                flush(&mut h, &mut pending, &mut offset)?;
                h.act(step)?;
            }
            _ => {}
        }
    }
    flush(&mut h, &mut pending, &mut offset)?;
    check_outcome(t, &h.out)?;
    Ok(h.out)
}

/// The in-process mode: stepwise, then split at every byte offset.
pub fn run_in_process(t: &Transcript) -> Result<(), String> {
    let reference = run_stepwise(t)?;
    let total: usize = t
        .steps
        .iter()
        .map(|s| if let Step::Send(b) = s { b.len() } else { 0 })
        .sum();
    for cut in 0..=total {
        let got = run_split(t, cut).map_err(|e| format!("split at {cut}: {e}"))?;
        if got != reference {
            return Err(format!(
                "split at {cut} differs:\n got {:?}\nwant {:?}\n got output {:?}\nwant output {:?}",
                (&got.logins, &got.updates, got.closed_events, got.closed),
                (
                    &reference.logins,
                    &reference.updates,
                    reference.closed_events,
                    reference.closed
                ),
                String::from_utf8_lossy(&got.output),
                String::from_utf8_lossy(&reference.output),
            ));
        }
    }
    Ok(())
}

#[test]
fn pop3_transcripts_in_process() {
    let all = load_all().unwrap_or_else(|e| panic!("{e}"));
    assert!(all.len() >= 25, "only {} transcripts", all.len());
    let failures: Vec<String> = all
        .iter()
        .filter_map(|t| {
            run_in_process(t)
                .err()
                .map(|e| format!("--- {} ({})\n{e}", t.name, t.why))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn world_sizes() {
    // The sizes the transcripts show in LIST, STAT and RETR.
    let sizes: Vec<u64> = ALICE_MESSAGES.iter().map(|m| wire_size(m)).collect();
    assert_eq!(sizes, vec![26, 49, 83]);
    assert_eq!(wire_size(b""), 0);
    assert_eq!(wire_size(b"a\r\nb"), 6);
}

#[test]
fn glob_matches() {
    assert!(glob("+OK * octets", "+OK 26 octets"));
    assert!(glob("a*c*e", "abcde"));
    assert!(!glob("a*c*e", "abcd"));
    assert!(!glob("abc", "abcd"));
    assert!(glob("*", ""));
}

#[test]
fn parser_rejects_junk() {
    assert!(parse("x", "C: USER x\n").is_err(), "missing why comment");
    assert!(parse("x", "# why\nQ: what\n").is_err());
    assert!(parse("x", "# why\nC! \\q\n").is_err());
    assert!(parse("x", "# why\n#! frobnicate\n").is_err());
    let t = parse(
        "x",
        "# why\n#! tls\n#! expect-deleted 1,3\nC! a\\r\\n\\x00\nX: tls\nS: <closed>\n",
    )
    .unwrap();
    assert!(t.directives.tls);
    assert_eq!(t.directives.expect_deleted, Some(vec![1, 3]));
    assert_eq!(
        t.steps,
        vec![Step::Send(b"a\r\n\0".to_vec()), Step::Tls, Step::ExpectClosed]
    );
}
