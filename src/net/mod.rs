//! The I/O shell: event loop, listeners, sessions, delivery runner, signals. The only code
//! that touches sockets.
//!
//! Everything runs on one `smol::LocalExecutor` (one thread). Shared state lives in
//! [`Ctx`] behind `Rc` + `RefCell`/`Cell`; no borrow is held across an `.await`. Blocking
//! file work (Maildir writes with fsync, queue writes) goes to `smol::unblock`.

pub mod control;
pub mod deliver;
pub mod listen;
pub mod pickup;
pub mod pop3;
pub mod relay;
pub mod smtp;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use smol::{Async, LocalExecutor, Timer};

use crate::auth::users::Users;
use crate::config::{Loaded, Settings};
use crate::mlog;
use crate::policy::{Networks, Router};
use crate::queue::{Queue, QueueOptions};

/// The policy pieces built from one configuration; replaced as a whole on reload, and
/// snapshotted by each session at its start.
pub struct Policy {
    pub settings: Settings,
    /// smtpd_*_restrictions and the access tables they name (reloaded when a file changes).
    pub restrictions: crate::policy::restrictions::RestrictionLists,
    pub tables: RefCell<crate::policy::table::TableSet>,
    /// When the table files were last looked at (see `refresh_tables`).
    tables_checked: Cell<Option<std::time::Instant>>,
    /// The mailbox users, shared with password checks on the thread pool.
    pub users: std::sync::Arc<Users>,
    pub router: Router,
    pub mynetworks: Networks,
    pub bare_newline_exclusions: Networks,
    /// smtpd_client_event_limit_exceptions: clients the anvil limits do not count.
    pub event_limit_exceptions: Networks,
    /// The alias files and what was last loaded from them (see `refresh_aliases`).
    alias_files: RefCell<AliasFiles>,
}

/// (mtime, mtime nsec, size, inode) of a file; None when it is missing.
type FileStamp = Option<(i64, i64, u64, u64)>;

/// The alias_maps files as last looked at.
struct AliasFiles {
    /// (path, (mtime, mtime nsec, size, inode) or None when missing).
    stamps: Vec<(std::path::PathBuf, FileStamp)>,
    checked: Option<std::time::Instant>,
    /// No good table has been loaded yet (a broken file at start): unknown local
    /// recipients get a temporary error instead of 550, and delivery defers them.
    failed: bool,
}

