use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use simple_dns::rdata::{RData, A, CNAME, MX};
use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use super::io::{domain_resolves, host_targets, mx_targets, Families, Lookup, Resolver, Target};
use super::*;

fn reply(id: u16, qname: &str, ty: TYPE, rcode: RCODE, answers: Vec<ResourceRecord<'static>>) -> Vec<u8> {
    let mut p = Packet::new_reply(id);
    *p.rcode_mut() = rcode;
    p.questions.push(Question::new(
        Name::new_unchecked(qname).into_owned(),
        QTYPE::TYPE(ty),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.answers = answers;
    p.build_bytes_vec().expect("encode")
}

fn rr(name: &'static str, rdata: RData<'static>) -> ResourceRecord<'static> {
    ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, 60, rdata)
}

fn mx(pref: u16, host: &'static str) -> RData<'static> {
    RData::MX(MX {
        preference: pref,
        exchange: Name::new_unchecked(host),
    })
}

#[test]
fn query_round_trips_and_answers_are_checked() {
    let q = encode_query(0x1234, "Example.ORG.", Qtype::Mx).expect("query");
    let p = Packet::parse(&q).expect("parse");
    assert_eq!(p.id(), 0x1234);
    assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
    assert_eq!(p.questions[0].qname.to_string(), "example.org");

    let a = reply(
        7,
        "example.org",
        TYPE::MX,
        RCODE::NoError,
        vec![rr("example.org", mx(10, "mx.example.org"))],
    );
    assert_eq!(
        decode_reply(7, "example.org", Qtype::Mx, &a),
        Reply::Answer(Answer::Records(vec![Rdata::Mx(10, "mx.example.org".into())]))
    );
    // Wrong id, wrong name, wrong type: not an answer to this query (RFC 5452 §9.1).
    assert_eq!(decode_reply(8, "example.org", Qtype::Mx, &a), Reply::Ignore);
    assert_eq!(decode_reply(7, "example.net", Qtype::Mx, &a), Reply::Ignore);
    assert_eq!(decode_reply(7, "example.org", Qtype::A, &a), Reply::Ignore);
    // A query (QR clear) echoed back is not an answer.
    assert_eq!(decode_reply(0x1234, "example.org", Qtype::Mx, &q), Reply::Ignore);
}

#[test]
fn rcodes_nodata_and_truncation() {
    let nx = reply(1, "no.example", TYPE::A, RCODE::NameError, vec![]);
    assert_eq!(
        decode_reply(1, "no.example", Qtype::A, &nx),
        Reply::Answer(Answer::NxDomain)
    );
    let nodata = reply(1, "x.example", TYPE::MX, RCODE::NoError, vec![]);
    assert_eq!(
        decode_reply(1, "x.example", Qtype::Mx, &nodata),
        Reply::Answer(Answer::NoData)
    );
    for rc in [
        RCODE::ServerFailure,
        RCODE::Refused,
        RCODE::NotImplemented,
        RCODE::FormatError,
    ] {
        let r = reply(1, "x.example", TYPE::MX, rc, vec![]);
        assert!(
            matches!(decode_reply(1, "x.example", Qtype::Mx, &r), Reply::Temp(_)),
            "{rc:?}"
        );
    }
    let mut tc = reply(1, "x.example", TYPE::MX, RCODE::NoError, vec![]);
    tc[2] |= 0x02; // TC bit
    assert_eq!(decode_reply(1, "x.example", Qtype::Mx, &tc), Reply::Truncated);
}

#[test]
fn cnames_are_followed_within_the_answer() {
    let a = reply(
        3,
        "www.example",
        TYPE::A,
        RCODE::NoError,
        vec![
            rr("www.example", RData::CNAME(CNAME(Name::new_unchecked("host.example")))),
            rr("host.example", RData::A(A { address: 0x7f00_0002 })),
            // An address for another name is not taken.
            rr("other.example", RData::A(A { address: 0x0102_0304 })),
        ],
    );
    assert_eq!(
        decode_reply(3, "www.example", Qtype::A, &a),
        Reply::Answer(Answer::Records(vec![Rdata::Addr("127.0.0.2".parse().expect("ip"))]))
    );
    // A CNAME loop ends, bounded.
    let l = reply(
        3,
        "a.example",
        TYPE::A,
        RCODE::NoError,
        vec![
            rr("a.example", RData::CNAME(CNAME(Name::new_unchecked("b.example")))),
            rr("b.example", RData::CNAME(CNAME(Name::new_unchecked("a.example")))),
        ],
    );
    assert_eq!(
        decode_reply(3, "a.example", Qtype::A, &l),
        Reply::Answer(Answer::NoData)
    );
}

#[test]
fn hostile_answers_never_panic() {
    let good = reply(
        9,
        "example.org",
        TYPE::MX,
        RCODE::NoError,
        vec![rr("example.org", mx(1, "mx.example.org"))],
    );
    // Every truncation and every single-byte change: an answer, Ignore or Temp, no panic.
    for n in 0..good.len() {
        let _ = decode_reply(9, "example.org", Qtype::Mx, &good[..n]);
    }
    for i in 0..good.len() {
        for b in [0u8, 0xff, 0xc0, 0x3f] {
            let mut d = good.clone();
            d[i] = b;
            let _ = decode_reply(9, "example.org", Qtype::Mx, &d);
        }
    }
    // A compression pointer to itself in the question name.
    let mut d = good[..12].to_vec();
    d.extend_from_slice(&[0xc0, 12, 0, 15, 0, 1]);
    assert!(matches!(
        decode_reply(9, "example.org", Qtype::Mx, &d),
        Reply::Temp(_) | Reply::Ignore
    ));
}

#[test]
fn resolv_conf_and_dns_resolver() {
    let c = parse_resolv_conf(
        "# comment\nsearch example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver ::1\n\
         nameserver bogus\nnameserver 192.0.2.2\nnameserver 192.0.2.3\noptions timeout:2 attempts:9 rotate\n",
    );
    let want: Vec<SocketAddr> = ["192.0.2.1:53", "[::1]:53", "192.0.2.2:53"]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    assert_eq!(c.servers, want, "at most three, zones and junk skipped");
    assert_eq!(c.timeout, Duration::from_secs(2));
    assert_eq!(c.attempts, DNS_ATTEMPTS_MAX);
    assert_eq!(parse_resolv_conf("").servers, ResolverConf::default().servers);
    assert_eq!(
        parse_server("127.0.0.1:5353"),
        Ok("127.0.0.1:5353".parse().expect("addr"))
    );
    assert_eq!(parse_server("::1"), Ok("[::1]:53".parse().expect("addr")));
    assert_eq!(parse_server("[::1]:5353"), Ok("[::1]:5353".parse().expect("addr")));
    assert_eq!(parse_server("[::1]"), Ok("[::1]:53".parse().expect("addr")));
    for bad in ["", "host:53", "127.0.0.1:0", "127.0.0.1:99999"] {
        assert!(parse_server(bad).is_err(), "{bad:?}");
    }
    assert_eq!(conf_from_servers(&[]), Ok(None));
}

#[test]
fn mx_order_null_mx_and_ties() {
    let recs = vec![
        Rdata::Mx(20, "b.example".into()),
        Rdata::Mx(10, "a.example".into()),
        Rdata::Mx(20, "c.example".into()),
        Rdata::Mx(10, "a.example".into()),
    ];
    let mut seen_first = std::collections::HashSet::new();
    for i in 0..64u64 {
        let mut n = i;
        let MxPlan::Hosts(h) = order_mx(&recs, || {
            n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            n >> 33
        }) else {
            panic!("hosts expected")
        };
        assert_eq!(h[0], "a.example");
        assert_eq!(h.len(), 3, "duplicates dropped");
        seen_first.insert(h[1].clone());
    }
    assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
    assert_eq!(order_mx(&[Rdata::Mx(0, String::new())], random_u64), MxPlan::NullMx);
    assert_eq!(
        order_mx(
            &[Rdata::Mx(0, String::new()), Rdata::Mx(10, "mx.example".into())],
            random_u64
        ),
        MxPlan::Hosts(vec!["mx.example".into()])
    );
}

/// A fake DNS: name/type -> answer, or a temporary error.
struct Fake(HashMap<(String, &'static str), Result<Answer, String>>);

impl Lookup for Fake {
    async fn lookup(&self, name: &str, qtype: Qtype) -> Result<Answer, String> {
        self.0
            .get(&(name.to_string(), qtype.name()))
            .cloned()
            .unwrap_or(Ok(Answer::NxDomain))
    }
}

fn fake(entries: &[(&str, &'static str, Result<Answer, String>)]) -> Fake {
    Fake(
        entries
            .iter()
            .map(|(n, t, a)| ((n.to_string(), *t), a.clone()))
            .collect(),
    )
}

fn addr(s: &str) -> Answer {
    Answer::Records(vec![Rdata::Addr(s.parse().expect("ip"))])
}

const V4: Families = Families { v4: true, v6: false };
const NOT_ME: fn(&str, Option<IpAddr>) -> bool = |_, _| false;
const ALL: Families = Families { v4: true, v6: true };

#[test]
fn mx_targets_follow_rfc_5321_section_5_1() {
    let f = fake(&[
        (
            "d.example",
            "MX",
            Ok(Answer::Records(vec![
                Rdata::Mx(20, "mx2.d.example".into()),
                Rdata::Mx(10, "mx1.d.example".into()),
                Rdata::Mx(30, "broken.d.example".into()),
            ])),
        ),
        ("mx1.d.example", "A", Ok(addr("127.0.0.11"))),
        ("mx2.d.example", "A", Ok(addr("127.0.0.12"))),
        ("mx2.d.example", "AAAA", Ok(Answer::NoData)),
        ("broken.d.example", "A", Err("SERVFAIL".into())),
        ("plain.example", "MX", Ok(Answer::NoData)),
        ("plain.example", "A", Ok(addr("127.0.0.20"))),
        (
            "null.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(0, String::new())])),
        ),
        ("fail.example", "MX", Err("timed out".into())),
        (
            "noaddr.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(1, "gone.example".into())])),
        ),
        (
            "tempaddr.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(1, "broken.d.example".into())])),
        ),
    ]);
    smol::block_on(async {
        let t = mx_targets(&f, "D.example.", V4, 10, &NOT_ME).await.expect("targets");
        let hosts: Vec<&str> = t.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(
            hosts,
            ["mx1.d.example", "mx2.d.example"],
            "a host that fails is skipped"
        );
        // The address limit.
        assert_eq!(
            mx_targets(&f, "d.example", V4, 1, &NOT_ME)
                .await
                .expect("targets")
                .len(),
            1
        );
        assert_eq!(
            mx_targets(&f, "plain.example", ALL, 10, &NOT_ME).await,
            Ok(vec![Target {
                host: "plain.example".into(),
                ip: "127.0.0.20".parse().expect("ip")
            }]),
            "no MX: the domain's own address"
        );
        let e = mx_targets(&f, "null.example", V4, 10, &NOT_ME)
            .await
            .expect_err("null MX");
        assert!(e.permanent && e.dsn == "5.1.10" && e.text.contains("nullMX"), "{e:?}");
        let e = mx_targets(&f, "fail.example", V4, 10, &NOT_ME).await.expect_err("temp");
        assert!(
            !e.permanent && e.dsn == "4.4.3" && e.text.contains("try again"),
            "{e:?}"
        );
        let e = mx_targets(&f, "nx.example", V4, 10, &NOT_ME)
            .await
            .expect_err("nxdomain");
        assert!(e.permanent && e.dsn == "5.4.4", "{e:?}");
        let e = mx_targets(&f, "noaddr.example", V4, 10, &NOT_ME)
            .await
            .expect_err("no address");
        assert!(e.permanent && e.text.contains("gone.example"), "{e:?}");
        let e = mx_targets(&f, "tempaddr.example", V4, 10, &NOT_ME)
            .await
            .expect_err("temp address");
        assert!(!e.permanent, "a temporary failure never bounces: {e:?}");
        // A host connected to directly.
        let e = host_targets(&f, "broken.d.example", V4, 5).await.expect_err("temp");
        assert!(!e.permanent);
    });
}

#[test]
fn special_names_never_reach_the_network() {
    // No server at all: the answers come from RFC 6761.
    let r = Resolver {
        conf: ResolverConf {
            servers: vec![],
            timeout: Duration::from_secs(1),
            attempts: 1,
        },
    };
    smol::block_on(async {
        assert_eq!(r.lookup("x.invalid", Qtype::A).await, Ok(Answer::NxDomain));
        assert_eq!(r.lookup("localhost", Qtype::A).await, Ok(addr("127.0.0.1")));
        assert!(r.lookup("example.org", Qtype::A).await.is_err());
    });
}

/// A one-shot DNS server on loopback UDP and TCP (same port) answering with `udp` and `tcp`.
fn serve_once(udp: impl Fn(&[u8]) -> Vec<u8> + Send + 'static, tcp: Option<Vec<(u16, Vec<u8>)>>) -> SocketAddr {
    use std::io::{Read, Write};
    let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = u.local_addr().expect("addr");
    let t = tcp
        .as_ref()
        .map(|_| std::net::TcpListener::bind(addr).expect("tcp bind"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        u.set_read_timeout(Some(Duration::from_secs(5))).ok();
        if let Ok((n, peer)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&udp(&buf[..n]), peer);
        }
        if let (Some(t), Some(_)) = (t, tcp) {
            if let Ok((mut s, _)) = t.accept() {
                let mut l = [0u8; 2];
                if s.read_exact(&mut l).is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(l) as usize];
                    if s.read_exact(&mut q).is_ok() {
                        let id = u16::from_be_bytes([q[0], q[1]]);
                        let a = reply(
                            id,
                            "big.example",
                            TYPE::MX,
                            RCODE::NoError,
                            vec![rr("big.example", mx(5, "mx.big.example"))],
                        );
                        let mut out = (a.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&a);
                        let _ = s.write_all(&out);
                    }
                }
            }
        }
    });
    addr
}

#[test]
fn udp_then_tcp_on_truncation_over_loopback() {
    let server = serve_once(
        |q| {
            let id = u16::from_be_bytes([q[0], q[1]]);
            // A stray answer (wrong id) first is ignored... then a truncated one.
            let mut a = reply(id, "big.example", TYPE::MX, RCODE::NoError, vec![]);
            a[2] |= 0x02;
            a
        },
        Some(vec![]),
    );
    let r = Resolver {
        conf: ResolverConf {
            servers: vec![server],
            timeout: Duration::from_secs(5),
            attempts: 1,
        },
    };
    let got = smol::block_on(r.lookup("big.example", Qtype::Mx));
    assert_eq!(got, Ok(Answer::Records(vec![Rdata::Mx(5, "mx.big.example".into())])));
}

#[test]
fn silent_and_refusing_servers_are_temporary() {
    // Nothing listens: ICMP port unreachable makes it fail at once, not after the timeout.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port");
    let r = Resolver {
        conf: ResolverConf {
            servers: vec![free],
            timeout: Duration::from_secs(3),
            attempts: 2,
        },
    };
    let t = std::time::Instant::now();
    assert!(smol::block_on(r.lookup("example.org", Qtype::Mx)).is_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A server that says SERVFAIL.
    let server = serve_once(
        |q| {
            let id = u16::from_be_bytes([q[0], q[1]]);
            reply(id, "example.org", TYPE::MX, RCODE::ServerFailure, vec![])
        },
        None,
    );
    let r = Resolver {
        conf: ResolverConf {
            servers: vec![server],
            timeout: Duration::from_secs(1),
            attempts: 1,
        },
    };
    let e = smol::block_on(r.lookup("example.org", Qtype::Mx)).expect_err("temp");
    assert!(e.contains("ServerFailure"), "{e}");
    // A server that never answers: bounded by the timeout.
    let mute = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let r = Resolver {
        conf: ResolverConf {
            servers: vec![mute.local_addr().expect("addr")],
            timeout: Duration::from_secs(1),
            attempts: 1,
        },
    };
    let t = std::time::Instant::now();
    assert!(smol::block_on(r.lookup("example.org", Qtype::Mx)).is_err());
    assert!(t.elapsed() < Duration::from_secs(3));
    let _ = IpAddr::from([127, 0, 0, 1]);
}

/// reject_unknown_sender_domain's question: an MX that is not null, or else an address.
#[test]
fn domain_resolves_for_sender_checks() {
    let f = fake(&[
        (
            "mx.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(10, "mail.mx.example".into())])),
        ),
        ("a-only.example", "MX", Ok(Answer::NoData)),
        ("a-only.example", "A", Ok(addr("127.0.0.5"))),
        ("v6-only.example", "MX", Ok(Answer::NoData)),
        ("v6-only.example", "A", Ok(Answer::NoData)),
        ("v6-only.example", "AAAA", Ok(addr("::1"))),
        ("empty.example", "MX", Ok(Answer::NoData)),
        ("empty.example", "A", Ok(Answer::NoData)),
        ("empty.example", "AAAA", Ok(Answer::NoData)),
        (
            "null.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(0, String::new())])),
        ),
        ("broken.example", "MX", Err("SERVFAIL".into())),
    ]);
    let ask = |d: &str| smol::block_on(domain_resolves(&f, d));
    assert_eq!(ask("mx.example"), Ok(true));
    assert_eq!(ask("a-only.example"), Ok(true));
    assert_eq!(ask("v6-only.example"), Ok(true));
    assert_eq!(ask("empty.example"), Ok(false));
    assert_eq!(
        ask("null.example"),
        Ok(false),
        "RFC 7505: a null MX domain takes no mail back"
    );
    assert_eq!(ask("nowhere.example"), Ok(false), "NXDOMAIN");
    assert!(ask("broken.example").is_err(), "a DNS failure is not a verdict");
}

/// RFC 5321 §5.1: finding itself among the MX hosts, the client drops that record and every
/// record with the same or a higher preference; nothing left is a loop (5.4.6).
#[test]
fn mx_targets_drop_ourselves_and_worse() {
    let f = fake(&[
        (
            "d.example",
            "MX",
            Ok(Answer::Records(vec![
                Rdata::Mx(10, "other.d.example".into()),
                Rdata::Mx(20, "same-pref.d.example".into()),
                Rdata::Mx(20, "me.d.example".into()),
                Rdata::Mx(30, "backup.d.example".into()),
            ])),
        ),
        ("other.d.example", "A", Ok(addr("127.0.0.11"))),
        ("same-pref.d.example", "A", Ok(addr("127.0.0.12"))),
        ("me.d.example", "A", Ok(addr("127.0.0.1"))),
        ("backup.d.example", "A", Ok(addr("127.0.0.13"))),
        (
            "loop.example",
            "MX",
            Ok(Answer::Records(vec![
                Rdata::Mx(5, "me.d.example".into()),
                Rdata::Mx(9, "backup.d.example".into()),
            ])),
        ),
        (
            "byname.example",
            "MX",
            Ok(Answer::Records(vec![Rdata::Mx(5, "mx.self.example".into())])),
        ),
        ("mx.self.example", "A", Ok(addr("127.0.0.77"))),
    ]);
    let me = |host: &str, ip: Option<IpAddr>| match ip {
        None => host == "mx.self.example",
        Some(ip) => ip == "127.0.0.1".parse::<IpAddr>().expect("ip"),
    };
    smol::block_on(async {
        // Same-preference hosts are shuffled: whichever came first, only preference 10 stays.
        for _ in 0..20 {
            let t = mx_targets(&f, "d.example", V4, 10, &me).await.expect("targets");
            let hosts: Vec<&str> = t.iter().map(|t| t.host.as_str()).collect();
            assert_eq!(hosts, ["other.d.example"]);
        }
        let e = mx_targets(&f, "loop.example", V4, 10, &me).await.expect_err("loop");
        assert!(
            e.permanent && e.dsn == "5.4.6" && e.text.contains("loops back to myself"),
            "{e:?}"
        );
        let e = mx_targets(&f, "byname.example", V4, 10, &me)
            .await
            .expect_err("loop by name");
        assert_eq!(e.dsn, "5.4.6");
        // Not us: everything in order.
        let t = mx_targets(&f, "d.example", V4, 10, &NOT_ME).await.expect("targets");
        assert_eq!(t.len(), 4);
    });
}
