//! A webhook receiver: records the JSON body of every POST it gets.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = TcpListener::bind(crate::proxy::free_addr())
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook address");
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match serde_json::from_slice(&body) {
                                Ok(v) => {
                                    store.lock().expect("webhook store").push(v);
                                    StatusCode::NO_CONTENT
                                }
                                Err(_) => StatusCode::BAD_REQUEST,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Webhook {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/edgeroute", self.addr)
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.received.lock().expect("webhook store").clone()
    }

    /// Fails naming what is missing unless every event in `events` arrived.
    pub fn assert_received(&self, events: &[&str]) {
        let names = self.names();
        for event in events {
            assert!(
                names.iter().any(|n| n == event),
                "webhook missing {event}: {names:?}"
            );
        }
    }

    /// The names of the events received so far, in order.
    pub fn names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
