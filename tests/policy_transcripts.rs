//! Restriction transcripts (tests/policy_transcripts/*.txt, format in the README there): one
//! SMTP dialogue per restriction, run over loopback against the built binary with its own
//! main.cf and access tables, so every restriction is checked end to end — the table
//! loading, the restriction evaluation, the reply text and what happens to the message.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{connect_from, free_port, glob, unescape};

const HOSTNAME: &str = "mx.example.org";

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Send(Vec<u8>),
    Expect(String),
    ExpectClosed,
}

#[derive(Debug)]
struct Transcript {
    name: String,
    client: IpAddr,
    /// main.cf lines added to the world's; `$DIR` is the instance directory.
    cf: Vec<String>,
    /// Files written into the instance directory before start.
    files: BTreeMap<String, String>,
    /// After the dialogue: (user, number of messages delivered to that Maildir).
    delivered: Vec<(String, usize)>,
    /// After the dialogue: number of messages held in the queue.
    held: Option<usize>,
    steps: Vec<Step>,
}

fn parse(name: &str, text: &str) -> Result<Transcript, String> {
    let mut t = Transcript {
        name: name.to_string(),
        client: IpAddr::from([127, 0, 0, 1]),
        cf: Vec::new(),
        files: BTreeMap::new(),
        delivered: Vec::new(),
        held: None,
        steps: Vec::new(),
    };
    let mut current_file: Option<String> = None;
    let mut has_why = false;
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("{name}:{}: {m}", n + 1);
        if let Some(content) = line.strip_prefix("#|") {
            let f = current_file
                .as_ref()
                .ok_or_else(|| err("`#|` line without a `#! file`"))?;
            let body = t.files.get_mut(f).ok_or_else(|| err("no such file"))?;
            body.push_str(content.strip_prefix(' ').unwrap_or(content));
            body.push('\n');
            continue;
        }
        current_file = None;
        if let Some(d) = line.strip_prefix("#!") {
            let d = d.trim();
            let (key, value) = d.split_once(' ').unwrap_or((d, ""));
            match key {
                "client" => t.client = value.trim().parse().map_err(|_| err("bad client address"))?,
                "cf" => t.cf.push(value.trim().to_string()),
                "file" => {
                    let f = value.trim().to_string();
                    if f.is_empty() || f.contains('/') {
                        return Err(err("file name must be a plain name"));
                    }
                    t.files.insert(f.clone(), String::new());
                    current_file = Some(f);
                }
                "expect-delivered" => {
                    let (user, count) = value.trim().split_once(' ').ok_or_else(|| err("want USER N"))?;
                    let count = count.trim().parse().map_err(|_| err("bad count"))?;
                    t.delivered.push((user.to_string(), count));
                }
                "expect-held" => t.held = Some(value.trim().parse().map_err(|_| err("bad count"))?),
                _ => return Err(err("unknown directive")),
            }
        } else if line.starts_with('#') {
            has_why |= t.steps.is_empty();
        } else if line.is_empty() {
        } else if let Some(c) = line.strip_prefix("C:") {
            let mut b = c.strip_prefix(' ').unwrap_or(c).as_bytes().to_vec();
            b.extend_from_slice(b"\r\n");
            t.steps.push(Step::Send(b));
        } else if let Some(c) = line.strip_prefix("C!") {
            t.steps.push(Step::Send(
                unescape(c.strip_prefix(' ').unwrap_or(c)).map_err(|e| err(&e))?,
            ));
        } else if line == "S: <closed>" {
            t.steps.push(Step::ExpectClosed);
        } else if let Some(s) = line.strip_prefix("S: ") {
            t.steps.push(Step::Expect(s.to_string()));
        } else {
            return Err(err("unknown line"));
        }
    }
    if !has_why {
        return Err(format!("{name}: must start with a comment saying why it exists"));
    }
    if t.steps.is_empty() {
        return Err(format!("{name}: no steps"));
    }
    Ok(t)
}

