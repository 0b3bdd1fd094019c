//! Envelope addresses: the paths of MAIL FROM and RCPT TO (RFC 5321 §4.1.2), with the
//! UTF-8 extension of RFC 6531 §3.3.
//!
//! Grammar accepted (RFC 5321 §4.1.2, §4.1.3):
//! ```text
//! Path           = "<" [ A-d-l ":" ] Mailbox ">"      ; the source route A-d-l is dropped
//! A-d-l          = At-domain *( "," At-domain )       ; RFC 5321 §4.1.1.3, §C
//! At-domain      = "@" Domain
//! Mailbox        = Local-part "@" ( Domain / address-literal )
//! Local-part     = Dot-string / Quoted-string
//! Dot-string     = Atom *( "." Atom )                 ; atext, plus UTF-8 with SMTPUTF8
//! Quoted-string  = DQUOTE *( qtextSMTP / "\" %d32-126 ) DQUOTE
//! Domain         = sub-domain *( "." sub-domain )     ; letters, digits, "-", also "_"
//! address-literal = "[" IPv4 "]" / "[IPv6:" IPv6 "]"
//! ```
//! Choices, documented because they differ from a literal reading of the RFC:
//! - A path without angle brackets (`MAIL FROM:a@b`) is accepted, as Postfix does
//!   (`strict_rfc821_envelopes = no`): printers and scanners send it.
//! - The reverse path may be a bare local part (`<root>`), as Postfix accepts; the caller
//!   qualifies it. The forward path needs a domain, except `<postmaster>`
//!   (RFC 5321 §4.5.1), returned as `postmaster`. `sendmail -bs` alone also takes a bare
//!   local part in RCPT ([`parse_forward_path_or_local`]); the caller qualifies it.
//! - A quoted local part whose content is a plain dot-string is unquoted (`"ab"@c` is
//!   `ab@c`, RFC 5321 §4.1.2 "SHOULD NOT quote unless necessary").
//! - Underscores are allowed in domain labels (internal host names use them).
//! - General address literals (`[tag:...]`) are refused: nothing here can deliver to them.
//! - Non-ASCII in an address without SMTPUTF8 is [`AddrError::NonAscii`] (the caller
//!   answers 553 5.6.7, RFC 6531 §3.5).
//! - Limits: path 256 octets with brackets, local part 64, domain 255
//!   (RFC 5321 §4.5.3.1); over them is [`AddrError::TooLong`].

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::limits::{SMTP_DOMAIN_BYTES_MAX, SMTP_LOCAL_PART_BYTES_MAX, SMTP_PATH_BYTES_MAX};

/// Why a path was refused. The caller maps it to a reply; the variant is the logged cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    Syntax,
    TooLong,
    /// Non-ASCII without the SMTPUTF8 parameter.
    NonAscii,
}

/// Split the argument after `FROM:` / `TO:` into the path and the parameters.
/// The path is either `<...>` (a `>` inside a quoted local part does not close it) or,
/// without brackets, the text up to the first space. Returns None when a `<` is not
/// closed or the path is followed by something other than a space.
pub fn split_path(arg: &str) -> Option<(&str, &str)> {
    let bytes = arg.as_bytes();
    if bytes.first() == Some(&b'<') {
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'>' if !quoted => {
                    let rest = &arg[i + 1..];
                    return if rest.is_empty() || rest.starts_with([' ', '\t']) {
                        Some((&arg[..=i], rest.trim_start_matches([' ', '\t'])))
                    } else {
                        None
                    };
                }
                _ => {}
            }
        }
        None
    } else {
        match arg.find([' ', '\t']) {
            Some(i) => Some((&arg[..i], arg[i..].trim_start_matches([' ', '\t']))),
            None => Some((arg, "")),
        }
    }
}

/// A MAIL FROM path: `Ok("")` for the null path `<>` (RFC 5321 §4.5.5).
pub fn parse_reverse_path(path: &str, smtputf8: bool) -> Result<String, AddrError> {
    parse_path(path, smtputf8, Role::Reverse)
}

/// A RCPT TO path: `local@domain` or `postmaster`.
pub fn parse_forward_path(path: &str, smtputf8: bool) -> Result<String, AddrError> {
    parse_path(path, smtputf8, Role::Forward)
}

