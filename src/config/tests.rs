//! Tests of loading: defaults (root and not), diagnostics with lines, fallbacks.

use super::*;

fn user() -> Env {
    Env {
        is_root: false,
        hostname: "mail.example.org".into(),
    }
}

fn root() -> Env {
    Env {
        is_root: true,
        hostname: "pi".into(),
    }
}

fn load_str(text: &str, env: &Env) -> Loaded {
    load_text(Path::new("/etc/poshta/main.cf"), Some(text.as_bytes()), env)
}

fn msgs(l: &Loaded) -> Vec<String> {
    l.diagnostics.iter().map(|d| d.to_string()).collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn every_default_is_valid_for_root_and_user() {
    for env in [user(), root()] {
        let l = load_defaults(Path::new("/etc/poshta/main.cf"), &env);
        assert!(l.diagnostics.is_empty(), "{:?}", msgs(&l));
        for key in keys::KEYS {
            let p = l.param(key.name).unwrap();
            assert!(validate(key.kind, &p.expanded).is_ok(), "{} = {}", key.name, p.expanded);
            assert_eq!(p.expanded, p.default_expanded);
            assert!(p.set.is_none());
        }
    }
}

#[test]
fn user_defaults() {
    let l = load_text(Path::new("/home/u/poshta/main.cf"), None, &user());
    let s = &l.settings;
    assert!(l.diagnostics.is_empty());
    assert_eq!(s.config_directory, PathBuf::from("/home/u/poshta"));
    assert_eq!(s.config_file, PathBuf::from("/home/u/poshta/main.cf"));
    assert_eq!(s.myhostname, "mail.example.org");
    assert_eq!(s.mydomain, "example.org");
    assert_eq!(s.myorigin, "mail.example.org");
    assert_eq!(
        s.mydestination,
        vec!["mail.example.org", "localhost.example.org", "localhost"]
    );
    assert_eq!(s.mynetworks, vec!["127.0.0.0/8", "[::ffff:127.0.0.0]/104", "[::1]/128"]);
    assert_eq!(s.smtpd_forbid_bare_newline_exclusions, s.mynetworks);
    assert_eq!(s.inet_protocols, InetProtocols::All);
    assert_eq!(
        s.inet_interfaces,
        vec![IpAddr::from([127, 0, 0, 1]), IpAddr::V6(Ipv6Addr::LOCALHOST)]
    );
    assert_eq!(s.smtpd_listen, vec![sa("127.0.0.1:2525"), sa("[::1]:2525")]);
    assert_eq!(s.message_size_limit, 10_240_000);
    assert_eq!(s.queue_directory, PathBuf::from("/home/u/poshta/spool"));
    assert_eq!(s.virtual_mailbox_base, PathBuf::from("/home/u/poshta/mail"));
    assert_eq!(s.mailbox_users_file, PathBuf::from("/home/u/poshta/users"));
    assert_eq!(s.home_mailbox, "");
    assert_eq!(s.smtpd_recipient_limit, 1000);
    assert_eq!(s.smtpd_timeout_secs, 300);
    assert_eq!(s.smtpd_sessions_max, 100);
    assert_eq!(s.recipient_delimiter, "");
    assert_eq!(s.minimal_backoff_time_secs, 300);
    assert_eq!(s.maximal_backoff_time_secs, 4000);
    assert_eq!(s.maximal_queue_lifetime_secs, 5 * 86_400);
    assert_eq!(s.maillog_file, None);
    assert!(!s.delivery_paused);
    let q = l.param("queue_directory").unwrap();
    assert_eq!(q.default, "$config_directory/spool");
    assert_eq!(q.value(), "$config_directory/spool");
    assert_eq!(l.param("config_directory").unwrap().value(), "/home/u/poshta");
}

#[test]
fn root_defaults() {
    let l = load_text(Path::new("/etc/poshta/main.cf"), None, &root());
    let s = &l.settings;
    assert_eq!(s.myhostname, "pi");
    assert_eq!(s.mydomain, "localdomain");
    assert_eq!(s.mydestination, vec!["pi", "localhost.localdomain", "localhost"]);
    assert_eq!(
        s.inet_interfaces,
        vec![IpAddr::from([0, 0, 0, 0]), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
    );
    assert_eq!(s.smtpd_listen, vec![sa("0.0.0.0:25"), sa("[::]:25")]);
    assert_eq!(s.queue_directory, PathBuf::from("/var/spool/poshta"));
    assert_eq!(s.virtual_mailbox_base, PathBuf::from("/var/lib/poshta/mail"));
    assert_eq!(s.mailbox_users_file, PathBuf::from("/etc/poshta/users"));
    assert_eq!(l.param("inet_interfaces").unwrap().default, "all");
    assert_eq!(l.param("smtpd_listen").unwrap().default, "25");
}

#[test]
fn relative_config_path_becomes_absolute() {
    let l = load_text(Path::new("poshta/main.cf"), None, &user());
    assert!(l.settings.config_directory.is_absolute());
    assert!(l.settings.config_directory.ends_with("poshta"));
    assert!(l.settings.queue_directory.starts_with(&l.settings.config_directory));
    let l = load_text(Path::new("main.cf"), None, &user());
    assert!(l.settings.config_directory.is_absolute());
}

#[test]
fn a_full_file() {
    let t = "\
# poshta test
myhostname = mx.lab.test
mydestination = $myhostname, localhost.$mydomain,
    LOCALHOST, Other.Test
mynetworks = 10.0.0.0/8, [fd00::]/8 192.168.1.7
inet_protocols = ipv4
inet_interfaces = all
smtpd_listen = 25, 127.0.0.1:2525 [::1]:2526
message_size_limit = 1000
queue_directory = q
virtual_mailbox_base = /srv/mail
maillog_file = log/poshta.log
smtpd_timeout = 2m
maximal_queue_lifetime = 2
delivery_paused = YES
recipient_delimiter = +
home_mailbox = Maildir/
";
    let l = load_str(t, &user());
    assert!(l.diagnostics.is_empty(), "{:?}", msgs(&l));
    let s = &l.settings;
    assert_eq!(s.mydomain, "lab.test");
    assert_eq!(
        s.mydestination,
        vec!["mx.lab.test", "localhost.lab.test", "localhost", "other.test"]
    );
    assert_eq!(s.mynetworks, vec!["10.0.0.0/8", "[fd00::]/8", "192.168.1.7"]);
    assert_eq!(s.smtpd_forbid_bare_newline_exclusions, s.mynetworks);
    assert_eq!(s.inet_protocols, InetProtocols::Ipv4);
    assert_eq!(s.inet_interfaces, vec![IpAddr::from([0, 0, 0, 0])]);
    assert_eq!(
        s.smtpd_listen,
        vec![sa("0.0.0.0:25"), sa("127.0.0.1:2525"), sa("[::1]:2526")]
    );
    assert_eq!(s.message_size_limit, 1000);
    assert_eq!(s.queue_directory, PathBuf::from("/etc/poshta/q"));
    assert_eq!(s.virtual_mailbox_base, PathBuf::from("/srv/mail"));
    assert_eq!(s.maillog_file, Some(PathBuf::from("/etc/poshta/log/poshta.log")));
    assert_eq!(s.smtpd_timeout_secs, 120);
    assert_eq!(s.maximal_queue_lifetime_secs, 2 * 86_400);
    assert!(s.delivery_paused);
    assert_eq!(s.recipient_delimiter, "+");
    assert_eq!(s.home_mailbox, "Maildir/");
    let p = l.param("mydestination").unwrap();
    assert_eq!(
        p.set,
        Some(("$myhostname, localhost.$mydomain, LOCALHOST, Other.Test".into(), 3))
    );
    assert_eq!(p.expanded, "mx.lab.test, localhost.lab.test, LOCALHOST, Other.Test");
    assert_eq!(p.default, "$myhostname, localhost.$mydomain, localhost");
    assert_eq!(p.default_expanded, "mail.example.org, localhost.example.org, localhost");
}

#[test]
fn bad_values_are_errors_with_lines_and_fall_back() {
    let t = "\
myhostname = ok.example.org
message_size_limit = lots

smtpd_listen = 25, smtp
mynetworks = 10.0.0.0/8,
   300.1.1.1/8
inet_protocols = ipv5
smtpd_timeout = 5 minutes
delivery_paused = maybe
smtpd_tls_security_level = always
";
    let l = load_str(t, &user());
    let m = msgs(&l);
    assert!(l.has_errors());
    let lines: Vec<usize> = l.diagnostics.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 4, 5, 7, 8, 9, 10], "{m:?}");
    assert!(l.diagnostics.iter().all(|d| d.severity == Severity::Error));
    assert!(
        m[0].starts_with("/etc/poshta/main.cf:2: error: message_size_limit: bad numerical value \"lots\""),
        "{m:?}"
    );
    assert!(m[1].contains("\"smtp\""), "{m:?}");
    assert!(m[2].contains("300.1.1.1/8"), "{m:?}");
    let s = &l.settings;
    assert_eq!(s.myhostname, "ok.example.org");
    assert_eq!(s.message_size_limit, 10_240_000);
    assert_eq!(s.smtpd_listen, vec![sa("127.0.0.1:2525"), sa("[::1]:2525")]);
    assert_eq!(s.mynetworks.len(), 3);
    // The exclusions follow $mynetworks, which fell back to its default too.
    assert_eq!(s.smtpd_forbid_bare_newline_exclusions, s.mynetworks);
    assert_eq!(s.inet_protocols, InetProtocols::All);
    assert_eq!(s.smtpd_timeout_secs, 300);
    assert!(!s.delivery_paused);
    // postconf still shows what the file says.
    assert_eq!(l.param("message_size_limit").unwrap().value(), "lots");
    assert_eq!(l.param("message_size_limit").unwrap().expanded, "10240000");
}

