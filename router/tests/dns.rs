//! The DNS responder over real UDP and TCP, answering from the watch.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Message, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{SUFFIX, eventually, host, world};

async fn udp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("DNS answer in time")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

async fn tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let bytes = q.to_vec().unwrap();
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_for_actors_from_the_watch() {
    let w = world().await;
    w.actor("web", "t", "OnDemand").await;
    let r = w.router(Duration::from_secs(5)).await;
    let dns = r.dns_addr.expect("dns listening");
    let fqdn = |s: &str| format!("{s}.");

    // A and AAAA for an existing actor (case-insensitive), over UDP and TCP.
    let m = eventually("the actor is in the table", || async {
        let m = udp(dns, &fqdn(&host("web")), RecordType::A).await;
        (m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty()).then_some(m)
    })
    .await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::A(a) if a.0 == std::net::Ipv4Addr::LOCALHOST));
    assert!(m.answers[0].ttl <= 5);
    let m = tcp(dns, &fqdn(&host("web").to_uppercase()), RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    let m = udp(dns, &fqdn(&host("web")), RecordType::AAAA).await;
    assert!(matches!(m.answers[0].data, RData::AAAA(a) if a.0 == std::net::Ipv6Addr::LOCALHOST));
    // Existing name, other type: NOERROR, no data, SOA.
    let m = udp(dns, &fqdn(&host("web")), RecordType::TXT).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && has_soa(&m));

    // Unknown actor, unknown atespace: NXDOMAIN with SOA.
    for name in [
        host("ghost"),
        format!("web.nowhere.{SUFFIX}"),
        format!("nowhere.{SUFFIX}"),
        format!("a.b.c.{SUFFIX}"),
    ] {
        let m = udp(dns, &fqdn(&name), RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(has_soa(&m), "{name}");
    }
    // The atespace exists: NOERROR, no data.
    let m = udp(dns, &fqdn(&format!("team-a.{SUFFIX}")), RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && has_soa(&m));
    // Apex SOA and NS.
    let m = udp(dns, &fqdn(SUFFIX), RecordType::SOA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = udp(dns, &fqdn(SUFFIX), RecordType::NS).await;
    assert_eq!(m.answers[0].record_type(), RecordType::NS);
    let ns = match &m.answers[0].data {
        RData::NS(ns) => ns.0.to_ascii(),
        other => panic!("NS answer {other:?}"),
    };
    assert_eq!(ns, fqdn(&format!("ns.{SUFFIX}")));
    // The name server named by SOA and NS resolves (glue in the NS answer, and asked directly).
    assert!(
        m.additionals
            .iter()
            .any(|r| matches!(r.data, RData::A(a) if a.0 == std::net::Ipv4Addr::LOCALHOST)),
        "glue for {ns}: {m:?}"
    );
    let m = tcp(dns, &ns, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(m.answers[..], [ref r] if matches!(r.data, RData::A(a) if a.0 == std::net::Ipv4Addr::LOCALHOST)),
        "{m:?}"
    );
    let m = udp(dns, &ns, RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && has_soa(&m));
    // Outside the zone: REFUSED.
    let m = udp(dns, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // NXDOMAIN, then NOERROR once the actor is created (fed from the watch).
    let name = fqdn(&host("later"));
    let m = udp(dns, &name, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    w.actor("later", "t", "OnDemand").await;
    eventually("the new actor resolves", || async {
        let m = udp(dns, &name, RecordType::A).await;
        (m.metadata.response_code == ResponseCode::NoError && m.answers.len() == 1).then_some(())
    })
    .await;
    r.stop().await;
}