struct Instance {
    dir: PathBuf,
    cf: PathBuf,
    port: u16,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(t: &Transcript, n: usize) -> Instance {
    let bin = env!("CARGO_BIN_EXE_poshta");
    let dir = std::env::temp_dir().join(format!("poshta-policy-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = free_port();
    let d = dir.display().to_string();
    for (name, body) in &t.files {
        std::fs::write(dir.join(name), body.replace("$DIR", &d)).expect("write table");
    }
    // As root the daemon drops to mail_owner: `nobody` exists on every Debian machine, so
    // these tests need no `poshta` system user (`poshta init` makes that one).
    let mut cf_text = format!(
        "myhostname = {HOSTNAME}\nmydestination = example.org\nmynetworks = 127.0.0.1/32\n\
         smtpd_listen = 127.0.0.1:{port}\nsubmission_listen =\nsubmissions_listen =\n\
         pop3d_listen =\npop3s_listen =\nqueue_directory = {d}/spool\n\
         virtual_mailbox_base = {d}/mail\nmailbox_users_file = {d}/users\nmaillog_file = {d}/maillog\n\
         mail_owner = nobody\n\
         alias_maps =\n"
    );
    for line in &t.cf {
        cf_text.push_str(&line.replace("$DIR", &d));
        cf_text.push('\n');
    }
    let cf = dir.join("main.cf");
    std::fs::write(&cf, cf_text).expect("write main.cf");
    // A cheap argon2id hash: nobody logs in here, and hashing with the real cost would
    // dominate the run time.
    const H: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA";
    std::fs::write(dir.join("users"), format!("alice:{H}\nbob:{H}\npostmaster:{H}\n")).expect("users");
    let child = Command::new(bin)
        .args(["serve", "-c"])
        .arg(&cf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("poshta serve");
    let inst = Instance { dir, cf, port, child };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return inst;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{}: poshta did not listen on {port}: {}", t.name, maillog(&inst.dir));
}

fn maillog(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
}

fn read_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..at + 2).collect();
            return Ok(Some(String::from_utf8_lossy(&line[..at]).into_owned()));
        }
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn count_new(inst: &Instance, user: &str) -> usize {
    std::fs::read_dir(inst.dir.join("mail").join(user).join("new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn held(inst: &Instance) -> usize {
    let out = Command::new(env!("CARGO_BIN_EXE_poshta"))
        .args(["queue", "-c"])
        .arg(&inst.cf)
        .output()
        .expect("poshta queue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|id| id.ends_with('!')))
        .count()
}

fn run(t: &Transcript, inst: &Instance) -> Result<(), String> {
    let mut s = connect_from(t.client, inst.port).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for (i, step) in t.steps.iter().enumerate() {
        match step {
            Step::Send(bytes) => {
                let _ = s.write_all(bytes);
            }
            Step::Expect(want) => match read_line(&mut s, &mut buf)? {
                Some(got) if glob(want, &got) => {}
                Some(got) => return Err(format!("step {}: want {want:?}, got {got:?}", i + 1)),
                None => return Err(format!("step {}: want {want:?}, got end of connection", i + 1)),
            },
            Step::ExpectClosed => {
                if let Some(extra) = read_line(&mut s, &mut buf)? {
                    return Err(format!("step {}: want close, got {extra:?}", i + 1));
                }
            }
        }
    }
    drop(s);
    // Delivery runs after the session: wait (bounded) for the expected counts; a count of 0
    // is checked after the others have arrived, plus a second for stragglers.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (user, want) in &t.delivered {
        while count_new(inst, user) < *want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if t.delivered.iter().any(|(_, n)| *n == 0) || t.held.is_some() {
        std::thread::sleep(Duration::from_secs(1));
    }
    for (user, want) in &t.delivered {
        let got = count_new(inst, user);
        if got != *want {
            return Err(format!("{user}: want {want} delivered, got {got}"));
        }
    }
    if let Some(want) = t.held {
        let got = held(inst);
        if got != want {
            return Err(format!("want {want} held, got {got}"));
        }
    }
    Ok(())
}

#[test]
fn restriction_transcripts_over_loopback() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_transcripts");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/policy_transcripts")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 15,
        "expected the restriction transcripts, found {}",
        names.len()
    );
    let mut failures = Vec::new();
    for (n, path) in names.iter().enumerate() {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("read transcript");
        let t = parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        let inst = start(&t, n);
        if let Err(e) = run(&t, &inst) {
            let log = maillog(&inst.dir);
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            failures.push(format!(
                "{name}: {e}\n  log (newest first):\n    {}",
                tail.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parser_rejects_junk() {
    assert!(parse("x", "C: HELO x\n").is_err(), "needs a why comment");
    assert!(parse("x", "# why\n#! bogus 1\nC: x\n").is_err());
    assert!(parse("x", "# why\n#| stray\nC: x\n").is_err());
    assert!(parse("x", "# why\n#! file ../etc/passwd\nC: x\n").is_err());
    let t = parse(
        "x",
        "# why\n#! file access\n#| a OK\n#| b REJECT\nC: HELO x\nS: 250 *\n",
    )
    .unwrap();
    assert_eq!(t.files["access"], "a OK\nb REJECT\n");
    assert_eq!(t.steps.len(), 2);
}
