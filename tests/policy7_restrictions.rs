//! Restriction lists with real table files: the classic access example, every action,
//! the relay matrix and the configuration errors (issue 7).

use poshta::config::{load_defaults, Env};
use poshta::policy::restrictions::{parse_list, Decision, Facts, RestrictionLists, Stage};
use poshta::policy::table::TableSet;
use std::net::IpAddr;
use std::path::Path;

#[path = "common/tempdir.rs"]
mod tempdir;
use tempdir::TempDir;

/// Removed when the test ends, pass or fail.
fn dir(tag: &str) -> TempDir {
    TempDir::new(&format!("poshta-policy7-{tag}-{}", std::process::id()))
}

/// Lists from main.cf-style values; unset keys get poshta's defaults.
fn lists(values: &[(&str, &str)]) -> RestrictionLists {
    RestrictionLists::parse(|k| {
        values
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| match k {
                "smtpd_relay_restrictions" => poshta::policy::restrictions::DEFAULT_RELAY_RESTRICTIONS.into(),
                "smtpd_delay_reject" => "yes".into(),
                "parent_domain_matches_subdomains" => "smtpd_access_maps".into(),
                _ => String::new(),
            })
    })
    .unwrap()
}

fn tables(d: &Path, l: &RestrictionLists) -> TableSet {
    let mut t = TableSet::new(d);
    for spec in l.table_specs() {
        t.add(&spec).unwrap();
    }
    t
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A local-domain recipient to a known user, from an outside client.
fn facts<'a>(client: &str, sender: &'a str, rcpt: &'a str) -> Facts<'a> {
    let mut f = Facts::new(ip(client));
    f.helo = Some("client.example.net");
    f.sender = Some(sender);
    f.recipient = Some(rcpt);
    f.recipient_domain_is_local = rcpt.ends_with("@example.org");
    f.recipient_is_local = rcpt == "alice@example.org";
    f
}

fn line(d: &Decision) -> String {
    d.reply().map(|r| r.first_line()).unwrap_or_else(|| format!("{d:?}"))
}

#[test]
fn classic_example_hash_and_cidr() {
    let d = dir("classic");
    // access(5) classic: accept one host, reject the rest of its /24 with a custom text.
    std::fs::write(d.join("access"), "127.1.2.4 OK\n127.1.2 550 Go away\n").unwrap();
    std::fs::write(d.join("access.cidr"), "127.1.2.4 OK\n127.1.2.0/24 550 Go away\n").unwrap();
    for spec in ["hash:access", "cidr:access.cidr"] {
        let l = lists(&[("smtpd_client_restrictions", &format!("check_client_access {spec}"))]);
        let t = tables(&d, &l);
        let ok = l.check_rcpt(&facts("127.1.2.4", "a@b.example", "alice@example.org"), &t);
        assert_eq!(ok.decision, Decision::Permit, "{spec}");
        for other in ["127.1.2.0", "127.1.2.5", "127.1.2.255", "::ffff:127.1.2.9"] {
            let v = l.check_rcpt(&facts(other, "a@b.example", "alice@example.org"), &t);
            let want_ip = other.trim_start_matches("::ffff:");
            assert_eq!(
                line(&v.decision),
                format!("550 5.7.1 <unknown[{want_ip}]>: Client host rejected: Go away"),
                "{spec} {other}"
            );
        }
        // Outside the /24: no table entry, the relay list decides (local user: accepted).
        let v = l.check_rcpt(&facts("127.1.3.4", "a@b.example", "alice@example.org"), &t);
        assert!(v.decision.accepts(), "{spec}: {v:?}");
    }
}

#[test]
fn every_action() {
    let d = dir("actions");
    std::fs::write(
        d.join("senders"),
        "ok@x.example OK\n\
         permit@x.example PERMIT\n\
         rej@x.example REJECT\n\
         rejt@x.example REJECT not from you\n\
         def@x.example DEFER\n\
         deft@x.example DEFER 4.7.9 later please\n\
         c550@x.example 550 Go away\n\
         c450@x.example 450 4.2.0 busy\n\
         disc@x.example DISCARD\n\
         disct@x.example DISCARD spam trap\n\
         hold@x.example HOLD\n\
         dunno@x.example DUNNO\n\
         x.example REJECT whole domain\n\
         dip@y.example DEFER_IF_PERMIT\n\
         dir@y.example DEFER_IF_REJECT\n\
         warn@y.example WARN look at this\n\
         nest@y.example reject_unauth_destination\n\
         bad@y.example no_such_restriction\n\
         stamp@y.example 1234567890\n",
    )
    .unwrap();
    let l = lists(&[(
        "smtpd_sender_restrictions",
        "check_sender_access hash:senders, reject_non_fqdn_sender",
    )]);
    let t = tables(&d, &l);
    let run = |sender: &str, rcpt: &str| l.check_rcpt(&facts("192.0.2.1", sender, rcpt), &t);
    let local = "alice@example.org";
    for (s, want) in [
        ("ok@x.example", "Permit"),
        ("permit@x.example", "Permit"),
        ("stamp@y.example", "Permit"),
        (
            "rej@x.example",
            "554 5.7.1 <rej@x.example>: Sender address rejected: Access denied",
        ),
        (
            "rejt@x.example",
            "554 5.7.1 <rejt@x.example>: Sender address rejected: not from you",
        ),
        (
            "def@x.example",
            "450 4.7.1 <def@x.example>: Sender address rejected: Access denied",
        ),
        (
            "deft@x.example",
            "450 4.7.9 <deft@x.example>: Sender address rejected: later please",
        ),
        (
            "c550@x.example",
            "550 5.7.1 <c550@x.example>: Sender address rejected: Go away",
        ),
        (
            "c450@x.example",
            "450 4.2.0 <c450@x.example>: Sender address rejected: busy",
        ),
        // DUNNO stops the lookup at that key: the domain entry is not used.
        ("dunno@x.example", "Dunno"),
        (
            "other@x.example",
            "554 5.7.1 <other@x.example>: Sender address rejected: whole domain",
        ),
        (
            "dip@y.example",
            "450 4.7.1 <dip@y.example>: Sender address rejected: Service unavailable",
        ),
        ("bad@y.example", "451 4.3.5 Server configuration error"),
        (
            "nofqdn@localhost",
            "504 5.5.2 <nofqdn@localhost>: Sender address rejected: need fully-qualified address",
        ),
    ] {
        let v = run(s, local);
        assert_eq!(line(&v.decision), want, "{s}");
        if s == "bad@y.example" {
            assert!(v.log.iter().any(|l| l.contains("no_such_restriction")), "{:?}", v.log);
        }
    }
    let v = run("disc@x.example", "bob@remote.example");
    assert_eq!(v.decision, Decision::Permit, "DISCARD accepts, even a relay attempt");
    assert_eq!(
        v.discard.as_deref(),
        Some("<disc@x.example>: Sender address triggers DISCARD action")
    );
    let v = run("disct@x.example", local);
    assert_eq!(
        v.discard.as_deref(),
        Some("<disct@x.example>: Sender address spam trap")
    );
    let v = run("hold@x.example", local);
    assert!(v.decision.accepts());
    assert_eq!(
        v.hold.as_deref(),
        Some("<hold@x.example>: Sender address triggers HOLD action")
    );
    let v = run("hold@x.example", "bob@remote.example");
    assert!(line(&v.decision).starts_with("554 5.7.1 <bob@remote.example>: Relay access denied"));
    // DEFER_IF_REJECT: a later reject becomes a 450.
    let v = run("dir@y.example", "bob@remote.example");
    assert_eq!(line(&v.decision), "450 4.7.1 <bob@remote.example>: Relay access denied");
    // DEFER_IF_PERMIT only defers what would be accepted.
    let v = run("dip@y.example", "bob@remote.example");
    assert!(line(&v.decision).starts_with("554 "), "{v:?}");
    let v = run("warn@y.example", local);
    assert!(v.decision.accepts());
    assert_eq!(v.log, vec!["<warn@y.example>: Sender address look at this".to_string()]);
    // A restriction name as the result is evaluated in place.
    assert!(line(&run("nest@y.example", "bob@remote.example").decision).contains("Relay access denied"));
    assert!(run("nest@y.example", local).decision.accepts());
    // The null sender is looked up as <>.
    std::fs::write(d.join("null"), "<> REJECT no bounces here\n").unwrap();
    let l2 = lists(&[("smtpd_sender_restrictions", "check_sender_access hash:null")]);
    let t2 = tables(&d, &l2);
    let v = l2.check_rcpt(&facts("192.0.2.1", "", local), &t2);
    assert_eq!(
        line(&v.decision),
        "554 5.7.1 <>: Sender address rejected: no bounces here"
    );
}

#[test]
fn helo_recipient_and_generic_restrictions() {
    let d = dir("helo");
    std::fs::write(d.join("helo"), "example.net REJECT forged\n").unwrap();
    std::fs::write(d.join("rcpt.re"), "/^(.+)@example\\.org$/ 550 5.1.1 no user $1\n").unwrap();
    let l = lists(&[
        ("smtpd_helo_restrictions", "check_helo_access hash:helo"),
        ("smtpd_recipient_restrictions", "check_recipient_access regexp:rcpt.re"),
    ]);
    let t = tables(&d, &l);
    // Parent domain: client.example.net matches example.net.
    let v = l.check_rcpt(&facts("192.0.2.1", "a@b.example", "alice@example.org"), &t);
    assert_eq!(
        line(&v.decision),
        "554 5.7.1 <client.example.net>: Helo command rejected: forged"
    );
    let mut f = facts("192.0.2.1", "a@b.example", "bob@example.org");
    f.helo = Some("mx.other.example");
    assert_eq!(
        line(&l.check_rcpt(&f, &t).decision),
        "550 5.1.1 <bob@example.org>: Recipient address rejected: no user bob"
    );
    // Generic reject/defer name the stage's subject.
    let l = lists(&[("smtpd_client_restrictions", "permit_sasl_authenticated, reject")]);
    let t = tables(&d, &l);
    let v = l.check_rcpt(&facts("192.0.2.7", "a@b.example", "alice@example.org"), &t);
    assert_eq!(
        line(&v.decision),
        "554 5.7.1 <unknown[192.0.2.7]>: Client host rejected: Access denied"
    );
    let mut f = facts("192.0.2.7", "a@b.example", "alice@example.org");
    f.sasl_user = Some("alice");
    assert_eq!(l.check_rcpt(&f, &t).decision, Decision::Permit);
    let l = lists(&[("smtpd_data_restrictions", "defer")]);
    let v = l.check(Stage::Data, &facts("192.0.2.7", "a@b.example", "alice@example.org"), &t);
    assert_eq!(
        line(&v.decision),
        "450 4.3.2 <DATA>: Data command rejected: Try again later"
    );
}

#[test]
fn delay_reject_off_skips_earlier_lists_at_rcpt() {
    let d = dir("delay");
    let l = lists(&[("smtpd_client_restrictions", "reject"), ("smtpd_delay_reject", "no")]);
    let t = tables(&d, &l);
    let f = facts("192.0.2.1", "a@b.example", "alice@example.org");
    assert!(l.check_rcpt(&f, &t).decision.accepts());
    assert!(line(&l.check(Stage::Client, &f, &t).decision).starts_with("554 5.7.1 <unknown[192.0.2.1]>"));
}

#[test]
fn unlisted_unknown_domain_and_fqdn() {
    let d = dir("misc");
    let l = lists(&[(
        "smtpd_recipient_restrictions",
        "reject_non_fqdn_recipient, reject_unlisted_recipient, reject_unknown_sender_domain",
    )]);
    let t = tables(&d, &l);
    let v = l.check_rcpt(&facts("192.0.2.1", "a@b.example", "nobody@example.org"), &t);
    assert_eq!(
        line(&v.decision),
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table"
    );
    let mut f = facts("192.0.2.1", "a@nx.example", "alice@example.org");
    assert!(l.check_rcpt(&f, &t).decision.accepts(), "no DNS: does nothing");
    f.sender_domain_resolves = Some(false);
    assert_eq!(
        line(&l.check_rcpt(&f, &t).decision),
        "450 4.1.8 <a@nx.example>: Sender address rejected: Domain not found"
    );
    let mut f = facts("192.0.2.1", "", "postmaster");
    f.trusted = true;
    assert!(l.check_rcpt(&f, &t).decision.accepts());
    f.recipient = Some("user@localhost");
    assert!(line(&l.check_rcpt(&f, &t).decision).starts_with("504 5.5.2 <user@localhost>"));
}

/// The relay matrix: from outside mynetworks and unauthenticated, no classic trick gets a
/// non-local destination through; inside mynetworks or after AUTH they are accepted.
#[test]
fn relay_matrix() {
    let d = dir("relay");
    let l = lists(&[]);
    let t = tables(&d, &l);
    let tricks = [
        "victim@remote.example",
        "victim%remote.example@example.org",
        "remote.example!victim@example.org",
        "\"victim@remote.example\"@example.org",
        "\"victim%remote.example\"@example.org",
        "@example.org:victim@remote.example",
        "victim@remote.example@example.org",
        "victim@[192.0.2.1]",
        "victim@[IPv6:2001:db8::1]",
        "victim@remote.example.",
        "victim@REMOTE.EXAMPLE",
        "victim@exämple.org",
        "victim@example.org.remote.example",
        "victim@sub.example.org",
        "victim@xexample.org",
        "victim@example.org@",
        "victim@",
    ];
    for senders in ["", "alice@example.org", "x@remote.example"] {
        for rcpt in tricks {
            let mut f = facts("192.0.2.1", senders, rcpt);
            // What the router would say: only the exact local domain (case, one trailing dot).
            let dom = rcpt.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
            f.recipient_domain_is_local = matches!(dom.as_deref(), Some("example.org" | "example.org."));
            let v = l.check_rcpt(&f, &t);
            assert_eq!(
                line(&v.decision),
                format!("554 5.7.1 <{rcpt}>: Relay access denied"),
                "outside, from <{senders}>: {rcpt}"
            );
            f.trusted = true;
            assert_eq!(l.check_rcpt(&f, &t).decision, Decision::Permit, "mynetworks: {rcpt}");
            f.trusted = false;
            f.sasl_user = Some("alice");
            assert_eq!(l.check_rcpt(&f, &t).decision, Decision::Permit, "AUTH: {rcpt}");
        }
    }
    // Local recipients from outside pass the relay check (the router decides the user).
    for rcpt in ["alice@example.org", "ALICE@EXAMPLE.ORG", "postmaster", "Postmaster"] {
        let mut f = facts("192.0.2.1", "", rcpt);
        f.recipient_domain_is_local = rcpt.contains('@');
        assert!(l.check_rcpt(&f, &t).decision.accepts(), "{rcpt}");
    }
}

#[test]
fn configuration_errors() {
    let e = parse_list("smtpd_client_restrictions", "permit_mynetworks, reject_everything").unwrap_err();
    assert_eq!(
        e,
        "smtpd_client_restrictions: unknown restriction \"reject_everything\""
    );
    let e = parse_list("smtpd_sender_restrictions", "check_sender_access").unwrap_err();
    assert!(e.contains("expects a type:table"), "{e}");
    let e = parse_list("smtpd_sender_restrictions", "check_sender_access permit").unwrap_err();
    assert!(e.contains("not \"permit\""), "{e}");
    // Open relay guard.
    let e = RestrictionLists::parse(|k| match k {
        "smtpd_relay_restrictions" => "permit_mynetworks".into(),
        "smtpd_recipient_restrictions" => "permit".into(),
        _ => String::new(),
    })
    .unwrap_err();
    assert!(e.contains("restrict relaying"), "{e}");
    // A table that did not load: 451, never an accept.
    let d = dir("missing");
    let l = lists(&[("smtpd_client_restrictions", "check_client_access hash:nonexistent")]);
    let mut t = TableSet::new(&d);
    assert!(t.add("hash:nonexistent").is_err());
    let v = l.check_rcpt(&facts("192.0.2.1", "a@b.example", "alice@example.org"), &t);
    assert_eq!(line(&v.decision), "451 4.3.5 Server configuration error");
    assert!(v.log.iter().any(|l| l.contains("hash:nonexistent")));
}

#[test]
fn nested_results_are_bounded() {
    let d = dir("nest");
    // A table whose result names itself: evaluation stops at the nesting limit.
    std::fs::write(d.join("loop"), "192.0.2.1 check_client_access hash:loop\n").unwrap();
    let l = lists(&[("smtpd_client_restrictions", "check_client_access hash:loop")]);
    let t = tables(&d, &l);
    let v = l.check_rcpt(&facts("192.0.2.1", "a@b.example", "alice@example.org"), &t);
    assert_eq!(line(&v.decision), "451 4.3.5 Server configuration error");
}

#[test]
fn config_keys_and_defaults() {
    let env = Env {
        is_root: false,
        hostname: "mail.example.org".into(),
    };
    let loaded = load_defaults(Path::new("/nonexistent/main.cf"), &env);
    let s = &loaded.settings;
    assert_eq!(
        s.smtpd_relay_restrictions,
        "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
    );
    assert!(s.smtpd_delay_reject);
    assert!(s
        .parent_domain_matches_subdomains
        .iter()
        .any(|w| w == "smtpd_access_maps"));
    let l = RestrictionLists::from_settings(s).unwrap();
    assert!(l.delay_reject && l.opts.parent_domain_matches_subdomains);
    assert_eq!(l.relay.len(), 3);
    for k in [
        "smtpd_client_restrictions",
        "smtpd_relay_restrictions",
        "smtpd_delay_reject",
        "parent_domain_matches_subdomains",
    ] {
        assert!(poshta::config::keys::find(k).unwrap().used, "{k}");
    }
    // A bad restriction in main.cf is an error with its line; the default stays.
    let d = dir("cfg");
    let cf = d.join("main.cf");
    std::fs::write(
        &cf,
        "smtpd_relay_restrictions = permit_mynetworks\nsmtpd_client_restrictions = bogus_check\n",
    )
    .unwrap();
    let loaded = poshta::config::load_env(&cf, &env).unwrap();
    let errs: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        errs.iter()
            .any(|e| e.contains(":2: error:") && e.contains("bogus_check")),
        "{errs:?}"
    );
    assert_eq!(loaded.settings.smtpd_client_restrictions, "");
    // The relay list alone parses, but the pair fails the open-relay guard.
    assert!(RestrictionLists::from_settings(&loaded.settings).is_err());
}

