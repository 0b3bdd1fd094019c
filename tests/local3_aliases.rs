//! aliases(5) parsing and expansion: the Postfix behaviours people rely on in /etc/aliases.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use poshta::policy::aliases::{Aliases, Source, Target};

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("poshta-aliases-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
    fn write(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse(text: &str) -> Aliases {
    let (a, w) = Aliases::parse(Path::new("/etc/aliases"), text.as_bytes()).unwrap();
    assert!(w.is_empty(), "{w:?}");
    a
}

fn local(n: &str) -> Target {
    Target::Local(n.into())
}

fn no_local_domains(_: &str) -> bool {
    false
}

fn example_is_local(d: &str) -> bool {
    d == "example.org"
}

#[test]
fn group_gives_one_copy_each() {
    let a = parse("support: u1, u2, u3\nall: support, u1, U2@example.org\n");
    let e = a.expand("support", no_local_domains);
    assert_eq!(e.deliveries, vec![local("u1"), local("u2"), local("u3")]);
    let e = a.expand("ALL", example_is_local);
    assert!(e.errors.is_empty());
    assert_eq!(e.deliveries, vec![local("u1"), local("u2"), local("u3")]);
    // Not an alias: the user of that name.
    assert_eq!(a.expand("Nick2", no_local_domains).deliveries, vec![local("nick2")]);
    assert!(a.contains("Support") && !a.contains("nick2"));
}

#[test]
fn chains_and_remote_addresses() {
    let a = parse("a: b\nb: c@example.org\nc: d, far@elsewhere.net\n");
    let e = a.expand("a", example_is_local);
    assert!(e.errors.is_empty());
    assert_eq!(
        e.deliveries,
        vec![local("d"), Target::Remote("far@elsewhere.net".into())]
    );
    // The same domain, not local: the address itself goes out.
    let e = a.expand("a", no_local_domains);
    assert_eq!(e.deliveries, vec![Target::Remote("c@example.org".into())]);
}

#[test]
fn chain_loop_is_an_error_not_forever() {
    let a = parse("a: b\nb: c\nc: a\n");
    let e = a.expand("a", no_local_domains);
    assert!(e.deliveries.is_empty(), "{e:?}");
    assert_eq!(e.errors.len(), 1);
    assert!(e.errors[0].permanent);
    assert!(e.errors[0].reason.contains("mail forwarding loop"), "{:?}", e.errors);
    // A loop in one branch leaves the other branch delivered.
    let a = parse("g: x, ann\nx: y\ny: x\n");
    let e = a.expand("g", no_local_domains);
    assert_eq!(e.deliveries, vec![local("ann")]);
    assert_eq!(e.errors.len(), 1);
}

#[test]
fn self_reference_delivers_to_the_user() {
    let a = parse("root: root, admin@example.net\nadmin: admin\n");
    let e = a.expand("root", no_local_domains);
    assert!(e.errors.is_empty());
    assert_eq!(
        e.deliveries,
        vec![local("root"), Target::Remote("admin@example.net".into())]
    );
    assert_eq!(a.expand("admin", no_local_domains).deliveries, vec![local("admin")]);
    // \name: the user, without further expansion.
    let a = parse("bob: \\bob, |/usr/bin/vacation\n");
    let e = a.expand("bob", no_local_domains);
    assert_eq!(e.deliveries[0], local("bob"));
}

#[test]
fn deep_chain_is_bounded() {
    let mut text = String::new();
    for i in 0..500 {
        text.push_str(&format!("n{i}: n{}\n", i + 1));
    }
    let a = parse(&text);
    let e = a.expand("n0", no_local_domains);
    assert!(e.deliveries.is_empty());
    assert!(
        e.errors[0].permanent && e.errors[0].reason.contains("deeper"),
        "{:?}",
        e.errors
    );
    // 99 levels are fine.
    let e = a.expand("n401", no_local_domains);
    assert_eq!(e.deliveries, vec![local("n500")]);
}

#[test]
fn wide_diamond_expands_in_linear_time() {
    // Each level has two names both pointing at the next two: 2^40 paths, 80 names.
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("a{i}: a{n}, b{n}\nb{i}: a{n}, b{n}\n", n = i + 1));
    }
    let a = parse(&text);
    let start = Instant::now();
    let e = a.expand("a0", no_local_domains);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(e.deliveries, vec![local("a40"), local("b40")]);
}

