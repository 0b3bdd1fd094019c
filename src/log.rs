//! Maillog-style logging.