/// A RCPT TO path for a local submitter (`sendmail -bs`): as [`parse_forward_path`], and a
/// bare local part (`<nick>`, also `<postmaster>`) is returned as written, for the caller to
/// qualify with myorigin as Postfix's cleanup does (append_at_myorigin).
pub fn parse_forward_path_or_local(path: &str, smtputf8: bool) -> Result<String, AddrError> {
    parse_path(path, smtputf8, Role::ForwardOrLocal)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Reverse,
    Forward,
    ForwardOrLocal,
}

fn parse_path(path: &str, utf8: bool, role: Role) -> Result<String, AddrError> {
    let bracketed = path.starts_with('<');
    // RFC 5321 §4.5.3.1.3: 256 octets including the punctuation.
    let wire_len = if bracketed { path.len() } else { path.len() + 2 };
    if wire_len > SMTP_PATH_BYTES_MAX {
        return Err(AddrError::TooLong);
    }
    let inner = if bracketed {
        path.strip_prefix('<')
            .and_then(|p| p.strip_suffix('>'))
            .ok_or(AddrError::Syntax)?
    } else {
        if path.contains(['<', '>']) {
            return Err(AddrError::Syntax);
        }
        path
    };
    if !utf8 && !inner.is_ascii() {
        // RFC 6531 §3.5: non-ASCII only after SMTPUTF8.
        return Err(AddrError::NonAscii);
    }
    if inner.is_empty() {
        // RFC 5321 §4.5.5: the null reverse path; never a recipient.
        return if role == Role::Reverse && bracketed {
            Ok(String::new())
        } else {
            Err(AddrError::Syntax)
        };
    }
    let mailbox = strip_source_route(inner, utf8)?;
    let (local, domain) = split_mailbox(mailbox)?;
    let local = check_local_part(local, utf8)?;
    match domain {
        Some(d) => {
            // A trailing dot (the DNS root: `user@example.org.`) is not RFC 5321 syntax, but
            // mail programs send it and Postfix strips it; so do we, so that the address is
            // judged for what it names (a local domain stays local, a remote one needs relay
            // permission) rather than refused as a syntax error.
            let d = match d.strip_suffix('.') {
                Some(stripped) if !stripped.is_empty() && !stripped.ends_with('.') && !d.starts_with('[') => stripped,
                _ => d,
            };
            check_domain_or_literal(d, utf8)?;
            Ok(format!("{local}@{d}"))
        }
        // RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
        None if role == Role::Forward && local.eq_ignore_ascii_case("postmaster") => Ok("postmaster".to_string()),
        None if role == Role::Reverse || role == Role::ForwardOrLocal => Ok(local),
        None => Err(AddrError::Syntax),
    }
}

/// RFC 5321 §4.1.1.3, §C: `@a,@b:mailbox`; the route is checked, then dropped.
fn strip_source_route(s: &str, utf8: bool) -> Result<&str, AddrError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let mut rest = s;
    // Each round consumes at least "@x,": bounded by the path length.
    loop {
        rest = rest.strip_prefix('@').ok_or(AddrError::Syntax)?;
        let end = rest.find([',', ':']).ok_or(AddrError::Syntax)?;
        // An IPv6 literal contains ':'; find its ']' first.
        let end = if rest.starts_with('[') {
            let close = rest.find(']').ok_or(AddrError::Syntax)?;
            let after = rest[close + 1..].find([',', ':']).ok_or(AddrError::Syntax)?;
            close + 1 + after
        } else {
            end
        };
        check_domain_or_literal(&rest[..end], utf8)?;
        let sep = rest.as_bytes()[end];
        rest = &rest[end + 1..];
        if sep == b':' {
            return Ok(rest);
        }
    }
}

/// Split at the `@` that follows the local part (a quoted local part may contain `@`).
fn split_mailbox(s: &str) -> Result<(&str, Option<&str>), AddrError> {
    let local_end = if s.starts_with('"') {
        let bytes = s.as_bytes();
        let mut i = 1;
        loop {
            match bytes.get(i) {
                None => return Err(AddrError::Syntax),
                Some(b'\\') => i += 2,
                Some(b'"') => break i + 1,
                Some(_) => i += 1,
            }
        }
    } else {
        s.find('@').unwrap_or(s.len())
    };
    let local = s.get(..local_end).ok_or(AddrError::Syntax)?;
    let rest = &s[local_end..];
    if rest.is_empty() {
        return Ok((local, None));
    }
    let domain = rest.strip_prefix('@').ok_or(AddrError::Syntax)?;
    Ok((local, Some(domain)))
}

/// RFC 5322 §3.2.3 atext, plus UTF-8 non-ASCII (RFC 6531 §3.3).
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

