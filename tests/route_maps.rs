//! delivery::route: relayhost and transport_maps routing, smtp_sasl_password_maps, table
//! files (type prefixes, continuation lines, file:line errors), and the hosts file for
//! disable_dns_lookups. Files live in a per-test temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use poshta::delivery::route::{
    map_path, resolve_hosts, route, Hosts, Nexthop, Route, RouteConfig, SaslPasswords, TransportMap,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("poshta-route-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn relay(host: &str, port: u16, mx_lookup: bool) -> Route {
    Route::Relay {
        host: host.into(),
        port,
        mx_lookup,
    }
}

fn cfg(relayhost: &str, transport: &str) -> RouteConfig {
    let (t, errs) = TransportMap::parse(transport, Path::new("transport"));
    assert!(errs.is_empty(), "{errs:?}");
    RouteConfig {
        local_domains: vec!["mail.example.org".into(), "localhost".into()],
        relayhost: RouteConfig::parse_relayhost(relayhost).expect("relayhost"),
        transport: t,
    }
}

#[test]
fn default_routing_local_mx_and_relayhost() {
    let c = cfg("", "");
    assert_eq!(route("alice@mail.example.org", &c), Route::Local);
    assert_eq!(route("alice@MAIL.Example.ORG.", &c), Route::Local);
    assert_eq!(route("postmaster", &c), Route::Local);
    assert_eq!(route("bob@remote.example", &c), relay("remote.example", 25, true));
    assert_eq!(route("remote.example", &c), relay("remote.example", 25, true));
    let c = cfg("[smtp.provider.net]:587", "");
    assert_eq!(route("bob@remote.example", &c), relay("smtp.provider.net", 587, false));
    assert_eq!(route("alice@mail.example.org", &c), Route::Local);
    let c = cfg("relay.example:2525", "");
    assert_eq!(route("bob@remote.example", &c), relay("relay.example", 2525, true));
    let c = cfg("[2001:db8::25]", "");
    assert_eq!(route("bob@remote.example", &c), relay("2001:db8::25", 25, false));
    assert!(RouteConfig::parse_relayhost("[a], [b]").is_err());
    assert!(RouteConfig::parse_relayhost("2001:db8::25").is_err());
    assert_eq!(RouteConfig::parse_relayhost("  "), Ok(None));
}

#[test]
fn transport_maps_search_order() {
    let t = "\
# LAN routing
lab.example        smtp:[10.0.0.5]:25
.lab.example       smtp:[10.0.0.6]
boss@lab.example   smtp:[10.0.0.7]:2525
old.example        error:5.1.2 this domain has moved
slow.example       retry:4.4.1 down for maintenance
mail.example.org   smtp:[10.0.0.9]
inbound.example    local:
direct.example     smtp:
viahop.example     :[10.0.0.10]
keep.example       :
*                  smtp:[gateway.lan]:587
";
    let c = cfg("[smtp.provider.net]:587", t);
    assert_eq!(route("a@lab.example", &c), relay("10.0.0.5", 25, false));
    assert_eq!(route("a@LAB.example", &c), relay("10.0.0.5", 25, false));
    // `.domain` matches subdomains only, at any depth.
    assert_eq!(route("a@x.lab.example", &c), relay("10.0.0.6", 25, false));
    assert_eq!(route("a@y.x.lab.example", &c), relay("10.0.0.6", 25, false));
    // user@domain first.
    assert_eq!(route("Boss@lab.example", &c), relay("10.0.0.7", 2525, false));
    assert_eq!(
        route("a@old.example", &c),
        Route::Error("5.1.2 this domain has moved".into())
    );
    assert_eq!(
        route("a@slow.example", &c),
        Route::Defer("4.4.1 down for maintenance".into())
    );
    // transport_maps overrides mydestination, as in Postfix.
    assert_eq!(route("a@mail.example.org", &c), relay("10.0.0.9", 25, false));
    assert_eq!(route("a@inbound.example", &c), Route::Local);
    // A transport with an empty nexthop goes to the recipient domain (not the relayhost).
    assert_eq!(route("a@direct.example", &c), relay("direct.example", 25, true));
    assert_eq!(route("a@viahop.example", &c), relay("10.0.0.10", 25, false));
    // `:` stops the search and routes as usual: relayhost.
    assert_eq!(route("a@keep.example", &c), relay("smtp.provider.net", 587, false));
    assert_eq!(route("a@keep.example.sub", &c), relay("gateway.lan", 587, false));
    // `*` catches the rest; local domains too.
    assert_eq!(route("a@anything.example", &c), relay("gateway.lan", 587, false));
    assert_eq!(route("a@localhost", &c), relay("gateway.lan", 587, false));
    // Without `*`, unmatched goes the default way.
    let c = cfg("", "lab.example smtp:[10.0.0.5]\n");
    assert_eq!(route("a@other.example", &c), relay("other.example", 25, true));
    assert_eq!(route("a@sub.lab.example", &c), relay("sub.lab.example", 25, true));
}

