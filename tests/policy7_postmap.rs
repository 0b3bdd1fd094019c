//! `poshta postmap` as the built binary, and the 200,000-entry map figures (ignored test).

use poshta::policy::table::{compile, index_path, Table, TableSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

#[path = "common/tempdir.rs"]
mod tempdir;
use tempdir::TempDir;

/// Removed when the test ends, pass or fail.
fn tmp(tag: &str) -> TempDir {
    TempDir::new(&format!("poshta-policy7-postmap-{tag}-{}", std::process::id()))
}

fn write(d: &Path, name: &str, text: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn postmap(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poshta"))
        .arg("postmap")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn postmap_writes_index_and_answers_queries() {
    let d = tmp("ok");
    write(
        &d,
        "access",
        "# the classic example\n127.1.2.4 OK\n127.1.2 550 Go away\nSpam.Example REJECT\n",
    );
    let o = postmap(d.path(), &["access"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(index_path(&d.join("access")).exists());
    let o = postmap(d.path(), &["-q", "spam.example", "hash:access"]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "REJECT\n")
    );
    let o = postmap(d.path(), &["-q", "127.1.2.9", "access"]);
    assert_eq!(o.status.code(), Some(1), "plain lookup: no access(5) network search");
    // The server's table uses the index now.
    let t = Table::open("hash:access", d.path()).unwrap();
    assert!(t.from_index);
    // cidr: checked (warning for host bits), queried by address, no index.
    write(
        &d,
        "net.cidr",
        "127.1.2.4 OK\n127.1.2.9/24 REJECT\n127.1.2.0/24 550 Go away\n",
    );
    let o = postmap(d.path(), &["cidr:net.cidr"]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("net.cidr:2: non-null host address bits"),
        "{}",
        stderr(&o)
    );
    assert!(!index_path(&d.join("net.cidr")).exists());
    let o = postmap(d.path(), &["-q", "127.1.2.9", "cidr:net.cidr"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "550 Go away\n");
    let o = postmap(d.path(), &["-q", "x@example.com", "regexp:nonexistent"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nonexistent"), "{}", stderr(&o));
}

#[test]
fn postmap_reports_every_error_and_writes_nothing() {
    let d = tmp("bad");
    write(&d, "access", "good OK\nlonely\nalso good OK\n  \n bad continuation?\n");
    write(&d, "bad.re", "/ok/ OK\n/(/ REJECT\n/x{1000}{1000}/ REJECT\nendif\n");
    let o = postmap(d.path(), &["hash:access"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("access:2: expected format"), "{e}");
    assert!(!index_path(&d.join("access")).exists());
    let o = postmap(d.path(), &["regexp:bad.re"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    for l in [
        "bad.re:2:",
        "bad.re:3: pattern is too expensive",
        "bad.re:4: endif without",
    ] {
        assert!(e.contains(l), "{l}: {e}");
    }
    let o = postmap(d.path(), &["mysql:whatever"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unsupported dictionary type"));
}

/// Figures for the benchmark: run with
/// `cargo test --release --test policy7_postmap -- --ignored --nocapture`.
#[test]
#[ignore]
fn big_map_figures() {
    const N: usize = 200_000;
    let d = tmp("big");
    // Written in small pieces: one big String here would raise glibc's mmap threshold
    // and make the RSS figures below measure the allocator, not the table.
    let p = d.join("access");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        for i in 0..N {
            // Address, domain and IP keys, as a real access map mixes them.
            match i % 3 {
                0 => writeln!(w, "user{i}@example{}.com REJECT", i % 997),
                1 => writeln!(w, "host{i}.example.net 550 Go away {i}"),
                _ => writeln!(w, "10.{}.{}.{} OK", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            }
            .unwrap();
        }
    }
    let size = std::fs::metadata(&p).unwrap().len() as usize;
    let rss = || -> usize {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        s.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
    };

    let t0 = Instant::now();
    let before = rss();
    let text_table = Table::open("hash:access", d.path()).unwrap();
    let text_load = t0.elapsed();
    let text_rss = rss().saturating_sub(before);
    assert_eq!(text_table.len(), N);
    assert!(!text_table.from_index);
    drop(text_table);

    let t0 = Instant::now();
    compile("hash:access", d.path()).unwrap();
    let compile_time = t0.elapsed();
    let index_size = std::fs::metadata(index_path(&p)).unwrap().len();

    let before = rss();
    let t0 = Instant::now();
    let table = Table::open("hash:access", d.path()).unwrap();
    let index_load = t0.elapsed();
    let index_rss = rss().saturating_sub(before);
    assert!(table.from_index);

    let keys: Vec<String> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!("USER{}@example{}.com", i * 3, (i * 3) % 997),
            1 => format!("host{}.example.net", i * 3 + 1),
            2 => format!("10.0.{}.{}", ((i * 3 + 2) >> 8) & 255, (i * 3 + 2) & 255),
            _ => format!("missing{i}.example.org"),
        })
        .collect();
    let rounds = 2000;
    let t0 = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for k in &keys {
            found += usize::from(table.lookup(k).is_some());
        }
    }
    let lookups = rounds * keys.len();
    let rate = lookups as f64 / t0.elapsed().as_secs_f64();
    assert!(found >= lookups / 2);

    // TableSet refresh with nothing changed (done per session by the server): two stats.
    let mut set = TableSet::new(d.path());
    set.add("hash:access").unwrap();
    let t0 = Instant::now();
    for _ in 0..1000 {
        assert!(set.refresh().is_empty());
    }
    let refresh = t0.elapsed() / 1000;

    // A 1,000-rule regexp table, worst case: a key no rule matches tries every rule.
    let mut re = String::new();
    for i in 0..1000 {
        re.push_str(&format!("/^user{i}@example[0-9]+\\.com$/ REJECT\n"));
    }
    let t0 = Instant::now();
    let rt = Table::parse(poshta::policy::table::TableType::Regexp, Path::new("re"), &re).unwrap();
    let re_load = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..200 {
        assert!(rt.lookup("nobody@example.org").is_none());
    }
    let re_miss = t0.elapsed() / 200;

    // RSS of an index load in a fresh process (this one's allocator has the text load's
    // freed pages to reuse, which would hide the growth).
    let probe = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "index_rss_probe", "--nocapture"])
        .env("POSHTA_PROBE_MAP", &p)
        .output()
        .unwrap();
    let probe_out = String::from_utf8_lossy(&probe.stdout);
    let probe_line = probe_out
        .lines()
        .find(|l| l.starts_with("probe:"))
        .unwrap_or("probe: failed")
        .to_string();

    println!("entries: {N}, text file: {size} bytes, index file: {index_size} bytes");
    println!(
        "text load: {text_load:?}, RSS growth {text_rss} bytes ({:.2}x file)",
        text_rss as f64 / size as f64
    );
    println!("postmap compile: {compile_time:?}");
    println!(
        "index load: {index_load:?}, RSS growth {index_rss} bytes ({:.2}x file)",
        index_rss as f64 / size as f64
    );
    println!(
        "lookups: {:.2} million/s (mixed hits and misses, mixed case)",
        rate / 1e6
    );
    println!("refresh (unchanged): {refresh:?}");
    println!("{probe_line} (file {size} bytes)");
    println!("regexp table, 1000 rules: load {re_load:?}, a lookup that matches no rule {re_miss:?}");
}

/// Run by big_map_figures in a child process: RSS growth of loading the index alone.
#[test]
#[ignore]
fn index_rss_probe() {
    let Some(p) = std::env::var_os("POSHTA_PROBE_MAP") else {
        return;
    };
    let rss = || -> usize {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        s.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
    };
    let before = rss();
    let t0 = Instant::now();
    let t = Table::open(&format!("hash:{}", Path::new(&p).display()), Path::new("/")).unwrap();
    let took = t0.elapsed();
    let grew = rss().saturating_sub(before);
    assert!(t.from_index);
    println!("probe: fresh-process index load {took:?}, RSS growth {grew} bytes");
}
