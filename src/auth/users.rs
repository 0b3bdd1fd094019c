//! The mailbox users file (`mailbox_users_file`, default `/etc/poshta/users`).
//!
//! # Format
//!
//! UTF-8 text, one user per line:
//!
//! ```text
//! # comment
//! alice:$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH
//! bob:$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH:reserved:fields
//! nick:$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH:system
//! ```
//!
//! - A line whose first non-blank character is `#`, and a blank line, are ignored (and kept
//!   verbatim when poshta rewrites the file).
//! - Leading and trailing blanks (space, tab) and a trailing CR are ignored.
//! - Field 1 is the user name: lowercase `[a-z0-9._-]`, 1..=64 bytes (RFC 5321 §4.5.3.1.1
//!   bounds a local part at 64 octets), not starting with `.` or `-` (a leading `-` looks like
//!   an option to every tool; a leading `.` makes a hidden Maildir).
//! - Field 2 is an argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`). The
//!   PHC string itself never contains `:`.
//! - Field 3, when present, marks the kind of user. `system` means a system user: the name
//!   is a passwd(5) entry whose mail is in the system mailbox (`mail_spool_directory/NAME`
//!   or `home_mailbox`), not a poshta Maildir; the hash is still the one POP3 and SMTP AUTH
//!   check (the user's /etc/shadow hash is never read, see docs/decisions.md, issue 5).
//!   Any other value, and further `:`-separated fields, are reserved: ignored now, kept on
//!   rewrite.
//! - A name listed twice is an error (`file:line: duplicate user ...`), as is a line longer
//!   than [`limits::USERS_LINE_BYTES_MAX`] bytes (without its newline), a bad name, or a
//!   hash that is not argon2id or whose cost exceeds the bounds below (a hostile hash with a
//!   huge `m=` would make every AUTH allocate that much).
//!
//! # Writing
//!
//! [`add_user`], [`set_password`] and [`remove_user`] take an exclusive `flock` on
//! `PATH.lock` (so two `poshta user` runs do not lose each other's change), re-read the
//! file, change only the one line concerned, and replace the file atomically: write
//! `PATH.tmp` (mode 0600, O_EXCL|O_NOFOLLOW), fsync, rename over `PATH`, fsync the directory.
//! When `PATH` existed, the new file gets its owner and group.
//!
//! # Hash parameters
//!
//! [`hash_password`] uses argon2id with m=19456 KiB, t=2, p=1: OWASP's minimum
//! recommendation (Password Storage Cheat Sheet) and argon2's own default. 19 MiB per
//! verification is affordable on a 512 MiB board; a higher `m` would let a handful of
//! concurrent AUTH attempts exhaust memory. Measured: one verify takes ~20–30 ms in a release
//! build on an x86-64 build host; expect roughly 5–10x that (~150–250 ms) on a Raspberry Pi
//! 3/4 class Cortex-A53/A72. Verification always runs on the blocking thread pool.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};

use crate::limits;

/// argon2id memory cost for new hashes, in KiB (OWASP minimum, see the module doc).
pub const HASH_M_COST_KIB: u32 = 19_456;
/// argon2id passes for new hashes.
pub const HASH_T_COST: u32 = 2;
/// argon2id lanes for new hashes (the board may have one core free for it).
pub const HASH_P_COST: u32 = 1;

/// Bounds on the cost parameters accepted from the file: a verify must not be able to
/// take the board's memory or minutes of CPU.
pub const HASH_M_COST_KIB_MAX: u32 = 256 * 1024;
pub const HASH_T_COST_MAX: u32 = 16;
pub const HASH_P_COST_MAX: u32 = 8;

/// The longest password `hash_password` accepts (the CLI reads at most this many bytes).
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Verified for an unknown user so that "no such user" costs the same time as "wrong
/// password" (no user enumeration by timing). Same parameters as [`hash_password`]; its
/// password is unknown and irrelevant.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ugmRGJSxHWc9rmaxQ6agOg$\
                          fSwSh1R+ANd1jmrBlWkvMqXViZcMwVJL0fexQBlQfqQ";

/// Mailbox users loaded from the users file.
#[derive(Clone, Default)]
pub struct Users {
    /// name -> PHC string.
    hashes: HashMap<String, String>,
    /// Names marked `system` (field 3).
    system: HashSet<String>,
}

/// The field-3 marker of a system user.
pub const SYSTEM_MARKER: &str = "system";

