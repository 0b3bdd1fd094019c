//! Helpers shared by the unit tests (compiled only with `cfg(test)`).
//!
//! Integration tests under tests/ cannot see this module; they share tests/common/tempdir.rs,
//! the same guard.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch directory under the system temp dir, removed when the guard drops: at the end of
/// the test whether it passes or panics (unwinding runs `Drop`). Only a killed test process
/// leaves it behind.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// `temp_dir()/name`, emptied of an earlier run's leftovers and created. The name must be
    /// unique per process (callers put the pid in it) so parallel test runs do not collide.
    pub(crate) fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the test directory");
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            // A test may leave a directory without read/write/search permission, which stops
            // removal for a non-root user: give them back and try once more.
            make_removable(&self.0, 0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Owner rwx on `dir` and every directory below it. Symbolic links are not followed (the
/// entry's own type is checked), so nothing outside the tree is touched; depth is bounded.
fn make_removable(dir: &Path, depth: u32) {
    if depth > 32 {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&e.path(), depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removed on a normal drop, after a panic, and when the test made a subdirectory unreadable.
    #[test]
    fn removed_on_drop_and_on_panic() {
        let name = format!("poshta-testutil-{}", std::process::id());
        let d = TempDir::new(&name);
        let locked = d.join("a").join("b");
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::write(locked.join("f"), b"x").unwrap();
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());

        let name2 = format!("{name}-panic");
        let r = std::panic::catch_unwind(|| {
            let d = TempDir::new(&name2);
            std::fs::write(d.join("f"), b"x").unwrap();
            panic!("test failure");
        });
        assert!(r.is_err());
        assert!(!std::env::temp_dir().join(&name2).exists());
    }
}
