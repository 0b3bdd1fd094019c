//! The I/O shell: event loop, listeners, sessions, signals. The only code that touches
//! sockets.
