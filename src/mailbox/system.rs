//! A system user's mailbox for POP3: where it is and how it is opened.
//!
//! A system user is a users-file entry marked `system` (see [`crate::auth::users`]) whose
//! name is a passwd(5) entry. Their mailbox is, as Postfix's local(8) delivers it:
//!
//! - `home_mailbox` empty: the mbox `mail_spool_directory/USER` (Debian: `/var/mail/USER`);
//! - `home_mailbox` ending in `/`: the Maildir `HOME/home_mailbox`;
//! - otherwise: the mbox `HOME/home_mailbox`.
//!
//! `home_mailbox` must be relative and must not contain `..` (else: a system error, logged).
//! A mailbox that does not exist yet is an empty maildrop (nothing is created: delivery
//! creates it, with the right owner). A home Maildir must be a directory owned by the user
//! (it may be a symlink to one); an mbox anywhere must be a regular file with one link owned
//! by the user (below).
//!
//! # Who opens it
//!
//! Running as a normal user (no privilege separation), this process does ([`open_place`]).
//! Started as root, the daemon runs as mail_owner: the spool mbox is opened by the
//! privileged helper, which passes the descriptor (`OpenMbox`, below); anything in a home is
//! opened by a maildrop agent the helper starts as the user, with the same [`open_place`],
//! and the session talks to it ([`super::agent`], `OpenHome`): root never walks a home.
//!
//! # Opening an mbox: [`open_system_mbox`]
//!
//! The one place that turns a mailbox path into an open, locked descriptor. Today (the
//! daemon runs as one user) it opens the file itself: O_RDWR|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY,
//! refused unless a regular file with one link owned by the user's uid, then both locks of
//! [`crate::delivery::mbox`] (fcntl, then the dot-lock) through [`MboxLock::acquire`], waiting
//! at most [`limits::POP3_MBOX_LOCK_WAIT_MS`]; after locking, the path must still name the
//! file (else it is opened again). When poshta runs as root, the privileged helper does
//! exactly this as the user and hands over the descriptor, keeping the locks until told to
//! let go: that path returns the same `(File, Hold)` and slots in here.
//!
//! Errors: the locks still busy → [`MailboxError::InUse`] (`-ERR [IN-USE]`, RFC 2449 §8.1.1);
//! anything else → [`MailboxError::Io`] (`-ERR [SYS/TEMP]`, the cause logged).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;

use super::agent::{Place, RemoteDrop};
use super::mbox::MboxDrop;
use super::{Mailbox, MailboxError};
use crate::config::Settings;
use crate::delivery::mbox::{LockError, MboxLock};
use crate::limits;

/// Times the mailbox may be replaced between open and lock before giving up.
const REOPEN_ATTEMPTS_MAX: usize = 3;

/// Where a system user's mail is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Mbox(PathBuf),
    Maildir(PathBuf),
}

/// A system user's passwd entry, as far as mail needs it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn sys_error(path: impl Into<PathBuf>, why: impl Into<String>) -> MailboxError {
    MailboxError::io(path, std::io::Error::other(why.into()))
}

/// getpwnam(3).
pub fn account(user: &str) -> Result<Account, MailboxError> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }),
        Ok(None) => Err(sys_error(format!("passwd:{user}"), "system user has no passwd entry")),
        Err(e) => Err(MailboxError::io(format!("passwd:{user}"), std::io::Error::from(e))),
    }
}

/// The mailbox of `acct` (see the module doc).
pub fn locate(spool: &Path, home_mailbox: &str, acct: &Account) -> Result<Location, MailboxError> {
    if home_mailbox.is_empty() {
        return Ok(Location::Mbox(spool.join(&acct.name)));
    }
    let rel = Path::new(home_mailbox);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(sys_error(rel, "home_mailbox must be a relative path without '..'"));
    }
    let path = acct.home.join(rel);
    Ok(if home_mailbox.ends_with('/') {
        Location::Maildir(path)
    } else {
        Location::Mbox(path)
    })
}

