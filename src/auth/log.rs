//! Log lines for authentication events, in Postfix's exact words so that log watchers
//! written for Postfix keep working.
//!
//! fail2ban's `postfix[mode=auth]` filter (the `postfix-sasl` jail; Debian fail2ban 1.0.2,
//! filter.d/postfix.conf) matches, after the syslog prefix, `warning: ` followed by
//! `^[^[]*\[<HOST>\](?::\d+)?: SASL ((?i)LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5) authentication
//! failed:(?! Connection lost to authentication server| Invalid authentication mechanism)`.
//! Two consequences for callers:
//! - the client name must not contain `[` (it would end the `[^[]*` run early): it is
//!   sanitised here;
//! - the syslog tag must match the filter's `_daemon`, `postfix(-\w+)?/\w+(?:/smtp[ds])?`:
//!   `postfix/smtpd[123]:` or `postfix-poshta/smtpd[123]:` match, `poshta/smtpd[123]:`
//!   does not (checked with fail2ban-regex). That tag is the log module's business.

use std::fmt::Write;
use std::net::IpAddr;

/// The reason Postfix (with Dovecot or Cyrus SASL) logs for a wrong user or password.
pub const REASON_AUTH_FAILURE: &str = "authentication failure";

/// Longest mechanism name (RFC 4422 §3.1: 1 to 20 characters).
const MECHANISM_CHARS_MAX: usize = 20;
/// Longest client name (a DNS name) and reason kept in a log line.
const NAME_CHARS_MAX: usize = 255;
const REASON_CHARS_MAX: usize = 200;

/// `warning: unknown[192.0.2.1]: SASL PLAIN authentication failed: authentication failure`
///
/// The message text of Postfix's smtpd warning for a failed SASL login (the caller adds
/// the syslog prefix). Client-controlled parts are sanitised: the mechanism to RFC 4422
/// characters (upper case), the client name to DNS characters, the reason to printable
/// ASCII without brackets; each is bounded, so a hostile client cannot forge or split log lines.
pub fn sasl_failure_line(client_name: &str, ip: IpAddr, mechanism: &str, reason: &str) -> String {
    let mut line = String::with_capacity(96);
    line.push_str("warning: ");
    push_clean(&mut line, client_name, NAME_CHARS_MAX, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
    });
    // Postfix writes IPv6 addresses bare inside the brackets too: unknown[2001:db8::1].
    let _ = write!(line, "[{ip}]: SASL ");
    let start = line.len();
    push_clean(&mut line, mechanism, MECHANISM_CHARS_MAX, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
    });
    line[start..].make_ascii_uppercase();
    line.push_str(" authentication failed: ");
    // No brackets: the filter's `[^[]*\[<HOST>\]` must only ever see the client's.
    push_clean(&mut line, reason, REASON_CHARS_MAX, |c| {
        c == ' ' || (c.is_ascii_graphic() && !matches!(c, '[' | ']'))
    });
    line
}

/// Append `s`, at most `max` characters, with each character `ok` rejects as `?`.
fn push_clean(out: &mut String, s: &str, max: usize, ok: impl Fn(char) -> bool) {
    for c in s.chars().take(max) {
        out.push(if ok(c) { c } else { '?' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_words() {
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!(
            sasl_failure_line("unknown", ip, "PLAIN", REASON_AUTH_FAILURE),
            "warning: unknown[1.2.3.4]: SASL PLAIN authentication failed: authentication failure"
        );
        let ip6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            sasl_failure_line("mail.example.com", ip6, "login", REASON_AUTH_FAILURE),
            "warning: mail.example.com[2001:db8::1]: SASL LOGIN authentication failed: authentication failure"
        );
    }

    #[test]
    fn hostile_parts_cannot_forge_lines() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let line = sasl_failure_line(
            "evil[6.6.6.6]",
            ip,
            "PLAIN\n: SASL x",
            "bad\nwarning: x[9.9.9.9]: SASL PLAIN authentication failed: y",
        );
        assert!(!line.contains('\n'));
        assert_eq!(line.matches('[').count(), 1, "{line}");
        assert!(line.starts_with("warning: evil?6.6.6.6?[192.0.2.1]: SASL PLAIN???SASL?X authentication failed: "));
        let long = "A".repeat(5000);
        assert!(sasl_failure_line(&long, ip, &long, &long).len() < 600);
    }
}
