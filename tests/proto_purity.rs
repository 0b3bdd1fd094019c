//! The protocol cores stay sans-IO (DESIGN.md principle 2, STYLE.md habit 1): nothing under
//! src/proto/ may name the runtime, sockets, files, clocks or randomness.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &["smol", "std::net", "std::fs", "Instant::now", "SystemTime", "rand"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `rand` as a word (crate or module path), not inside words like "operand" or "brand".
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn proto_is_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() >= 5, "src/proto looks empty: {files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for word in FORBIDDEN {
            if mentions(&text, word) {
                bad.push(format!("{} mentions {word}", f.display()));
            }
        }
    }
    assert!(bad.is_empty(), "src/proto must stay sans-IO:\n{}", bad.join("\n"));
}

#[test]
fn word_matching() {
    assert!(mentions("use rand::Rng;", "rand"));
    assert!(mentions("x(std::net::TcpStream)", "std::net"));
    assert!(!mentions("an operand", "rand"));
    assert!(!mentions("brandy", "rand"));
    assert!(mentions("smol::spawn", "smol"));
}