fn alias_stamp(p: &std::path::Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

/// The files of alias_maps (`hash:` etc. stripped; relative paths from config_directory).
pub fn alias_paths(settings: &Settings) -> Vec<std::path::PathBuf> {
    settings
        .alias_maps
        .iter()
        .filter_map(|spec| {
            let spec = spec.trim().trim_end_matches(',');
            if spec.is_empty() {
                return None;
            }
            // A bad map type is reported by load_aliases; keep it as written here.
            Some(
                crate::delivery::route::map_path(spec, &settings.config_directory)
                    .unwrap_or_else(|_| std::path::PathBuf::from(spec)),
            )
        })
        .collect()
}

/// Load alias_maps. A missing file is an empty table (with a warning): a fresh system has
/// no /etc/aliases yet. Ok: the table and warnings; Err: every error, file:line.
pub fn load_aliases(
    settings: &Settings,
) -> Result<(crate::policy::aliases::Aliases, Vec<String>), crate::policy::aliases::AliasError> {
    let mut warnings = Vec::new();
    let mut specs = Vec::new();
    for (spec, path) in settings.alias_maps.iter().zip(alias_paths(settings)) {
        if crate::delivery::route::map_path(spec, &settings.config_directory).is_err() {
            // Let the alias loader report the unsupported type with the file name.
            specs.push(spec.clone());
        } else if path.exists() {
            specs.push(path.display().to_string());
        } else {
            warnings.push(format!("{}: alias file does not exist (no aliases)", path.display()));
        }
    }
    let (a, w) = crate::policy::aliases::Aliases::load_maps(&specs)?;
    warnings.extend(w.iter().map(|d| d.to_string()));
    Ok((a, warnings))
}

impl Policy {
    /// Pick up changed access tables (no postmap, no restart), looking at the files at most
    /// once a second: the stat calls run on the event loop, and a busy server asks for every
    /// recipient. A table with errors keeps its last good version (the error says so).
    pub fn refresh_tables(&self, svc: &str) {
        let now = std::time::Instant::now();
        if self
            .tables_checked
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.tables_checked.set(Some(now));
        for e in self.tables.borrow_mut().refresh() {
            mlog!(svc, "warning: {e}");
        }
    }

    /// The anvil limits from the settings.
    pub fn anvil_limits(&self) -> crate::policy::anvil::Limits {
        let s = &self.settings;
        crate::policy::anvil::Limits {
            connection_count: s.smtpd_client_connection_count_limit,
            connection_rate: s.smtpd_client_connection_rate_limit,
            message_rate: s.smtpd_client_message_rate_limit,
            recipient_rate: s.smtpd_client_recipient_rate_limit,
            window_secs: s.anvil_rate_time_unit_secs.max(1),
            entries_max: crate::limits::ANVIL_CLIENTS_MAX,
        }
    }

    /// Pick up a changed alias file (no newaliases needed), looking at the files at most
    /// once a second. A broken file keeps the last good table; each error is logged with
    /// its file:line.
    pub fn refresh_aliases(&self, svc: &str) {
        let now = std::time::Instant::now();
        {
            let mut files = self.alias_files.borrow_mut();
            if files
                .checked
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            {
                return;
            }
            files.checked = Some(now);
            let stamps: Vec<_> = files.stamps.iter().map(|(p, _)| (p.clone(), alias_stamp(p))).collect();
            if stamps == files.stamps {
                return;
            }
            files.stamps = stamps;
        }
        self.load_aliases_now(svc);
    }

    /// Load alias_maps now (start, change, SIGHUP): on errors keep the table in use.
    fn load_aliases_now(&self, svc: &str) {
        match load_aliases(&self.settings) {
            Ok((a, warnings)) => {
                for w in warnings {
                    mlog!(svc, "warning: {w}");
                }
                mlog!(svc, "aliases loaded: {} names", a.len());
                self.router.set_aliases(std::sync::Arc::new(a));
                self.alias_files.borrow_mut().failed = false;
            }
            Err(e) => {
                for d in &e.errors {
                    mlog!(svc, "error: {d}");
                }
                let failed = self.alias_files.borrow().failed;
                mlog!(
                    svc,
                    "warning: alias_maps has errors; {}",
                    if failed {
                        "no alias table is in use: mail for unknown local names is deferred"
                    } else {
                        "keeping the last good version"
                    }
                );
            }
        }
    }

    /// No good alias table is in use (broken at start): unknown local names are a
    /// temporary failure, not a 550.
    pub fn aliases_failed(&self) -> bool {
        self.alias_files.borrow().failed
    }

    /// After a reload whose alias files are broken: keep the old policy's good table.
    pub fn inherit_aliases(&self, old: &Policy) {
        if self.aliases_failed() && !old.aliases_failed() {
            self.router.set_aliases(old.router.aliases());
            self.alias_files.borrow_mut().failed = false;
        }
    }

    pub fn build(settings: Settings) -> Result<Policy, String> {
        let users = Users::load(&settings.mailbox_users_file).map_err(|e| e.to_string())?;
        let system_users = match crate::privsep::mode() {
            crate::privsep::Mode::Helper => crate::policy::router::SystemUsers::All,
            crate::privsep::Mode::InProcess => {
                crate::policy::router::SystemUsers::OnlyUid(rustix::process::geteuid().as_raw())
            }
        };
        let router = Router::new(
            settings.mydestination.clone(),
            settings.recipient_delimiter.clone(),
            users.clone(),
        )
        .with_system_users(system_users);
        let users = std::sync::Arc::new(users);
        let mynetworks = Networks::parse(&settings.mynetworks).map_err(|e| format!("mynetworks: {e}"))?;
        let bare_newline_exclusions = Networks::parse(&settings.smtpd_forbid_bare_newline_exclusions)
            .map_err(|e| format!("smtpd_forbid_bare_newline_exclusions: {e}"))?;
        let event_limit_exceptions = Networks::parse(&settings.smtpd_client_event_limit_exceptions)
            .map_err(|e| format!("smtpd_client_event_limit_exceptions: {e}"))?;
        let restrictions = crate::policy::restrictions::RestrictionLists::from_settings(&settings)?;
        let mut tables = crate::policy::table::TableSet::new(&settings.config_directory);
        for spec in restrictions.table_specs() {
            tables.add(&spec).map_err(|e| e.to_string())?;
        }
        let stamps = alias_paths(&settings)
            .into_iter()
            .map(|p| {
                let st = alias_stamp(&p);
                (p, st)
            })
            .collect();
        let policy = Policy {
            settings,
            restrictions,
            tables: RefCell::new(tables),
            tables_checked: Cell::new(None),
            users,
            router,
            mynetworks,
            bare_newline_exclusions,
            event_limit_exceptions,
            alias_files: RefCell::new(AliasFiles {
                stamps,
                checked: Some(std::time::Instant::now()),
                failed: true,
            }),
        };
        policy.load_aliases_now("master");
        Ok(policy)
    }
}

/// A loaded relay configuration: the policy it came from, when, and the data.
pub type CachedRelayConf = (Rc<Policy>, std::time::Instant, Rc<relay::RelayConf>);

/// Process-wide state of the daemon.
pub struct Ctx {
    pub ex: Rc<LocalExecutor<'static>>,
    pub policy: RefCell<Rc<Policy>>,
    pub queue: Queue,
    pub sessions: Cell<usize>,
    pub next_sid: Cell<u64>,
    pub deliveries: Cell<usize>,
    pub delivery_seq: Cell<u64>,
    pub stopping: Cell<bool>,
    /// Notified on shutdown; sessions waiting for input end with 421.
    pub stop: event_listener::Event,
    /// Notified when a session or a delivery ends (shutdown waits for them).
    pub idle: event_listener::Event,
    /// The server certificate (None: smtpd_tls_cert_file/key_file empty: no TLS).
    pub tls: RefCell<Option<Rc<tls::TlsSource>>>,
    /// Per-client connection, message and recipient counts (smtpd_client_*_limit).
    pub anvil: RefCell<crate::policy::anvil::Anvil>,
    /// The relay's loaded maps and TLS roots, with the policy they came from and when
    /// (see net::deliver::relay_conf).
    pub relay_conf: RefCell<Option<CachedRelayConf>>,
    /// The password-checking thread.
    pub verifier: crate::auth::verify::Verifier,
    /// Failed logins per client (SMTP AUTH and POP3 share it).
    pub throttle: RefCell<crate::auth::throttle::Throttle>,
    /// The main.cf this daemon was started with (reloads read it again).
    pub config_file: std::path::PathBuf,
}

impl Ctx {
    pub fn policy(&self) -> Rc<Policy> {
        self.policy.borrow().clone()
    }

    /// The TLS configuration for a new session, noticing replaced certificate files.
    pub fn tls_config(&self) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        let src = self.tls.borrow().clone()?;
        let cfg = src.current(std::time::Instant::now());
        if let Some(w) = src.take_warning() {
            mlog!("master", "warning: TLS: {w}");
        }
        cfg
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        loop {
            if self.stopping.get() {
                return;
            }
            let l = self.stop.listen();
            if self.stopping.get() {
                return;
            }
            l.await;
        }
    }
}