#[test]
fn commands_and_files_carry_their_source() {
    let t = TmpDir::new("src");
    let inc = t.write(
        "list",
        b"# staff\n\"|/usr/bin/logger -t staff\", /var/log/staff.mbox\ncarol\n",
    );
    let a = parse(&format!(
        "prog: \"|/usr/bin/procmail -a x, y\", /var/spool/copy\nstaff: :include:{}\n",
        inc.display()
    ));
    let e = a.expand("prog", no_local_domains);
    assert_eq!(
        e.deliveries,
        vec![
            Target::Command {
                command: "/usr/bin/procmail -a x, y".into(),
                source: Source::Alias
            },
            Target::File {
                path: "/var/spool/copy".into(),
                source: Source::Alias
            },
        ]
    );
    let e = a.expand("staff", no_local_domains);
    assert!(e.errors.is_empty(), "{e:?}");
    assert_eq!(
        e.deliveries,
        vec![
            Target::Command {
                command: "/usr/bin/logger -t staff".into(),
                source: Source::Include(inc.clone())
            },
            Target::File {
                path: "/var/log/staff.mbox".into(),
                source: Source::Include(inc.clone())
            },
            local("carol"),
        ]
    );
}

#[test]
fn include_names_are_expanded_as_aliases() {
    let t = TmpDir::new("inc");
    let inner = t.write("inner", b"dave\n");
    let outer = t.write(
        "outer",
        format!("ops, erin\n  frank\n:include:{}\n", inner.display()).as_bytes(),
    );
    let a = parse(&format!("staff: :include:{}\nops: gina, erin\n", outer.display()));
    let e = a.expand("staff", no_local_domains);
    assert!(e.errors.is_empty(), "{e:?}");
    assert_eq!(
        e.deliveries,
        vec![local("gina"), local("erin"), local("frank"), local("dave")]
    );
}

#[test]
fn include_loop_and_missing_include() {
    let t = TmpDir::new("incloop");
    let a_path = t.0.join("a");
    let b_path = t.0.join("b");
    std::fs::write(&a_path, format!("x1, :include:{}\n", b_path.display())).unwrap();
    std::fs::write(&b_path, format!("x2, :include:{}\n", a_path.display())).unwrap();
    let al = parse(&format!("l: :include:{}\n", a_path.display()));
    let e = al.expand("l", no_local_domains);
    assert_eq!(e.deliveries, vec![local("x1"), local("x2")]);
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0].permanent && e.errors[0].reason.contains("loop"),
        "{:?}",
        e.errors
    );

    // Missing: a warning at load, a temporary error at expansion (the admin can fix it).
    let missing = t.0.join("nope");
    let (al, w) = Aliases::parse(
        Path::new("/etc/aliases"),
        format!("m: ann, :include:{}\n", missing.display()).as_bytes(),
    )
    .unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].line, 1);
    assert!(w[0].to_string().starts_with("/etc/aliases:1: include file"), "{}", w[0]);
    let e = al.expand("m", no_local_domains);
    assert_eq!(e.deliveries, vec![local("ann")]);
    assert_eq!(e.errors.len(), 1);
    assert!(!e.errors[0].permanent);

    // Nested include chain deeper than 10: bounded, reported.
    let mut prev: Option<PathBuf> = None;
    for i in (0..15).rev() {
        let p = t.0.join(format!("n{i}"));
        let body = match &prev {
            Some(next) => format!("u{i}, :include:{}\n", next.display()),
            None => format!("u{i}\n"),
        };
        std::fs::write(&p, body).unwrap();
        prev = Some(p);
    }
    let al = parse(&format!("deep: :include:{}\n", prev.unwrap().display()));
    let e = al.expand("deep", no_local_domains);
    assert_eq!(e.deliveries.len(), 10);
    assert!(e.errors[0].reason.contains("nested deeper"), "{:?}", e.errors);
}

