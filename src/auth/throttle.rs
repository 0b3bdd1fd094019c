//! Login throttle: after too many failed logins from one client network, refuse that network
//! for a while. Shared by SMTP AUTH and POP3 logins; the shell asks `check` before running an
//! exchange, reports `failure` / `success` after verifying the password, and answers a
//! lockout with `421 4.7.0 <host> Error: too many failed authentication attempts`.
//!
//! # Policy
//!
//! - Clients are grouped by network: an IPv4 address is its own group; an IPv6 client is
//!   grouped by its /64 (one subscriber or host normally owns a whole /64, so counting single
//!   IPv6 addresses would let one attacker rotate through 2^64 of them). IPv4-mapped IPv6
//!   (`::ffff:a.b.c.d`) counts as the IPv4 address.
//! - A fixed window opens at a group's first failure and lasts `window_secs`; `max_failures`
//!   failures inside it lock the group out for `penalty_secs`. A failure after the window
//!   has passed starts a new window at 1. When the penalty ends the group starts from zero.
//! - A success clears the group's record (failures and any lock).
//! - Time is injected (`now`, seconds on any clock that does not go backwards; if it does,
//!   the earlier window/penalty is kept, never shortened).
//!
//! # Memory
//!
//! At most `max_entries` groups are tracked; each costs one hash-map entry and one ordered
//! index entry (roughly 100 bytes). When a new group must be recorded and the table is
//! full, one entry is evicted, in this order:
//! 1. the oldest lockout whose penalty has already ended (worthless),
//! 2. the group with the oldest last failure that is not locked out (a slow counter is
//!    the least likely to reach the limit; an expired window is worth nothing),
//! 3. nothing: when every tracked group is currently locked out, the new group's failure
//!    is not recorded. A flood of fresh addresses never frees a locked-out attacker early;
//!    the cost is that newcomers are not counted until the oldest lock ends (filling the
//!    table with lockouts takes `max_entries * max_failures` failed logins).
//!
//! Every operation is O(log max_entries).
//! The shell sizes the table with `limits::AUTH_THROTTLE_ENTRIES_MAX`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

/// A lockout: logins from the group are refused until `until` (same clock as `now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    pub until: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures in the current window (0 while locked).
    failures: u32,
    window_start: u64,
    /// Some while locked out (maybe already expired: checked against `now`).
    locked_until: Option<u64>,
    /// Key of this entry in `counting` or `locked`.
    seq: u64,
}

/// Failed-login counters per client network, bounded in size.
#[derive(Debug)]
pub struct Throttle {
    max_failures: u32,
    window_secs: u64,
    penalty_secs: u64,
    max_entries: usize,
    entries: HashMap<IpAddr, Entry>,
    /// Entries not locked out, by last failure (oldest first).
    counting: BTreeMap<u64, IpAddr>,
    /// Locked-out entries, by lock time (oldest first; the penalty is fixed, so this is
    /// also the order in which they expire).
    locked: BTreeMap<u64, IpAddr>,
    next_seq: u64,
}