/// Whether the reserved part of a line (`""` or `:field:...`) starts with the system marker.
fn is_system_rest(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|r| r.split(':').next() == Some(SYSTEM_MARKER))
}

impl std::fmt::Debug for Users {
    // Never print hashes (logs, panics).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("count", &self.hashes.len()).finish()
    }
}

/// A users-file problem: `file:line: message`.
#[derive(Debug)]
pub struct UsersError {
    pub message: String,
}

impl UsersError {
    fn new(message: impl Into<String>) -> UsersError {
        UsersError {
            message: message.into(),
        }
    }

    fn io(path: &Path, what: &str, e: std::io::Error) -> UsersError {
        UsersError::new(format!("{}: {what}: {e}", path.display()))
    }
}

impl std::fmt::Display for UsersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsersError {}

/// Whether `name` is a valid users-file name (see the module doc).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=limits::SMTP_LOCAL_PART_BYTES_MAX).contains(&b.len())
        && b[0] != b'.'
        && b[0] != b'-'
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// Why `name` is not valid, for messages.
fn name_problem(name: &str) -> String {
    format!(
        "bad user name {name:?}: use 1 to {} of a-z 0-9 . _ -, not starting with . or -",
        limits::SMTP_LOCAL_PART_BYTES_MAX
    )
}

