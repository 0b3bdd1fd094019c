//! Client limits like Postfix's anvil(8): concurrent connections, and connections, messages
//! and recipients per `anvil_rate_time_unit`, per client address. Pure: time is passed in.
//!
//! Counting is a fixed window per client that starts at its first event (Postfix's anvil
//! counts the same way). Clients in smtpd_client_event_limit_exceptions (default
//! $mynetworks) are never counted: the caller does not ask for them.
//!
//! Memory is bounded: at most `entries_max` clients are tracked. When the table is full,
//! idle clients whose window has ended are dropped first; if every entry is still live, a
//! new client is let through uncounted rather than evicting one that may be at its limit
//! (a flood of distinct addresses must neither grow memory nor free a limited client).
//! IPv6 clients are counted per /64, like the login throttle.

use std::collections::HashMap;
use std::net::IpAddr;

/// Limits; 0 disables a limit (Postfix: 0 = no limit).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connection_count: u32,
    pub connection_rate: u32,
    pub message_rate: u32,
    pub recipient_rate: u32,
    pub window_secs: u64,
    pub entries_max: usize,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    active: u32,
    window_start: u64,
    connections: u32,
    messages: u32,
    recipients: u32,
}

/// Which limit a client hit, with the count that exceeded it (for Postfix's log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    ConnectionCount(u32),
    ConnectionRate(u32),
    MessageRate(u32),
    RecipientRate(u32),
}

impl Exceeded {
    /// The count that went over the limit.
    pub fn count(self) -> u32 {
        match self {
            Exceeded::ConnectionCount(n)
            | Exceeded::ConnectionRate(n)
            | Exceeded::MessageRate(n)
            | Exceeded::RecipientRate(n) => n,
        }
    }
}

#[derive(Debug)]
pub struct Anvil {
    limits: Limits,
    entries: HashMap<IpAddr, Entry>,
}

impl Anvil {
    pub fn new(limits: Limits) -> Anvil {
        Anvil {
            limits,
            entries: HashMap::new(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&mut self, ip: IpAddr, now: u64) -> Option<&mut Entry> {
        let key = crate::auth::throttle::group(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.limits.entries_max {
            let w = self.limits.window_secs;
            self.entries
                .retain(|_, e| e.active > 0 || now < e.window_start.saturating_add(w));
            if self.entries.len() >= self.limits.entries_max {
                return None;
            }
        }
        let w = self.limits.window_secs;
        let e = self.entries.entry(key).or_insert_with(|| Entry {
            window_start: now,
            ..Entry::default()
        });
        if now >= e.window_start.saturating_add(w) {
            e.window_start = now;
            e.connections = 0;
            e.messages = 0;
            e.recipients = 0;
        }
        Some(e)
    }

    /// A new connection. Ok: counted (call `disconnect` when it ends). Err: refuse it.
    pub fn connect(&mut self, ip: IpAddr, now: u64) -> Result<(), Exceeded> {
        let l = self.limits;
        let Some(e) = self.entry(ip, now) else { return Ok(()) };
        if l.connection_count > 0 && e.active >= l.connection_count {
            return Err(Exceeded::ConnectionCount(e.active + 1));
        }
        if l.connection_rate > 0 && e.connections >= l.connection_rate {
            return Err(Exceeded::ConnectionRate(e.connections + 1));
        }
        e.active += 1;
        e.connections += 1;
        Ok(())
    }

    pub fn disconnect(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&crate::auth::throttle::group(ip)) {
            e.active = e.active.saturating_sub(1);
        }
    }

    /// A MAIL FROM: one more message in the window.
    pub fn message(&mut self, ip: IpAddr, now: u64) -> Result<(), Exceeded> {
        let l = self.limits.message_rate;
        let Some(e) = self.entry(ip, now) else { return Ok(()) };
        if l > 0 && e.messages >= l {
            return Err(Exceeded::MessageRate(e.messages + 1));
        }
        e.messages += 1;
        Ok(())
    }

    /// An accepted RCPT TO.
    pub fn recipient(&mut self, ip: IpAddr, now: u64) -> Result<(), Exceeded> {
        let l = self.limits.recipient_rate;
        let Some(e) = self.entry(ip, now) else { return Ok(()) };
        if l > 0 && e.recipients >= l {
            return Err(Exceeded::RecipientRate(e.recipients + 1));
        }
        e.recipients += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            connection_count: 2,
            connection_rate: 5,
            message_rate: 3,
            recipient_rate: 4,
            window_secs: 60,
            entries_max: 100,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn concurrent_connections() {
        let mut a = Anvil::new(limits());
        assert!(a.connect(ip(1), 0).is_ok());
        assert!(a.connect(ip(1), 0).is_ok());
        assert_eq!(a.connect(ip(1), 0), Err(Exceeded::ConnectionCount(3)));
        assert!(a.connect(ip(2), 0).is_ok(), "other clients are not affected");
        a.disconnect(ip(1));
        assert!(a.connect(ip(1), 1).is_ok());
    }

    #[test]
    fn connection_rate_and_window() {
        let mut a = Anvil::new(Limits {
            connection_count: 0,
            ..limits()
        });
        for _ in 0..5 {
            assert!(a.connect(ip(1), 10).is_ok());
            a.disconnect(ip(1));
        }
        assert_eq!(a.connect(ip(1), 30), Err(Exceeded::ConnectionRate(6)));
        assert!(a.connect(ip(1), 70).is_ok(), "a new window");
    }

    #[test]
    fn messages_and_recipients() {
        let mut a = Anvil::new(limits());
        for _ in 0..3 {
            assert!(a.message(ip(1), 0).is_ok());
        }
        assert_eq!(a.message(ip(1), 0), Err(Exceeded::MessageRate(4)));
        for _ in 0..4 {
            assert!(a.recipient(ip(1), 0).is_ok());
        }
        assert_eq!(a.recipient(ip(1), 0), Err(Exceeded::RecipientRate(5)));
        assert!(a.message(ip(1), 61).is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let mut a = Anvil::new(Limits {
            connection_count: 0,
            connection_rate: 0,
            message_rate: 0,
            recipient_rate: 0,
            ..limits()
        });
        for _ in 0..1000 {
            assert!(a.connect(ip(1), 0).is_ok());
            assert!(a.message(ip(1), 0).is_ok());
        }
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let mut a = Anvil::new(limits());
        assert!(a.connect(ip(1), 0).is_ok());
        assert!(a.connect(ip(1), 0).is_ok());
        for i in 0..10_000u32 {
            let addr = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let _ = a.connect(addr, 1);
            a.disconnect(addr);
        }
        assert!(a.len() <= 100);
        // The busy client is still tracked and still limited.
        assert_eq!(a.connect(ip(1), 2), Err(Exceeded::ConnectionCount(3)));
    }
}