/// Hostile session values against every kind of table: no panic, and nothing odd is
/// accepted for a remote domain.
#[test]
fn hostile_inputs_do_not_panic() {
    let d = dir("hostile");
    std::fs::write(d.join("h"), "example.org OK\n<> REJECT\n@ REJECT\n. DUNNO\n").unwrap();
    std::fs::write(d.join("c"), "0.0.0.0/0 DUNNO\n[::]/0 DUNNO\n").unwrap();
    std::fs::write(d.join("r"), "/^(.*)$/ WARN saw $1\n").unwrap();
    let all = "check_client_access hash:h, check_client_access cidr:c, check_client_access regexp:r, \
               check_helo_access hash:h, check_helo_access regexp:r, check_sender_access hash:h, \
               check_sender_access regexp:r, check_recipient_access hash:h, check_recipient_access cidr:c, \
               reject_non_fqdn_sender, reject_non_fqdn_recipient, reject_unlisted_recipient";
    let l = lists(&[("smtpd_recipient_restrictions", all)]);
    let t = tables(&d, &l);
    let long = "a.".repeat(200) + "example";
    let weird = [
        "",
        "@",
        "@@",
        ".",
        "..",
        "\0",
        "a@.",
        "a@..",
        "<>",
        "[",
        "[]",
        "a@[",
        "ä@ö.ü",
        "%!@:",
        long.as_str(),
    ];
    for w in weird {
        for client in ["192.0.2.1", "::1", "::ffff:192.0.2.1"] {
            let mut f = facts(client, w, w);
            f.helo = Some(w);
            f.client_name = w;
            f.recipient_domain_is_local = false;
            let v = l.check_rcpt(&f, &t);
            // The relay list refuses every one of these for an outside client.
            assert!(!v.decision.accepts(), "{w:?} from {client}: {v:?}");
            assert!(v.log.len() <= 16, "bounded log: {w:?}");
        }
    }
}
