//! The DNS responder (hickory-server, UDP and TCP): authoritative for the actor zone
//! (default `actors.resources.substrate.ate.dev`), answering from the routing table.
//!
//! | query | answer |
//! |---|---|
//! | apex `SOA` / `NS` | the zone's SOA / NS (`ns.<zone>`, with its addresses as glue) |
//! | `ns.<zone>` `A`/`AAAA` | this responder's addresses (`--dns-address`), the name server named by SOA and NS |
//! | `<actor>.<atespace>.<zone>` `A`/`AAAA`, actor exists | the router's addresses (`--dns-address`) |
//! | an existing name, another type | NOERROR, no data, SOA in authority |
//! | `<atespace>.<zone>`, atespace exists | NOERROR, no data, SOA in authority |
//! | anything else under the zone | NXDOMAIN, SOA in authority |
//! | outside the zone | REFUSED |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::host::{ActorKey, Suffix, ZoneName, parse_name};
use crate::table::Table;

/// TTL of every answer: short, since actors come and go.
pub const TTL: u32 = 5;

/// Why the DNS responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the zone {zone:?} is not a valid DNS name")]
    Zone {
        zone: String,
        #[source]
        source: hickory_server::proto::ProtoError,
    },
    #[error("binding the DNS listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Answers queries for the zone from the table.
pub struct Responder {
    table: Arc<Table>,
    suffix: Suffix,
    soa: Record,
    ns: Record,
    /// `ns.<zone>`, the name server SOA and NS name: resolvable, with the router's addresses.
    ns_name: Name,
    addresses: Vec<IpAddr>,
}

/// What to answer.
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    authority_ns: Vec<Record>,
    soa: Vec<Record>,
    additionals: Vec<Record>,
}

impl Responder {
    pub fn new(
        table: Arc<Table>,
        suffix: Suffix,
        addresses: Vec<IpAddr>,
    ) -> Result<Self, DnsError> {
        let zone_err = |source| DnsError::Zone {
            zone: suffix.to_string(),
            source,
        };
        let zone = Name::from_ascii(format!("{suffix}.")).map_err(zone_err)?;
        let ns_name = Name::from_ascii(format!("ns.{suffix}.")).map_err(zone_err)?;
        let hostmaster = Name::from_ascii(format!("hostmaster.{suffix}.")).map_err(zone_err)?;
        let serial = jiff::Timestamp::now().as_second() as u32;
        let soa = Record::from_rdata(
            zone.clone(),
            TTL,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                60,
                30,
                86400,
                TTL,
            )),
        );
        let ns = Record::from_rdata(zone, TTL, RData::NS(NS(ns_name.clone())));
        Ok(Self {
            table,
            suffix,
            soa,
            ns,
            ns_name,
            addresses,
        })
    }

    fn records(&self, name: &Name, qtype: RecordType) -> Vec<Record> {
        self.addresses
            .iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(*v6)))
                }
                _ => None,
            })
            .map(|rd| Record::from_rdata(name.clone(), TTL, rd))
            .collect()
    }

    fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let no_data = |code| Answer {
            code,
            answers: vec![],
            authority_ns: vec![],
            soa: vec![self.soa.clone()],
            additionals: vec![],
        };
        // The name server's own name comes before an atespace that happens to be called `ns`.
        if qname.eq_ignore_root(&self.ns_name) {
            let answers = self.records(qname, qtype);
            if answers.is_empty() {
                return no_data(ResponseCode::NoError);
            }
            return Answer {
                code: ResponseCode::NoError,
                answers,
                authority_ns: vec![],
                soa: vec![],
                additionals: vec![],
            };
        }
        match parse_name(&qname.to_ascii(), &self.suffix) {
            ZoneName::Outside => Answer {
                code: ResponseCode::Refused,
                answers: vec![],
                authority_ns: vec![],
                soa: vec![],
                additionals: vec![],
            },
            ZoneName::Apex => match qtype {
                RecordType::SOA => Answer {
                    code: ResponseCode::NoError,
                    answers: vec![self.soa.clone()],
                    authority_ns: vec![self.ns.clone()],
                    soa: vec![],
                    additionals: vec![],
                },
                RecordType::NS => Answer {
                    code: ResponseCode::NoError,
                    answers: vec![self.ns.clone()],
                    authority_ns: vec![],
                    soa: vec![],
                    additionals: self.records(&self.ns_name, RecordType::ANY),
                },
                _ => no_data(ResponseCode::NoError),
            },
            ZoneName::Atespace(a) if self.table.atespace_exists(&a) => {
                no_data(ResponseCode::NoError)
            }
            ZoneName::Actor(ActorKey { atespace, name })
                if self
                    .table
                    .actor(&ActorKey::new(atespace.clone(), name.clone()))
                    .is_some() =>
            {
                let answers = self.records(qname, qtype);
                if answers.is_empty() {
                    no_data(ResponseCode::NoError)
                } else {
                    Answer {
                        code: ResponseCode::NoError,
                        answers,
                        authority_ns: vec![],
                        soa: vec![],
                        additionals: vec![],
                    }
                }
            }
            _ => no_data(ResponseCode::NXDomain),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let fallback = |metadata: Metadata| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let query = match request.request_info() {
            Ok(info) if request.metadata.op_code == OpCode::Query => info.query.clone(),
            Ok(_) => {
                let resp = builder.error_msg(&request.metadata, ResponseCode::NotImp);
                metadata.response_code = ResponseCode::NotImp;
                return response_handle
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| fallback(metadata));
            }
            Err(_) => {
                let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                metadata.response_code = ResponseCode::FormErr;
                return response_handle
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| fallback(metadata));
            }
        };
        let qname: Name = query.name().into();
        let a = self.answer(&qname, query.query_type());
        metadata.response_code = a.code;
        metadata.authoritative = a.code != ResponseCode::Refused;
        let resp = builder.build(
            metadata,
            a.answers.iter(),
            a.authority_ns.iter(),
            a.soa.iter(),
            a.additionals.iter(),
        );
        match response_handle.send_response(resp).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS answer failed");
                fallback(metadata)
            }
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Box<dyn FnOnce() + Send>,
    task: tokio::task::JoinHandle<()>,
}

