//! Helpers shared by the unit tests (compiled only with `cfg(test)`).
//!
//! The scratch-directory guard is tests/common/tempdir.rs, included here so unit tests and
//! integration tests (which cannot see this crate-private module) use one copy.

#[path = "../tests/common/tempdir.rs"]
mod tempdir;
pub(crate) use tempdir::TempDir;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
