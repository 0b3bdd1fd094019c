//! Every bound poshta enforces, in one place. Units are the last word of each name.
//!
//! Values that a user may change live in main.cf (message_size_limit,
//! smtpd_recipient_limit, ...); these are the fixed ones and the floors.

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const SMTP_COMMAND_LINE_BYTES_MAX: usize = 512;
/// RFC 4954 §4: an AUTH line (initial response or continuation) may be up to 12288 octets.
pub const SMTP_AUTH_LINE_BYTES_MAX: usize = 12_288;
/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF. The SMTP client
/// treats a longer line from a peer as a malformed reply (temporary failure).
pub const SMTP_REPLY_LINE_BYTES_MAX: usize = 512;
/// Lines in one (multi-line) reply the SMTP client accepts; more is a malformed reply.
/// RFC 5321 sets no number; EHLO replies run to about 20 lines in practice.
pub const SMTP_REPLY_LINES_MAX: usize = 100;
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
/// Bytes of whole messages a POP3 session reads ahead of the client's RETRs (net::pop3):
/// one thread-pool trip serves the next ones from memory.
pub const POP3_READ_AHEAD_BYTES: usize = 64 * 1024;
/// Messages a POP3 session reads ahead at most.
pub const POP3_READ_AHEAD_MESSAGES: usize = 32;
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
/// Queue segments are zero-filled this far ahead of the records, so that a commit's
/// fdatasync writes no metadata (queue::log::FileSink). The disk space a queue holds beyond
/// its records, and the most one commit writes in zeros.
pub const QUEUE_PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// Writes larger than this are appended without zero-filling ahead (it would write them twice).
pub const QUEUE_PREALLOCATE_WRITE_MAX: usize = 64 * 1024;
/// The zero buffer used to fill ahead (allocated only while filling).
pub const QUEUE_ZERO_FILL_BUFFER_BYTES: usize = 64 * 1024;
/// Listen backlog: big enough for bursts (a backlog of 5 is why OpenSMTPD collapses at
/// 10 concurrent clients). The kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;
/// Concurrent local delivery batches (each is one blocking job on the thread pool).
pub const LOCAL_DELIVERY_CONCURRENCY_MAX: usize = 4;
/// Messages per local delivery batch: their Maildir renames share one directory fsync.
pub const LOCAL_DELIVERY_BATCH_MESSAGES: usize = 32;
/// How long fewer than LOCAL_DELIVERY_BATCH_MESSAGES due messages wait for more before their
/// batch starts (net::deliver::runner): a delay nobody sees in a mailbox, which under steady
/// load turns one fsync per message into one syncfs per batch.
pub const LOCAL_DELIVERY_GATHER: std::time::Duration = std::time::Duration::from_millis(5);
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
/// aliases(5): most bytes in an aliases file (a 100,000-entry file is a few MiB).
pub const ALIASES_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// aliases(5): most entries (names) in one aliases file.
pub const ALIASES_ENTRIES_MAX: usize = 1_000_000;
/// aliases(5): most bytes in one logical entry (after joining continuation lines): room for
/// a group of several thousand addresses.
pub const ALIASES_ENTRY_BYTES_MAX: usize = 256 * 1024;
/// aliases(5): most errors one load reports (then it stops: the file is refused anyway).
pub const ALIASES_ERRORS_REPORTED_MAX: usize = 100;
/// aliases(5): most bytes read from one `:include:` file.
pub const ALIASES_INCLUDE_BYTES_MAX: u64 = 1024 * 1024;
/// aliases(5): `:include:` files nested at most this deep (one including another ...).
pub const ALIASES_INCLUDE_DEPTH_MAX: usize = 10;
/// Alias expansion: names expanded within names at most this deep (a longer chain is
/// reported as an error, never followed further).
pub const ALIASES_EXPANSION_DEPTH_MAX: usize = 100;
/// Alias expansion: most final targets one recipient expands to (a large group is fine;
/// a runaway expansion stops with an error).
pub const ALIASES_EXPANSION_TARGETS_MAX: usize = 10_000;
/// mbox: a dot-lock file older than this is stale and removed (Dovecot's default; Postfix
/// uses 500 s).
pub const MBOX_DOTLOCK_STALE_SECS: u64 = 300;
/// mbox: how long a delivery waits for the mailbox locks before a temporary error.
pub const MBOX_LOCK_WAIT_MS: u64 = 10_000;
/// mbox: longest pause between two lock attempts (backoff doubles up to this).
pub const MBOX_LOCK_RETRY_MS_MAX: u64 = 1_000;
/// mbox reader: most messages one scan lists (later ones wait for a later session).
pub const MBOX_MESSAGES_MAX: usize = 100_000;
/// mbox reader: most bytes of one header line looked at for `X-UIDL:`.
pub const MBOX_HEADER_LINE_BYTES_MAX: usize = 1024;
/// DSN: most bytes of the original message returned in a bounce (Postfix's
/// bounce_size_limit default). A larger message is returned as its headers only.
pub const DSN_ORIGINAL_BYTES_MAX: usize = 50_000;
/// DSN: most recipients listed in one notification.
pub const DSN_RECIPIENTS_MAX: usize = 1_000;
/// DSN: most bytes of one diagnostic text kept (longer ones are cut, marked `...`).
pub const DSN_DIAGNOSTIC_BYTES_MAX: usize = 4_096;
/// A lookup table file (transport_maps, smtp_sasl_password_maps): at most this many bytes.
pub const MAP_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// A lookup table: at most this many bytes in one logical line (after continuation).
pub const MAP_LINE_BYTES_MAX: usize = 4096;
/// /etc/hosts (disable_dns_lookups): at most this many bytes are read.
pub const HOSTS_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
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
/// anvil: most clients tracked for the smtpd_client_* limits (memory stays bounded under a
/// flood of addresses; see policy::anvil).
pub const ANVIL_CLIENTS_MAX: usize = 10_000;
/// One request line on the control socket (`poshta queue`), LF included: room for about
/// 240 queue ids.
pub const CONTROL_REQUEST_BYTES_MAX: usize = 4096;
/// A control client's time to send its request, and for each write of the response.
pub const CONTROL_CLIENT_TIMEOUT_SECS: u64 = 10;
/// `sendmail` handoffs served at once on the pickup socket; more wait in the listen backlog.
pub const PICKUP_CLIENTS_MAX: usize = 16;
/// The envelope part of a pickup submission (magic, sender, recipients, size lines).
pub const PICKUP_HEAD_BYTES_MAX: usize = 300 * 1024;
/// Recipients of one `sendmail` submission (the queue's envelope record must stay well
/// under QUEUE_RECORD_BYTES_MAX: 1000 paths of at most 256 octets).
pub const PICKUP_RECIPIENTS_MAX: usize = 1000;
/// A pickup client's time for each read and write (the message is complete in a file
/// before the client connects, so only a stuck client takes this long).
pub const PICKUP_CLIENT_TIMEOUT_SECS: u64 = 30;
/// How often the daemon looks into maildrop/ for messages dropped while it was down or busy.
pub const PICKUP_SCAN_SECS: u64 = 5;
/// Maildrop files imported per scan (the rest wait for the next scan).
pub const PICKUP_SCAN_FILES_MAX: usize = 1000;
/// A maildrop temporary file older than this was left by a `sendmail` that died; removed.
pub const PICKUP_TMP_STALE_SECS: u64 = 86_400;
/// Maildrop files that mailq lists one by one; the rest are counted, not listed.
pub const MAILQ_MAILDROP_FILES_MAX: usize = 10_000;
/// Bytes of names and addresses of the maildrop files mailq lists (its memory stays bounded
/// whatever local users drop there); files past it are counted, not listed.
pub const MAILQ_MAILDROP_TEXT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Entries of maildrop/ that mailq looks at in all (listed or counted).
pub const MAILQ_MAILDROP_SCAN_MAX: usize = 1_000_000;
/// One header field (with its continuation lines) on the `sendmail` path: Postfix's
/// header_size_limit. The excess is discarded, as Postfix does (with -t it is an error).
pub const SENDMAIL_HEADER_FIELD_BYTES_MAX: usize = 102_400;
/// Longer input lines are handled in pieces of this size (memory stays bounded for any
/// line length; the line itself is kept whole).
pub const SENDMAIL_LINE_PIECE_BYTES: usize = 64 * 1024;
/// A `|command` alias target may run this long (Postfix command_time_limit is 1000 s; the
/// delivery helper serves one request at a time, so poshta bounds it tighter), then it is
/// killed and the delivery deferred.
pub const LOCAL_COMMAND_TIME_LIMIT_SECS: u64 = 300;
/// Output of a failed `|command` kept for its bounce and log line (Postfix's pipe_command
/// keeps up to 4096 bytes; less here, since the reason is stored per recipient in the queue
/// log and repeated in the log and the DSN).
pub const LOCAL_COMMAND_OUTPUT_BYTES_MAX: usize = 1024;
/// One frame of the privileged helper protocol (a body chunk plus its framing).
pub const PRIVSEP_FRAME_BYTES_MAX: usize = 80 * 1024;
/// Body bytes per data frame sent to the privileged helper.
pub const PRIVSEP_CHUNK_BYTES: usize = 64 * 1024;
/// Mailboxes the privileged helper keeps open and locked for POP3 sessions at once.
pub const PRIVSEP_OPEN_MBOXES_MAX: usize = 256;
/// Header bytes read from a queued message to count Received: and find Delivered-To:
/// lines (loop detection); a header longer than this is judged by what was read.
pub const LOOP_HEADER_SCAN_BYTES_MAX: usize = 256 * 1024;
/// POP3 on an mbox: how long a login waits for the mailbox locks before `-ERR [IN-USE]`
/// (a delivery holds them for milliseconds; mail(1) or another session for minutes).
pub const POP3_MBOX_LOCK_WAIT_MS: u64 = 2_000;
/// Maildrop agents (a home mailbox served to a POP3 session as the user, started as root)
/// alive at once; the session cap (smtpd_sessions_max) bounds them first, this bounds the
/// helper whatever the daemon asks.
pub const POP3_HOME_AGENTS_MAX: usize = 256;
/// How long a POP3 session waits for one answer of its maildrop agent (the first one comes
/// after the whole mailbox was listed: a large mbox on an SD card takes a while).
pub const POP3_AGENT_ANSWER_SECS: u64 = 300;

