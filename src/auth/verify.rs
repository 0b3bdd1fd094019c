//! Password checks on one dedicated thread.
//!
//! An argon2id verification with poshta's parameters allocates 19 MiB. Run on the general
//! thread pool, concurrent logins each allocated their own block, and glibc kept every
//! thread's block in that thread's arena: 50 concurrent AUTHs left the process at ~4 GiB
//! (bench/tls-submit.sh). One thread checking one password at a time bounds that memory to
//! one block, reused by the allocator, at the cost of queueing logins (~20 ms each here;
//! a burst of 50 waits about a second). The queue is bounded: sessions beyond it wait to
//! enqueue.

use std::sync::Arc;

use smol::channel::{bounded, Sender};

use super::users::Users;

/// How long the work area is kept after the last check.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Pending checks before `verify` callers wait to enqueue.
const QUEUE_LEN: usize = 64;

struct Request {
    users: Arc<Users>,
    name: String,
    password: String,
    reply: Sender<bool>,
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
            // One argon2 work area, reused while logins come, given back after a quiet
            // minute so an idle board is small again.
            let mut memory = Vec::new();
            loop {
                let next = smol::block_on(smol::future::or(async { Some(rx.recv().await) }, async {
                    smol::Timer::after(IDLE_RELEASE).await;
                    None
                }));
                let r = match next {
                    Some(Ok(r)) => r,
                    Some(Err(_)) => break,
                    None => {
                        memory = Vec::new();
                        continue;
                    }
                };
                let ok = r.users.verify_with_memory(&r.name, &r.password, &mut memory);
                // The session may have gone away meanwhile; nobody to tell then.
                let _ = r.reply.try_send(ok);
            }
        })?;
        Ok(Verifier { tx })
    }

    /// Check `password` for `name` (constant cost for unknown names: see `Users::verify`).
    pub async fn verify(&self, users: Arc<Users>, name: String, password: String) -> bool {
        let (reply, answer) = bounded(1);
        if self
            .tx
            .send(Request {
                users,
                name,
                password,
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
        smol::block_on(async {
            assert!(v.verify(users.clone(), "alice".into(), "pw".into()).await);
            assert!(!v.verify(users.clone(), "alice".into(), "nope".into()).await);
            assert!(!v.verify(users, "bob".into(), "pw".into()).await);
        });
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