#[test]
fn transport_file_errors_name_file_and_line() {
    let d = TempDir::new("transport");
    let p = d.write(
        "transport",
        "# comment\n\
         good.example smtp:[10.0.0.1]\n\
         \n\
         novalue.example\n\
         bad.example smtp:[10.0.0.1\n\
         weird.example uucp:host\n\
         good.example smtp:[10.0.0.2]\n\
         bad key! smtp:\n\
         \x20 continued-without-key\n\
         port.example smtp:[h]:99999\n\
         ipv6.example smtp:2001:db8::1\n\
         multi.example\n\
         \x20\x20smtp:[10.0.0.3]\n",
    );
    let (m, errs) = TransportMap::load(&["hash:transport".to_string()], &d.0);
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let want = [4, 5, 6, 7, 8, 10, 11];
    assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), want, "{lines:#?}");
    for e in &errs {
        assert!(
            e.to_string().starts_with(&format!("{}:{}: ", p.display(), e.line)),
            "{e}"
        );
    }
    assert!(lines[3].contains("duplicate entry \"good.example\""), "{}", lines[3]);
    assert!(lines[2].contains("unsupported transport \"uucp\""));
    let c = RouteConfig {
        local_domains: Vec::new(),
        relayhost: None,
        transport: m,
    };
    // The good lines work; the first of a duplicate wins; continuation lines join.
    assert_eq!(route("a@good.example", &c), relay("10.0.0.1", 25, false));
    assert_eq!(route("a@multi.example", &c), relay("10.0.0.3", 25, false));
    // A missing file and an unsupported table type are reported too.
    let (_, errs) = TransportMap::load(
        &["/nonexistent/poshta/transport".into(), "mysql:/etc/x.cf".into()],
        &d.0,
    );
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].line, 0);
    assert!(errs[1].message.contains("not supported"));
}

#[test]
fn map_paths() {
    let cd = Path::new("/etc/poshta");
    assert_eq!(
        map_path("hash:/etc/poshta/sasl_passwd", cd),
        Ok(PathBuf::from("/etc/poshta/sasl_passwd"))
    );
    assert_eq!(map_path("texthash:/x", cd), Ok(PathBuf::from("/x")));
    assert_eq!(map_path("/x/y", cd), Ok(PathBuf::from("/x/y")));
    assert_eq!(map_path("transport", cd), Ok(PathBuf::from("/etc/poshta/transport")));
    assert_eq!(
        map_path("lmdb:transport", cd),
        Ok(PathBuf::from("/etc/poshta/transport"))
    );
    assert!(map_path("proxy:mysql:/etc/x", cd).is_err());
    assert!(map_path("hash:", cd).is_err());
}

