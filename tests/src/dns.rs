//! A DNS server on loopback whose answers a test changes, so the proxy's
//! re-resolution of backend names can be watched end to end.

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// TTL of every answer, in seconds.
pub const TTL: u32 = 1;

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Entry>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What one name answers.
#[derive(Clone, Default)]
struct Entry {
    ips: Vec<IpAddr>,
    /// Queries of these types get SERVFAIL.
    failing: Vec<RecordType>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS socket");
        let addr = socket.local_addr().expect("DNS address");
        let zone = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        DnsServer { addr, zone, task }
    }

    /// `name` answers `ips` from now on (A records, TTL [`TTL`]).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let ips: Vec<IpAddr> = ips.iter().copied().map(IpAddr::V4).collect();
        self.set_ips(name, &ips);
    }

    /// `name` answers `ips` from now on: A records for the IPv4 ones, AAAA
    /// for the IPv6 ones, TTL [`TTL`].
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        self.zone.lock().expect("zone lock").insert(
            key(name),
            Entry {
                ips: ips.to_vec(),
                failing: Vec::new(),
            },
        );
    }

    /// Queries of `name` for `record_type` get SERVFAIL from now on; its
    /// other types answer as before.
    pub fn fail(&self, name: &str, record_type: RecordType) {
        let mut zone = self.zone.lock().expect("zone lock");
        zone.entry(key(name)).or_default().failing.push(record_type);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<HashMap<String, Entry>>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        for q in &query.queries {
            reply.add_query(q.clone());
            let name = key(&q.name().to_string());
            let entry = zone.lock().expect("zone lock").get(&name).cloned();
            let Some(entry) = entry else {
                reply.metadata.response_code = ResponseCode::NXDomain;
                continue;
            };
            if entry.failing.contains(&q.query_type()) {
                reply.metadata.response_code = ResponseCode::ServFail;
                continue;
            }
            // A known name without records of the asked type: no records.
            for ip in entry.ips {
                let data = match (ip, q.query_type()) {
                    (IpAddr::V4(ip), RecordType::A) => RData::A(A(ip)),
                    (IpAddr::V6(ip), RecordType::AAAA) => RData::AAAA(AAAA(ip)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, data));
            }
        }
        if let Ok(bytes) = reply.to_vec() {
            // A lost reply is retried by the resolver.
            socket.send_to(&bytes, peer).await.ok();
        }
    }
}
