//! Recipient classification.
//!
//! `classify(addr)` decides where a recipient goes, as Postfix's trivial-rewrite and
//! local(8) would for poshta's address class (mydestination + aliases + mailbox users +
//! system users):
//!
//! 1. Split at the **last** `@` (a quoted local part may contain `@`). No `@` at all: only
//!    the bare `postmaster` is accepted, looked up as the local name `postmaster` (RFC 5321
//!    §4.5.1 requires `RCPT TO:<Postmaster>` without a domain, case-insensitively). Any other
//!    address without a domain is `UnknownLocal`: rejected, never relayed.
//! 2. The domain is lowercased and one trailing `.` removed, then compared with
//!    mydestination exactly: no implicit subdomains (as Postfix's mydestination). A domain
//!    literal such as `[127.0.0.1]` is local only if mydestination lists it in that form
//!    (Postfix would also match the server's own addresses; poshta does not). Not local:
//!    `Remote`. An empty domain (`alice@`) is `UnknownLocal`.
//! 3. The local part: a quoted string (`"alice"`) is unquoted (RFC 5321 §4.1.2
//!    quoted-pair `\x` gives `x`), then lowercased.
//! 4. Look-up order (Postfix: aliases first, then local users), each step trying the whole
//!    local part first and then, if recipient_delimiter is set, the part before the first
//!    delimiter character (every character of recipient_delimiter is a delimiter, as in
//!    Postfix ≥ 2.11), unless that part would be empty: `alice+tag` → `alice`.
//!    1. **aliases** (alias_maps): `Alias { name }`;
//!    2. **mailbox users** (the users file; [`Router::is_mailbox_user`] is the one place
//!       that decides): `Local { user }`, delivered to a Maildir under virtual_mailbox_base;
//!    3. **system users** (getpwnam, any passwd entry, as Postfix's local(8): no uid or
//!       shell filter): `System { user }`, delivered to mail_spool_directory/USER (mbox) or
//!       home_mailbox. Only names of `[a-z0-9_.-]`, 1..=32 bytes, not starting with `-` or
//!       `.`, are looked up. Started as a normal user, poshta can only write as itself, so
//!       only the passwd entry of its own uid counts (any other system user is unknown);
//!    4. else `UnknownLocal` (550 5.1.1 at RCPT time).
//!
//! Hostile forms stay local-and-unknown, never `Remote`: `alice%other@example.org` is the
//! (non-existent) user `alice%other` (no `%`-hack relaying: RFC 5321 §3.6.1 and
//! Appendix C leave source routing to the server's discretion, and poshta declines), and
//! `"alice@x"@example.org` is the user `alice@x`.

use std::cell::RefCell;
use std::sync::Arc;

use super::aliases::Aliases;
use super::RcptClass;
use crate::auth::users::Users;

/// Which passwd entries are local recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemUsers {
    /// None (unit tests; a router without system users).
    Off,
    /// Every passwd entry (running as root: the delivery helper writes as each user).
    All,
    /// Only the entry with this uid (running as a normal user: poshta can write only as
    /// itself).
    OnlyUid(u32),
}

/// Classifies recipient addresses against mydestination, the aliases, the mailbox users
/// and the system users.
#[derive(Debug, Clone)]
pub struct Router {
    mydestination: Vec<String>,
    recipient_delimiter: String,
    users: Users,
    /// The alias table in use (replaced when the files change; see `Policy::refresh_aliases`).
    aliases: RefCell<Arc<Aliases>>,
    system_users: SystemUsers,
}

/// A name worth asking getpwnam about (also what the delivery helper accepts).
pub fn valid_system_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// The passwd entry of `name`, if it is a valid name with one (blocking NSS lookup: files
/// on the boards poshta is for).
pub fn system_user(name: &str) -> Option<nix::unistd::User> {
    if !valid_system_name(name) {
        return None;
    }
    nix::unistd::User::from_name(name).ok().flatten()
}

/// Lowercase and drop one trailing dot (an absolute domain name is the same domain).
fn normalize_domain(domain: &str) -> String {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.to_ascii_lowercase()
}

/// RFC 5321 §4.1.2: Quoted-string = DQUOTE *QcontentSMTP DQUOTE, quoted-pair = `\` char.
fn unquote(local: &str) -> String {
    match local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => local.to_string(),
    }
}

impl Router {
    /// `mydestination`: lowercased domains; `recipient_delimiter`: "" or e.g. "+".
    pub fn new(mydestination: Vec<String>, recipient_delimiter: String, users: Users) -> Router {
        let mydestination = mydestination
            .iter()
            .map(|d| normalize_domain(d.trim()))
            .filter(|d| !d.is_empty())
            .collect();
        Router {
            mydestination,
            recipient_delimiter,
            users,
            aliases: RefCell::new(Arc::new(Aliases::default())),
            system_users: SystemUsers::Off,
        }
    }

    /// With this alias table.
    pub fn with_aliases(self, aliases: Arc<Aliases>) -> Router {
        *self.aliases.borrow_mut() = aliases;
        self
    }

