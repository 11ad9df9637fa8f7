//! A load balancer of connections, as a Kubernetes Service or an NLB is:
//! each new connection goes to the next address in turn, passing over one
//! that refuses it (a replica that went away), and is relayed whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections relayed to each address, in the order given.
    relayed: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a loopback port and relays to `targets` in turn.
    pub async fn start(targets: &[SocketAddr]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let targets = targets.to_vec();
        let relayed: Arc<Vec<AtomicUsize>> =
            Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = Arc::clone(&relayed);
        let task = tokio::spawn(async move {
            let mut next = 0;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                // The next target that takes the connection.
                let mut upstream = None;
                for _ in 0..targets.len() {
                    let i = next % targets.len();
                    next += 1;
                    if let Ok(conn) = TcpStream::connect(targets[i]).await {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        upstream = Some(conn);
                        break;
                    }
                }
                let Some(mut upstream) = upstream else {
                    continue;
                };
                tokio::spawn(async move {
                    tokio::io::copy_bidirectional(&mut client, &mut upstream)
                        .await
                        .ok();
                });
            }
        });
        Balancer {
            addr,
            relayed,
            task,
        }
    }

    /// Connections relayed to the `i`th target so far.
    pub fn relayed(&self, i: usize) -> usize {
        self.relayed[i].load(Ordering::Relaxed)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