/// One counted session (the smtpd_sessions_max cap). Dropping it frees the place and wakes
/// a shutdown waiting for sessions to end; a session drops it before lingering.
pub struct SessionSlot {
    ctx: Rc<Ctx>,
    /// Counted by anvil (released with the slot).
    anvil_ip: Option<std::net::IpAddr>,
}

impl SessionSlot {
    pub fn take(ctx: &Rc<Ctx>) -> SessionSlot {
        ctx.sessions.set(ctx.sessions.get() + 1);
        SessionSlot {
            ctx: ctx.clone(),
            anvil_ip: None,
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.ctx.sessions.set(self.ctx.sessions.get().saturating_sub(1));
        if let Some(ip) = self.anvil_ip {
            self.ctx.anvil.borrow_mut().disconnect(ip);
        }
        self.ctx.idle.notify(usize::MAX);
    }
}

fn load_config(path: &std::path::Path) -> Result<Loaded, String> {
    crate::config::load(path).map_err(|e| format!("{}: {}", path.display(), e))
}

/// `poshta serve`: returns the exit status.
pub fn serve(config_file: &std::path::Path) -> i32 {
    // Files the daemon creates are its own (queue segments, mail) unless it sets a mode on
    // purpose (the pickup socket and maildrop/): Postfix's master does the same. The queue
    // directory is searchable by local users (net::pickup), so this is what keeps queued
    // mail unreadable to them.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let loaded = match load_config(config_file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("poshta: fatal: {e}");
            return 1;
        }
    };
    let s = loaded.settings.clone();
    if let Err(e) = crate::log::init(&s.myhostname, &s.syslog_name, s.maillog_file.as_deref()) {
        eprintln!("poshta: fatal: maillog_file: {e}");
        return 1;
    }
    for d in &loaded.diagnostics {
        mlog!("master", "{d}");
    }
    if loaded.has_errors() {
        mlog!(
            "master",
            "fatal: {}: configuration errors; run `poshta check`",
            config_file.display()
        );
        return 1;
    }
    for dir in [&s.queue_directory, &s.virtual_mailbox_base] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            mlog!("master", "fatal: create {}: {}", dir.display(), e);
            return 1;
        }
    }
    // Started as root: the ports are bound as root below, then a privileged delivery
    // helper is started and this process becomes mail_owner (crate::privsep).
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        if let Err(e) = crate::privsep::prepare_dirs(&s) {
            mlog!("master", "fatal: {e}");
            return 1;
        }
    }
    let mut listeners = Vec::new();
    let services = [
        (Service::Smtp(smtp::Kind::Smtp), &s.smtpd_listen),
        (Service::Smtp(smtp::Kind::Submission), &s.submission_listen),
        (Service::Smtp(smtp::Kind::Submissions), &s.submissions_listen),
        (Service::Pop3 { implicit_tls: false }, &s.pop3d_listen),
        (Service::Pop3 { implicit_tls: true }, &s.pop3s_listen),
    ];
    for (service, addrs) in services {
        for addr in addrs.iter() {
            match listen::bind(*addr).and_then(Async::new) {
                Ok(l) => listeners.push((service, l)),
                Err(e) => {
                    mlog!("master", "fatal: bind {addr} ({}): {e}", service.name());
                    return 1;
                }
            }
        }
    }
    let tls_source = match (&s.smtpd_tls_cert_file, &s.smtpd_tls_key_file) {
        (Some(cert), Some(key)) if s.smtpd_tls_security_level != crate::config::TlsSecurityLevel::None => {
            let src = tls::TlsSource::new(cert.clone(), key.clone(), std::time::Instant::now());
            if let Some(w) = src.take_warning() {
                mlog!("master", "warning: TLS: {w}; STARTTLS is not offered and the implicit-TLS ports refuse connections until the files are fixed (`poshta init` makes a self-signed certificate)");
            }
            Some(Rc::new(src))
        }
        _ => None,
    };
    if as_root {
        if let Err(e) = crate::privsep::start_helper(config_file) {
            mlog!("master", "fatal: {e}");
            return 1;
        }
        match crate::privsep::drop_privileges(&s.mail_owner) {
            Ok((uid, gid)) => mlog!(
                "master",
                "running as mail_owner {} (uid={uid} gid={gid}); local delivery through the privileged helper",
                s.mail_owner
            ),
            Err(e) => {
                mlog!("master", "fatal: {e}");
                return 1;
            }
        }
    }
    let policy = match Policy::build(s.clone()) {
        Ok(p) => p,
        Err(e) => {
            mlog!("master", "fatal: {e}");
            return 1;
        }
    };
    let opts = QueueOptions {
        minimal_backoff_secs: s.minimal_backoff_time_secs,
        maximal_backoff_secs: s.maximal_backoff_time_secs,
        segment_bytes_target: crate::limits::QUEUE_SEGMENT_BYTES_TARGET,
    };
    let (queue, report) = match Queue::open(&s.queue_directory, opts, crate::time::now_unix()) {
        Ok(q) => q,
        Err(e) => {
            mlog!("master", "fatal: {e}");
            return 1;
        }
    };
    mlog!(
        "master",
        "queue recovered: segments={} messages={} discarded_uncommitted={}{}",
        report.segments,
        report.messages,
        report.discarded_uncommitted,
        match &report.truncated_tail {
            Some((p, off)) => format!(" truncated_tail={}@{}", p.display(), off),
            None => String::new(),
        }
    );
    let control = match control::bind(&s.queue_directory) {
        Ok(l) => l,
        Err(e) => {
            mlog!(
                "master",
                "fatal: control socket {}: {e}",
                control::socket_path(&s.queue_directory).display()
            );
            return 1;
        }
    };
    // Local submission (sendmail): bound with the control socket, as the user the loop runs as
    // (mail_owner after a privilege drop: it owns the queue directory).
    // Without it local programs still work through maildrop/.
    let pickup_listener = match pickup::bind(&s.queue_directory) {
        Ok(l) => Some(l),
        Err(e) => {
            mlog!(
                "master",
                "warning: pickup socket {}: {e}; local mail is taken from maildrop only",
                pickup::socket_path(&s.queue_directory).display()
            );
            None
        }
    };
    mlog!(
        "master",
        "config: file={} myhostname={} mydestination={} mynetworks={} smtpd_listen={} submission_listen={} submissions_listen={} pop3d_listen={} pop3s_listen={} tls={} queue_directory={} virtual_mailbox_base={} message_size_limit={} delivery_paused={}",
        config_file.display(),
        s.myhostname,
        s.mydestination.join(","),
        s.mynetworks.join(","),
        join_addrs(&s.smtpd_listen),
        join_addrs(&s.submission_listen),
        join_addrs(&s.submissions_listen),
        join_addrs(&s.pop3d_listen),
        join_addrs(&s.pop3s_listen),
        match &tls_source {
            Some(t) => t.cert_file().display().to_string(),
            None => "off".to_string(),
        },
        s.queue_directory.display(),
        s.virtual_mailbox_base.display(),
        s.message_size_limit,
        if s.delivery_paused { "yes" } else { "no" },
    );
    let verifier = match crate::auth::verify::Verifier::start() {
        Ok(v) => v,
        Err(e) => {
            mlog!("master", "fatal: start the password thread: {e}");
            return 1;
        }
    };
    let anvil_limits = policy.anvil_limits();
    let ex = Rc::new(LocalExecutor::new());
    let ctx = Rc::new(Ctx {
        ex: ex.clone(),
        policy: RefCell::new(Rc::new(policy)),
        queue,
        sessions: Cell::new(0),
        next_sid: Cell::new(1),
        deliveries: Cell::new(0),
        delivery_seq: Cell::new(0),
        stopping: Cell::new(false),
        stop: event_listener::Event::new(),
        idle: event_listener::Event::new(),
        tls: RefCell::new(tls_source),
        anvil: RefCell::new(crate::policy::anvil::Anvil::new(anvil_limits)),
        relay_conf: RefCell::new(None),
        verifier,
        throttle: RefCell::new(crate::auth::throttle::Throttle::new(
            s.auth_failure_limit,
            s.auth_failure_window_secs,
            s.auth_failure_penalty_secs,
            crate::limits::AUTH_THROTTLE_ENTRIES_MAX,
        )),
        config_file: config_file.to_path_buf(),
    });
    mlog!(
        "master",
        "daemon started -- version {}, configuration {}",
        env!("CARGO_PKG_VERSION"),
        config_file.display()
    );
    ex.spawn(control::serve(ctx.clone(), control)).detach();
    // Makes maildrop/ as the user the loop runs as, so it must start after a privilege drop.
    ex.spawn(pickup::serve(ctx.clone(), pickup_listener, s.queue_directory.clone()))
        .detach();
    // The loop's log lines are kept and written before the next reply (send_all) or after
    // each poll of the executor (up to 200 ready tasks), whichever comes first: see crate::log.
    crate::log::batch_this_thread();
    let mut main = Box::pin(ex.run(run(ctx, listeners, config_file.to_path_buf())));
    let r = smol::block_on(std::future::poll_fn(move |cx| {
        let r = std::future::Future::poll(main.as_mut(), cx);
        crate::log::flush();
        r
    }));
    crate::log::flush();
    r
}

