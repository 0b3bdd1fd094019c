//! Every bound poshta enforces, in one place. Units are the last word of each name.
//!
//! Values that a user may change live in main.cf (message_size_limit,
//! smtpd_recipient_limit, ...); these are the fixed ones and the floors.

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const SMTP_COMMAND_LINE_BYTES_MAX: usize = 512;
/// RFC 4954 §4: an AUTH line (initial response or continuation) may be up to 12288 octets.
pub const SMTP_AUTH_LINE_BYTES_MAX: usize = 12_288;
/// RFC 5321 §4.5.3.1.3: a path (reverse or forward) is at most 256 octets.
pub const SMTP_PATH_BYTES_MAX: usize = 256;
/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
pub const SMTP_LOCAL_PART_BYTES_MAX: usize = 64;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
pub const SMTP_DOMAIN_BYTES_MAX: usize = 255;
/// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients; this is the floor
/// applied to smtpd_recipient_limit.
pub const SMTP_RECIPIENTS_MIN: usize = 100;
/// RFC 2449 §4: a POP3 command line is at most 255 octets including CRLF.
pub const POP3_COMMAND_LINE_BYTES_MAX: usize = 255;
/// A POP3 SASL response line (RFC 5034 §4). The 255-octet limit binds the AUTH command
/// (a longer initial response is sent as a continuation instead); continuation lines get
/// the room SMTP AUTH has (RFC 4954 §4).
pub const POP3_AUTH_LINE_BYTES_MAX: usize = 12_288;
/// RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..0x7E.
pub const POP3_UID_BYTES_MAX: usize = 70;
/// Messages one POP3 session lists; later ones wait for a later session (bounds memory
/// for a huge maildrop; the shell should stop reading the directory there too).
pub const POP3_MAILDROP_MESSAGES_MAX: usize = 100_000;
/// How many bytes of unread input one session may hold while a reply is pending.
pub const SESSION_INPUT_BYTES_MAX: usize = 64 * 1024;
/// One read from a client socket.
pub const SESSION_READ_BYTES: usize = 16 * 1024;
/// Body bytes per queue record. Bounds memory per session: bodies stream to disk in chunks.
pub const QUEUE_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// The largest record the log reader accepts (a chunk plus its envelope).
pub const QUEUE_RECORD_BYTES_MAX: usize = 1024 * 1024;
/// A segment is closed and a new one started once it grows past this.
pub const QUEUE_SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;
/// Encoded records waiting for the writer before appenders must wait (backpressure).
pub const QUEUE_PENDING_BYTES_MAX: usize = 512 * 1024;
/// Listen backlog: big enough for bursts (a backlog of 5 is why OpenSMTPD collapses at
/// 10 concurrent clients). The kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;
/// Concurrent local delivery batches (each is one blocking job on the thread pool).
pub const LOCAL_DELIVERY_CONCURRENCY_MAX: usize = 4;
/// Messages per local delivery batch: their Maildir renames share one directory fsync.
pub const LOCAL_DELIVERY_BATCH_MESSAGES: usize = 32;
/// After a final reply, how long a session keeps draining client input before closing,
/// so the reply is not lost to a TCP reset.
pub const LINGER_SECS: u64 = 2;
/// Users file: at most this many bytes per line.
pub const USERS_LINE_BYTES_MAX: usize = 4096;
/// main.cf: at most this many bytes in one logical line (after continuation).
pub const CONFIG_LINE_BYTES_MAX: usize = 64 * 1024;
/// main.cf: at most this many levels of $name expansion (Postfix stops loops the same way).
pub const CONFIG_EXPANSION_DEPTH_MAX: usize = 32;
/// Client networks the login throttle (auth::throttle) tracks at once (~100 bytes each).
pub const AUTH_THROTTLE_ENTRIES_MAX: usize = 10_000;
/// Lookup tables (access maps): the largest source or index file read (offsets are u32).
pub const TABLE_FILE_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Lookup tables: at most this many bytes in one logical line (after continuation).
pub const TABLE_LINE_BYTES_MAX: usize = 64 * 1024;
/// regexp:/pcre: tables: compiled size limit of one pattern (regex crate size_limit); a
/// pattern over it is refused at load with file:line.
pub const TABLE_REGEX_COMPILED_BYTES_MAX: usize = 1024 * 1024;
/// regexp:/pcre:/cidr: tables: most rules (and if/endif lines) in one table; each rule
/// is tried in order, so this also bounds the cost of one lookup.
pub const TABLE_PATTERN_RULES_MAX: usize = 10_000;
/// regexp:/pcre:/cidr: tables: deepest nesting of `if` blocks.
pub const TABLE_IF_DEPTH_MAX: usize = 32;
/// Restriction names in access-table results may name further restrictions (Postfix
/// restriction classes); nesting deeper than this is a configuration error.
pub const RESTRICTION_NESTING_DEPTH_MAX: usize = 8;
