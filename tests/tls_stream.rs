//! net::tls over loopback: implicit TLS and STARTTLS-style upgrades against a rustls client,
//! hostile handshakes (garbage, oversized records, silence, a client that hangs up), and a
//! certificate source that notices replaced files.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poshta::net::tls::{accept_tls, load_server_config, Stream, TlsError, TlsSource};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

const NAME: &str = "a.test";

/// Run `f` on this thread, failing the test after 20 s.
fn run<T>(f: impl Future<Output = T>) -> T {
    smol::block_on(smol::future::or(f, async {
        Timer::after(Duration::from_secs(20)).await;
        panic!("test timed out")
    }))
}

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn gen() -> Pair {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![NAME.to_string(), "localhost".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: kp.serialize_pem(),
        der: cert.der().clone(),
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("poshta-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn cert(&self) -> PathBuf {
        self.0.join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.0.join("key.pem")
    }
    /// Replace a file the way certbot or a careful admin does: write aside, rename over.
    fn replace(&self, path: &Path, text: &str) {
        let tmp = self.0.join("tmp.pem");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    fn install(&self, p: &Pair) {
        self.replace(&self.cert(), &p.cert_pem);
        self.replace(&self.key(), &p.key_pem);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_config(p: &Pair, tag: &str) -> Arc<ServerConfig> {
    let d = TempDir::new(tag);
    d.install(p);
    load_server_config(&d.cert(), &d.key()).unwrap()
}

fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

fn all_versions() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

fn listener() -> (Async<TcpListener>, SocketAddr) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
    let a = l.get_ref().local_addr().unwrap();
    (l, a)
}

async fn tls_connect(
    addr: SocketAddr,
    cc: Arc<ClientConfig>,
) -> std::io::Result<futures_rustls::client::TlsStream<Async<TcpStream>>> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    futures_rustls::TlsConnector::from(cc)
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
}

/// Read up to and including LF (at most 1000 bytes).
async fn read_line<R: smol::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 1000 {
        if r.read(&mut b).await.unwrap() == 0 {
            break;
        }
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    out
}

/// One full implicit-TLS session; returns the certificate the client saw.
async fn serve_once(cfg: Arc<ServerConfig>, roots: &[&CertificateDer<'static>]) -> CertificateDer<'static> {
    let (l, addr) = listener();
    let server = async {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = accept_tls(tcp, cfg, Duration::from_secs(5)).await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown_write().await.unwrap();
    };
    let client = async {
        let mut c = tls_connect(addr, client_config(roots, &all_versions())).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"ping");
        c.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
    };
    smol::future::zip(server, client).await.1
}

#[test]
fn implicit_tls_exchanges_bytes_both_ways() {
    let p = gen();
    let cfg = server_config(&p, "implicit");
    let (l, addr) = listener();
    run(async {
        let server = async {
            let (tcp, peer) = l.accept().await.unwrap();
            let mut s = accept_tls(tcp, cfg, Duration::from_secs(5)).await.unwrap();
            assert!(s.is_tls());
            assert_eq!(s.peer_addr().unwrap(), peer);
            assert_eq!(s.sni().as_deref(), Some(NAME));
            let info = s.tls_info().unwrap();
            assert_eq!(info.version, "TLSv1.3");
            assert!(info.to_string().starts_with("TLSv1.3 with cipher TLS_"), "{info}");
            assert!(info.to_string().ends_with(" bits)"), "{info}");
            let line = read_line(&mut s).await;
            assert_eq!(line, b"EHLO client.test\r\n");
            // More than one TLS record's worth, to exercise buffering both ways.
            let big = vec![b'x'; 50_000];
            s.write_all(&big).await.unwrap();
            s.write_all(b"\r\n250 done\r\n").await.unwrap();
            s.flush().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"QUIT\r\n");
            s.shutdown_write().await.unwrap();
        };
        let client = async {
            let mut c = tls_connect(addr, client_config(&[&p.der], &all_versions()))
                .await
                .unwrap();
            c.write_all(b"EHLO client.test\r\n").await.unwrap();
            c.flush().await.unwrap();
            let mut got = vec![0u8; 50_000 + 12];
            c.read_exact(&mut got).await.unwrap();
            assert!(got[..50_000].iter().all(|&b| b == b'x'));
            assert_eq!(&got[50_000..], b"\r\n250 done\r\n");
            c.write_all(b"QUIT\r\n").await.unwrap();
            c.close().await.unwrap();
            // The server's close_notify ends the stream cleanly.
            let mut end = Vec::new();
            c.read_to_end(&mut end).await.unwrap();
            assert!(end.is_empty());
        };
        smol::future::zip(server, client).await;
    });
}

#[test]
fn tls12_client_is_served_and_logged() {
    let p = gen();
    let cfg = server_config(&p, "tls12");
    let (l, addr) = listener();
    run(async {
        let server = async {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = accept_tls(tcp, cfg, Duration::from_secs(5)).await.unwrap();
            let info = s.tls_info().unwrap();
            s.write_all(b"ok").await.unwrap();
            s.shutdown_write().await.unwrap();
            info
        };
        let client = async {
            let mut c = tls_connect(addr, client_config(&[&p.der], &[&rustls::version::TLS12]))
                .await
                .unwrap();
            let mut buf = Vec::new();
            c.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"ok");
        };
        let (info, ()) = smol::future::zip(server, client).await;
        assert_eq!(info.version, "TLSv1.2");
        assert!(info.cipher.starts_with("ECDHE-ECDSA-"), "{info}");
        assert!(info.bits == 128 || info.bits == 256);
    });
}

#[test]
fn starttls_upgrade_after_plaintext() {
    let p = gen();
    let cfg = server_config(&p, "starttls");
    let (l, addr) = listener();
    run(async {
        let server = async {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = Stream::Plain(tcp);
            assert!(!s.is_tls());
            assert!(s.tls_info().is_none());
            s.write_all(b"220 a.test ESMTP\r\n").await.unwrap();
            assert_eq!(read_line(&mut s).await, b"EHLO c\r\n");
            s.write_all(b"250-a.test\r\n250 STARTTLS\r\n").await.unwrap();
            assert_eq!(read_line(&mut s).await, b"STARTTLS\r\n");
            s.write_all(b"220 2.0.0 Ready to start TLS\r\n").await.unwrap();
            let mut s = s.upgrade(cfg.clone(), Duration::from_secs(5)).await.unwrap();
            assert!(s.is_tls());
            assert_eq!(read_line(&mut s).await, b"EHLO c\r\n");
            s.write_all(b"250 a.test\r\n").await.unwrap();
            s.flush().await.unwrap();
            // A second STARTTLS is refused by the type, not by a panic.
            match s.upgrade(cfg, Duration::from_secs(1)).await {
                Err(TlsError::AlreadyTls) => {}
                Err(e) => panic!("wrong error {e}"),
                Ok(_) => panic!("upgraded twice"),
            }
        };
        let client = async {
            let mut tcp = Async::<TcpStream>::connect(addr).await.unwrap();
            assert_eq!(read_line(&mut tcp).await, b"220 a.test ESMTP\r\n");
            tcp.write_all(b"EHLO c\r\n").await.unwrap();
            assert_eq!(read_line(&mut tcp).await, b"250-a.test\r\n");
            assert_eq!(read_line(&mut tcp).await, b"250 STARTTLS\r\n");
            tcp.write_all(b"STARTTLS\r\n").await.unwrap();
            assert_eq!(read_line(&mut tcp).await, b"220 2.0.0 Ready to start TLS\r\n");
            let mut c = futures_rustls::TlsConnector::from(client_config(&[&p.der], &all_versions()))
                .connect(ServerName::try_from(NAME).unwrap(), tcp)
                .await
                .unwrap();
            c.write_all(b"EHLO c\r\n").await.unwrap();
            c.flush().await.unwrap();
            assert_eq!(read_line(&mut c).await, b"250 a.test\r\n");
        };
        smol::future::zip(server, client).await;
    });
}

/// Run a server handshake against a client that does `client` on the raw socket.
fn handshake_against<F, Fut>(tag: &str, timeout: Duration, client: F) -> (Result<(), TlsError>, Duration)
where
    F: FnOnce(Async<TcpStream>) -> Fut,
    Fut: Future<Output = ()>,
{
    let p = gen();
    let cfg = server_config(&p, tag);
    let (l, addr) = listener();
    run(async {
        let server = async {
            let (tcp, _) = l.accept().await.unwrap();
            let t0 = Instant::now();
            let r = accept_tls(tcp, cfg, timeout).await.map(|_| ());
            (r, t0.elapsed())
        };
        let client = async {
            let tcp = Async::<TcpStream>::connect(addr).await.unwrap();
            client(tcp).await;
        };
        smol::future::zip(server, client).await.0
    })
}

#[test]
fn garbage_handshake_is_an_error_not_a_timeout() {
    let (r, took) = handshake_against("garbage", Duration::from_secs(10), |mut tcp| async move {
        let _ = tcp.write_all(b"EHLO i.speak.plaintext\r\n").await;
        // Wait for the server to give up (alert or close); bounded by the test timeout.
        let mut sink = Vec::new();
        let _ = (&mut tcp).take(100_000).read_to_end(&mut sink).await;
    });
    match r {
        Err(TlsError::Handshake(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("expected a handshake error, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn oversized_record_is_refused_without_buffering_it() {
    let (r, took) = handshake_against("oversized", Duration::from_secs(10), |mut tcp| async move {
        // A handshake record claiming 65535 bytes (the limit is 16 KiB + 2 KiB), then
        // a stream of filler the server must not keep.
        let mut hdr = vec![0x16, 0x03, 0x03, 0xff, 0xff];
        hdr.extend(std::iter::repeat_n(0x01u8, 70_000));
        let _ = tcp.write_all(&hdr).await;
        let mut sink = Vec::new();
        let _ = (&mut tcp).take(100_000).read_to_end(&mut sink).await;
    });
    assert!(
        matches!(r, Err(TlsError::Handshake(_)) | Err(TlsError::Closed)),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn silent_client_times_out_within_the_bound() {
    let (r, took) = handshake_against("silent", Duration::from_millis(300), |tcp| async move {
        // Say nothing; keep the socket open past the server's timeout.
        Timer::after(Duration::from_millis(1500)).await;
        drop(tcp);
    });
    assert!(matches!(r, Err(TlsError::Timeout)), "{r:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1400), "{took:?}");
}

/// The first flight of a real rustls client.
fn client_hello() -> Vec<u8> {
    let p = gen();
    let mut c = rustls::ClientConnection::new(
        client_config(&[&p.der], &all_versions()),
        ServerName::try_from(NAME).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 100, "{}", out.len());
    out
}

#[test]
fn client_closing_mid_handshake_is_an_error() {
    let hello = client_hello();
    // Half a ClientHello, then EOF.
    let half = hello[..hello.len() / 2].to_vec();
    let (r, took) = handshake_against("half", Duration::from_secs(10), |mut tcp| async move {
        tcp.write_all(&half).await.unwrap();
        drop(tcp);
    });
    assert!(matches!(r, Err(TlsError::Closed)), "{r:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A whole ClientHello, then EOF before the client's Finished.
    let (r, _) = handshake_against("whole", Duration::from_secs(10), |mut tcp| async move {
        tcp.write_all(&hello).await.unwrap();
        tcp.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        let _ = (&mut tcp).take(100_000).read_to_end(&mut sink).await;
    });
    assert!(matches!(r, Err(TlsError::Closed)), "{r:?}");
    // Connect and close at once.
    let (r, _) = handshake_against("nothing", Duration::from_secs(10), |tcp| async move { drop(tcp) });
    assert!(matches!(r, Err(TlsError::Closed)), "{r:?}");
}

#[test]
fn source_notices_replaced_files_and_keeps_the_old_config_when_broken() {
    let d = TempDir::new("source");
    let (p1, p2, p3) = (gen(), gen(), gen());
    let roots = [&p1.der, &p2.der, &p3.der];
    d.install(&p1);
    let t0 = Instant::now();
    let src = TlsSource::new(d.cert(), d.key(), t0);
    assert!(src.take_warning().is_none());
    let c1 = src.current(t0).unwrap();
    run(async {
        assert_eq!(serve_once(c1.clone(), &roots).await, p1.der);

        // A session that started with the first certificate ...
        let (l, addr) = listener();
        let accept = async {
            let (tcp, _) = l.accept().await.unwrap();
            accept_tls(tcp, c1.clone(), Duration::from_secs(5)).await.unwrap()
        };
        let (mut old_server, mut old_client) = smol::future::zip(accept, async {
            tls_connect(addr, client_config(&roots, &all_versions())).await.unwrap()
        })
        .await;

        // ... the files are replaced: not looked at again within the recheck interval,
        d.install(&p2);
        let same = src.current(t0 + Duration::from_secs(1)).unwrap();
        assert!(Arc::ptr_eq(&same, &c1));
        // then noticed; new sessions get the new certificate.
        let c2 = src.current(t0 + Duration::from_secs(2)).unwrap();
        assert!(!Arc::ptr_eq(&c2, &c1));
        assert!(src.take_warning().is_none());
        assert_eq!(serve_once(c2.clone(), &roots).await, p2.der);

        // ... and the running session still works, with its old certificate.
        old_client.write_all(b"still here\n").await.unwrap();
        old_client.flush().await.unwrap();
        assert_eq!(read_line(&mut old_server).await, b"still here\n");
        assert_eq!(old_client.get_ref().1.peer_certificates().unwrap()[0], p1.der);

        // A broken replacement: the previous configuration stays, one warning.
        d.replace(
            &d.cert(),
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let kept = src.current(t0 + Duration::from_secs(4)).unwrap();
        assert!(Arc::ptr_eq(&kept, &c2));
        let w = src.take_warning().expect("a warning");
        assert!(
            w.contains("cert.pem") && w.contains("keeping the previous certificate"),
            "{w}"
        );
        assert!(src.take_warning().is_none());
        let kept = src.current(t0 + Duration::from_secs(6)).unwrap();
        assert!(Arc::ptr_eq(&kept, &c2));
        assert!(src.take_warning().is_none(), "unchanged broken files warn only once");
        assert_eq!(serve_once(kept, &roots).await, p2.der);
        // SIGHUP forces a reload, which fails the same way.
        assert!(src.reload(t0 + Duration::from_secs(7)).is_err());
        assert!(Arc::ptr_eq(&src.current(t0 + Duration::from_secs(7)).unwrap(), &c2));

        // A key that does not match the certificate is refused too.
        d.replace(&d.cert(), &p3.cert_pem);
        let kept = src.current(t0 + Duration::from_secs(10)).unwrap();
        assert!(Arc::ptr_eq(&kept, &c2));
        assert!(src.take_warning().unwrap().contains("does not match"));

        // Fixed files are picked up.
        d.replace(&d.key(), &p3.key_pem);
        let c3 = src.current(t0 + Duration::from_secs(12)).unwrap();
        assert!(!Arc::ptr_eq(&c3, &c2));
        assert_eq!(serve_once(c3, &roots).await, p3.der);
    });
}

#[test]
fn source_without_files_offers_nothing_until_they_appear() {
    let d = TempDir::new("source-empty");
    let t0 = Instant::now();
    let src = TlsSource::new(d.cert(), d.key(), t0);
    assert!(src.current(t0).is_none());
    let w = src.take_warning().unwrap();
    assert!(w.contains("cert.pem") && w.contains("TLS is not available"), "{w}");
    let p = gen();
    d.install(&p);
    assert!(src.current(t0 + Duration::from_secs(1)).is_none());
    let c = src.current(t0 + Duration::from_secs(3)).unwrap();
    assert!(src.take_warning().is_none());
    run(async {
        assert_eq!(serve_once(c, &[&p.der]).await, p.der);
    });
}