#[test]
fn relative_include_refused_with_file_line() {
    let err = Aliases::parse(Path::new("/etc/aliases"), b"ok: a\n\nx: :include:lists/staff\n").unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].line, 3);
    assert!(err.to_string().starts_with("/etc/aliases:3: :include: path"), "{err}");
}

#[test]
fn continuation_lines_and_comments() {
    let a = parse(
        "# header comment\n\
         \n\
         support: u1,\n\
         \tu2,\n\
         # a comment inside does not end the entry\n\
         \n   u3\n\
         Other : x\r\n\
         #last",
    );
    assert_eq!(a.len(), 2);
    assert_eq!(
        a.expand("support", no_local_domains).deliveries,
        vec![local("u1"), local("u2"), local("u3")]
    );
    assert_eq!(a.expand("other", no_local_domains).deliveries, vec![local("x")]);
}

#[test]
fn quoted_targets_and_names() {
    let a = parse("\"odd name\": \"|/bin/cat a, b\", \"/tmp/x y\", \"John Doe\"@example.net, plain\n");
    let e = a.expand("ODD NAME", no_local_domains);
    assert_eq!(e.deliveries.len(), 4, "{e:?}");
    assert!(matches!(&e.deliveries[0], Target::Command { command, .. } if command == "/bin/cat a, b"));
    assert!(matches!(&e.deliveries[1], Target::File { path, .. } if path == Path::new("/tmp/x y")));
    assert_eq!(e.deliveries[2], Target::Remote("\"John Doe\"@example.net".into()));
    assert_eq!(e.deliveries[3], local("plain"));
}

#[test]
fn bad_lines_are_reported_with_file_and_line() {
    let text = b"good: a\n  \nbad line without colon\n: empty\nnotargets:\nsp: a b\n  continued\nq: \"unterminated\n";
    let err = Aliases::parse(Path::new("/etc/aliases"), text).unwrap_err();
    let lines: Vec<usize> = err.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 8], "{err}");
    assert!(err.errors[0].message.contains("name:value"), "{err}");
    // A continuation at the start of the file.
    let err = Aliases::parse(Path::new("f"), b"  orphan\nok: a\n").unwrap_err();
    assert_eq!(err.errors[0].line, 1);
    assert!(err.to_string().contains("continuation"));
}

#[test]
fn duplicates_warn_and_first_wins() {
    let (a, w) = Aliases::parse(Path::new("/etc/aliases"), b"x: a\nX: b\n").unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].line, 2);
    assert_eq!(a.expand("x", no_local_domains).deliveries, vec![local("a")]);
}