/// Read buffers kept for the next sessions (on the event loop's thread only).
const READ_BUFFERS_KEPT: usize = 8;

thread_local! {
    static READ_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A session's socket read buffer ([`crate::limits::SESSION_READ_BYTES`]), taken from a
/// small pool and given back when dropped. With one short session per message (smtp-source,
/// cron jobs, scanners), allocating it per session made musl's allocator map and unmap memory
/// every time; in a multi-threaded process each munmap interrupts the other cores to flush
/// their TLBs. The pool holds at most `READ_BUFFERS_KEPT` (8, 128 KiB).
pub struct ReadBuf(Vec<u8>);

impl ReadBuf {
    pub fn take() -> ReadBuf {
        let v = READ_BUFFERS.with_borrow_mut(Vec::pop);
        ReadBuf(v.unwrap_or_else(|| vec![0u8; crate::limits::SESSION_READ_BYTES]))
    }
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // A buffer holds no secret the next session could see: each read overwrites what
        // it returns, and only those bytes are used.
        READ_BUFFERS.with_borrow_mut(|pool| {
            if pool.len() < READ_BUFFERS_KEPT {
                pool.push(v);
            }
        });
    }
}

/// What a session's wait for client input ended with.
pub enum Got {
    Data(usize),
    Eof,
    /// The idle timer (smtpd_timeout, pop3d_autologout) fired.
    Timeout,
    /// The daemon is shutting down.
    Stop,
}