/// Check a local part and return its canonical form.
fn check_local_part(local: &str, utf8: bool) -> Result<String, AddrError> {
    // RFC 5321 §4.5.3.1.1
    if local.len() > SMTP_LOCAL_PART_BYTES_MAX {
        return Err(AddrError::TooLong);
    }
    if let Some(q) = local.strip_prefix('"') {
        let content = q.strip_suffix('"').ok_or(AddrError::Syntax)?;
        let mut chars = content.chars();
        let mut plain = true;
        while let Some(c) = chars.next() {
            match c {
                // RFC 5321 §4.1.2 quoted-pairSMTP = "\" %d32-126
                '\\' => {
                    plain = false;
                    match chars.next() {
                        Some(e) if (' '..='~').contains(&e) => {}
                        _ => return Err(AddrError::Syntax),
                    }
                }
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531)
                '"' => return Err(AddrError::Syntax),
                c if (' '..='~').contains(&c) => {}
                c if utf8 && !c.is_ascii() && !c.is_control() => {}
                _ => return Err(AddrError::Syntax),
            }
        }
        if plain && is_dot_string(content, utf8) {
            return Ok(content.to_string());
        }
        return Ok(local.to_string());
    }
    if is_dot_string(local, utf8) {
        Ok(local.to_string())
    } else {
        Err(AddrError::Syntax)
    }
}

fn check_domain_or_literal(d: &str, utf8: bool) -> Result<(), AddrError> {
    if d.len() > SMTP_DOMAIN_BYTES_MAX {
        return Err(AddrError::TooLong);
    }
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(AddrError::Syntax)?;
        // RFC 5321 §4.1.3 address literals.
        if let Some(v6) = lit.strip_prefix("IPv6:").or_else(|| lit.strip_prefix("ipv6:")) {
            return v6.parse::<Ipv6Addr>().map(|_| ()).map_err(|_| AddrError::Syntax);
        }
        return lit.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| AddrError::Syntax);
    }
    if is_domain(d, utf8) {
        Ok(())
    } else {
        Err(AddrError::Syntax)
    }
}