#[test]
fn unknown_parameters_warn_unless_referenced() {
    let t = "\
no_such_thing = 1
my_domains = a.test b.test
mydestination = $my_domains, localhost
ref = $undefined_one
";
    let l = load_str(t, &user());
    let m = msgs(&l);
    assert!(!l.has_errors(), "{m:?}");
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(
        m[0],
        "/etc/poshta/main.cf:1: warning: unknown parameter: no_such_thing=1"
    );
    assert!(
        m[1].starts_with("/etc/poshta/main.cf:4: warning: undefined parameter $undefined_one"),
        "{m:?}"
    );
    assert_eq!(
        m[2],
        "/etc/poshta/main.cf:4: warning: unknown parameter: ref=$undefined_one"
    );
    assert_eq!(l.settings.mydestination, vec!["a.test", "b.test", "localhost"]);
    let p = l.param("my_domains").unwrap();
    assert!(!p.known);
    assert_eq!(p.expanded, "a.test b.test");
}

#[test]
fn duplicates_warn_and_last_wins() {
    let l = load_str("message_size_limit = 1\nmessage_size_limit = 2\n", &user());
    assert_eq!(l.settings.message_size_limit, 2);
    assert_eq!(
        msgs(&l),
        vec!["/etc/poshta/main.cf:2: warning: message_size_limit is also set on line 1; this later value wins"]
    );
    assert_eq!(l.param("message_size_limit").unwrap().set, Some(("2".into(), 2)));
}

