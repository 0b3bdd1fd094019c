//! TLS for the listeners: server configuration from PEM files, a certificate source that
//! notices replaced files, and a session stream that is plain TCP or TLS over it.
//!
//! Used by SMTP (STARTTLS on 25/587, RFC 3207; implicit TLS on 465, RFC 8314 §3.3) and
//! POP3 (STLS on 110, RFC 2595 §4; implicit TLS on 995, RFC 8314 §3.1).
//!
//! # Crypto choice
//!
//! rustls 0.23 with the `ring` provider, TLS 1.2 and 1.3 only (RFC 8996 deprecates 1.0 and
//! 1.1). Not aws-lc-rs (rustls' default): it adds 1.3–2.1 MB to a static binary and needs
//! cmake; ring needs only a C cross compiler and cross-builds for aarch64 and armv7 musl
//! with Debian's gcc cross packages. The provider is named explicitly
//! (`builder_with_provider`) so no process-wide default provider has to be installed. No
//! client certificates are asked for.
//!
//! # Files
//!
//! `smtpd_tls_cert_file`: PEM, one or more `CERTIFICATE` blocks, the server's certificate
//! first, then its intermediates (a Let's Encrypt `fullchain.pem` as is). Other PEM blocks
//! in it are ignored. `smtpd_tls_key_file`: PEM, the first `PRIVATE KEY` (PKCS#8),
//! `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1) block; it must match the
//! certificate. Each file is read up to [`PEM_FILE_BYTES_MAX`] bytes. Errors name the file.
//!
//! # Replacing the certificate
//!
//! [`TlsSource`] stats both files at most every [`RECHECK_INTERVAL`] and reloads them when
//! their (mtime, length, inode) changed, so `certbot` renewing the files (or an admin
//! copying new ones over) takes effect for new sessions within seconds, with no signal.
//! Sessions already running keep the certificate they started with. A failed reload keeps
//! the previous configuration and yields one warning per change of the files. Replace
//! the files by renaming new ones into place where you can: writing them in place may be
//! seen half-written (that reload fails, is warned about, and the next change of the files
//! is picked up).
//!
//! # STARTTLS / STLS and buffered input
//!
//! [`Stream::upgrade`] turns a plain stream into TLS after the `220 Ready to start TLS`
//! (or `+OK`) reply has been written. **The caller must discard every plaintext byte it
//! read from the socket but had not yet processed when the client sent STARTTLS/STLS**
//! (RFC 3207 §4.2: the server MUST discard any knowledge obtained from the client before
//! the TLS negotiation; CVE-2011-0411, "STARTTLS command injection"). This module cannot
//! do it: the bytes are in the caller's buffer, not in the socket. The TLS handshake reads
//! straight from the socket, so nothing the client sent after STARTTLS is lost.
//!
//! # Bounds
//!
//! Each handshake is limited in time by the caller's timeout (`smtpd_starttls_timeout`);
//! rustls bounds the memory of a handshake (records over 16 KiB + overhead and handshake
//! messages over 64 KiB are errors) and the buffered outgoing plaintext (64 KiB by default).
//! Handshake garbage, a client that closes during the handshake or never finishes it give
//! [`TlsError`], never a panic.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smol::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use smol::{Async, Timer};

/// A certificate or key file larger than this is refused (a long chain is a few KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// [`TlsSource::current`] looks at the files at most this often.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Bound on sending close_notify and shutting down the write side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The ring crypto provider, named explicitly (see the module doc).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if buf.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{what} {}: larger than {PEM_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

/// Build the server configuration from a PEM certificate chain and a PEM private key.
/// Errors are one line naming the file and what is wrong with it.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let cert_pem = read_pem_file(cert, "certificate file")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate file {}: bad PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {}: no CERTIFICATE block found",
            cert.display()
        ));
    }
    let key_pem = read_pem_file(key, "key file")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "key file {}: no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block found",
            key.display()
        ),
        e => format!("key file {}: bad PEM: {e}", key.display()),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "key file {} does not match certificate file {}",
                key.display(),
                cert.display()
            ),
            e => format!("certificate file {} / key file {}: {e}", cert.display(), key.display()),
        })?;
    Ok(Arc::new(config))
}

/// What identifies one version of a file: changes when it is rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_secs: i64,
    mtime_nsecs: i64,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // metadata follows symlinks: a certbot `live/` link switched to a new target changes
    // the target's inode.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_secs: m.mtime(),
        mtime_nsecs: m.mtime_nsec(),
        len: m.len(),
        inode: m.ino(),
    })
}

