//! The users file (users helper documents the format here).

use std::path::Path;

/// Mailbox users loaded from the users file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    _p: (),
}

/// A users-file problem: `file:line: message`.
#[derive(Debug)]
pub struct UsersError {
    pub message: String,
}

impl std::fmt::Display for UsersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsersError {}

impl Users {
    /// Load; a missing file is an empty set of users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let _ = path;
        todo!("users helper")
    }

    /// Lookup by (already lowercased) name.
    pub fn contains(&self, name: &str) -> bool {
        let _ = name;
        todo!()
    }

    /// Blocking and slow (argon2id): never call on the event loop; use smol::unblock.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let _ = (name, password);
        todo!()
    }
}
