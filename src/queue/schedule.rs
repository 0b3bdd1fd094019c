//! The in-memory index of committed messages and the retry schedule.
//!
//! Backoff follows Postfix: the first deferral waits minimal_backoff_time, each further
//! deferral of the same message doubles the wait, capped at maximal_backoff_time.
//! Time is always passed in.

use std::collections::BTreeMap;

use super::{Job, MessageInfo, Outcome, QueueId, QueueOptions, RcptState};

/// One committed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub qid: QueueId,
    pub sender: String,
    pub recipients: Vec<String>,
    pub arrival_unix: u64,
    pub client: String,
    pub size: u64,
    /// One per recipient, same order as `recipients`.
    pub states: Vec<RcptState>,
    /// Delivery attempts that deferred at least one recipient (drives the backoff).
    pub deferrals: u32,
    /// Body records: (log position, framed length).
    pub chunks: Vec<(u64, u32)>,
    /// Log position of its first record (segments from there on must stay).
    pub first_lsn: u64,
    pub in_flight: bool,
    /// On hold (`poshta queue hold`): never offered for delivery until released.
    pub held: bool,
    /// Deleted while in flight: its `Deleted` record is written; it leaves the index when the
    /// attempt finishes, and is neither listed nor offered again.
    pub deleted: bool,
    /// The sender got its delay notice (`DelayWarned`).
    pub delay_warned: bool,
}

fn is_final(s: &RcptState) -> bool {
    matches!(s, RcptState::Delivered | RcptState::Bounced { .. })
}

/// A recipient to try at `now`: never tried, or deferred until then.
fn rcpt_due(s: &RcptState, now_unix: u64) -> bool {
    match s {
        RcptState::Pending => true,
        RcptState::Deferred { next_try_unix, .. } => *next_try_unix <= now_unix,
        _ => false,
    }
}

impl Msg {
    /// Recipients due at `now`: (index, address).
    fn due(&self, now_unix: u64) -> Vec<(usize, String)> {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| rcpt_due(s, now_unix))
            .filter_map(|(i, _)| self.recipients.get(i).map(|r| (i, r.clone())))
            .collect()
    }

    /// Whether a delivery run may take it: not in flight, not held, not deleted.
    fn takeable(&self) -> bool {
        !self.in_flight && !self.held && !self.deleted
    }

    /// When this message is next due (Pending counts as due since arrival).
    fn due_at(&self) -> Option<u64> {
        self.states
            .iter()
            .filter_map(|s| match s {
                RcptState::Pending => Some(self.arrival_unix),
                RcptState::Deferred { next_try_unix, .. } => Some(*next_try_unix),
                _ => None,
            })
            .min()
    }

    pub fn all_final(&self) -> bool {
        self.states.iter().all(is_final)
    }

    pub fn info(&self) -> MessageInfo {
        MessageInfo {
            qid: self.qid,
            size: self.size,
            arrival_unix: self.arrival_unix,
            sender: self.sender.clone(),
            held: self.held,
            in_flight: self.in_flight,
            recipients: self
                .recipients
                .iter()
                .zip(&self.states)
                .filter(|(_, s)| !is_final(s))
                .map(|(r, s)| (r.clone(), s.clone()))
                .collect(),
        }
    }
}

/// The wait after the `deferrals`-th deferral (1-based): min * 2^(n-1), capped at max.
pub fn backoff_secs(opts: &QueueOptions, deferrals: u32) -> u64 {
    let doublings = deferrals.saturating_sub(1).min(63);
    let wait = opts.minimal_backoff_secs.saturating_mul(1u64 << doublings);
    wait.min(opts.maximal_backoff_secs)
}

/// Oldest first, not in flight, with due recipients; marks them in flight.
pub fn take_ready(index: &mut BTreeMap<QueueId, Msg>, now_unix: u64, max: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    for m in index.values_mut() {
        if jobs.len() >= max {
            break;
        }
        if !m.takeable() {
            continue;
        }
        let recipients = m.due(now_unix);
        if recipients.is_empty() {
            continue;
        }
        m.in_flight = true;
        jobs.push(Job {
            qid: m.qid,
            sender: m.sender.clone(),
            arrival_unix: m.arrival_unix,
            size: m.size,
            recipients,
            delay_warned: m.delay_warned,
        });
    }
    jobs
}

/// How many messages `take_ready` would take now, counting at most `max`.
pub fn count_ready(index: &BTreeMap<QueueId, Msg>, now_unix: u64, max: usize) -> usize {
    index
        .values()
        .filter(|m| m.takeable() && m.states.iter().any(|s| rcpt_due(s, now_unix)))
        .take(max)
        .count()
}

/// `poshta queue flush`: every deferred recipient of a message not held is due at `now`.
/// Returns how many messages became due. In memory only: a restart retries what is due then.
pub fn flush(index: &mut BTreeMap<QueueId, Msg>, now_unix: u64) -> usize {
    let mut n = 0;
    for m in index.values_mut().filter(|m| !m.held && !m.deleted) {
        let mut any = false;
        for s in &mut m.states {
            if let RcptState::Deferred { next_try_unix, .. } = s {
                if *next_try_unix > now_unix {
                    *next_try_unix = now_unix;
                    any = true;
                }
            }
        }
        n += usize::from(any);
    }
    n
}