/// Keeps a system mbox locked; dropping it lets go: the dot-lock removed and the fcntl
/// lock released, by this process or (running with privilege separation) by the
/// privileged helper, told off the event loop.
#[derive(Debug)]
pub enum Hold {
    Local(#[allow(dead_code)] MboxLock),
    Helper(crate::privsep::Handle),
}

thread_local! {
    /// Set by [`drop_blocking`]: this thread may wait for the helper.
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread may wait (see [`drop_blocking`]).
pub(crate) fn may_block() -> bool {
    MAY_BLOCK.with(|b| b.get())
}

/// Drop `v` (a mailbox and its [`Hold`]) on a thread that may block, so that a helper-held
/// mailbox is released before this returns: a POP3 session calls it off the event loop
/// before it answers QUIT, and the next session (or mail(1)) finds the mailbox free.
pub fn drop_blocking<T>(v: T) {
    MAY_BLOCK.with(|b| b.set(true));
    drop(v);
    MAY_BLOCK.with(|b| b.set(false));
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Hold::Helper(handle) = *self {
            if let Some(c) = crate::privsep::client() {
                let close = move || {
                    if let Err(e) = c.close_mbox(handle) {
                        crate::mlog!("pop3d", "warning: delivery helper: close mailbox: {e}");
                    }
                };
                if may_block() {
                    close();
                } else {
                    // Dropped on the event loop (a session that ended abruptly): the blocking
                    // call to the helper goes to the thread pool.
                    smol::unblock(close).detach();
                }
            }
        }
    }
}

/// Open and lock the mbox at `path` owned by `uid` (see the module doc). `Ok(None)`: there
/// is no mailbox yet.
pub fn open_system_mbox(path: &Path, uid: u32) -> Result<Option<(File, Hold)>, MailboxError> {
    let deadline = Instant::now() + Duration::from_millis(limits::POP3_MBOX_LOCK_WAIT_MS);
    for _ in 0..REOPEN_ATTEMPTS_MAX {
        let mut missing = false;
        let lock = MboxLock::acquire(path, deadline, || match open_checked(path, uid) {
            Ok(f) => Ok(f),
            Err(Errno::NOENT) => {
                missing = true;
                Err("no mailbox".into())
            }
            Err(e) => Err(describe(e)),
        });
        let lock = match lock {
            Ok(l) => l,
            Err(_) if missing => return Ok(None),
            // RFC 1939 §8: another session, mail(1) or a delivery has it.
            Err(LockError::Timeout(_)) => return Err(MailboxError::InUse),
            Err(LockError::Io(why)) | Err(LockError::Open(why)) => return Err(sys_error(path, why)),
        };
        // Replaced while we waited for the locks (a rewrite by rename): open it again.
        let same = match (std::fs::symlink_metadata(path), lock.file().metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            continue;
        }
        let file = lock.file().try_clone().map_err(|e| MailboxError::io(path, e))?;
        return Ok(Some((file, Hold::Local(lock))));
    }
    Err(sys_error(path, "the mailbox kept being replaced"))
}

fn describe(e: Errno) -> String {
    match e {
        Errno::LOOP => "refused: is a symbolic link".into(),
        Errno::NXIO => "refused: not a regular file (FIFO or device)".into(),
        Errno::PERM => "refused: has more than one hard link or another owner than the user".into(),
        e => format!("open: {e}"),
    }
}

/// Open without following a link or blocking, then check type, links and owner.
fn open_checked(path: &Path, uid: u32) -> Result<File, Errno> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, path, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Errno::NXIO);
    }
    // A hard link could make another user's file look like this user's mailbox.
    if st.st_nlink != 1 || st.st_uid != uid {
        return Err(Errno::PERM);
    }
    Ok(File::from(fd))
}

