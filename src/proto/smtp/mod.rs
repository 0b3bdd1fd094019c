//! SMTP (RFC 5321) protocol cores.

pub mod address;
pub mod client;
pub mod headers;
pub mod received;
pub mod server;

pub use received::{received_header, ReceivedInfo};
