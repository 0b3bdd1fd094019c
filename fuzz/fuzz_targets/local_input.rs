//! Fuzz the parsers that take input from local users (issue 3, issue 5): the `sendmail`
//! pickup head (`net::pickup::parse_head`, what any local user can send to the pickup socket
//! or drop into maildrop/) and an mbox file as a POP3 maildrop (`mailbox::mbox::MboxDrop`,
//! a file its owner can fill with anything).
//!
//! Checks: no panic; a parsed head says how much it used (never more than given) and
//! round-trips through `encode_head`; every listed message can be read to its end and
//! yields exactly its listed size in CRLF octets or less (the size is what POP3 reports:
//! RFC 1939 §11), the ids are unique, and deleting every other message (the in-place
//! rewrite at UPDATE) does not panic.
//!
//! Input layout: byte 0 selects (even: pickup head, odd: mbox), the rest is the input.
#![no_main]

use std::io::{Read, Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;
use poshta::mailbox::mbox::MboxDrop;
use poshta::net::pickup::parse_head;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(Some((sub, used))) = parse_head(input) {
            assert!(used <= input.len());
            let again = sub.encode_head();
            match parse_head(&again) {
                Ok(Some((back, n))) => {
                    assert_eq!(n, again.len());
                    assert_eq!(back.sender, sub.sender);
                    assert_eq!(back.recipients, sub.recipients);
                    assert_eq!(back.size, sub.size);
                }
                other => panic!("an encoded head does not parse: {other:?}"),
            }
        }
        return;
    }
    let Ok(mut file) = tempfile() else { return };
    if file.write_all(input).is_err() || file.seek(SeekFrom::Start(0)).is_err() {
        return;
    }
    let origin = std::path::Path::new("fuzz.mbox");
    let Ok(drop) = MboxDrop::open(file, origin, None) else { return };
    let n = drop.entries().len();
    let mut ids = std::collections::HashSet::new();
    for (i, e) in drop.entries().iter().enumerate() {
        assert!(ids.insert(e.uid().to_string()), "duplicate id");
        let mut m = match drop.open_message(i) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let mut body = Vec::new();
        if m.read_to_end(&mut body).is_ok() {
            assert!(body.len() as u64 <= e.size() + 2, "message {i} longer than its size");
        }
    }
    let every_other: Vec<usize> = (0..n).step_by(2).collect();
    let _ = drop.update(&every_other);
});

/// An unnamed file in /dev/shm (or the temp dir): opened read-write, gone at close.
fn tempfile() -> std::io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("poshta-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}