/// What a session waits on besides its socket: its idle timer and shutdown, made once.
///
/// A new Timer and a new shutdown listener for every read (and a Timer for every write)
/// were about a fifth of the allocations of a message: async-io files each timer in a map
/// and takes it out again. The session's one timer stays armed; it is set again only when
/// it fires before the idle deadline, which each wait for input moves.
pub struct Waits<'a> {
    idle: Idle,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>,
    /// `stop` completed (it must not be polled again).
    stopped: bool,
}

struct Idle {
    timer: Timer,
    /// The timer is set, at this deadline or an earlier one (the deadline only moves
    /// later), so it fires at or before the current one.
    armed: bool,
    timeout: Duration,
    deadline: std::time::Instant,
}

impl Idle {
    /// Resolves once `deadline` has passed.
    async fn expired(&mut self) {
        loop {
            if !self.armed {
                self.timer.set_at(self.deadline);
                self.armed = true;
            }
            (&mut self.timer).await;
            self.armed = false;
            if std::time::Instant::now() >= self.deadline {
                return;
            }
        }
    }
}

impl<'a> Waits<'a> {
    /// `timeout`: how long a wait for input may last (smtpd_timeout, pop3d_autologout).
    pub fn new(ctx: &'a Ctx, timeout: Duration) -> Waits<'a> {
        let deadline = std::time::Instant::now() + timeout;
        Waits {
            idle: Idle {
                timer: Timer::at(deadline),
                armed: true,
                timeout,
                deadline,
            },
            stop: Box::pin(ctx.stopped()),
            stopped: false,
        }
    }
}

/// Wait for client bytes, the idle timer, or shutdown — whichever comes first.
pub async fn next_input(stream: &mut tls::Stream, buf: &mut [u8], waits: &mut Waits<'_>) -> Got {
    use smol::io::AsyncReadExt;
    if waits.stopped {
        return Got::Stop;
    }
    let Waits { idle, stop, stopped } = waits;
    // The idle period starts now (the timer, armed earlier, fires early and is set again).
    idle.deadline = std::time::Instant::now() + idle.timeout;
    let got = smol::future::or(
        async {
            match stream.read(buf).await {
                Ok(0) | Err(_) => Got::Eof,
                Ok(n) => Got::Data(n),
            }
        },
        smol::future::or(
            async {
                idle.expired().await;
                Got::Timeout
            },
            async {
                stop.as_mut().await;
                Got::Stop
            },
        ),
    )
    .await;
    *stopped = matches!(got, Got::Stop);
    got
}

/// Send bytes to the client within `timeout` (a client that stops reading must not hold a
/// session forever). False: the connection is gone or stuck.
pub async fn send_all(stream: &mut tls::Stream, bytes: &[u8], timeout: Duration) -> bool {
    use smol::io::AsyncWriteExt;
    if bytes.is_empty() {
        return true;
    }
    // What the loop logged so far goes out before the reply: whoever sees a reply finds its
    // log line (crate::log keeps the loop's lines only until the next reply or poll).
    crate::log::flush();
    let mut write = std::pin::pin!(stream.write_all(bytes));
    // Most replies fit in the socket buffer at once: no timer is made for those.
    if let Some(r) = smol::future::poll_once(write.as_mut()).await {
        return r.is_ok();
    }
    let wrote = smol::future::or(async { write.await.map(|_| true) }, async {
        Timer::after(timeout).await;
        Ok(false)
    })
    .await;
    matches!(wrote, Ok(true))
}

/// Refuse a connection before any session: send `line` (if the client can read plaintext)
/// within a few seconds, then close.
pub async fn refuse_connection(stream: Async<std::net::TcpStream>, line: Option<&str>) {
    if let Some(line) = line {
        let mut stream = tls::Stream::Plain(stream);
        send_all(&mut stream, line.as_bytes(), Duration::from_secs(5)).await;
    }
}

fn join_addrs(a: &[SocketAddr]) -> String {
    a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Smtp(smtp::Kind),
    Pop3 { implicit_tls: bool },
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp(smtp::Kind::Smtp) => "smtpd_listen",
            Service::Smtp(smtp::Kind::Submission) => "submission_listen",
            Service::Smtp(smtp::Kind::Submissions) => "submissions_listen",
            Service::Pop3 { implicit_tls: false } => "pop3d_listen",
            Service::Pop3 { implicit_tls: true } => "pop3s_listen",
        }
    }
}