#[test]
fn sasl_passwd_lookup_order() {
    let text = "\
[smtp.provider.net]:587  relay-user:pa:ss:word
[smtp.provider.net]      other-user:pw2
mx1.example.net          mx-user:pw3
sender@example.org       sender-user:pw4
@example.com             domain-user:pw5
relay.lan:2525           lan-user:pw6
";
    let (m, errs) = SaslPasswords::parse(text, Path::new("sasl_passwd"));
    assert!(errs.is_empty(), "{errs:?}");
    let get = |hop: &str, host: Option<&str>, sender: Option<&str>| {
        m.lookup(&Nexthop::parse(hop).expect("hop"), host, sender)
            .map(|l| (l.user, l.password))
    };
    // The password keeps everything after the first colon.
    assert_eq!(
        get("[smtp.provider.net]:587", None, None),
        Some(("relay-user".into(), "pa:ss:word".into()))
    );
    assert_eq!(
        get("[SMTP.provider.net]", None, None),
        Some(("other-user".into(), "pw2".into()))
    );
    // Another port: falls back to the [host] entry.
    assert_eq!(
        get("[smtp.provider.net]:465", None, None),
        Some(("other-user".into(), "pw2".into()))
    );
    // MX delivery: the nexthop (domain) has no entry; the MX host name does.
    assert_eq!(
        get("example.net", Some("MX1.example.net."), None),
        Some(("mx-user".into(), "pw3".into()))
    );
    assert_eq!(get("example.net", None, None), None);
    assert_eq!(
        get("relay.lan:2525", None, None),
        Some(("lan-user".into(), "pw6".into()))
    );
    // Sender-dependent: the sender first, then @domain, then the host.
    assert_eq!(
        get("[smtp.provider.net]:587", None, Some("Sender@example.org")),
        Some(("sender-user".into(), "pw4".into()))
    );
    assert_eq!(
        get("[smtp.provider.net]:587", None, Some("x@example.com")),
        Some(("domain-user".into(), "pw5".into()))
    );
    assert_eq!(
        get("[smtp.provider.net]:587", None, Some("x@elsewhere.example")),
        Some(("relay-user".into(), "pa:ss:word".into()))
    );
    // Debug output never shows a password.
    assert!(!format!("{m:?}").contains("pw"));
}

#[test]
fn bad_sasl_passwd_reports_file_and_line() {
    let d = TempDir::new("sasl");
    let p = d.write(
        "sasl_passwd",
        "[smtp.provider.net]:587 user:secret\n\
         [smtp.provider.net]:587\n\
         host.example nocolon-secret\n\
         [broken:587 user:pw\n\
         host2.example :pw\n\
         host3.example user:\n\
         [SMTP.provider.net]:587 again:pw\n\
         @ user:pw\n",
    );
    let (m, errs) = SaslPasswords::load(&[format!("hash:{}", p.display())], &d.0);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8], "{errs:#?}");
    for e in &errs {
        // file:line, and never the secret.
        assert!(e.to_string().contains(&format!("sasl_passwd:{}: ", e.line)), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
    let hop = Nexthop::parse("[smtp.provider.net]:587").expect("hop");
    assert_eq!(m.lookup(&hop, None, None).map(|l| l.user), Some("user".into()));
}

#[test]
fn hosts_file_resolution() {
    let d = TempDir::new("hosts");
    let p = d.write(
        "hosts",
        "127.0.0.1 localhost\n\
         # the lab\n\
         10.0.0.5   mail.lab.example  mail   # main server\n\
         fd00::5    mail.lab.example\n\
         10.0.0.6   MAIL.lab.example.\n\
         10.0.0.5   mail.lab.example\n\
         fe80::1%eth0 linklocal.lab.example\n\
         not-an-ip  broken.lab.example\n\
         10.0.0.7\n",
    );
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(
        resolve_hosts(&p, "mail.lab.example").expect("read"),
        vec![ip("10.0.0.5"), ip("fd00::5"), ip("10.0.0.6")]
    );
    assert_eq!(resolve_hosts(&p, "Mail.").expect("read"), vec![ip("10.0.0.5")]);
    assert!(resolve_hosts(&p, "linklocal.lab.example").expect("read").is_empty());
    assert!(resolve_hosts(&p, "broken.lab.example").expect("read").is_empty());
    assert!(resolve_hosts(&p, "nowhere.example").expect("read").is_empty());
    assert_eq!(resolve_hosts(&p, "192.0.2.9").expect("read"), vec![ip("192.0.2.9")]);
    assert!(resolve_hosts(&d.0.join("missing"), "x").is_err());
    // Hostile input: binary junk and huge lines do not panic.
    let h = Hosts::parse("\u{0}\u{1}\n::::: x\n10.0.0.1 ok\n");
    assert_eq!(h.lookup("ok"), vec![ip("10.0.0.1")]);
}