struct SourceState {
    config: Option<Arc<ServerConfig>>,
    /// Stamps of the files at the last load attempt (successful or not).
    stamps: (Option<Stamp>, Option<Stamp>),
    checked_at: Option<Instant>,
    /// A failed load not yet handed to the shell.
    warning: Option<String>,
}

/// The current TLS configuration, reloaded when the certificate or key file changes.
/// Single-threaded (interior mutability with `RefCell`; no borrow is held across an await).
pub struct TlsSource {
    cert: PathBuf,
    key: PathBuf,
    state: RefCell<SourceState>,
}

impl TlsSource {
    /// Load the files now. A failure is not fatal here: [`TlsSource::current`] gives None
    /// (no TLS offered) until the files are fixed, and [`TlsSource::take_warning`] says why.
    pub fn new(cert: PathBuf, key: PathBuf, now: Instant) -> TlsSource {
        let src = TlsSource {
            cert,
            key,
            state: RefCell::new(SourceState {
                config: None,
                stamps: (None, None),
                checked_at: None,
                warning: None,
            }),
        };
        src.load(now);
        src
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert
    }

    pub fn key_file(&self) -> &Path {
        &self.key
    }

    /// The configuration for a new session (None: no usable certificate yet). Looks at the
    /// files at most every [`RECHECK_INTERVAL`] of `now`, and reloads them when they changed.
    pub fn current(&self, now: Instant) -> Option<Arc<ServerConfig>> {
        let due = {
            let st = self.state.borrow();
            match st.checked_at {
                Some(t) => now.saturating_duration_since(t) >= RECHECK_INTERVAL,
                None => true,
            }
        };
        if due {
            let stamps = (stamp(&self.cert), stamp(&self.key));
            let changed = {
                let mut st = self.state.borrow_mut();
                st.checked_at = Some(now);
                st.stamps != stamps
            };
            if changed {
                self.load(now);
            }
        }
        self.state.borrow().config.clone()
    }

    /// Reload now, whether or not the files changed (SIGHUP). Err (also kept for
    /// [`TlsSource::take_warning`]) when the files are unusable; the old configuration stays.
    pub fn reload(&self, now: Instant) -> Result<(), String> {
        self.load(now);
        match &self.state.borrow().warning {
            Some(w) => Err(w.clone()),
            None => Ok(()),
        }
    }

    /// A warning about a failed load, once (the shell logs it).
    pub fn take_warning(&self) -> Option<String> {
        self.state.borrow_mut().warning.take()
    }

    fn load(&self, now: Instant) {
        // Stamp before reading: a change during the read is seen at the next check.
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let result = load_server_config(&self.cert, &self.key);
        let mut st = self.state.borrow_mut();
        st.stamps = stamps;
        st.checked_at = Some(now);
        match result {
            Ok(c) => {
                st.config = Some(c);
                st.warning = None;
            }
            Err(e) => {
                st.warning = Some(if st.config.is_some() {
                    format!("{e}; keeping the previous certificate")
                } else {
                    format!("{e}; TLS is not available")
                });
            }
        }
    }
}

/// Why a TLS handshake failed. The session logs it and closes the connection.
#[derive(Debug)]
pub enum TlsError {
    /// The handshake did not complete within the timeout.
    Timeout,
    /// The client closed the connection during the handshake.
    Closed,
    /// The handshake failed (bad data, no common version or cipher, alert from the client)
    /// or the socket failed.
    Handshake(io::Error),
    /// STARTTLS on a stream that is already TLS.
    AlreadyTls,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Timeout => write!(f, "timeout during TLS handshake"),
            TlsError::Closed => write!(f, "lost connection during TLS handshake"),
            TlsError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            TlsError::AlreadyTls => write!(f, "TLS already active"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The negotiated protocol and cipher, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2` (OpenSSL's spelling, as Postfix logs it).
    pub version: String,
    /// The cipher as OpenSSL names it (`TLS_AES_256_GCM_SHA384`, `ECDHE-RSA-AES128-GCM-SHA256`).
    pub cipher: String,
    /// Symmetric key bits.
    pub bits: u16,
}

impl std::fmt::Display for TlsInfo {
    /// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`: the tail of Postfix's
    /// `Anonymous TLS connection established from unknown[1.2.3.4]: ...` line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} with cipher {} ({}/{} bits)",
            self.version, self.cipher, self.bits, self.bits
        )
    }
}

impl TlsInfo {
    fn of(conn: &rustls::ServerConnection) -> Option<TlsInfo> {
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            v => format!("{v:?}"),
        };
        let suite = conn.negotiated_cipher_suite()?.suite();
        let (cipher, bits) = openssl_cipher(suite);
        Some(TlsInfo { version, cipher, bits })
    }
}