async fn run(ctx: Rc<Ctx>, listeners: Vec<(Service, Async<TcpListener>)>, config_file: std::path::PathBuf) -> i32 {
    let q = ctx.queue.clone();
    ctx.ex.spawn(async move { q.run_writer().await }).detach();
    ctx.ex.spawn(deliver::runner(ctx.clone())).detach();
    for (service, l) in listeners {
        ctx.ex.spawn(accept_loop(ctx.clone(), service, l)).detach();
    }
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ]);
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            mlog!("master", "fatal: signals: {e}");
            return 1;
        }
    };
    use smol::stream::StreamExt;
    while let Some(sig) = signals.next().await {
        match sig {
            Ok(async_signal::Signal::Hup) => {
                let _ = reload(&ctx, &config_file);
            }
            Ok(sig) => {
                mlog!("master", "terminating on signal {:?}", sig);
                break;
            }
            Err(e) => mlog!("master", "warning: signal: {e}"),
        }
    }
    shutdown(&ctx).await
}

/// SIGHUP and the control socket's RELOAD: read main.cf and the users file again; on any
/// error keep the running policy (Err says why, also logged). Listeners are not re-bound (a
/// changed smtpd_listen needs a restart; we say so).
pub(crate) fn reload(ctx: &Rc<Ctx>, config_file: &std::path::Path) -> Result<(), String> {
    let loaded = match load_config(config_file) {
        Ok(l) => l,
        Err(e) => {
            mlog!("master", "warning: reload: {e}; keeping the running configuration");
            return Err(e.to_string());
        }
    };
    for d in &loaded.diagnostics {
        mlog!("master", "warning: reload: {d}");
    }
    if loaded.has_errors() {
        mlog!(
            "master",
            "warning: reload: configuration errors; keeping the running configuration"
        );
        return Err(format!("configuration errors in {}", config_file.display()));
    }
    let old = ctx.policy();
    if old.settings.smtpd_listen != loaded.settings.smtpd_listen {
        mlog!(
            "master",
            "warning: reload: smtpd_listen changed; restart poshta to apply it"
        );
    }
    let new_tls = (
        loaded.settings.smtpd_tls_cert_file.clone(),
        loaded.settings.smtpd_tls_key_file.clone(),
    );
    let tls_off = loaded.settings.smtpd_tls_security_level == crate::config::TlsSecurityLevel::None;
    match Policy::build(loaded.settings) {
        Ok(p) => {
            p.inherit_aliases(&old);
            *ctx.policy.borrow_mut() = Rc::new(p);
            // SIGHUP also re-reads the certificate (new sessions get it; running ones keep
            // theirs); changed file names start a new source.
            let now = std::time::Instant::now();
            let current = ctx.tls.borrow().clone();
            let next = match (new_tls, current) {
                _ if tls_off => None,
                ((Some(cert), Some(key)), Some(src)) if src.cert_file() == cert && src.key_file() == key => {
                    if let Err(e) = src.reload(now) {
                        mlog!("master", "warning: reload: TLS: {e}; keeping the previous certificate");
                    }
                    Some(src)
                }
                ((Some(cert), Some(key)), _) => {
                    let src = tls::TlsSource::new(cert, key, now);
                    if let Some(w) = src.take_warning() {
                        mlog!("master", "warning: reload: TLS: {w}");
                    }
                    Some(Rc::new(src))
                }
                _ => None,
            };
            *ctx.tls.borrow_mut() = next;
            mlog!(
                "master",
                "reload -- version {}, configuration {}",
                env!("CARGO_PKG_VERSION"),
                config_file.display()
            );
            // A change of delivery_paused must wake the runner.
            ctx.queue.poke();
            // The helper reads main.cf and the aliases itself.
            if let Some(c) = crate::privsep::client() {
                ctx.ex
                    .spawn(async move {
                        if let Err(e) = smol::unblock(move || c.reload()).await {
                            mlog!("master", "warning: reload: delivery helper: {e}");
                        }
                    })
                    .detach();
            }
        }
        Err(e) => {
            mlog!("master", "warning: reload: {e}; keeping the running configuration");
            return Err(e);
        }
    }
    Ok(())
}

