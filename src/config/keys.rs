//! The one table of main.cf keys: name, default, kind (which parser validates it) and a
//! one-line doc. The parser, `poshta check` and `poshta postconf` all read this table.
//!
//! Defaults are written the way `postconf -d` prints them: unexpanded, `$name` references
//! included. A few depend on the machine (host name) or on whether poshta runs as root
//! (see [`DefaultValue`]). Keys marked `used: false` are accepted (known, validated by kind,
//! printed by postconf) but not yet acted on by poshta.

/// Where a key's default text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// Fixed text (may contain `$name`).
    Text(&'static str),
    /// The system host name (myhostname).
    Hostname,
    /// Derived from the effective myhostname (mydomain): Postfix strips the first label
    /// when what is left still contains a dot, else uses `localdomain`.
    Domain,
    /// Differs between running as root (appliance) and as a normal user (first run, demo).
    Root { root: &'static str, user: &'static str },
    /// The directory holding main.cf (config_directory; read-only).
    ConfigDirectory,
}

/// How a key's (expanded) value is parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Str,
    /// Postfix list (comma and/or whitespace separated), entries not checked.
    List,
    /// `yes` or `no` (case-insensitive, as Postfix).
    Bool,
    /// Plain decimal integer, at least `min`.
    Int { min: u64 },
    /// Plain decimal byte count (no suffixes, as Postfix).
    Size,
    /// Time: decimal number with an optional unit s, m, h, d, w; `unit` applies when
    /// the suffix is missing (Postfix: per-key default unit).
    Time { unit: char },
    /// A file or directory; relative values are resolved against config_directory.
    Path,
    /// Like Path, but empty means "none".
    OptPath,
    /// A host or domain name.
    Hostname,
    /// A list of domains (lowercased).
    DomainList,
    /// A list of networks: address or address/prefix-length, IPv6 optionally in brackets.
    Networks,
    /// inet_interfaces: `all`, `loopback-only` or a list of addresses.
    Interfaces,
    /// inet_protocols: `all`, `ipv4`, `ipv6` or `ipv4, ipv6`.
    Protocols,
    /// A list of `[address:]port` listen entries (poshta's own `*_listen` keys).
    Listen,
    /// An smtpd restriction list (policy::restrictions names; `check_*_access type:table`).
    Restrictions,
    /// One of a fixed set of words (empty allowed only if listed).
    OneOf(&'static [&'static str]),
    /// Set by poshta, not by main.cf (config_directory).
    ReadOnly,
}

/// One main.cf key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub default: DefaultValue,
    pub kind: Kind,
    /// false: accepted and validated, but poshta does not act on it yet.
    pub used: bool,
    pub doc: &'static str,
}

const fn k(name: &'static str, default: DefaultValue, kind: Kind, doc: &'static str) -> Key {
    Key {
        name,
        default,
        kind,
        used: true,
        doc,
    }
}

/// Accepted, not yet used.
const fn later(name: &'static str, default: DefaultValue, kind: Kind, doc: &'static str) -> Key {
    Key {
        name,
        default,
        kind,
        used: false,
        doc,
    }
}

use self::DefaultValue::{Root, Text};
use Kind::*;

const TLS_SERVER_LEVELS: &[&str] = &["", "none", "may", "encrypt"];
/// Outbound levels poshta implements. Postfix's dane, dane-only and fingerprint are refused
/// rather than silently weakened (DANE needs a validating DNSSEC resolver).
const TLS_CLIENT_LEVELS: &[&str] = &["", "none", "may", "encrypt", "verify", "secure"];