/// Open the mailbox at `place`, which belongs to `uid`, in this process and with its rights:
/// the daemon running as a normal user, or the user's own maildrop agent ([`super::agent`]).
/// A Maildir that does not exist yet is an empty maildrop (nothing is created in a home);
/// one that is not a directory owned by `uid` is refused (a Maildir symlinked to another
/// user's directory would serve that user's mail to this one).
pub fn open_place(place: &Place, uid: u32) -> Result<Mailbox, MailboxError> {
    match place {
        Place::Maildir(dir) => {
            if std::fs::symlink_metadata(dir).is_err() {
                return Ok(Mailbox::Mbox(MboxDrop::empty(dir)));
            }
            // The Maildir path itself may be a symlink (an admin's choice): its target must
            // still be the user's.
            let meta = std::fs::metadata(dir).map_err(|e| MailboxError::io(dir, e))?;
            if !meta.is_dir() {
                return Err(sys_error(dir, "refused: the Maildir is not a directory"));
            }
            if meta.uid() != uid {
                return Err(sys_error(
                    dir,
                    format!(
                        "refused: the Maildir belongs to uid {}, not to the user (uid {uid})",
                        meta.uid()
                    ),
                ));
            }
            Mailbox::open_maildir(dir)
        }
        Place::Mbox(path) => match open_system_mbox(path, uid)? {
            None => Ok(Mailbox::Mbox(MboxDrop::empty(path))),
            Some((file, hold)) => MboxDrop::open(file, path, Some(Box::new(hold))).map(Mailbox::Mbox),
        },
    }
}

/// Open `user`'s system mailbox as a POP3 maildrop (see the module doc).
pub fn open_system_mailbox(settings: &Settings, user: &str) -> Result<Mailbox, MailboxError> {
    let acct = account(user)?;
    let location = locate(&settings.mail_spool_directory, &settings.home_mailbox, &acct)?;
    let place = match location {
        Location::Maildir(dir) => Place::Maildir(dir),
        Location::Mbox(path) => Place::Mbox(path),
    };
    let Some(c) = crate::privsep::client() else {
        return open_place(&place, acct.uid);
    };
    // Running with privilege separation (started as root): only the helper may open another
    // user's mailbox.
    match place {
        // The spool mbox: the helper does the checks and locking of open_system_mbox as root
        // and passes the descriptor (crate::privsep).
        Place::Mbox(path) if settings.home_mailbox.is_empty() => match c.open_mbox(&acct.name) {
            Ok((file, handle)) => MboxDrop::open(file, &path, Some(Box::new(Hold::Helper(handle)))).map(Mailbox::Mbox),
            // RFC 1939 §8: another session, mail(1) or a delivery has it.
            Err(why) if why.contains("locked") => Err(MailboxError::InUse),
            Err(why) => Err(sys_error(&path, why)),
        },
        // Anything in a home: root never walks it and mail_owner cannot enter it; the helper
        // starts an agent as the user, which opens it with open_place (super::agent).
        Place::Maildir(path) | Place::Mbox(path) => {
            let sock = c.open_home(&acct.name).map_err(|why| sys_error(&path, why))?;
            RemoteDrop::connect(sock, &path).map(Mailbox::Agent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        Account {
            name: "nick".into(),
            uid: 1000,
            gid: 1000,
            home: PathBuf::from("/home/nick"),
        }
    }

    #[test]
    fn locations_follow_postfix_local() {
        let spool = Path::new("/var/mail");
        assert_eq!(
            locate(spool, "", &acct()).unwrap(),
            Location::Mbox(PathBuf::from("/var/mail/nick"))
        );
        assert_eq!(
            locate(spool, "Maildir/", &acct()).unwrap(),
            Location::Maildir(PathBuf::from("/home/nick/Maildir/"))
        );
        assert_eq!(
            locate(spool, "mail/inbox", &acct()).unwrap(),
            Location::Mbox(PathBuf::from("/home/nick/mail/inbox"))
        );
        for bad in ["/etc/passwd", "../x", "a/../../b"] {
            assert!(locate(spool, bad, &acct()).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_user_is_a_system_error() {
        match account("no-such-user-poshta-x") {
            Err(MailboxError::Io { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(account("root").unwrap().uid, 0);
    }
}