/// Stop accepting, let sessions finish what they are writing (bounded), flush the queue.
async fn shutdown(ctx: &Rc<Ctx>) -> i32 {
    ctx.stopping.set(true);
    ctx.stop.notify(usize::MAX);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ctx.sessions.get() > 0 || ctx.deliveries.get() > 0 {
        let l = ctx.idle.listen();
        if ctx.sessions.get() == 0 && ctx.deliveries.get() == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            mlog!(
                "master",
                "warning: shutdown: {} sessions and {} deliveries still running",
                ctx.sessions.get(),
                ctx.deliveries.get()
            );
            break;
        }
        smol::future::or(l, async {
            Timer::after(left).await;
        })
        .await;
    }
    match ctx.queue.sync().await {
        Ok(()) => {
            mlog!("master", "stopped");
            0
        }
        Err(e) => {
            mlog!("master", "warning: shutdown: queue sync: {e}");
            1
        }
    }
}

/// Accept one connection. accept4(2) makes the socket non-blocking itself: async-io's
/// `accept` takes it blocking and switches it with one more system call per connection.
async fn accept(listener: &Async<TcpListener>) -> std::io::Result<(Async<TcpStream>, SocketAddr)> {
    use rustix::net::SocketFlags;
    use std::io::ErrorKind;
    let (fd, peer) = loop {
        let r = listener
            .read_with(|l| {
                Ok(rustix::net::acceptfrom_with(
                    l,
                    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                )?)
            })
            .await;
        match r {
            // A signal is no error (std's accept retries it too), nor is a client that left
            // before its connection was taken: try the next one (or wait for one).
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
            r => break r?,
        }
    };
    let stream = TcpStream::from(fd);
    let peer = match peer.map(SocketAddr::try_from) {
        Some(Ok(a)) => a,
        _ => stream.peer_addr()?,
    };
    Ok((Async::new_nonblocking(stream)?, peer))
}