/// Check that `hash` is an argon2id PHC string with bounded cost.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("bad password hash: {e}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "password hash algorithm {} is not argon2id",
            parsed.algorithm.as_str()
        ));
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > HASH_M_COST_KIB_MAX || params.t_cost() > HASH_T_COST_MAX || params.p_cost() > HASH_P_COST_MAX {
        return Err(format!(
            "argon2 cost too high (m<={HASH_M_COST_KIB_MAX}, t<={HASH_T_COST_MAX}, \
             p<={HASH_P_COST_MAX})"
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("password hash lacks salt or output".into());
    }
    Ok(())
}

fn hasher() -> Result<Argon2<'static>, UsersError> {
    let params = Params::new(HASH_M_COST_KIB, HASH_T_COST, HASH_P_COST, None)
        .map_err(|e| UsersError::new(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password for the users file: argon2id (parameters in the module doc), 16-byte
/// salt from the OS RNG (getrandom). Blocking and slow.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::new("empty password"));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(UsersError::new(format!(
            "password longer than {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    let hash = hasher()?
        .hash_password(password.as_bytes())
        .map_err(|e| UsersError::new(format!("hashing failed: {e}")))?;
    Ok(hash.to_string())
}

/// One line of the file, as read.
#[derive(Debug, Clone)]
struct Line {
    /// The line without its `\n` (may end in `\r`; kept verbatim on rewrite).
    raw: String,
    /// For a user line: (name, hash, rest) where rest is `""` or `:field:field...`.
    user: Option<(String, String, String)>,
}

/// Parse the whole file (bounded per line). `origin` names it in messages.
fn parse_lines(reader: &mut dyn BufRead, origin: &Path) -> Result<Vec<Line>, UsersError> {
    let mut lines = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut buf = Vec::new();
    for lineno in 1usize.. {
        buf.clear();
        // One byte more than the limit plus the newline: enough to tell "too long".
        let cap = (limits::USERS_LINE_BYTES_MAX + 2) as u64;
        let n = (&mut *reader)
            .take(cap)
            .read_until(b'\n', &mut buf)
            .map_err(|e| UsersError::io(origin, "read", e))?;
        if n == 0 {
            break;
        }
        let at = |msg: String| UsersError::new(format!("{}:{lineno}: {msg}", origin.display()));
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if n as u64 == cap {
            return Err(at(format!("line longer than {} bytes", limits::USERS_LINE_BYTES_MAX)));
        }
        if buf.len() > limits::USERS_LINE_BYTES_MAX {
            return Err(at(format!("line longer than {} bytes", limits::USERS_LINE_BYTES_MAX)));
        }
        let raw = String::from_utf8(std::mem::take(&mut buf)).map_err(|_| at("line is not UTF-8".into()))?;
        let text = raw.trim_end_matches('\r').trim_matches([' ', '\t']);
        let user = if text.is_empty() || text.starts_with('#') {
            None
        } else {
            let (name, rest) = text.split_once(':').unwrap_or((text, ""));
            if !valid_name(name) {
                return Err(at(name_problem(name)));
            }
            let (hash, more) = match rest.find(':') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if hash.is_empty() {
                return Err(at(format!("user {name} has no password hash")));
            }
            check_hash(hash).map_err(|m| at(format!("user {name}: {m}")))?;
            if let Some(first) = first_seen.insert(name.to_string(), lineno) {
                return Err(at(format!("duplicate user {name} (first at line {first})")));
            }
            Some((name.to_string(), hash.to_string(), more.to_string()))
        };
        lines.push(Line { raw, user });
    }
    Ok(lines)
}

fn read_lines(path: &Path) -> Result<Vec<Line>, UsersError> {
    match File::open(path) {
        Ok(f) => parse_lines(&mut BufReader::new(f), path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(UsersError::io(path, "open", e)),
    }
}

impl Users {
    /// Load; a missing file is an empty set of users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        Ok(Users::from_lines(read_lines(path)?))
    }

    /// Parse users-file text (tests, and callers that read the file themselves);
    /// `origin` names it in messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Users, UsersError> {
        Ok(Users::from_lines(parse_lines(&mut text.as_bytes(), origin)?))
    }

    fn from_lines(lines: Vec<Line>) -> Users {
        let mut hashes = HashMap::new();
        let mut system = HashSet::new();
        for (name, hash, rest) in lines.into_iter().filter_map(|l| l.user) {
            if is_system_rest(&rest) {
                system.insert(name.clone());
            }
            hashes.insert(name, hash);
        }
        Users { hashes, system }
    }

    /// Lookup by (already lowercased) name: the user has a password (mailbox or system user).
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// The user is a system user (field 3 `system`): their mail is the system mailbox.
    pub fn is_system(&self, name: &str) -> bool {
        self.system.contains(name)
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Blocking and slow (argon2id): never call on the event loop; use smol::unblock.
    /// An unknown user costs one verify against a dummy hash, so the time does not tell
    /// whether the user exists.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        self.verify_with_memory(name, password, &mut Vec::new())
    }

    /// `verify`, computing in `memory` (grown to the hash's m_cost; the caller decides how
    /// long to keep it): the password thread reuses one block through a burst of logins
    /// and drops it when no check waits. Allocated per check on many threads, glibc kept
    /// every block (RSS grew by 19 MiB per login, up to ~200 MiB, bench/tls-submit.sh).
    pub fn verify_with_memory(&self, name: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
        let (hash, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        // The hash's own parameters are used (bounded at load by check_hash).
        let ok = (|| -> Option<bool> {
            let parsed = PasswordHash::new(hash).ok()?;
            let params = Params::try_from(&parsed).ok()?;
            let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()
                .ok()?
                .unwrap_or_default();
            let salt = parsed.salt.as_ref()?;
            let expected = parsed.hash.as_ref()?;
            let blocks = params.block_count();
            if memory.len() < blocks {
                if memory.capacity() < blocks {
                    // Reserve past glibc's largest dynamic mmap threshold (32 MiB on 64-bit,
                    // DEFAULT_MMAP_THRESHOLD_MAX): such a block is always its own mmap and
                    // `free` unmaps it without raising the threshold, so dropping the work
                    // area gives its 19 MiB back to the kernel. At or under the threshold,
                    // glibc serves the second login from its heap and keeps the pages
                    // resident for the life of the process. Only the `blocks` filled below
                    // are ever touched: the rest of the reservation is address space, not
                    // memory. (musl maps large blocks on its own.)
                    *memory = Vec::with_capacity(blocks.max(WORK_AREA_RESERVE_BYTES / ARGON2_BLOCK_BYTES));
                }
                memory.resize(blocks, argon2::Block::default());
            }
            let mut out = vec![0u8; expected.len()];
            Argon2::new(algorithm, version, params)
                .hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), &mut out, &mut memory[..blocks])
                .ok()?;
            // Output's equality is constant-time (password-hash's note on timing).
            let computed = argon2::password_hash::phc::Output::new(&out).ok()?;
            Some(&computed == expected)
        })()
        .unwrap_or(false);
        ok && known
    }
}

/// Bytes in one argon2 block (RFC 9106 §3.1: the memory is m blocks of 1024 bytes).
const ARGON2_BLOCK_BYTES: usize = 1024;

/// Address space reserved for an argon2 work area: above glibc's 32 MiB upper bound for its
/// dynamic mmap threshold (see `verify_with_memory`).
const WORK_AREA_RESERVE_BYTES: usize = 33 << 20;

