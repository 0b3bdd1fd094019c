//! Mailbox users and passwords, login throttling, and authentication log lines.

pub mod log;
pub mod throttle;
pub mod users;
pub mod verify;
