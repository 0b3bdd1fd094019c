//! Wall-clock time and the two text forms poshta writes: RFC 5322 dates (Date:, Received:)
//! and syslog-style log prefixes. Formatting is pure (takes the time as an argument); only
//! `now` reads the clock. Times are written in UTC (+0000): boards usually run UTC and
//! this avoids a time zone database on the image.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds and microseconds since the Unix epoch.
pub fn now() -> (u64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_micros())
}

pub fn now_unix() -> u64 {
    now().0
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    hour: u64,
    min: u64,
    sec: u64,
}

fn parts(unix: u64) -> Parts {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (year, month, day) = civil(days);
    Parts {
        year,
        month,
        day,
        weekday: (days.rem_euclid(7)) as usize,
        hour: rem / 3600,
        min: rem % 3600 / 60,
        sec: rem % 60,
    }
}

/// `format!` into a string of `capacity` bytes: one allocation (format! grew these, the
/// date several times a message).
fn sized(capacity: usize, args: std::fmt::Arguments<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(capacity);
    let _ = out.write_fmt(args);
    out
}

/// RFC 5322 §3.3 date-time: `Sat, 28 Nov 2026 00:52:32 +0000`.
pub fn rfc5322(unix: u64) -> String {
    let p = parts(unix);
    sized(
        40,
        format_args!(
            "{}, {} {} {} {:02}:{:02}:{:02} +0000",
            WEEKDAYS[p.weekday],
            p.day,
            MONTHS[(p.month - 1) as usize],
            p.year,
            p.hour,
            p.min,
            p.sec
        ),
    )
}

/// Syslog (RFC 3164) timestamp as in /var/log/mail.log: `Nov 28 00:52:32`.
pub fn syslog(unix: u64) -> String {
    let p = parts(unix);
    sized(
        16,
        format_args!(
            "{} {:>2} {:02}:{:02}:{:02}",
            MONTHS[(p.month - 1) as usize],
            p.day,
            p.hour,
            p.min,
            p.sec
        ),
    )
}

/// mailq's arrival time column: `Sat Nov 28 00:52:32`.
pub fn mailq(unix: u64) -> String {
    let p = parts(unix);
    sized(
        20,
        format_args!(
            "{} {} {:>2} {:02}:{:02}:{:02}",
            WEEKDAYS[p.weekday],
            MONTHS[(p.month - 1) as usize],
            p.day,
            p.hour,
            p.min,
            p.sec
        ),
    )
}

/// `20261128005232`: the date part of Message-IDs (as Postfix writes them).
pub fn compact(unix: u64) -> String {
    let p = parts(unix);
    sized(
        16,
        format_args!(
            "{}{:02}{:02}{:02}{:02}{:02}",
            p.year, p.month, p.day, p.hour, p.min, p.sec
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        // 2026-11-28 00:52:32 UTC
        assert_eq!(rfc5322(1_795_827_152), "Sat, 28 Nov 2026 00:52:32 +0000");
        assert_eq!(syslog(1_795_827_152), "Nov 28 00:52:32");
        assert_eq!(mailq(1_795_827_152), "Sat Nov 28 00:52:32");
        assert_eq!(compact(1_795_827_152), "20261128005232");
        // leap day
        assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
