//! delivery::route retry policy on a simulated clock: Postfix's age-based backoff between
//! minimal_backoff_time and maximal_backoff_time, maximal_queue_lifetime and
//! bounce_queue_lifetime, and delay warnings.

use poshta::delivery::route::{delay_warning_due, retry_decision, Retry, RetryPolicy};

const DAY: u64 = 86_400;

#[test]
fn backoff_grows_with_age_and_is_capped() {
    let p = RetryPolicy::default();
    let t0 = 1_700_000_000;
    // First failure right after arrival: minimal_backoff_time.
    assert_eq!(
        retry_decision(t0, t0, false, &p),
        Retry::Again {
            next_try_unix: t0 + 300
        }
    );
    // Simulate a message that keeps failing: each wait is the age, clamped; it roughly
    // doubles until maximal_backoff_time.
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..1000 {
        match retry_decision(t0, now, false, &p) {
            Retry::Again { next_try_unix } => {
                waits.push(next_try_unix - now);
                now = next_try_unix;
            }
            Retry::GiveUp => break,
        }
    }
    assert_eq!(&waits[..5], &[300, 300, 600, 1200, 2400]);
    assert!(waits.iter().all(|&w| (300..=4000).contains(&w)));
    assert_eq!(*waits.last().expect("waits"), 4000);
    // It gave up once the message was 5 days old, not before.
    assert!(now - t0 >= 5 * DAY && now - t0 < 5 * DAY + 4000, "{}", now - t0);
}

#[test]
fn lifetimes() {
    let p = RetryPolicy {
        bounce_queue_lifetime_secs: DAY,
        ..RetryPolicy::default()
    };
    let t0 = 1000;
    assert!(matches!(
        retry_decision(t0, t0 + DAY - 1, false, &p),
        Retry::Again { .. }
    ));
    assert!(matches!(
        retry_decision(t0, t0 + DAY - 1, true, &p),
        Retry::Again { .. }
    ));
    // Bounces (null sender) give up after bounce_queue_lifetime.
    assert_eq!(retry_decision(t0, t0 + DAY, true, &p), Retry::GiveUp);
    assert!(matches!(retry_decision(t0, t0 + DAY, false, &p), Retry::Again { .. }));
    assert_eq!(retry_decision(t0, t0 + 5 * DAY, false, &p), Retry::GiveUp);
    // bounce_queue_lifetime never exceeds maximal_queue_lifetime.
    let p = RetryPolicy {
        maximal_queue_lifetime_secs: 3600,
        bounce_queue_lifetime_secs: 5 * DAY,
        ..RetryPolicy::default()
    };
    assert_eq!(retry_decision(t0, t0 + 3600, true, &p), Retry::GiveUp);
    // 0: try once.
    let p = RetryPolicy {
        maximal_queue_lifetime_secs: 0,
        ..RetryPolicy::default()
    };
    assert_eq!(retry_decision(t0, t0, false, &p), Retry::GiveUp);
    // A clock that went backwards, and extremes, do not panic or overflow.
    let p = RetryPolicy::default();
    assert_eq!(retry_decision(t0, 0, false, &p), Retry::Again { next_try_unix: 300 });
    assert!(matches!(retry_decision(0, u64::MAX, false, &p), Retry::GiveUp));
    let odd = RetryPolicy {
        minimal_backoff_secs: 5000,
        maximal_backoff_secs: 10,
        ..RetryPolicy::default()
    };
    assert_eq!(
        retry_decision(t0, t0, false, &odd),
        Retry::Again { next_try_unix: t0 + 10 }
    );
}

#[test]
fn delay_warnings() {
    let h = 3600;
    assert!(!delay_warning_due(0, 10 * h, 0, false, false), "0h: never");
    assert!(!delay_warning_due(0, 4 * h - 1, 4 * h, false, false));
    assert!(delay_warning_due(0, 4 * h, 4 * h, false, false));
    assert!(!delay_warning_due(0, 5 * h, 4 * h, false, true), "once only");
    assert!(!delay_warning_due(0, 5 * h, 4 * h, true, false), "never for bounces");
}