#[test]
fn hostile_input() {
    // NUL bytes.
    let err = Aliases::parse(Path::new("f"), b"a: b\nx: y\0z\nc: d\n").unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].line, 2);
    assert!(err.errors[0].message.contains("NUL"));
    // Invalid UTF-8 outside comments; 8-bit comments are fine.
    assert!(Aliases::parse(Path::new("f"), b"a: b\xff\n").is_err());
    assert!(Aliases::parse(Path::new("f"), b"# caf\xe9\na: b\n").is_ok());
    // Control characters in a target.
    assert!(Aliases::parse(Path::new("f"), b"a: b\x1bc\n").is_err());
    // A very long line: refused with its line number, quickly.
    let mut long = b"ok: a\nbig: ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    long.push(b'\n');
    let start = Instant::now();
    let err = Aliases::parse(Path::new("f"), &long).unwrap_err();
    assert_eq!(err.errors[0].line, 2);
    assert!(start.elapsed() < Duration::from_secs(2));
    // Many continuation lines making one huge entry: refused once, not per line.
    let mut cont = b"big: a".to_vec();
    for _ in 0..40_000 {
        cont.extend_from_slice(b"\n  ,bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    }
    let err = Aliases::parse(Path::new("f"), &cont).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    // Thousands of bad lines: the report is bounded.
    let junk = "junk\n".repeat(10_000);
    let err = Aliases::parse(Path::new("f"), junk.as_bytes()).unwrap_err();
    assert_eq!(err.errors.len(), poshta::limits::ALIASES_ERRORS_REPORTED_MAX);
    // A huge group stops at the target limit with an error.
    let mut group = String::from("g: ");
    for i in 0..(poshta::limits::ALIASES_EXPANSION_TARGETS_MAX + 5) {
        group.push_str(&format!("u{i},"));
    }
    let a = parse(&group);
    let e = a.expand("g", no_local_domains);
    assert_eq!(e.deliveries.len(), poshta::limits::ALIASES_EXPANSION_TARGETS_MAX);
    assert_eq!(e.errors.len(), 1);
}

#[test]
fn large_file_loads_quickly() {
    let t = TmpDir::new("big");
    let mut text = String::with_capacity(4 << 20);
    for i in 0..100_000 {
        text.push_str(&format!("user{i}: person{i}, person{}@example.net\n", i + 1));
    }
    let p = t.write("aliases", text.as_bytes());
    let start = Instant::now();
    let (a, w) = Aliases::load(&format!("hash:{}", p.display())).unwrap();
    let took = start.elapsed();
    assert!(w.is_empty());
    assert_eq!(a.len(), 100_000);
    // Generous for an unoptimised build on a slow board.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(a.expand("user99999", no_local_domains).deliveries.len(), 2);
}

#[test]
fn load_specs_and_missing_file() {
    let t = TmpDir::new("load");
    let p1 = t.write("a1", b"x: one\n");
    let p2 = t.write("a2", b"x: two\ny: three\n");
    let (a, _) = Aliases::load_maps(&[format!("lmdb:{}", p1.display()), format!("cdb:{},", p2.display())]).unwrap();
    assert_eq!(a.expand("x", no_local_domains).deliveries, vec![local("one")]);
    assert_eq!(a.expand("y", no_local_domains).deliveries, vec![local("three")]);
    let err = Aliases::load(&format!("texthash:{}", t.0.join("none").display())).unwrap_err();
    assert_eq!(err.errors[0].line, 0);
    assert!(Aliases::load(&format!("ldap:{}", p1.display())).is_err());
    // A directory is not an aliases file.
    assert!(Aliases::load(&t.0.display().to_string()).is_err());
}

#[test]
fn postmaster_resolution() {
    let users = |u: &str| u == "root" || u == "nick";
    let a = parse("postmaster: root\n");
    assert!(a.postmaster_resolves(no_local_domains, users));
    let a = parse("postmaster: nobody-here\n");
    assert!(!a.postmaster_resolves(no_local_domains, users));
    let a = parse("postmaster: ops@example.net\n");
    assert!(a.postmaster_resolves(no_local_domains, users));
    let a = parse("postmaster: a\na: postmaster2\npostmaster2: a\n");
    assert!(!a.postmaster_resolves(no_local_domains, users));
    // No alias: the user postmaster must exist.
    let a = parse("x: y\n");
    assert!(!a.postmaster_resolves(no_local_domains, users));
    assert!(a.postmaster_resolves(no_local_domains, |u| u == "postmaster"));
}

/// Deterministic pseudo-random bytes (no dependency): xorshift64.
fn noise(seed: u64, len: usize, alphabet: &[u8]) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize]
        })
        .collect()
}

#[test]
fn random_input_never_panics() {
    let alphabet = b"ab:,\"\\|/@ \t\n#\0\xff:include:xyz\r";
    for seed in 0..300u64 {
        let data = noise(seed, 2000, alphabet);
        if let Ok((a, _)) = Aliases::parse(Path::new("f"), &data) {
            for name in ["a", "b", "ab", "x"] {
                let e = a.expand(name, |_| true);
                assert!(e.deliveries.len() <= poshta::limits::ALIASES_EXPANSION_TARGETS_MAX);
            }
        }
    }
}