/// Names in file order.
pub fn list(path: &Path) -> Result<Vec<String>, UsersError> {
    Ok(read_lines(path)?
        .into_iter()
        .filter_map(|l| l.user.map(|(name, _, _)| name))
        .collect())
}

/// Add `name` with `hash` (from [`hash_password`]); an existing user is an error.
pub fn add_user(path: &Path, name: &str, hash: &str) -> Result<(), UsersError> {
    add_entry(path, name, hash, "")
}

/// Add a system user (`name:hash:system`); the caller checked the passwd entry.
pub fn add_system_user(path: &Path, name: &str, hash: &str) -> Result<(), UsersError> {
    add_entry(path, name, hash, &format!(":{SYSTEM_MARKER}"))
}

fn add_entry(path: &Path, name: &str, hash: &str, rest: &str) -> Result<(), UsersError> {
    check_entry(name, Some(hash))?;
    modify(path, |lines| {
        if lines.iter().any(|l| user_is(l, name)) {
            return Err(format!("user {name} already exists"));
        }
        lines.push(Line {
            raw: format!("{name}:{hash}{rest}"),
            user: Some((name.to_string(), hash.to_string(), rest.to_string())),
        });
        Ok(())
    })
}

/// Replace `name`'s hash, keeping the reserved fields after it; an unknown user is an error.
pub fn set_password(path: &Path, name: &str, hash: &str) -> Result<(), UsersError> {
    check_entry(name, Some(hash))?;
    modify(path, |lines| {
        let line = lines
            .iter_mut()
            .find(|l| user_is(l, name))
            .ok_or_else(|| format!("no such user {name}"))?;
        if let Some((_, old_hash, rest)) = &mut line.user {
            *old_hash = hash.to_string();
            line.raw = format!("{name}:{hash}{rest}");
        }
        Ok(())
    })
}

/// Remove `name`'s line; an unknown user is an error.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersError> {
    check_entry(name, None)?;
    modify(path, |lines| {
        let before = lines.len();
        lines.retain(|l| !user_is(l, name));
        if lines.len() == before {
            return Err(format!("no such user {name}"));
        }
        Ok(())
    })
}

fn user_is(l: &Line, name: &str) -> bool {
    l.user.as_ref().is_some_and(|(n, _, _)| n == name)
}

