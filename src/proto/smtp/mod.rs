//! SMTP (RFC 5321) protocol cores.

pub mod server;
