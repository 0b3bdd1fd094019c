//! Policy: which recipients are local, which clients may relay.
//!
//! The policy helper documents the lookup rules here.

use std::net::IpAddr;

/// A parsed list of networks (mynetworks, smtpd_forbid_bare_newline_exclusions).
#[derive(Debug, Clone, Default)]
pub struct Networks {
    _p: (),
}

impl Networks {
    /// Parse entries as Postfix writes them: `127.0.0.0/8`, `[::1]/128`, `::1/128`,
    /// `192.168.1.5`, `[2001:db8::]/32`. Err: `entry: reason` for the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Networks, String> {
        let _ = entries;
        todo!("policy helper")
    }

    /// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 entries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}

/// Where a recipient address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptClass {
    /// A mailbox user in a local domain; `user` is the users-file name (lowercase,
    /// extension after recipient_delimiter removed).
    Local { user: String },
    /// A local domain but no such user: 550 5.1.1.
    UnknownLocal,
    /// Not a local domain: relay (allowed only from mynetworks, later after AUTH).
    Remote,
}

pub mod router;
pub use router::Router;