#[test]
fn expansion_errors_fall_back_everywhere() {
    let t = "myhostname = $myorigin\nmyorigin = $myhostname\nsmtpd_banner = ${mail_name\nmail_name = cost $ 5\n";
    let l = load_str(t, &user());
    let m = msgs(&l);
    assert_eq!(
        l.diagnostics.iter().map(|d| d.line).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "{m:?}"
    );
    assert!(m[0].contains("loop"), "{m:?}");
    assert!(m[3].contains("$$"), "{m:?}");
    assert_eq!(l.settings.myhostname, "mail.example.org");
    assert_eq!(l.settings.myorigin, "mail.example.org");
    assert_eq!(
        l.param("smtpd_banner").unwrap().expanded,
        "mail.example.org ESMTP poshta"
    );
}

#[test]
fn lexer_errors_reach_diagnostics() {
    let l = load_str("  indented\nbad line\nmessage_size_limit = 5\n", &user());
    assert_eq!(l.diagnostics.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(l.settings.message_size_limit, 5);
}

#[test]
fn config_directory_is_read_only() {
    let l = load_str(
        "config_directory = /elsewhere\nqueue_directory = $config_directory/q\n",
        &user(),
    );
    assert_eq!(l.diagnostics.len(), 1);
    assert_eq!(l.diagnostics[0].severity, Severity::Warning);
    assert_eq!(l.settings.queue_directory, PathBuf::from("/etc/poshta/q"));
    assert_eq!(l.param("config_directory").unwrap().value(), "/etc/poshta");
}

#[test]
fn recipient_limit_floor() {
    let l = load_str("smtpd_recipient_limit = 10\n", &user());
    assert_eq!(l.settings.smtpd_recipient_limit, crate::limits::SMTP_RECIPIENTS_MIN);
    assert_eq!(l.diagnostics.len(), 1);
    assert_eq!(
        (l.diagnostics[0].line, l.diagnostics[0].severity),
        (1, Severity::Warning)
    );
    let l = load_str("smtpd_recipient_limit = 100\n", &user());
    assert!(l.diagnostics.is_empty());
    assert_eq!(l.settings.smtpd_recipient_limit, 100);
}

#[test]
fn interfaces_and_protocols() {
    let l = load_str(
        "inet_interfaces = 192.168.1.2, [fd00::1] ::1 192.168.1.2\nsmtpd_listen = 25\n",
        &user(),
    );
    assert!(l.diagnostics.is_empty(), "{:?}", msgs(&l));
    let want: Vec<IpAddr> = vec![
        "192.168.1.2".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        "::1".parse().unwrap(),
    ];
    assert_eq!(l.settings.inet_interfaces, want);
    assert_eq!(l.settings.smtpd_listen.len(), 3);

    let l = load_str("inet_interfaces = 192.168.1.2 ::1\ninet_protocols = ipv4\n", &user());
    assert_eq!(l.settings.inet_interfaces, vec![IpAddr::from([192, 168, 1, 2])]);
    assert_eq!(l.diagnostics.len(), 1);
    assert_eq!(
        (l.diagnostics[0].line, l.diagnostics[0].severity),
        (1, Severity::Warning)
    );

    let l = load_str("inet_interfaces = ::1\ninet_protocols = ipv4\n", &user());
    assert!(l.has_errors());
    assert_eq!(l.diagnostics[0].line, 1);
    assert_eq!(l.settings.inet_interfaces, vec![IpAddr::from([127, 0, 0, 1])]);

    let l = load_str("inet_protocols = ipv6\ninet_interfaces = loopback-only\n", &user());
    assert_eq!(l.settings.inet_interfaces, vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    let l = load_str("inet_protocols = ipv4, ipv6\n", &root());
    assert_eq!(l.settings.inet_protocols, InetProtocols::All);

    let l = load_str("inet_interfaces = eth0\n", &user());
    assert!(l.has_errors());
    let l = load_str("smtpd_listen =\n", &user());
    assert!(l.diagnostics.is_empty());
    assert!(l.settings.smtpd_listen.is_empty());
}

#[test]
fn host_bits_warn() {
    let l = load_str("mynetworks = 10.1.2.3/8 [fd00::1]/8\n", &user());
    let m = msgs(&l);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[0].contains("perhaps you should use \"10.0.0.0/8\""), "{m:?}");
    assert!(m[1].contains("\"[fd00::]/8\""), "{m:?}");
    assert!(!l.has_errors());
}

#[test]
fn int_bounds() {
    let l = load_str("smtpd_sessions_max = 0\nhopcount_limit = 99999999999\n", &user());
    assert_eq!(
        l.diagnostics.iter().filter(|d| d.severity == Severity::Error).count(),
        2
    );
    assert_eq!(l.settings.smtpd_sessions_max, 100);
}

#[test]
fn config_path_order() {
    let p = config_path_with(Some(Path::new("/x/main.cf")), Some("/env/main.cf".into()), true);
    assert_eq!(p, PathBuf::from("/x/main.cf"));
    assert_eq!(
        config_path_with(None, Some("/env/main.cf".into()), true),
        PathBuf::from("/env/main.cf")
    );
    assert_eq!(
        config_path_with(None, Some("".into()), true),
        PathBuf::from("/etc/poshta/main.cf")
    );
    assert_eq!(config_path_with(None, None, true), PathBuf::from("/etc/poshta/main.cf"));
    assert_eq!(config_path_with(None, None, false), PathBuf::from("poshta/main.cf"));
}

#[test]
fn files_on_disk() {
    let tmp = crate::testutil::TempDir::new(&format!("poshta-config-test-{}", std::process::id()));
    let dir = tmp.path().to_path_buf();
    let missing = dir.join("missing.cf");
    let l = load_env(&missing, &user()).unwrap();
    assert!(l.diagnostics.is_empty());
    assert_eq!(l.settings.config_directory, dir);

    let big = dir.join("big.cf");
    std::fs::write(&big, vec![b'#'; CONFIG_FILE_BYTES_MAX as usize + 1]).unwrap();
    let l = load_env(&big, &user()).unwrap();
    assert!(l.has_errors());
    assert_eq!(l.settings.message_size_limit, 10_240_000);

    let ok = dir.join("main.cf");
    std::fs::write(&ok, "message_size_limit = 7\n").unwrap();
    assert_eq!(load_env(&ok, &user()).unwrap().settings.message_size_limit, 7);
    // A directory is not a config file.
    assert!(load_env(&dir, &user()).is_err());
}

#[test]
fn system_env_has_a_hostname() {
    assert!(!Env::system().hostname.is_empty());
}

#[test]
fn random_garbage_never_panics_and_always_gives_settings() {
    // A fixed-seed LCG over an alphabet rich in syntax characters; bounded count.
    const PIECES: &[&str] = &[
        "$",
        "$$",
        "${",
        "$(",
        "}",
        ")",
        "?",
        ":",
        "{",
        "=",
        " ",
        "\t",
        "\n",
        "\n  ",
        "#",
        ",",
        "/",
        "[",
        "]",
        "myhostname",
        "mydomain",
        "mynetworks",
        "smtpd_listen",
        "a",
        "b",
        "25",
        "::1",
        "127.0.0.1",
        "\u{fffd}",
        "\r",
    ];
    let mut seed: u64 = 0x5eed;
    for _ in 0..1000 {
        let mut t = String::new();
        for _ in 0..40 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            t.push_str(PIECES[(seed >> 33) as usize % PIECES.len()]);
        }
        let l = load_str(&t, &user());
        assert!(!l.settings.myhostname.is_empty());
        assert!(l.settings.smtpd_recipient_limit >= crate::limits::SMTP_RECIPIENTS_MIN);
        assert!(value::check_hostname(&l.settings.myhostname).is_ok(), "{t:?}");
        assert!(l.settings.queue_directory.is_absolute());
    }
}
