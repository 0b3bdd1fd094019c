//! A scratch-directory guard shared by the integration tests, each of which includes it with
//! `#[path = "common/tempdir.rs"] mod tempdir;`, and by the unit tests (src/testutil.rs
//! includes this file the same way).

#![allow(dead_code)] // each test file uses a different part

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch directory under the system temp dir, removed when the guard drops: at the end of
/// the test whether it passes or panics (unwinding runs `Drop`). Only a killed test process
/// leaves it behind.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `temp_dir()/name`, emptied of an earlier run's leftovers and created. The name must be
    /// unique per process (callers put the pid in it) so parallel test runs do not collide.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the test directory");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
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
