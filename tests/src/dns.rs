//! A DNS server on loopback whose answers a test changes, so the proxy's
//! re-resolution of backend names can be watched end to end.

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// TTL of every answer, in seconds.
pub const TTL: u32 = 1;

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    task: tokio::task::JoinHandle<()>,
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
        self.zone.lock().expect("zone lock").insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            ips.to_vec(),
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>) {
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
            let name = q
                .name()
                .to_string()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let ips = zone.lock().expect("zone lock").get(&name).cloned();
            match ips {
                None => reply.metadata.response_code = ResponseCode::NXDomain,
                Some(ips) if q.query_type() == RecordType::A => {
                    for ip in ips {
                        reply.add_answer(Record::from_rdata(
                            q.name().clone(),
                            TTL,
                            RData::A(A(ip)),
                        ));
                    }
                }
                // Known name, other type (AAAA): no records.
                Some(_) => {}
            }
        }
        if let Ok(bytes) = reply.to_vec() {
            // A lost reply is retried by the resolver.
            socket.send_to(&bytes, peer).await.ok();
        }
    }
}
