//! The Received: trace header (RFC 5321 §4.4, RFC 5322 §3.6.7), Postfix layout:
//! ```text
//! Received: from HELO (CLIENT-NAME [CLIENT-IP])
//! <TAB>by HOSTNAME (poshta) with PROTOCOL id QUEUE-ID
//! <TAB>for <RCPT>; DATE
//! ```
//! Without a single recipient the second line ends `id QUEUE-ID;` and the third is
//! `<TAB>DATE`.
//! PROTOCOL is the RFC 3848 word (SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA). An IPv6 client
//! address is written `[IPv6:...]` (RFC 5321 §4.1.3). Lines end with LF (the queue's form).
//! A pure function: the date comes pre-formatted (RFC 5322 §3.3) from the caller.

use core::net::IpAddr;

/// What one Received: line is built from.
#[derive(Debug, Clone)]
pub struct ReceivedInfo<'a> {
    /// The HELO/EHLO argument as the client gave it.
    pub helo: &'a str,
    /// The client's verified reverse name, or "unknown".
    pub client_name: &'a str,
    pub client_ip: IpAddr,
    /// Our name (myhostname).
    pub hostname: &'a str,
    /// RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA.
    pub protocol: &'a str,
    pub queue_id: &'a str,
    /// The recipient, only when the message has exactly one.
    pub rcpt: Option<&'a str>,
    /// RFC 5322 date-time, e.g. `Sat, 28 Nov 2026 10:00:00 +0000 (UTC)`.
    pub date: &'a str,
}

/// Build the folded, LF-ended Received: header.
pub fn received_header(r: &ReceivedInfo<'_>) -> String {
    use std::fmt::Write as _;
    let helo = if r.helo.is_empty() { r.client_name } else { r.helo };
    // One string, written in place: a format! per field and per cleaned value were a dozen
    // allocations for every message.
    let mut h = String::with_capacity(160 + helo.len() + r.client_name.len() + r.hostname.len());
    h.push_str("Received: from ");
    push_clean(&mut h, helo);
    h.push_str(" (");
    push_clean(&mut h, r.client_name);
    h.push_str(" [");
    if r.client_ip.is_ipv6() {
        // RFC 5321 §4.1.3 IPv6-address-literal
        h.push_str("IPv6:");
    }
    let _ = write!(h, "{}", r.client_ip);
    h.push_str("])\n\tby ");
    push_clean(&mut h, r.hostname);
    h.push_str(" (poshta) with ");
    push_clean(&mut h, r.protocol);
    h.push_str(" id ");
    push_clean(&mut h, r.queue_id);
    match r.rcpt {
        Some(rcpt) => {
            h.push_str("\n\tfor <");
            push_clean(&mut h, rcpt);
            h.push_str(">; ");
        }
        None => h.push_str(";\n\t"),
    }
    push_clean(&mut h, r.date);
    h.push('\n');
    h
}

/// Client-supplied text must not break the header: control characters (CR, LF, TAB, ...)
/// become "?", so the result is always one field with our folding only.
fn push_clean(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| if c.is_control() { '?' } else { c }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(rcpt: Option<&'a str>, ip: IpAddr) -> ReceivedInfo<'a> {
        ReceivedInfo {
            helo: "client.example",
            client_name: "unknown",
            client_ip: ip,
            hostname: "mx.example.org",
            protocol: "ESMTP",
            queue_id: "4AB12",
            rcpt,
            date: "Sat, 28 Nov 2026 10:00:00 +0000 (UTC)",
        }
    }

    #[test]
    fn one_recipient() {
        let h = received_header(&info(Some("alice@example.org"), "192.0.2.1".parse().unwrap()));
        assert_eq!(
            h,
            "Received: from client.example (unknown [192.0.2.1])\n\tby mx.example.org (poshta) with ESMTP id 4AB12\n\tfor <alice@example.org>; Sat, 28 Nov 2026 10:00:00 +0000 (UTC)\n"
        );
    }

    #[test]
    fn many_recipients_ipv6() {
        let h = received_header(&info(None, "2001:db8::1".parse().unwrap()));
        assert_eq!(
            h,
            "Received: from client.example (unknown [IPv6:2001:db8::1])\n\tby mx.example.org (poshta) with ESMTP id 4AB12;\n\tSat, 28 Nov 2026 10:00:00 +0000 (UTC)\n"
        );
    }

    #[test]
    fn hostile_helo_cannot_add_lines() {
        let mut i = info(None, "192.0.2.1".parse().unwrap());
        i.helo = "x\r\nBcc: evil\n";
        let h = received_header(&i);
        assert_eq!(h.matches('\n').count(), 3);
        assert!(h.starts_with("Received: from x??Bcc: evil? ("));
    }
}
