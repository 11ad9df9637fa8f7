//! A TCP relay whose target can change: a load-balanced address, for
//! tests of what its clients see when the server behind it changes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays every connection to `target` (loopback).
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let target = Arc::new(Mutex::new(target));
        let current = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().expect("relay target");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { addr, target, task }
    }

    /// New connections go to `target`; those open stay where they are.
    pub fn point_at(&self, target: SocketAddr) {
        *self.target.lock().expect("relay target") = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