/// Earliest due time among messages not in flight.
pub fn next_due(index: &BTreeMap<QueueId, Msg>) -> Option<u64> {
    index.values().filter(|m| m.takeable()).filter_map(Msg::due_at).min()
}

/// A state change to log: (recipient index, new state).
pub type Change = (u32, RcptState);

/// Apply a job's outcomes to `m`; returns the changes to log. Outcomes for unknown or already
/// final recipients are ignored. Clears in-flight.
pub fn apply_outcomes(opts: &QueueOptions, m: &mut Msg, outcomes: &[(usize, Outcome)], now_unix: u64) -> Vec<Change> {
    m.in_flight = false;
    let deferred_any = outcomes
        .iter()
        .any(|(i, o)| matches!(o, Outcome::Deferred { .. }) && m.states.get(*i).is_some_and(|s| !is_final(s)));
    let next_try_unix = if deferred_any {
        m.deferrals = m.deferrals.saturating_add(1);
        now_unix.saturating_add(backoff_secs(opts, m.deferrals))
    } else {
        now_unix
    };
    let mut changes = Vec::new();
    for (i, o) in outcomes {
        let Some(s) = m.states.get_mut(*i) else {
            continue;
        };
        if is_final(s) {
            continue;
        }
        let new = match o {
            Outcome::Delivered => RcptState::Delivered,
            Outcome::Bounced { reason } => RcptState::Bounced { reason: reason.clone() },
            Outcome::Deferred { reason } => RcptState::Deferred {
                reason: reason.clone(),
                next_try_unix,
            },
        };
        *s = new.clone();
        let Ok(idx) = u32::try_from(*i) else { continue };
        changes.push((idx, new));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> QueueOptions {
        QueueOptions {
            minimal_backoff_secs: 300,
            maximal_backoff_secs: 4000,
            segment_bytes_target: 1 << 20,
        }
    }

    fn msg(n: usize) -> Msg {
        Msg {
            qid: QueueId(1),
            sender: "s@x".into(),
            recipients: (0..n).map(|i| format!("r{}@x", i)).collect(),
            arrival_unix: 1000,
            client: "c".into(),
            size: 0,
            states: vec![RcptState::Pending; n],
            deferrals: 0,
            chunks: vec![],
            first_lsn: 0,
            in_flight: false,
            held: false,
            deleted: false,
            delay_warned: false,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let o = opts();
        let seq: Vec<u64> = (1..=6).map(|n| backoff_secs(&o, n)).collect();
        assert_eq!(seq, vec![300, 600, 1200, 2400, 4000, 4000]);
        assert_eq!(backoff_secs(&o, u32::MAX), 4000);
    }

    #[test]
    fn fake_clock_retry_sequence() {
        let o = opts();
        let mut index = BTreeMap::new();
        index.insert(QueueId(1), msg(1));
        let mut now = 1000;
        let mut tries = Vec::new();
        for _ in 0..7 {
            let jobs = take_ready(&mut index, now, 10);
            assert_eq!(jobs.len(), 1);
            // In flight: not offered twice.
            assert!(take_ready(&mut index, now, 10).is_empty());
            let Some(m) = index.get_mut(&QueueId(1)) else {
                panic!("gone")
            };
            apply_outcomes(&o, m, &[(0, Outcome::Deferred { reason: "busy".into() })], now);
            let due = next_due(&index).expect("due");
            tries.push(due - now);
            // Not due a second early.
            assert!(take_ready(&mut index, due - 1, 10).is_empty());
            now = due;
        }
        assert_eq!(tries, vec![300, 600, 1200, 2400, 4000, 4000, 4000]);
    }

    #[test]
    fn outcomes_final_states_stick_and_bad_indexes_ignored() {
        let o = opts();
        let mut m = msg(2);
        let ch = apply_outcomes(
            &o,
            &mut m,
            &[
                (0, Outcome::Delivered),
                (5, Outcome::Delivered),
                (1, Outcome::Bounced { reason: "x".into() }),
            ],
            10,
        );
        assert_eq!(ch.len(), 2);
        assert!(m.all_final());
        assert!(apply_outcomes(&o, &mut m, &[(0, Outcome::Deferred { reason: "y".into() })], 20).is_empty());
        assert_eq!(m.states[0], RcptState::Delivered);
        assert_eq!(m.deferrals, 0);
    }

    #[test]
    fn ready_respects_max_and_order() {
        let mut index = BTreeMap::new();
        for q in [5u64, 3, 9] {
            let mut m = msg(1);
            m.qid = QueueId(q);
            index.insert(QueueId(q), m);
        }
        let jobs = take_ready(&mut index, 0, 2);
        assert_eq!(jobs.iter().map(|j| j.qid.0).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(take_ready(&mut index, 0, 10).len(), 1);
    }
}