async fn accept_loop(ctx: Rc<Ctx>, service: Service, listener: Async<TcpListener>) {
    // One wait for shutdown for the whole loop, not a new one (and its allocation) for
    // every connection. It is polled again only while it has not completed.
    let mut stop = std::pin::pin!(ctx.stopped());
    loop {
        let accepted = smol::future::or(async { Some(accept(&listener).await) }, async {
            stop.as_mut().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok((stream, peer)) => {
                // Replies are written whole; Nagle would only hold the last piece of one
                // (a POP3 message's final "." line) back until the client's delayed ACK
                // (~40 ms a message, bench/pop3-fetch.sh).
                let _ = stream.get_ref().set_nodelay(true);
                let max = ctx.policy().settings.smtpd_sessions_max;
                let full = ctx.sessions.get() >= max;
                match service {
                    Service::Smtp(kind) if full => ctx.ex.spawn(smtp::refuse(ctx.clone(), stream, peer, kind)).detach(),
                    Service::Smtp(kind) => {
                        let ip = smtp::client_ip(&peer);
                        let policy = ctx.policy();
                        let counted = !policy.event_limit_exceptions.contains(ip);
                        let verdict = if counted {
                            let mut anvil = ctx.anvil.borrow_mut();
                            anvil.set_limits(policy.anvil_limits());
                            anvil.connect(ip, crate::time::now_unix())
                        } else {
                            Ok(())
                        };
                        match verdict {
                            Ok(()) => {
                                let mut slot = SessionSlot::take(&ctx);
                                slot.anvil_ip = counted.then_some(ip);
                                ctx.ex
                                    .spawn(smtp::session(ctx.clone(), stream, peer, slot, kind))
                                    .detach();
                            }
                            Err(exceeded) => ctx
                                .ex
                                .spawn(smtp::refuse_limited(ctx.clone(), stream, ip, kind, exceeded))
                                .detach(),
                        }
                    }
                    Service::Pop3 { implicit_tls } if full => {
                        ctx.ex.spawn(pop3::refuse(stream, peer, implicit_tls)).detach()
                    }
                    Service::Pop3 { implicit_tls } => {
                        let slot = SessionSlot::take(&ctx);
                        ctx.ex
                            .spawn(pop3::session(ctx.clone(), stream, peer, slot, implicit_tls))
                            .detach();
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                mlog!("smtpd", "warning: accept: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}
