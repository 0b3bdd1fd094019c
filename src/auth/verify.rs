//! Password checks on one dedicated thread.
//!
//! An argon2id verification with poshta's parameters allocates 19 MiB. Run on the general
//! thread pool, concurrent logins each allocated their own block, and glibc kept every
//! thread's block in that thread's arena: 50 concurrent AUTHs left the process at ~4 GiB
//! (bench/tls-submit.sh). One thread checking one password at a time bounds that memory to
//! one block at the cost of queueing logins (~20 ms each here; a burst of 50 waits about a
//! second). The queue is bounded: sessions beyond it wait to enqueue.
//!
//! The block is reused while checks are queued and given back to the kernel as soon as
//! none waits (`Users::verify_with_memory` makes it an mmap of its own), so the 19 MiB is
//! resident only during logins, as in Dovecot's auth process: a POP3 session that logged
//! in once does not carry it while it downloads. Mapping and zeroing it again costs about
//! 1–2 ms per isolated login; repeated logins mostly hit the cache below instead.
//!
//! # The verified-login cache (auth_cache_ttl)
//!
//! Mail programs log in again for every submission and every POP3 poll, and each login
//! costs one full argon2id check (~20 ms of CPU, 19 MiB). Like Dovecot's auth cache,
//! poshta remembers a *successful* check for auth_cache_ttl (default 1h; 0 turns the cache
//! off): the entry is a keyed BLAKE2b MAC of the name and password under a random key
//! made at start and never written anywhere, so neither the cache nor a memory dump of it
//! holds a password or a hash that can be attacked without the key. An entry is used only
//! while the users file it was checked against is the one loaded (any change to the file,
//! such as `poshta user passwd`, drops every entry), and only for the same password:
//! a wrong password always gets the full, slow check, failures are never cached, and the
//! failed-login lockout (`auth::throttle`) runs before any of this. At most
//! [`AUTH_CACHE_ENTRIES_MAX`] entries (expired ones go first, then the oldest).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac512;

use smol::channel::{bounded, Sender};

use super::users::Users;

/// Pending checks before `verify` callers wait to enqueue.
const QUEUE_LEN: usize = 64;

/// Remembered successful logins.
pub const AUTH_CACHE_ENTRIES_MAX: usize = 1000;

struct Request {
    users: Arc<Users>,
    name: String,
    password: String,
    /// auth_cache_ttl (zero: no caching).
    ttl: Duration,
    reply: Sender<bool>,
}

struct Entry {
    /// The users file the check was made against (Weak: a newer file invalidates; the
    /// allocation stays while this exists, so the pointer cannot be reused).
    users: Weak<Users>,
    mac: [u8; 64],
    made: Instant,
    expires: Instant,
}

/// Successful checks, on the password thread only.
struct Cache {
    key: [u8; 32],
    entries: HashMap<String, Entry>,
}

impl Cache {
    fn new() -> Cache {
        let mut key = [0u8; 32];
        // Without randomness there is no cache (every check is a full one).
        if rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty()) != Ok(32) {
            key = [0; 32];
        }
        Cache {
            key,
            entries: HashMap::new(),
        }
    }

    fn usable(&self) -> bool {
        self.key != [0; 32]
    }

    fn mac(&self, name: &str, password: &str) -> Option<[u8; 64]> {
        let mut m = <Blake2bMac512 as KeyInit>::new_from_slice(&self.key).ok()?;
        m.update(name.as_bytes());
        m.update(&[0]);
        m.update(password.as_bytes());
        Some(m.finalize().into_bytes().into())
    }

    /// A remembered success for exactly this name, password and users file.
    fn hit(&self, users: &Arc<Users>, name: &str, mac: &[u8; 64], now: Instant) -> bool {
        match self.entries.get(name) {
            Some(e) => {
                e.expires > now
                    && Weak::ptr_eq(&e.users, &Arc::downgrade(users))
                    // Constant time: the comparison must not tell how much of a guess matched.
                    && e.mac.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
            None => false,
        }
    }

    fn remember(&mut self, users: &Arc<Users>, name: &str, mac: [u8; 64], now: Instant, ttl: Duration) {
        if self.entries.len() >= AUTH_CACHE_ENTRIES_MAX && !self.entries.contains_key(name) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= AUTH_CACHE_ENTRIES_MAX {
                if let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.made).map(|(k, _)| k.clone()) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(
            name.to_string(),
            Entry {
                users: Arc::downgrade(users),
                mac,
                made: now,
                expires: now + ttl,
            },
        );
    }
}

/// Handle to the password-checking thread.
#[derive(Clone)]
pub struct Verifier {
    tx: Sender<Request>,
}

impl Verifier {
    /// Start the thread (its 19 MiB is allocated only at the first check).
    pub fn start() -> std::io::Result<Verifier> {
        let (tx, rx) = bounded::<Request>(QUEUE_LEN);
        std::thread::Builder::new().name("poshta-auth".into()).spawn(move || {
            // One argon2 work area, reused while checks are queued (module doc).
            let mut memory = Vec::new();
            let mut cache = Cache::new();
            loop {
                if rx.is_empty() {
                    memory = Vec::new();
                }
                // A plain blocking wait: `smol::block_on` would make this thread one more
                // contender for the I/O reactor (async-io lets any block_on thread poll it),
                // and each return wakes async-io's fallback thread.
                let r = match rx.recv_blocking() {
                    Ok(r) => r,
                    Err(_) => break,
                };
                let now = Instant::now();
                let mac = if r.ttl.is_zero() || !cache.usable() {
                    None
                } else {
                    cache.mac(&r.name, &r.password)
                };
                let ok = match mac {
                    Some(m) if cache.hit(&r.users, &r.name, &m, now) => true,
                    _ => {
                        let ok = r.users.verify_with_memory(&r.name, &r.password, &mut memory);
                        if let (true, Some(m)) = (ok, mac) {
                            cache.remember(&r.users, &r.name, m, now, r.ttl);
                        }
                        ok
                    }
                };
                // The session may have gone away meanwhile; nobody to tell then.
                let _ = r.reply.try_send(ok);
            }
        })?;
        Ok(Verifier { tx })
    }

