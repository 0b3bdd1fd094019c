//! `poshta install --links [--force] [--root DIR]`: put poshta in place of the system MTA's
//! commands, as symbolic links to the poshta binary (one binary, several names: `argv[0]`
//! picks the program):
//!
//! ```text
//! /usr/sbin/sendmail   -> poshta     (LSB: the path every program calls)
//! /usr/bin/mailq       -> poshta
//! /usr/bin/newaliases  -> poshta
//! ```
//!
//! `postmap` gets no link: /usr/sbin/postmap is Postfix's, no local program needs it, and
//! `poshta postmap` does the job.
//!
//! - A path that already is a link to this binary is left alone.
//! - Any other file there (another MTA's sendmail) is refused, and nothing is changed,
//!   unless `--force`: then the old file is kept as `PATH.poshta-orig` (when no such
//!   backup exists yet) and the link takes its place with an atomic rename.
//! - `--root DIR` installs under DIR instead of / (for tests and image builds); the links
//!   still point at the binary's real path.
//!
//! The refusal says how to keep the other MTA's package intact instead: remove it, or
//! let dpkg divert its files, or register poshta with update-alternatives.

use std::path::{Path, PathBuf};

/// The links made, relative to the root.
pub const LINKS: &[&str] = &["usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases"];

pub fn run(args: super::InstallArgs) -> i32 {
    if !args.links {
        eprintln!("poshta: fatal: nothing to install: use `poshta install --links [--force] [--root DIR]`");
        return 64;
    }
    let bin = match std::env::current_exe().and_then(|p| p.canonicalize()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("poshta: fatal: cannot find the poshta binary: {e}");
            return 1;
        }
    };
    let root = args.root.unwrap_or_else(|| PathBuf::from("/"));
    match install_links(&bin, &root, args.force) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Whether `path` is already a link to `bin`.
fn links_to(path: &Path, bin: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && path.canonicalize().is_ok_and(|t| t == bin)
}

/// Make the links; returns what was done, or why nothing was.
pub fn install_links(bin: &Path, root: &Path, force: bool) -> Result<Vec<String>, String> {
    let paths: Vec<PathBuf> = LINKS.iter().map(|l| root.join(l)).collect();
    let foreign: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok() && !links_to(p, bin))
        .collect();
    if !foreign.is_empty() && !force {
        let list: Vec<String> = foreign.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "poshta: fatal: {} already exist and are not poshta (another MTA's commands?); nothing was changed.\n\
             Either remove that MTA (apt-get remove postfix / exim4-daemon-light ...), or keep its package and\n\
             divert its files first:\n\
             \x20   dpkg-divert --local --rename --add /usr/sbin/sendmail   (and /usr/bin/mailq, /usr/bin/newaliases)\n\
             or register poshta as an alternative instead of these links:\n\
             \x20   update-alternatives --install /usr/sbin/sendmail sendmail {bin} 50 \\\n\
             \x20       --slave /usr/bin/mailq mailq {bin} --slave /usr/bin/newaliases newaliases {bin}\n\
             or replace them anyway (the old files are kept as *.poshta-orig): poshta install --links --force",
            list.join(", "),
            bin = bin.display()
        ));
    }
    let mut done = Vec::new();
    for p in &paths {
        if links_to(p, bin) {
            done.push(format!("{}: already a link to {}", p.display(), bin.display()));
            continue;
        }
        let parent = p
            .parent()
            .ok_or_else(|| format!("poshta: fatal: {}: no parent directory", p.display()))?;
        std::fs::create_dir_all(parent).map_err(|e| format!("poshta: fatal: create {}: {e}", parent.display()))?;
        let exists = std::fs::symlink_metadata(p).is_ok();
        if exists {
            let backup = PathBuf::from(format!("{}.poshta-orig", p.display()));
            if std::fs::symlink_metadata(&backup).is_err() {
                // A hard link keeps the old file while the rename below replaces the name.
                if let Err(e) = std::fs::hard_link(p, &backup) {
                    return Err(format!(
                        "poshta: fatal: keep {} as {}: {e}",
                        p.display(),
                        backup.display()
                    ));
                }
                done.push(format!("{}: kept the old file as {}", p.display(), backup.display()));
            }
        }
        // Make the link under a temporary name, then rename it over the path (atomic: the
        // path never goes missing for programs calling it meanwhile).
        let tmp = PathBuf::from(format!("{}.poshta-new", p.display()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(bin, &tmp).map_err(|e| format!("poshta: fatal: link {}: {e}", tmp.display()))?;
        if let Err(e) = std::fs::rename(&tmp, p) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "poshta: fatal: rename {} to {}: {e}",
                tmp.display(),
                p.display()
            ));
        }
        done.push(format!("{} -> {}", p.display(), bin.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_then_forces() {
        let root = crate::testutil::TempDir::new(&format!("poshta-install-{}", std::process::id()));
        let bin = root.join("bin/poshta");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, b"#!/bin/true\n").unwrap();
        let bin = bin.canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::write(root.join("usr/sbin/sendmail"), b"other MTA").unwrap();
        let err = install_links(&bin, &root, false).unwrap_err();
        assert!(err.contains("update-alternatives"), "{err}");
        assert!(!root.join("usr/bin/mailq").exists(), "nothing changed on refusal");
        install_links(&bin, &root, true).unwrap();
        for l in LINKS {
            assert!(links_to(&root.join(l), &bin), "{l}");
        }
        assert_eq!(
            std::fs::read(root.join("usr/sbin/sendmail.poshta-orig")).unwrap(),
            b"other MTA"
        );
        // Again: nothing to do, no error without --force.
        let again = install_links(&bin, &root, false).unwrap();
        assert!(again.iter().all(|l| l.contains("already")));
    }
}
