//! Sans-IO protocol cores: bytes in, bytes and events out.
//!
//! Nothing in here touches sockets, files, clocks or randomness: time and ids are
//! passed in by the caller. `tests/proto_purity.rs` enforces this.

pub mod dot;
pub mod line;
pub mod pickup;
pub mod pop3;
pub mod reply;
pub mod sasl;
pub mod smtp;