/// The group an address is counted in (see the module docs).
pub fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// `max_failures` within `window_secs` lock a group out for `penalty_secs`; at most
    /// `max_entries` groups are tracked. A `max_failures` of 0 is taken as 1, a
    /// `max_entries` of 0 as 1.
    pub fn new(max_failures: u32, window_secs: u64, penalty_secs: u64, max_entries: usize) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            window_secs,
            penalty_secs,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            counting: BTreeMap::new(),
            locked: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Is the client's group locked out now? An ended lockout is forgotten here.
    pub fn check(&mut self, ip: IpAddr, now: u64) -> Result<(), Penalty> {
        let key = group(ip);
        let Some(e) = self.entries.get(&key) else {
            return Ok(());
        };
        match e.locked_until {
            Some(until) if now < until => Err(Penalty { until }),
            Some(_) => {
                self.remove(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Record a failed login. Returns the penalty when the group is (now) locked out: when
    /// this failure reached the limit, or when the group was locked already.
    pub fn failure(&mut self, ip: IpAddr, now: u64) -> Option<Penalty> {
        let key = group(ip);
        if let Some(e) = self.entries.get(&key).copied() {
            match e.locked_until {
                Some(until) if now < until => return Some(Penalty { until }),
                // The penalty is over: start from zero.
                Some(_) => self.remove(key),
                None => {}
            }
        }
        if !self.entries.contains_key(&key) && !self.make_room(now) {
            return None;
        }
        let seq = self.bump();
        let window_secs = self.window_secs;
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
            seq,
        });
        // The window has passed: this failure opens a new one.
        if now.saturating_sub(e.window_start) >= window_secs {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        let old_seq = std::mem::replace(&mut e.seq, seq);
        self.counting.remove(&old_seq);
        if e.failures >= self.max_failures {
            let until = now.saturating_add(self.penalty_secs);
            e.failures = 0;
            e.locked_until = Some(until);
            self.locked.insert(seq, key);
            Some(Penalty { until })
        } else {
            self.counting.insert(seq, key);
            None
        }
    }

    /// Record a successful login: the group's record is cleared.
    pub fn success(&mut self, ip: IpAddr, _now: u64) {
        self.remove(group(ip));
    }

    /// Groups tracked now (at most `max_entries`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn remove(&mut self, key: IpAddr) {
        if let Some(e) = self.entries.remove(&key) {
            self.counting.remove(&e.seq);
            self.locked.remove(&e.seq);
        }
    }

    /// Free one slot if the table is full (policy in the module docs). False: no room.
    fn make_room(&mut self, now: u64) -> bool {
        if self.entries.len() < self.max_entries {
            return true;
        }
        if let Some((_, &key)) = self.locked.first_key_value() {
            let ended = self
                .entries
                .get(&key)
                .and_then(|e| e.locked_until)
                .is_none_or(|until| now >= until);
            if ended {
                self.remove(key);
                return true;
            }
        }
        if let Some((_, &key)) = self.counting.first_key_value() {
            self.remove(key);
            return true;
        }
        false
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.entries.len(), self.counting.len() + self.locked.len());
        assert!(self.entries.len() <= self.max_entries);
        for (k, e) in &self.entries {
            let index = if e.locked_until.is_some() {
                &self.locked
            } else {
                &self.counting
            };
            assert_eq!(index.get(&e.seq), Some(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn n_failures_lock_out_until_the_penalty_ends() {
        let mut t = Throttle::new(3, 600, 900, 100);
        assert_eq!(t.check(A, 1000), Ok(()));
        assert_eq!(t.failure(A, 1000), None);
        assert_eq!(t.failure(A, 1010), None);
        assert_eq!(t.check(A, 1010), Ok(()));
        assert_eq!(t.failure(A, 1020), Some(Penalty { until: 1920 }));
        assert_eq!(t.check(A, 1020), Err(Penalty { until: 1920 }));
        assert_eq!(t.check(A, 1919), Err(Penalty { until: 1920 }));
        // Failing again while locked does not extend the lockout.
        assert_eq!(t.failure(A, 1500), Some(Penalty { until: 1920 }));
        // Another client is not affected.
        assert_eq!(t.check(B, 1500), Ok(()));
        // The penalty ends: the count starts from zero.
        assert_eq!(t.check(A, 1920), Ok(()));
        assert_eq!(t.failure(A, 1921), None);
        assert_eq!(t.failure(A, 1922), None);
        assert_eq!(t.failure(A, 1923), Some(Penalty { until: 2823 }));
        t.check_invariants();
    }

    #[test]
    fn penalty_end_without_check_restarts_count() {
        let mut t = Throttle::new(2, 600, 900, 100);
        t.failure(A, 0);
        assert!(t.failure(A, 1).is_some());
        assert_eq!(t.failure(A, 901), None);
        assert_eq!(t.check(A, 901), Ok(()));
        t.check_invariants();
    }

    #[test]
    fn window_expiry_resets_the_count() {
        let mut t = Throttle::new(3, 600, 900, 100);
        assert_eq!(t.failure(A, 0), None);
        assert_eq!(t.failure(A, 599), None);
        // 600 s after the first failure: a new window, this is failure 1 of it.
        assert_eq!(t.failure(A, 600), None);
        assert_eq!(t.failure(A, 601), None);
        assert_eq!(t.failure(A, 602), Some(Penalty { until: 1502 }));
        t.check_invariants();
    }

    #[test]
    fn success_clears() {
        let mut t = Throttle::new(3, 600, 900, 100);
        t.failure(A, 0);
        t.failure(A, 1);
        t.success(A, 2);
        assert!(t.is_empty());
        assert_eq!(t.failure(A, 3), None);
        assert_eq!(t.failure(A, 4), None);
        assert!(t.failure(A, 5).is_some());
        t.check_invariants();
    }

    #[test]
    fn clock_going_backwards_keeps_the_window() {
        let mut t = Throttle::new(2, 600, 900, 100);
        t.failure(A, 1000);
        assert_eq!(t.failure(A, 10), Some(Penalty { until: 910 }));
        t.check_invariants();
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        let mut t = Throttle::new(3, 600, 900, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        t.failure(a, 0);
        t.failure(b, 1);
        assert!(t.failure(a, 2).is_some());
        assert!(t.check(b, 3).is_err());
        assert_eq!(t.check(other, 3), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        t.failure(mapped, 0);
        t.failure(A, 0);
        assert!(t.failure(mapped, 0).is_some());
        assert!(t.check(A, 1).is_err());
        assert_eq!(group(mapped), A);
        t.check_invariants();
    }

    #[test]
    fn flood_of_distinct_addresses_stays_bounded_and_keeps_lockouts() {
        let mut t = Throttle::new(5, 600, 900, 1000);
        for _ in 0..5 {
            t.failure(A, 0);
        }
        assert!(t.check(A, 0).is_err());
        // 100k distinct IPv4 clients failing once, then 100k IPv6 /64s.
        for i in 0..100_000u32 {
            assert_eq!(t.failure(v4(0x0a00_0000 + i), 1 + u64::from(i) / 1000), None);
            assert!(t.len() <= 1000);
        }
        for i in 0..100_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1));
            t.failure(ip, 200);
            assert!(t.len() <= 1000);
        }
        t.check_invariants();
        assert_eq!(t.len(), 1000);
        assert_eq!(t.check(A, 300), Err(Penalty { until: 900 }));
        // The most recent clients are still counted.
        let last = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0x869f, 0, 0, 0, 1));
        for _ in 0..4 {
            t.failure(last, 201);
        }
        assert!(t.check(last, 201).is_err());
        t.check_invariants();
    }

    #[test]
    fn full_of_lockouts_refuses_to_track_newcomers_until_one_ends() {
        let mut t = Throttle::new(1, 600, 900, 10);
        for i in 0..10 {
            assert!(t.failure(v4(i), u64::from(i)).is_some());
        }
        // Every slot holds a live lockout: a newcomer is not recorded, nobody is freed.
        assert_eq!(t.failure(v4(100), 50), None);
        assert_eq!(t.check(v4(100), 50), Ok(()));
        for i in 0..10 {
            assert!(t.check(v4(i), 50).is_err());
        }
        // The oldest lockout ends at 900: its slot is reused.
        assert!(t.failure(v4(100), 900).is_some());
        assert_eq!(t.check(v4(0), 900), Ok(()));
        assert!(t.check(v4(1), 900).is_err());
        t.check_invariants();
    }

    #[test]
    fn repeated_failures_from_one_client_do_not_grow_memory() {
        let mut t = Throttle::new(u32::MAX, u64::MAX, 900, 10);
        for i in 0..100_000u64 {
            assert_eq!(t.failure(A, i), None);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.counting.len(), 1);
        t.check_invariants();
    }
}