/// Every key poshta knows, sorted by name (a test keeps it sorted and unique).
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    k("alias_database", Root { root: "hash:/etc/aliases", user: "hash:$config_directory/aliases" }, Str, "Alias databases that `newaliases` rebuilds."),
    k("alias_maps", Root { root: "hash:/etc/aliases", user: "hash:$config_directory/aliases" }, List, "Alias tables for local delivery (aliases(5))."),
    k("allow_mail_to_commands", Text("alias, forward"), List, "Where `|command` destinations are allowed."),
    k("allow_mail_to_files", Text("alias, forward"), List, "Where `/file` destinations are allowed."),
    k("anvil_rate_time_unit", Text("60s"), Time { unit: 's' }, "The time unit of the smtpd_client_*_rate_limit counts."),
    later("append_dot_mydomain", Text("no"), Bool, "Append .$mydomain to addresses without a domain."),
    k("auth_cache_ttl", Text("1h"), Time { unit: 's' }, "poshta (like Dovecot's auth_cache_ttl): how long a successful login (SMTP AUTH, POP3) is remembered so the same name and password skip the slow argon2id check; 0 turns the cache off. Only successes are kept, as a keyed MAC in memory; any change to the users file drops them."),
    k("auth_failure_limit", Text("5"), Int { min: 1 }, "poshta: failed logins (SMTP AUTH, POP3) from one client within auth_failure_window before it is locked out."),
    k("auth_failure_penalty", Text("15m"), Time { unit: 's' }, "poshta: how long a client that failed too often is refused (421 / -ERR)."),
    k("auth_failure_window", Text("10m"), Time { unit: 's' }, "poshta: the window in which auth_failure_limit failures lock a client out."),
    later("biff", Text("yes"), Bool, "Notify the local biff service of new mail."),
    k("bounce_queue_lifetime", Text("5d"), Time { unit: 'd' }, "How long a bounce may stay in the queue."),
    later("compatibility_level", Text("3.6"), Str, "The Postfix compatibility level poshta's defaults match."),
    k("config_directory", DefaultValue::ConfigDirectory, ReadOnly, "Directory of main.cf (read-only: set by -c / POSHTA_CONFIG)."),
    k("default_destination_concurrency_limit", Text("20"), Int { min: 1 }, "Most parallel deliveries to one destination (per transport unless overridden)."),
    k("default_destination_recipient_limit", Text("50"), Int { min: 1 }, "Most recipients per delivery (per transport unless overridden)."),
    k("delay_warning_time", Text("0h"), Time { unit: 'h' }, "Send one delay notice (RFC 3464) to the sender of a message still undelivered after this long (0: never)."),
    k("delivery_paused", Text("no"), Bool, "poshta: accept and queue mail, but do not deliver it."),
    k("disable_dns_lookups", Text("no"), Bool, "Do not use DNS for outbound mail (LAN without DNS)."),
    k("dns_resolver", Text(""), List, "poshta: DNS servers for outbound mail, address or address:port ([ipv6]:port), at most 3 (empty: the nameservers of /etc/resolv.conf)."),
    later("header_size_limit", Text("102400"), Size, "Most bytes kept for one message header."),
    k("home_mailbox", Text(""), Str, "Mailbox path relative to a user's home (`Maildir/`); empty: mail_spool_directory."),
    k("hopcount_limit", Text("50"), Int { min: 1 }, "Most Received: headers before a message is bounced as looping."),
    k("inet_interfaces", Root { root: "all", user: "loopback-only" }, Interfaces, "Addresses to listen on: all, loopback-only or a list of addresses."),
    k("inet_protocols", Text("all"), Protocols, "IP versions to use: all, ipv4, ipv6."),
    later("line_length_limit", Text("2048"), Int { min: 1 }, "Longest message line kept whole."),
    later("luser_relay", Text(""), Str, "Where mail for unknown local users goes."),
    later("mail_name", Text("poshta"), Str, "The mail system name, used in smtpd_banner."),
    k("mail_owner", Text("poshta"), Str, "The user poshta runs as after binding its ports (as root)."),
    k("mail_spool_directory", Text("/var/mail"), Path, "Directory of mbox mailboxes of system users."),
    later("mailbox_command", Text(""), Str, "Command that delivers local mail instead of poshta."),
    k("mailbox_size_limit", Text("51200000"), Size, "Largest mailbox or message file (bytes; 0: no limit)."),
    k("mailbox_users_file", Text("$config_directory/users"), Path, "poshta: the mailbox users file (virtual users and password hashes)."),
    k("maillog_file", Text(""), OptPath, "Also log to this file (empty: standard error only)."),
    k("maximal_backoff_time", Text("4000s"), Time { unit: 's' }, "Longest wait between delivery attempts."),
    k("maximal_queue_lifetime", Text("5d"), Time { unit: 'd' }, "Bounce a message undeliverable for this long."),
    k("message_size_limit", Text("10240000"), Size, "Largest accepted message (bytes; 0: no limit)."),
    k("minimal_backoff_time", Text("300s"), Time { unit: 's' }, "Shortest wait between delivery attempts."),
    k("mydestination", Text("$myhostname, localhost.$mydomain, localhost"), DomainList, "Domains delivered locally."),
    k("mydomain", DefaultValue::Domain, Hostname, "The local internet domain."),
    k("myhostname", DefaultValue::Hostname, Hostname, "The internet host name of this mail system."),
    k("mynetworks", Text("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"), Networks, "Trusted client networks (may relay)."),
    k("myorigin", Text("$myhostname"), Hostname, "Domain that locally posted mail appears to come from."),
    later("notify_classes", Text("resource, software"), List, "Problem classes reported to the postmaster."),
    k("parent_domain_matches_subdomains", Text("debug_peer_list, fast_flush_domains, mynetworks, permit_mx_backup_networks, qmqpd_authorized_clients, relay_domains, smtpd_access_maps"), List, "Features where a bare domain.tld pattern also matches subdomains (poshta uses smtpd_access_maps)."),
    k("pop3d_autologout", Text("10m"), Time { unit: 's' }, "poshta: idle time before a POP3 session is closed (RFC 1939 §3: at least 10 minutes)."),
    k("pop3d_disable_plaintext_auth", Text("yes"), Bool, "poshta: refuse POP3 logins before STLS except from loopback (Dovecot's disable_plaintext_auth)."),
    k("pop3d_listen", Root { root: "110", user: "2110" }, Listen, "poshta: POP3 (STLS) listen entries, [address:]port (empty: none)."),
    k("pop3s_listen", Root { root: "995", user: "2995" }, Listen, "poshta: POP3 over implicit TLS listen entries, [address:]port (empty: none)."),
    k("queue_directory", Root { root: "/var/spool/poshta", user: "$config_directory/spool" }, Path, "The queue log directory."),
    k("queue_minfree", Text("0"), Size, "Free bytes the queue's file system must keep to accept MAIL (at least 1.5 × message_size_limit)."),
    later("queue_run_delay", Text("300s"), Time { unit: 's' }, "How often the deferred queue is scanned."),
    later("readme_directory", Text("no"), Str, "Where README files are installed (no: none)."),
    k("recipient_delimiter", Text(""), Str, "Separators between user name and address extension (user+ext)."),
    k("reject_authenticated_sender_login_mismatch", Text("yes"), Bool, "poshta: an authenticated client may use only sender addresses its user owns (Postfix's restriction of the same name)."),
    later("relay_domains", Text(""), List, "Domains this system relays mail to."),
    k("relayhost", Text(""), Str, "Send non-local mail through this host ([host]:port: no MX lookup; host:port: MX of host) instead of the recipient domain's MX."),
    k("smtp_connect_timeout", Text("30s"), Time { unit: 's' }, "SMTP client: time limit for a TCP connection to be set up."),
    k("smtp_data_done_timeout", Text("600s"), Time { unit: 's' }, "SMTP client: time limit for the reply to the final \".\" of the data."),
    k("smtp_data_init_timeout", Text("120s"), Time { unit: 's' }, "SMTP client: time limit for the reply to DATA."),
    k("smtp_data_xfer_timeout", Text("180s"), Time { unit: 's' }, "SMTP client: time limit for sending the message content (per write)."),
    k("smtp_destination_concurrency_limit", Text("$default_destination_concurrency_limit"), Int { min: 1 }, "SMTP client: most parallel deliveries to one destination."),
    k("smtp_destination_recipient_limit", Text("$default_destination_recipient_limit"), Int { min: 1 }, "SMTP client: most recipients per transaction."),
    k("smtp_dns_support_level", Text(""), OneOf(&["", "disabled", "enabled"]), "SMTP client DNS use: disabled (hosts file only, like disable_dns_lookups) or enabled; empty: enabled unless disable_dns_lookups."),
    k("smtp_helo_name", Text("$myhostname"), Hostname, "Host name sent in EHLO by the SMTP client."),
    k("smtp_helo_timeout", Text("300s"), Time { unit: 's' }, "SMTP client: time limit for the greeting and the EHLO/HELO reply."),
    k("smtp_mail_timeout", Text("300s"), Time { unit: 's' }, "SMTP client: time limit for the reply to MAIL FROM."),
    k("smtp_mx_address_limit", Text("5"), Int { min: 0 }, "SMTP client: most MX host addresses tried for one delivery (0: no limit but poshta's own, 20)."),
    k("smtp_mx_session_limit", Text("2"), Int { min: 0 }, "SMTP client: most SMTP sessions (hosts that answered) for one delivery (0: no limit but the address limit)."),
    k("smtp_quit_timeout", Text("300s"), Time { unit: 's' }, "SMTP client: time limit for the reply to QUIT."),
    k("smtp_rcpt_timeout", Text("300s"), Time { unit: 's' }, "SMTP client: time limit for the reply to RCPT TO."),
    k("smtp_rset_timeout", Text("20s"), Time { unit: 's' }, "SMTP client: time limit for the reply to RSET (connection reuse)."),
    k("smtp_sasl_auth_enable", Text("no"), Bool, "Authenticate to the relayhost."),
    k("smtp_sasl_auth_soft_bounce", Text("yes"), Bool, "SMTP client: a refused AUTH defers the mail instead of bouncing it."),
    k("smtp_sasl_password_maps", Text(""), List, "Client credentials per relay host (sasl_passwd text file: [host]:port user:password; hash:/path accepted)."),
    later("smtp_sender_dependent_authentication", Text("no"), Bool, "SMTP client: look up smtp_sasl_password_maps by sender address first."),
    k("smtp_starttls_timeout", Text("300s"), Time { unit: 's' }, "SMTP client: time limit for the STARTTLS reply and TLS handshake."),
    k("smtp_tls_CAfile", Text(""), OptPath, "SMTP client: PEM file of trusted CA certificates (empty: the system's roots)."),
    k("smtp_tls_security_level", Text(""), OneOf(TLS_CLIENT_LEVELS), "Outbound TLS policy: none, may (STARTTLS when offered), encrypt (TLS or defer), verify/secure (and a verified certificate); empty: none."),
    k("smtp_tls_wrappermode", Text("no"), Bool, "SMTP client: TLS from the start (port 465) instead of STARTTLS."),
    later("smtpd_banner", Text("$myhostname ESMTP $mail_name"), Str, "Text after 220 in the SMTP greeting."),
    k("smtpd_client_connection_count_limit", Text("50"), Int { min: 0 }, "Simultaneous SMTP connections one client may have (0: no limit)."),
    k("smtpd_client_connection_rate_limit", Text("0"), Int { min: 0 }, "SMTP connections one client may make per anvil_rate_time_unit (0: no limit)."),
    k("smtpd_client_event_limit_exceptions", Text("$mynetworks"), Networks, "Clients the smtpd_client_* limits do not apply to."),
    k("smtpd_client_message_rate_limit", Text("0"), Int { min: 0 }, "Messages (MAIL FROM) one client may send per anvil_rate_time_unit (0: no limit)."),
    k("smtpd_client_recipient_rate_limit", Text("0"), Int { min: 0 }, "Recipients one client may give per anvil_rate_time_unit (0: no limit)."),
    k("smtpd_client_restrictions", Text(""), Restrictions, "Restrictions applied to the client (at RCPT TO with smtpd_delay_reject = yes, else at connect)."),
    k("smtpd_data_restrictions", Text(""), Restrictions, "Restrictions applied at DATA."),
    k("smtpd_delay_reject", Text("yes"), Bool, "Evaluate client, HELO and sender restrictions at RCPT TO, so the log shows the whole envelope."),
    later("smtpd_error_sleep_time", Text("1s"), Time { unit: 's' }, "Delay before an error reply once the soft limit is hit."),
    later("smtpd_forbid_bare_newline", Text("normalize"), OneOf(&["normalize", "yes", "reject", "note", "no"]), "How to treat bare LF in SMTP input (smuggling defence)."),
    k("smtpd_forbid_bare_newline_exclusions", Text("$mynetworks"), Networks, "Clients exempt from smtpd_forbid_bare_newline."),
    later("smtpd_hard_error_limit", Text("20"), Int { min: 1 }, "Errors after which a session is closed."),
    later("smtpd_helo_required", Text("no"), Bool, "Require HELO/EHLO before MAIL."),
    k("smtpd_helo_restrictions", Text(""), Restrictions, "Restrictions applied to the HELO/EHLO name (at RCPT TO with smtpd_delay_reject = yes)."),
    k("smtpd_listen", Root { root: "25", user: "2525" }, Listen, "poshta: SMTP listen entries, [address:]port (empty: no SMTP)."),
    k("smtpd_recipient_limit", Text("1000"), Int { min: 0 }, "Most recipients per message (at least 100, RFC 5321 §4.5.3.1.8)."),
    k("smtpd_recipient_restrictions", Text(""), Restrictions, "Restrictions applied at RCPT TO, after smtpd_relay_restrictions."),
    k("smtpd_relay_restrictions", Text("permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"), Restrictions, "Relay restrictions applied at RCPT TO (first)."),
    k("smtpd_sasl_auth_enable", Text("no"), Bool, "Offer SMTP AUTH on the smtpd_listen port too (submission ports always offer it)."),
    k("smtpd_sender_restrictions", Text(""), Restrictions, "Restrictions applied to the sender (at RCPT TO with smtpd_delay_reject = yes, else at MAIL FROM)."),
    k("smtpd_sessions_max", Text("100"), Int { min: 1 }, "poshta: most concurrent SMTP sessions."),
    later("smtpd_soft_error_limit", Text("10"), Int { min: 1 }, "Errors after which replies are delayed."),
    k("smtpd_starttls_timeout", Text("300s"), Time { unit: 's' }, "Time limit for a TLS handshake (STARTTLS, STLS and the implicit-TLS ports)."),
    k("smtpd_timeout", Text("300s"), Time { unit: 's' }, "Idle time before an SMTP session is closed."),
    k("smtpd_tls_auth_only", Text("yes"), Bool, "Offer AUTH only over TLS (after STARTTLS/STLS, or on an implicit-TLS port)."),
    k("smtpd_tls_cert_file", Text("$config_directory/tls/cert.pem"), OptPath, "Server certificate chain (PEM; empty: no TLS); replaced files are noticed."),
    k("smtpd_tls_key_file", Text("$config_directory/tls/key.pem"), OptPath, "Server private key (PEM: PKCS#8, RSA or SEC1)."),
    k("smtpd_tls_security_level", Text("may"), OneOf(TLS_SERVER_LEVELS), "Inbound TLS policy: none, may (offer STARTTLS), encrypt (require it)."),
    later("smtputf8_enable", Text("yes"), Bool, "Offer SMTPUTF8 (RFC 6531)."),
    later("soft_bounce", Text("no"), Bool, "Turn permanent delivery failures into temporary ones."),
    later("strict_rfc821_envelopes", Text("no"), Bool, "Require <> around MAIL/RCPT addresses."),
    k("submission_listen", Root { root: "587", user: "2587" }, Listen, "poshta: submission (STARTTLS) listen entries, [address:]port (empty: none)."),
    k("submissions_listen", Root { root: "465", user: "2465" }, Listen, "poshta: submission over implicit TLS listen entries, [address:]port (empty: none)."),
    k("syslog_name", Text("postfix-poshta"), Str, "Log tag before /service[pid]: Postfix's multi-instance form, so fail2ban's and logwatch's stock postfix filters match."),
    k("transport_maps", Text(""), List, "Per-destination transport and next hop (transport(5) text files; hash:/path accepted, read as text)."),
    later("unknown_local_recipient_reject_code", Text("550"), Int { min: 400 }, "Reply code for unknown local recipients."),
    k("virtual_mailbox_base", Root { root: "/var/lib/poshta/mail", user: "$config_directory/mail" }, Path, "Base directory of mailbox users' Maildirs."),
];

/// The table entry for `name`.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.binary_search_by(|k| k.name.cmp(name))
        .ok()
        .and_then(|i| KEYS.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sorted_unique_and_findable() {
        for w in KEYS.windows(2) {
            assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
        }
        for key in KEYS {
            assert_eq!(find(key.name).map(|k| k.name), Some(key.name));
            // Postfix names are lowercase except a few (smtp_tls_CAfile, smtpd_tls_CApath).
            assert!(key.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert!(!key.doc.is_empty());
        }
        assert!(find("no_such_key").is_none());
        assert!(find("").is_none());
    }
}
