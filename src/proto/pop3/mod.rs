//! POP3 (RFC 1939) with CAPA, RESP-CODES, PIPELINING (RFC 2449), STLS (RFC 2595) and
//! SASL AUTH (RFC 5034), sans-IO.
//!
//! Wire grammar the server reads (RFC 1939 §3, RFC 2449 §3): a command is a case-insensitive
//! keyword, optionally followed by one space and arguments, ended by CR LF (a bare LF is
//! accepted as a line end), at most `limits::POP3_COMMAND_LINE_BYTES_MAX` octets with the
//! CR LF. Replies are `+OK text` or `-ERR [CODE] text` lines; multi-line replies end with
//! the line "." and byte-stuff lines that begin with "." (`retr`).

pub mod retr;
pub mod server;