    /// With these system users.
    pub fn with_system_users(mut self, system_users: SystemUsers) -> Router {
        self.system_users = system_users;
        self
    }

    /// Replace the alias table (a changed file was reloaded).
    pub fn set_aliases(&self, aliases: Arc<Aliases>) {
        *self.aliases.borrow_mut() = aliases;
    }

    /// The alias table in use.
    pub fn aliases(&self) -> Arc<Aliases> {
        self.aliases.borrow().clone()
    }

    /// Is `name` a mailbox user (Maildir delivery)? The one place that decides it.
    /// A users-file entry marked `system` is only a password for a system user (POP3,
    /// SMTP AUTH): that user's mail goes to the system mailbox, not to a Maildir.
    pub fn is_mailbox_user(&self, name: &str) -> bool {
        self.users.contains(name) && !self.users.is_system(name)
    }

    /// Is `name` a system user poshta delivers to (see [`SystemUsers`])?
    pub fn is_system_user(&self, name: &str) -> bool {
        match self.system_users {
            SystemUsers::Off => false,
            SystemUsers::All => system_user(name).is_some(),
            SystemUsers::OnlyUid(uid) => system_user(name).is_some_and(|u| u.uid.as_raw() == uid),
        }
    }

    /// The part of `local` before the first recipient_delimiter character, if there is
    /// one and it is not empty.
    fn base<'a>(&self, local: &'a str) -> Option<&'a str> {
        if self.recipient_delimiter.is_empty() {
            return None;
        }
        let i = local.find(|c| self.recipient_delimiter.contains(c))?;
        // Postfix does not strip to an empty name (`+tag` stays `+tag`).
        Some(&local[..i]).filter(|b| !b.is_empty())
    }

    /// A local name that is no alias (an alias expansion's final target): a mailbox user,
    /// a system user, or `UnknownLocal`.
    pub fn user_class(&self, local: &str) -> RcptClass {
        let local = local.to_lowercase();
        let names = [Some(local.as_str()), self.base(&local)];
        for n in names.iter().flatten() {
            if self.is_mailbox_user(n) {
                return RcptClass::Local { user: n.to_string() };
            }
        }
        for n in names.iter().flatten() {
            if self.is_system_user(n) {
                return RcptClass::System { user: n.to_string() };
            }
        }
        RcptClass::UnknownLocal
    }

    /// The users this router knows.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// `addr` is `local@domain` or the bare `postmaster`.
    pub fn classify(&self, addr: &str) -> RcptClass {
        let Some((local, domain)) = addr.rsplit_once('@') else {
            // RFC 5321 §4.5.1: "Postmaster" without a domain, case-insensitive.
            return if unquote(addr).eq_ignore_ascii_case("postmaster") {
                self.lookup("postmaster")
            } else {
                RcptClass::UnknownLocal
            };
        };
        if domain.is_empty() {
            return RcptClass::UnknownLocal;
        }
        if !self.is_local_domain(domain) {
            return RcptClass::Remote;
        }
        let local = unquote(local).to_lowercase();
        self.lookup(&local)
    }

    fn lookup(&self, local: &str) -> RcptClass {
        let aliases = self.aliases.borrow();
        for n in [Some(local), self.base(local)].into_iter().flatten() {
            if aliases.contains(n) {
                return RcptClass::Alias { name: n.to_string() };
            }
        }
        drop(aliases);
        self.user_class(local)
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = normalize_domain(domain);
        self.mydestination.contains(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    // Users::parse checks hashes; a cheap valid argon2id string is enough here.
    const H: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA";

    fn router(delim: &str) -> Router {
        let text = format!("alice:{H}\npostmaster:{H}\nmary-jane:{H}\nmary:{H}\n");
        let users = Users::parse(&text, Path::new("users")).unwrap();
        Router::new(
            vec!["example.org".into(), "Mail.Example.ORG.".into(), "[192.0.2.1]".into()],
            delim.into(),
            users,
        )
    }

    fn local(u: &str) -> RcptClass {
        RcptClass::Local { user: u.into() }
    }

    #[test]
    fn basics() {
        let r = router("+");
        assert_eq!(r.classify("alice@example.org"), local("alice"));
        assert_eq!(r.classify("ALICE@EXAMPLE.ORG"), local("alice"));
        assert_eq!(r.classify("alice@example.org."), local("alice"));
        assert_eq!(r.classify("alice@mail.example.org"), local("alice"));
        assert_eq!(r.classify("bob@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("alice@example.com"), RcptClass::Remote);
        // No implicit subdomains.
        assert_eq!(r.classify("alice@sub.example.org"), RcptClass::Remote);
        assert_eq!(r.classify("alice@org"), RcptClass::Remote);
        assert!(r.is_local_domain("EXAMPLE.org."));
        assert!(!r.is_local_domain("example.org.."));
        assert!(!r.is_local_domain(""));
    }

    #[test]
    fn postmaster() {
        let r = router("");
        assert_eq!(r.classify("postmaster"), local("postmaster"));
        assert_eq!(r.classify("PostMaster"), local("postmaster"));
        assert_eq!(r.classify("postmaster@example.org"), local("postmaster"));
        assert_eq!(r.classify("alice"), RcptClass::UnknownLocal);
        assert_eq!(r.classify(""), RcptClass::UnknownLocal);
        let no_pm = Router::new(vec!["example.org".into()], String::new(), Users::default());
        assert_eq!(no_pm.classify("postmaster"), RcptClass::UnknownLocal);
    }

    #[test]
    fn recipient_delimiter() {
        let r = router("+");
        assert_eq!(r.classify("alice+tag@example.org"), local("alice"));
        assert_eq!(r.classify("Alice+Tag+More@example.org"), local("alice"));
        assert_eq!(r.classify("+alice@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("bob+tag@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("alice-tag@example.org"), RcptClass::UnknownLocal);
        // Several delimiter characters; the whole name is tried first.
        let r = router("+-");
        assert_eq!(r.classify("alice-tag@example.org"), local("alice"));
        assert_eq!(r.classify("alice+tag@example.org"), local("alice"));
        assert_eq!(r.classify("mary-jane@example.org"), local("mary-jane"));
        assert_eq!(r.classify("mary-ann@example.org"), local("mary"));
        // No delimiter configured: no stripping.
        let r = router("");
        assert_eq!(r.classify("alice+tag@example.org"), RcptClass::UnknownLocal);
    }

    #[test]
    fn quoted_local_parts() {
        let r = router("+");
        assert_eq!(r.classify("\"alice\"@example.org"), local("alice"));
        assert_eq!(r.classify("\"Al\\ice\"@example.org"), local("alice"));
        assert_eq!(r.classify("\"alice@x\"@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("\"alice@example.com\"@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("\"alice\"@example.com"), RcptClass::Remote);
        assert_eq!(r.classify("\"\"@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("\"@example.org"), RcptClass::UnknownLocal);
    }

    #[test]
    fn hostile_forms_are_never_remote() {
        let r = router("+");
        for a in [
            "alice%other@example.org",
            "alice%other.example.com@example.org",
            "@other.example.com:alice@example.org",
            "alice!other@example.org",
            "other.example.com!alice@example.org",
            "alice@",
            "alice@example.org@",
            "../alice@example.org",
            "alice/../../etc@example.org",
            "alice\0@example.org",
            "alice@@example.org",
            ".alice@example.org",
        ] {
            assert_eq!(r.classify(a), RcptClass::UnknownLocal, "{a:?}");
        }
        // The last '@' decides the domain.
        assert_eq!(r.classify("alice@example.org@example.com"), RcptClass::Remote);
        assert_eq!(r.classify("alice@example.com@example.org"), RcptClass::UnknownLocal);
    }

    #[test]
    fn domain_literals() {
        let r = router("+");
        assert_eq!(r.classify("alice@[192.0.2.1]"), local("alice"));
        assert_eq!(r.classify("alice@[127.0.0.1]"), RcptClass::Remote);
        assert_eq!(r.classify("alice@[IPv6:::1]"), RcptClass::Remote);
    }

    #[test]
    fn lookup_order_aliases_then_mailbox_users_then_system_users() {
        let (a, _) = Aliases::parse(Path::new("aliases"), b"alice: bob@example.com\nsupport: alice\n").unwrap();
        let r = router("+").with_aliases(Arc::new(a));
        // An alias wins over a mailbox user of the same name (Postfix: aliases first).
        assert_eq!(
            r.classify("alice@example.org"),
            RcptClass::Alias { name: "alice".into() }
        );
        assert_eq!(
            r.classify("Support+x@example.org"),
            RcptClass::Alias { name: "support".into() }
        );
        assert_eq!(r.classify("mary@example.org"), local("mary"));
        assert_eq!(r.user_class("alice"), local("alice"));
        // Off: no passwd lookups at all.
        assert_eq!(r.classify("root@example.org"), RcptClass::UnknownLocal);
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap();
        if valid_system_name(&me.name) && !r.is_mailbox_user(&me.name) {
            let sys = router("+").with_system_users(SystemUsers::OnlyUid(me.uid.as_raw()));
            let addr = format!("{}@example.org", me.name);
            assert_eq!(sys.classify(&addr), RcptClass::System { user: me.name.clone() });
            let other = router("+").with_system_users(SystemUsers::OnlyUid(me.uid.as_raw() + 1));
            assert_eq!(other.classify(&addr), RcptClass::UnknownLocal);
        }
        for bad in ["", "-x", ".x", "a/b", "A", "a b", &"x".repeat(33)] {
            assert!(!valid_system_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn unicode_local_part_does_not_panic() {
        let r = router("+");
        assert_eq!(r.classify("ÄLICE+tag@example.org"), RcptClass::UnknownLocal);
        assert_eq!(r.classify("ß+ü@EXAMPLE.ORG"), RcptClass::UnknownLocal);
    }
}