/// RFC 5321 §4.1.2 Domain; labels of letters, digits, "-" (not at the ends), and "_";
/// UTF-8 labels with SMTPUTF8 (RFC 6531 §3.3).
fn is_domain(d: &str, utf8: bool) -> bool {
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (utf8 && !c.is_ascii()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(p: &str) -> Result<String, AddrError> {
        parse_forward_path(p, false)
    }

    #[test]
    fn trailing_dot_is_stripped() {
        assert_eq!(rcpt("<alice@example.org.>"), Ok("alice@example.org".to_string()));
        assert!(rcpt("<alice@example.org..>").is_err());
        assert!(rcpt("<alice@.>").is_err());
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(rcpt("<alice@example.org>"), Ok("alice@example.org".into()));
        assert_eq!(rcpt("alice@example.org"), Ok("alice@example.org".into()));
        assert_eq!(rcpt("<a.b+c@sub.example-x.org>"), Ok("a.b+c@sub.example-x.org".into()));
    }

    #[test]
    fn null_path_only_for_sender() {
        assert_eq!(parse_reverse_path("<>", false), Ok(String::new()));
        assert_eq!(rcpt("<>"), Err(AddrError::Syntax));
        assert_eq!(parse_reverse_path("", false), Err(AddrError::Syntax));
    }

    #[test]
    fn postmaster_without_domain() {
        assert_eq!(rcpt("<Postmaster>"), Ok("postmaster".into()));
        assert_eq!(rcpt("<postmaster>"), Ok("postmaster".into()));
        assert_eq!(rcpt("<alice>"), Err(AddrError::Syntax));
        assert_eq!(parse_reverse_path("<root>", false), Ok("root".into()));
    }

    /// `sendmail -bs` only: a bare local part is a recipient too, never the null path.
    #[test]
    fn forward_or_local() {
        let f = |p| parse_forward_path_or_local(p, false);
        assert_eq!(f("<alice>"), Ok("alice".into()));
        assert_eq!(f("<Postmaster>"), Ok("Postmaster".into()));
        assert_eq!(f("<a@b.example>"), Ok("a@b.example".into()));
        assert_eq!(f("<>"), Err(AddrError::Syntax));
        assert_eq!(f("<a b>"), Err(AddrError::Syntax));
        assert_eq!(f("<x@>"), Err(AddrError::Syntax));
    }

    #[test]
    fn source_route_is_dropped() {
        assert_eq!(rcpt("<@a,@b:u@c>"), Ok("u@c".into()));
        assert_eq!(rcpt("<@a:u@c>"), Ok("u@c".into()));
        assert_eq!(rcpt("<@[IPv6:::1],@b:u@c>"), Ok("u@c".into()));
        assert_eq!(rcpt("<@a,u@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<@:u@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<@a,:u@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<@a,@b>"), Err(AddrError::Syntax));
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(rcpt("<\"a b\"@c>"), Ok("\"a b\"@c".into()));
        assert_eq!(rcpt("<\"ab\"@c>"), Ok("ab@c".into()));
        assert_eq!(rcpt("<\"a\\\"b\"@c>"), Ok("\"a\\\"b\"@c".into()));
        assert_eq!(rcpt("<\"a@b\"@c>"), Ok("\"a@b\"@c".into()));
        assert_eq!(rcpt("<\"\"@c>"), Ok("\"\"@c".into()));
        assert_eq!(rcpt("<\"ab@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<\"a\"b\"@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<\"a\tb\"@c>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<\"a\\\"@c>"), Err(AddrError::Syntax));
    }

    #[test]
    fn address_literals() {
        assert_eq!(rcpt("<a@[127.0.0.1]>"), Ok("a@[127.0.0.1]".into()));
        assert_eq!(rcpt("<a@[IPv6:::1]>"), Ok("a@[IPv6:::1]".into()));
        assert_eq!(rcpt("<a@[IPv6:2001:db8::1]>"), Ok("a@[IPv6:2001:db8::1]".into()));
        assert_eq!(rcpt("<a@[300.0.0.1]>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<a@[::1]>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<a@[IPv6:zz]>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<a@[127.0.0.1>"), Err(AddrError::Syntax));
        assert_eq!(rcpt("<a@[x-tag:foo]>"), Err(AddrError::Syntax));
    }

    #[test]
    fn hostile_forms() {
        for bad in [
            "<a@b",
            "a@b>",
            "<<a@b>>",
            "<a@b>>",
            "<@b>",
            "<a@>",
            "<a@b..>",
            "<a@.b>",
            "<a@-b.c>",
            "<a@b-.c>",
            "<.a@b>",
            "<a.@b>",
            "<a..b@c>",
            "<a b@c>",
            "<a@b@c>",
            "<a@b c>",
            "<a(b)@c>",
            "<a@b\u{0}>",
            "<a@b\r>",
            "<a@b,c>",
            "<>x",
            "<@>",
            "<:>",
            "<:a@b>",
            "<@a:@b:c@d>",
        ] {
            assert!(rcpt(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lengths() {
        let local64 = "a".repeat(64);
        assert!(rcpt(&format!("<{local64}@b>")).is_ok());
        assert_eq!(rcpt(&format!("<a{local64}@b>")), Err(AddrError::TooLong));
        let label = "d".repeat(63);
        assert!(rcpt(&format!("<a@{label}.org>")).is_ok());
        assert_eq!(rcpt(&format!("<a@{label}d.org>")), Err(AddrError::Syntax));
        // 4 labels of 63 + dots = 255 octets: a legal domain, but the path is 259.
        let domain = [label.as_str(); 4].join(".");
        assert_eq!(rcpt(&format!("<a@{domain}>")), Err(AddrError::TooLong));
        let huge = "x".repeat(10_000);
        assert_eq!(rcpt(&huge), Err(AddrError::TooLong));
    }

    #[test]
    fn smtputf8() {
        assert_eq!(rcpt("<jörg@example.org>"), Err(AddrError::NonAscii));
        assert_eq!(
            parse_forward_path("<jörg@exämple.org>", true),
            Ok("jörg@exämple.org".into())
        );
        assert_eq!(parse_forward_path("<\"j ö\"@x>", true), Ok("\"j ö\"@x".into()));
    }

    #[test]
    fn split_path_and_params() {
        assert_eq!(split_path("<a@b> SIZE=10"), Some(("<a@b>", "SIZE=10")));
        assert_eq!(split_path("<a@b>"), Some(("<a@b>", "")));
        assert_eq!(
            split_path("<\"x> y\"@b> BODY=8BITMIME"),
            Some(("<\"x> y\"@b>", "BODY=8BITMIME"))
        );
        assert_eq!(split_path("a@b SIZE=1"), Some(("a@b", "SIZE=1")));
        assert_eq!(split_path("<a@b>x"), None);
        assert_eq!(split_path("<a@b"), None);
        assert_eq!(split_path("<\"a@b>"), None);
    }
}