/// Attempts at finding a port free for both UDP and TCP when `addr` has port 0.
const EPHEMERAL_ATTEMPTS: usize = 32;

/// Binds a UDP socket and a TCP listener on the same address. With port 0 the
/// kernel picks the UDP port, and that port may already be taken for TCP by
/// another process: then both are dropped and another port is tried.
async fn bind_pair(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr), DnsError> {
    let bind = |source| DnsError::Bind { addr, source };
    let attempts = if addr.port() == 0 {
        EPHEMERAL_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(bind)?;
        let bound = udp.local_addr().map_err(bind)?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts => {
                tracing::debug!(
                    port = bound.port(),
                    "DNS port taken for TCP, trying another"
                );
            }
            Err(e) => return Err(bind(e)),
        }
    }
}

impl DnsServer {
    pub async fn stop(self) {
        (self.stop)();
        let _ = self.task.await;
    }
}

/// Binds UDP and TCP on `addr` (TCP on the port UDP got, when `addr` has port 0).
pub async fn serve(responder: Responder, addr: SocketAddr) -> Result<DnsServer, DnsError> {
    let (udp, tcp, bound) = bind_pair(addr).await?;
    let mut server = hickory_server::Server::new(responder);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64);
    let token = server.shutdown_token().clone();
    let task = tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::warn!(error = %e, "DNS server stopped");
        }
    });
    tracing::info!(addr = %bound, "DNS responder listening");
    Ok(DnsServer {
        addr: bound,
        stop: Box::new(move || token.cancel()),
        task,
    })
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[tokio::test]
    async fn an_ephemeral_pair_shares_one_port() {
        for _ in 0..20 {
            let (udp, tcp, bound) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
            assert_ne!(bound.port(), 0);
            assert_eq!(udp.local_addr().unwrap(), bound);
            assert_eq!(tcp.local_addr().unwrap(), bound);
        }
    }

    #[tokio::test]
    async fn a_fixed_port_taken_for_tcp_is_an_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        // The UDP side of the same port is most likely free; TCP is not.
        match bind_pair(addr).await {
            Err(e @ DnsError::Bind { .. }) => {
                assert!(e.to_string().contains(&addr.to_string()), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("bound {addr} although its TCP port is taken"),
        }
    }
}