/// Name servers used from resolv.conf or dns_resolver (glibc's MAXNS).
pub const DNS_SERVERS_MAX: usize = 3;
/// Seconds to wait for one DNS answer (resolv.conf `options timeout:` is capped to this).
pub const DNS_TIMEOUT_SECS_MAX: u64 = 30;
/// Rounds over the name servers (resolv.conf `options attempts:` is capped to this).
pub const DNS_ATTEMPTS_MAX: u32 = 5;
/// Bytes of a UDP answer read (no EDNS is sent, so servers send at most 512; RFC 1035 §4.2.1).
pub const DNS_UDP_BYTES_MAX: usize = 4096;
/// Bytes of a TCP answer (the 2-byte length allows 65535; RFC 1035 §4.2.2).
pub const DNS_TCP_BYTES_MAX: usize = 65_535;
/// Stray datagrams (wrong id or question) ignored while waiting for one answer.
pub const DNS_STRAY_REPLIES_MAX: usize = 16;
/// CNAME links followed inside one answer.
pub const DNS_CNAME_CHAIN_MAX: usize = 8;
/// MX records kept from one answer (after sorting by preference).
pub const DNS_MX_RECORDS_MAX: usize = 20;
/// resolv.conf bytes read.
pub const RESOLV_CONF_BYTES_MAX: u64 = 64 * 1024;
