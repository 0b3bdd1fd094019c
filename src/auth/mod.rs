//! Mailbox users and passwords.

pub mod users;