fn check_entry(name: &str, hash: Option<&str>) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::new(name_problem(name)));
    }
    if let Some(hash) = hash {
        check_hash(hash).map_err(UsersError::new)?;
        if hash.contains([':', '\n', '\r']) {
            return Err(UsersError::new("password hash contains ':' or a newline"));
        }
    }
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Lock, re-read, change, rewrite atomically (see the module doc).
fn modify(path: &Path, change: impl FnOnce(&mut Vec<Line>) -> Result<(), String>) -> Result<(), UsersError> {
    let lock_path = sibling(path, ".lock");
    // The first `poshta user add` on a fresh machine comes before anything made the config
    // directory (./poshta/ as a normal user): make it.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(|e| UsersError::io(dir, "create directory", e))?;
    }
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(|e| UsersError::io(&lock_path, "open lock file", e))?;
    // Blocks until the other writer is done; released when `lock` is closed.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| UsersError::io(&lock_path, "lock", e.into()))?;

    let mut lines = read_lines(path)?;
    change(&mut lines).map_err(UsersError::new)?;

    let mut out = String::new();
    for l in &lines {
        out.push_str(&l.raw);
        out.push('\n');
    }
    write_atomically(path, out.as_bytes())?;
    drop(lock);
    Ok(())
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), UsersError> {
    let tmp = sibling(path, ".tmp");
    // We hold the lock, so a PATH.tmp left over is from a writer that died: remove it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(UsersError::io(&tmp, "remove stale", e)),
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)
            .map_err(|e| UsersError::io(&tmp, "create", e))?;
        if let Ok(old) = std::fs::metadata(path) {
            let new = f.metadata().map_err(|e| UsersError::io(&tmp, "stat", e))?;
            if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
                // Keep the owner the daemon reads the file as (root editing a file owned
                // by mail_owner must not take it away).
                rustix::fs::fchown(
                    f.as_fd(),
                    Some(rustix::process::Uid::from_raw(old.uid())),
                    Some(rustix::process::Gid::from_raw(old.gid())),
                )
                .map_err(|e| UsersError::io(&tmp, "chown", e.into()))?;
            }
        }
        f.write_all(data).map_err(|e| UsersError::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| UsersError::io(&tmp, "fsync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| UsersError::io(path, "rename", e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| UsersError::io(dir, "fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap argon2id hash for tests (m=8 KiB, t=1): the file logic does not depend on
    /// the cost, and debug-build argon2 at full cost is slow.
    fn cheap_hash(password: &str) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        let salt = argon2::password_hash::generate_salt();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    struct TmpDir(PathBuf);
    impl TmpDir {
        fn new(tag: &str) -> TmpDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("poshta-users-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TmpDir(p)
        }
    }
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn origin() -> &'static Path {
        Path::new("users")
    }

    #[test]
    fn names() {
        for ok in ["a", "alice", "a.b", "a_b", "a-b", "0", "x1.-_", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "-a",
            "Alice",
            "a b",
            "a:b",
            "a@b",
            "a/b",
            "a%b",
            "a+b",
            "é",
            &"a".repeat(65),
            "a\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parse_file() {
        let h = cheap_hash("pw");
        let text = format!("# users\n\n  \t\nalice:{h}\r\n  bob:{h}:reserved:x\n#carol:{h}\n");
        let u = Users::parse(&text, origin()).unwrap();
        assert_eq!(u.names(), vec!["alice", "bob"]);
        assert!(u.contains("alice") && u.contains("bob") && !u.contains("carol"));
        assert!(!u.contains("ALICE"));
        assert!(!format!("{u:?}").contains("argon2"), "Debug must not show hashes");
    }

    #[test]
    fn system_marker_is_field_three() {
        let h = cheap_hash("pw");
        let text =
            format!("alice:{h}\nnick:{h}:system\nold:{h}:system:later\nodd:{h}:reserved:system\nx:{h}:systemd\n");
        let u = Users::parse(&text, origin()).unwrap();
        assert!(u.contains("nick") && u.is_system("nick") && u.is_system("old"));
        assert!(!u.is_system("alice") && !u.is_system("odd") && !u.is_system("x"));
        assert!(!u.is_system("nobody"));
        assert!(u.verify("nick", "pw"));
        let d = TmpDir::new("sys");
        let path = d.0.join("users");
        add_system_user(&path, "nick", &h).unwrap();
        assert!(add_system_user(&path, "nick", &h).is_err());
        // A password change keeps the marker.
        let h2 = cheap_hash("two");
        set_password(&path, "nick", &h2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("nick:{h2}:system\n"));
        let u = Users::load(&path).unwrap();
        assert!(u.is_system("nick") && u.verify("nick", "two"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let h = cheap_hash("pw");
        let cases: Vec<(String, &str)> = vec![
            (format!("alice:{h}\n\nalice:{h}\n"), "users:3: duplicate user alice (first at line 1)"),
            (format!("Alice:{h}\n"), "users:1: bad user name"),
            ("alice\n".to_string(), "users:1: user alice has no password hash"),
            ("alice:\n".to_string(), "users:1: user alice has no password hash"),
            ("alice:plaintext\n".to_string(), "users:1: user alice: bad password hash"),
            (
                "alice:$argon2i$v=19$m=19456,t=2,p=1$ugmRGJSxHWc9rmaxQ6agOg$fSwSh1R+ANd1jmrBlWkvMqXViZcMwVJL0fexQBlQfqQ\n".to_string(),
                "users:1: user alice: password hash algorithm argon2i",
            ),
            (
                "alice:$argon2id$v=19$m=4194304,t=2,p=1$ugmRGJSxHWc9rmaxQ6agOg$fSwSh1R+ANd1jmrBlWkvMqXViZcMwVJL0fexQBlQfqQ\n".to_string(),
                "users:1: user alice: argon2 cost too high",
            ),
            (format!("# ok\n{}\n", "x".repeat(limits::USERS_LINE_BYTES_MAX + 1)), "users:2: line longer"),
        ];
        for (text, want) in cases {
            let e = Users::parse(&text, origin()).unwrap_err();
            assert!(e.message.starts_with(want), "{text:?}: {e}");
        }
        // Not UTF-8.
        let e = parse_lines(&mut &b"# \xff\n"[..], origin()).unwrap_err();
        assert!(e.message.contains("users:1: line is not UTF-8"), "{e}");
        // Exactly at the limit is fine; a last line without newline too.
        let text = format!("#{}\nalice:{h}", "x".repeat(limits::USERS_LINE_BYTES_MAX - 1));
        assert!(Users::parse(&text, origin()).unwrap().contains("alice"));
        // An over-long last line without newline.
        let text = "#".repeat(limits::USERS_LINE_BYTES_MAX + 5);
        assert!(Users::parse(&text, origin()).is_err());
    }

    #[test]
    fn verify_cheap() {
        let text = format!("alice:{}\n", cheap_hash("secret"));
        let u = Users::parse(&text, origin()).unwrap();
        assert!(u.verify("alice", "secret"));
        assert!(!u.verify("alice", "Secret"));
        assert!(!u.verify("alice", ""));
        assert!(!u.verify("ALICE", "secret"));
    }

    #[test]
    fn hash_and_verify_full_cost_and_timing() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains(':'));
        let h2 = hash_password("correct horse").unwrap();
        assert_ne!(h, h2, "salts must differ");
        let u = Users::parse(&format!("alice:{h}\n"), origin()).unwrap();
        let t = std::time::Instant::now();
        assert!(u.verify("alice", "correct horse"));
        let known = t.elapsed();
        let t = std::time::Instant::now();
        assert!(!u.verify("mallory", "correct horse"));
        let unknown = t.elapsed();
        // Printed for the record (run with --nocapture); debug builds are much slower.
        println!("argon2id verify: known user {known:?}, unknown user {unknown:?}");
        // The unknown-user path really runs argon2 (same order of magnitude).
        assert!(unknown * 4 > known, "known {known:?} unknown {unknown:?}");
        assert!(hash_password("").is_err());
        assert!(hash_password(&"x".repeat(PASSWORD_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn dummy_hash_is_valid() {
        check_hash(DUMMY_HASH).unwrap();
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn add_set_remove_keep_other_lines() {
        let d = TmpDir::new("rw");
        let path = d.0.join("users");
        assert!(Users::load(&path).unwrap().is_empty(), "missing file is empty");
        let h1 = cheap_hash("one");
        let h2 = cheap_hash("two");
        add_user(&path, "alice", &h1).unwrap();
        std::fs::write(&path, format!("# top comment\nalice:{h1}:keep:me\r\n\n# bob below\n")).unwrap();
        add_user(&path, "bob", &h1).unwrap();
        let e = add_user(&path, "bob", &h2).unwrap_err();
        assert!(e.message.contains("already exists"), "{e}");
        set_password(&path, "alice", &h2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# top comment\nalice:{h2}:keep:me\n\n# bob below\nbob:{h1}\n")
        );
        let u = Users::load(&path).unwrap();
        assert!(u.verify("alice", "two") && !u.verify("alice", "one"));
        assert!(u.verify("bob", "one"));
        assert_eq!(list(&path).unwrap(), vec!["alice", "bob"]);

        remove_user(&path, "alice").unwrap();
        assert!(remove_user(&path, "alice").is_err());
        assert!(set_password(&path, "alice", &h1).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# top comment\n\n# bob below\nbob:{h1}\n"));

        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!sibling(&path, ".tmp").exists());
    }

    #[test]
    fn writes_refuse_bad_input_and_broken_files() {
        let d = TmpDir::new("bad");
        let path = d.0.join("users");
        let h = cheap_hash("pw");
        assert!(add_user(&path, "Bad", &h).is_err());
        assert!(add_user(&path, "-x", &h).is_err());
        assert!(add_user(&path, "x", "plaintext").is_err());
        assert!(add_user(&path, "x", &format!("{h}:extra")).is_err());
        assert!(add_user(&path, "x", &format!("{h}\nroot:{h}")).is_err());
        // A broken file is not rewritten (the error names the line).
        std::fs::write(&path, "garbage line\n").unwrap();
        let e = add_user(&path, "x", &h).unwrap_err();
        assert!(e.message.contains("users:1:"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage line\n");
        // A stale tmp file from a crashed writer does not block writers, and a symlink
        // planted as PATH.tmp is replaced, not written through.
        std::fs::write(&path, "").unwrap();
        let victim = d.0.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, sibling(&path, ".tmp")).unwrap();
        add_user(&path, "x", &h).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(Users::load(&path).unwrap().contains("x"));
    }

    #[test]
    fn concurrent_writers_do_not_lose_updates() {
        let d = TmpDir::new("conc");
        let path = d.0.join("users");
        let h = cheap_hash("pw");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                let h = h.clone();
                std::thread::spawn(move || add_user(&path, &format!("u{i}"), &h))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(Users::load(&path).unwrap().len(), 8);
    }
}