/// rustls' (IANA) cipher suite name in OpenSSL's spelling, with its key bits.
fn openssl_cipher(suite: rustls::CipherSuite) -> (String, u16) {
    use rustls::CipherSuite as C;
    let (name, bits) = match suite {
        // TLS 1.3 suites: OpenSSL uses the RFC 8446 §B.4 names.
        C::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        C::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        C::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-RSA-CHACHA20-POLY1305", 256),
        other => {
            return (
                other
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{other:?}")),
                0,
            )
        }
    };
    (name.to_string(), bits)
}

/// A session's connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(Async<TcpStream>),
    Tls(Box<futures_rustls::server::TlsStream<Async<TcpStream>>>),
}

impl Stream {
    fn tcp(&self) -> &Async<TcpStream> {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().get_ref().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().get_ref().local_addr()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Protocol and cipher of a TLS stream (None for plain).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => TlsInfo::of(s.get_ref().1),
        }
    }

    /// The name the client asked for with SNI, if any.
    pub fn sni(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.server_name().map(str::to_string),
        }
    }

    /// End the write side: for TLS send close_notify (RFC 8446 §6.1), then shut down the
    /// TCP write side. Bounded by a fixed few seconds (a client that reads nothing).
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        let closing = async { self.close().await };
        let r = smol::future::or(closing, async {
            Timer::after(CLOSE_TIMEOUT).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timeout closing the connection",
            ))
        })
        .await;
        // async-io's poll_close only flushes: the FIN must be sent by hand, or a client
        // that reads until end of stream waits for the linger timeout.
        let fin = self.tcp().get_ref().shutdown(std::net::Shutdown::Write);
        r.and(fin)
    }

    /// STARTTLS (RFC 3207) / STLS (RFC 2595 §4): run the server side of a TLS handshake on
    /// this plain stream, bounded by `timeout`. On error the connection is dropped (closed).
    ///
    /// **The caller must discard all plaintext input it buffered before the upgrade** (see
    /// the module doc; RFC 3207 §4.2), and forget the session state (EHLO, AUTH).
    pub async fn upgrade(self, config: Arc<ServerConfig>, timeout: Duration) -> Result<Stream, TlsError> {
        match self {
            Stream::Plain(tcp) => accept_tls(tcp, config, timeout).await,
            Stream::Tls(_) => Err(TlsError::AlreadyTls),
        }
    }
}

/// Implicit TLS (port 465, RFC 8314 §3.3; port 995, RFC 8314 §3.1): handshake first, bounded by `timeout`.
pub async fn accept_tls(
    tcp: Async<TcpStream>,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Stream, TlsError> {
    let acceptor = futures_rustls::TlsAcceptor::from(config);
    let handshake = async {
        match acceptor.accept(tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) if is_closed(&e) => Err(TlsError::Closed),
            Err(e) => Err(TlsError::Handshake(e)),
        }
    };
    smol::future::or(handshake, async {
        Timer::after(timeout).await;
        Err(TlsError::Timeout)
    })
    .await
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_follow_openssl() {
        use rustls::CipherSuite as C;
        assert_eq!(
            openssl_cipher(C::TLS13_AES_256_GCM_SHA384),
            ("TLS_AES_256_GCM_SHA384".to_string(), 256)
        );
        assert_eq!(
            openssl_cipher(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("ECDHE-RSA-AES128-GCM-SHA256".to_string(), 128)
        );
        // Every suite the ring provider offers has a name and key bits.
        for s in rustls::crypto::ring::default_provider().cipher_suites {
            let (name, bits) = openssl_cipher(s.suite());
            assert!(bits > 0, "{name}");
        }
        let info = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
        };
        assert_eq!(
            info.to_string(),
            "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = crate::testutil::TempDir::new(&format!("poshta-tls-unit-{}", std::process::id()));
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.starts_with("certificate file ") && e.contains("cert.pem"), "{e}");
        std::fs::write(&cert, "not pem at all\n").unwrap();
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.starts_with("key file ") && e.contains("key.pem"), "{e}");
        std::fs::write(&key, c.pem()).unwrap();
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        assert!(load_server_config(&cert, &key).is_ok());
        // Cert and key in one file (Postfix allows it) also works.
        std::fs::write(&cert, format!("{}{}", c.pem(), kp.serialize_pem())).unwrap();
        assert!(load_server_config(&cert, &cert).is_ok());
        // Oversized files are refused before parsing.
        std::fs::write(&key, vec![b'A'; PEM_FILE_BYTES_MAX as usize + 1]).unwrap();
        let e = load_server_config(&cert, &key).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