    /// Check `password` for `name` (constant cost for unknown names: see `Users::verify`),
    /// or find it among the successes of the last `ttl` (module doc).
    pub async fn verify(&self, users: Arc<Users>, name: String, password: String, ttl: Duration) -> bool {
        let (reply, answer) = bounded(1);
        if self
            .tx
            .send(Request {
                users,
                name,
                password,
                ttl,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        answer.recv().await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_on_the_thread() {
        let hash = crate::auth::users::hash_password("pw").expect("hash");
        let users = Arc::new(Users::parse(&format!("alice:{hash}\n"), std::path::Path::new("test")).expect("parse"));
        let v = Verifier::start().expect("thread");
        let no = Duration::ZERO;
        smol::block_on(async {
            assert!(v.verify(users.clone(), "alice".into(), "pw".into(), no).await);
            assert!(!v.verify(users.clone(), "alice".into(), "nope".into(), no).await);
            assert!(!v.verify(users, "bob".into(), "pw".into(), no).await);
        });
    }

    /// A cached success answers at once, but only for the same password and the same
    /// users file; wrong passwords are always checked in full and never cached.
    #[test]
    fn cache_remembers_successes_only() {
        let hash = crate::auth::users::hash_password("pw").expect("hash");
        let text = format!("alice:{hash}\n");
        let users = Arc::new(Users::parse(&text, std::path::Path::new("test")).expect("parse"));
        let v = Verifier::start().expect("thread");
        let ttl = Duration::from_secs(3600);
        smol::block_on(async {
            let t = Instant::now();
            assert!(v.verify(users.clone(), "alice".into(), "pw".into(), ttl).await);
            let full = t.elapsed();
            let t = Instant::now();
            assert!(v.verify(users.clone(), "alice".into(), "pw".into(), ttl).await);
            let cached = t.elapsed();
            assert!(cached * 5 < full, "cached {cached:?} vs full {full:?}");
            // Wrong password: full cost, refused, and the good entry still works.
            let t = Instant::now();
            assert!(!v.verify(users.clone(), "alice".into(), "pW".into(), ttl).await);
            assert!(t.elapsed() * 5 > full, "a wrong password must get the full check");
            assert!(!v.verify(users.clone(), "alice".into(), "".into(), ttl).await);
            // A reloaded users file (same text, new load) does not use old entries.
            let reloaded = Arc::new(Users::parse(&text, std::path::Path::new("test")).expect("parse"));
            let t = Instant::now();
            assert!(v.verify(reloaded.clone(), "alice".into(), "pw".into(), ttl).await);
            assert!(t.elapsed() * 5 > full, "a new users file must get the full check");
            // A changed password: the old one fails even though it was cached before.
            let other = crate::auth::users::hash_password("new").expect("hash");
            let changed =
                Arc::new(Users::parse(&format!("alice:{other}\n"), std::path::Path::new("t")).expect("parse"));
            assert!(!v.verify(changed.clone(), "alice".into(), "pw".into(), ttl).await);
            assert!(v.verify(changed, "alice".into(), "new".into(), ttl).await);
        });
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let users = Arc::new(Users::parse("", std::path::Path::new("t")).expect("parse"));
        let mut c = Cache::new();
        assert!(c.usable());
        let now = Instant::now();
        for i in 0..AUTH_CACHE_ENTRIES_MAX + 10 {
            let name = format!("u{i}");
            let mac = c.mac(&name, "pw").expect("mac");
            c.remember(
                &users,
                &name,
                mac,
                now + Duration::from_millis(i as u64),
                Duration::from_secs(60),
            );
        }
        assert_eq!(c.entries.len(), AUTH_CACHE_ENTRIES_MAX);
        assert!(!c.entries.contains_key("u0"), "the oldest goes first");
        let name = format!("u{}", AUTH_CACHE_ENTRIES_MAX + 9);
        let mac = c.mac(&name, "pw").expect("mac");
        assert!(c.hit(&users, &name, &mac, now));
        assert!(!c.hit(&users, &name, &mac, now + Duration::from_secs(3600)), "expired");
        assert_ne!(c.mac("a", "bc"), c.mac("ab", "c"), "name and password are separated");
    }

    /// The reused-memory check agrees with the argon2 crate's own verifier.
    #[test]
    fn same_answers_as_the_crate_verifier() {
        use argon2::password_hash::PasswordVerifier;
        let hash = crate::auth::users::hash_password("s3cret").expect("hash");
        let users = Users::parse(&format!("alice:{hash}\n"), std::path::Path::new("test")).expect("parse");
        let parsed = argon2::password_hash::phc::PasswordHash::new(&hash).expect("phc");
        let mut memory = Vec::new();
        for pw in ["s3cret", "s3cre", "", "S3CRET", "s3cret\0"] {
            let theirs = argon2::Argon2::default()
                .verify_password(pw.as_bytes(), &parsed)
                .is_ok();
            assert_eq!(users.verify_with_memory("alice", pw, &mut memory), theirs, "{pw:?}");
        }
        assert_eq!(
            memory.len(),
            19_456,
            "one block per KiB of m_cost, kept for the next check"
        );
    }
}
