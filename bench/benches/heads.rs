//! The proxy's work on message heads, per request, without sockets: the
//! facts it reads from a request's fields and the head it writes for the
//! backend, and the fields it strips from a response. The heads are the
//! size browsers and web servers send.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use edgeroute_proxy::fields::Fields;
use edgeroute_proxy::h1::ResponseHead;
use edgeroute_proxy::ryw::ReadYourWrites;
use edgeroute_proxy::upstream::{Forwarding, RequestFacts, backend_request, client_response};
use http::{HeaderValue, Request, StatusCode};
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::time::SystemTime;

const REQUEST: &[u8] = b"GET /orders/42?view=full HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://shop.example.com/orders\r\n\
Cookie: session=4f1c2a9e7b; theme=dark\r\n\
Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Priority: u=0, i\r\n\
X-Amzn-Trace-Id: Root=1-67891233-abcdef012345678912345678\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Fri, 27 Nov 2026 09:04:34 GMT\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Length: 5120\r\n\
Connection: keep-alive\r\n\
Cache-Control: private, max-age=0\r\n\
Vary: Accept-Encoding\r\n\
ETag: \"5f1c-2a9e7b\"\r\n\
Strict-Transport-Security: max-age=31536000\r\n\r\n";

/// The fields of `head` (a request's or a response's) as the proxy keeps
/// them: places in the head's bytes.
fn fields_of(head: &'static [u8]) -> Fields {
    let text = Bytes::from_static(head);
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
    let config = httparse::ParserConfig::default();
    let headers: &[httparse::Header<'_>] = if head.starts_with(b"HTTP/") {
        let mut resp = httparse::Response::new(&mut []);
        config
            .parse_response_with_uninit_headers(&mut resp, &text, &mut slots)
            .expect("a valid head");
        resp.headers
    } else {
        let mut req = httparse::Request::new(&mut []);
        config
            .parse_request_with_uninit_headers(&mut req, &text, &mut slots)
            .expect("a valid head");
        req.headers
    };
    let mut fields = Fields::read_from(text.clone(), headers.len());
    for h in headers {
        fields
            .push_read(h.name.as_bytes(), h.value)
            .expect("in the head");
    }
    fields
}

fn bench(c: &mut Criterion) {
    let request = fields_of(REQUEST);
    let (parts, ()) = Request::get("/orders/42?view=full")
        .body(())
        .expect("a request")
        .into_parts();
    let request_id = HeaderValue::from_static("0b9e4d0c-8f5e-4a52-9d2c-3c1f5e8a7b61");
    let epoch = HeaderValue::from_static("7");
    let via = HeaderValue::from_static("1.1 edgeroute-us-east-1");
    c.bench_function("request head: facts + backend head (15 fields)", |b| {
        b.iter(|| {
            let facts = RequestFacts::of(&parts, black_box(&request));
            let fwd = Forwarding {
                route: HeaderValue::from_static("read"),
                epoch: Some(&epoch),
                request_id: &request_id,
                client_ip: Some(HeaderValue::from_static("203.0.113.7")),
                tls: true,
                host: None,
                via: &via,
            };
            let head = backend_request(
                &parts,
                &request,
                b"/orders/42?view=full",
                &facts,
                false,
                &fwd,
            )
            .expect("forwardable");
            black_box(head.bytes.len())
        })
    });

    let response = fields_of(RESPONSE);
    let region = HeaderValue::from_static("us-east-1");
    c.bench_function("response head: hop-by-hop fields out (9 fields)", |b| {
        b.iter(|| {
            let head = ResponseHead {
                status: StatusCode::OK,
                reason: None,
                fields: black_box(&response).clone(),
                framing: None,
            };
            let (head, own) = client_response(head, Some(&region), &request_id);
            black_box((head.fields.len(), own.len()))
        })
    });
}

/// A `Cookie` field of about 2 KiB as a browser sends one behind a CDN:
/// 40 cookies, the read-your-writes token last if `token`.
fn cookie_field(token: bool) -> Fields {
    let mut value: String = (0..40)
        .map(|i| {
            format!(
                "_ga_cookie_{i:02}=GA1.1.{:016x}.1732700000; ",
                i * 7_919_u64
            )
        })
        .collect();
    if token {
        value.push_str("edgeroute-ryw=99999999999999");
    } else {
        value.push_str("consent=yes");
    }
    let mut fields = Fields::default();
    fields.push(
        http::header::COOKIE,
        HeaderValue::try_from(value).expect("a valid value"),
    );
    fields
}

/// What read-your-writes adds to a read that carries cookies: the search
/// for its token, and the clock read only when one is found.
fn read_your_writes(c: &mut Criterion) {
    let ryw = ReadYourWrites::new(&edgeroute_config::ReadYourWrites {
        window: std::time::Duration::from_secs(5),
        cookie: "edgeroute-ryw".into(),
    })
    .expect("a window");
    for (token, name) in [
        (false, "read-your-writes: no token in a 2 KiB Cookie"),
        (true, "read-your-writes: the token last in a 2 KiB Cookie"),
    ] {
        let fields = cookie_field(token);
        c.bench_function(name, |b| {
            b.iter(|| black_box(ryw.fresh(black_box(&fields), SystemTime::now)))
        });
    }
}

criterion_group!(benches, bench, read_your_writes);
criterion_main!(benches);
