//! Every response the proxy makes itself, in one place: the cause decides the
//! status, a JSON body says what happened and what to do, and
//! `x-edgeroute-error` carries a stable code for dashboards and clients.

use crate::downstream::Client;
use crate::fields::Fields;
use crate::h1::{Framing, ResponseHead};
use crate::route::Refusal;
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::HeaderValue;
use http::header::{self, HeaderName};
use pingora_error::{Error, ErrorSource, ErrorType};

pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-edgeroute-error");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReply {
    /// The routing rules refuse the request (503 + Retry-After).
    Refused(Refusal),
    /// Body over `limits.max_request_body` (413).
    BodyTooLarge { limit: u64 },
    /// Body slower than `limits.min_request_body_rate` allows (408).
    BodyTooSlow,
    /// The backend could not be reached or failed mid-way (502), or was too slow (504).
    Upstream { status: u16, code: &'static str },
    /// The backend's answer was not HTTP, or could not be framed for the
    /// client (502).
    InvalidAnswer,
    /// The client sent something the proxy cannot parse (400), and what,
    /// when the parser said.
    BadRequest(Option<String>),
    /// The request head is over the size or field-count limit (431).
    HeadTooLarge,
    /// The request body has a transfer coding other than `chunked` (501).
    UnsupportedCoding,
    /// The request line names an HTTP version other than 1.x (505).
    VersionNotSupported,
    /// `CONNECT`: the proxy forwards requests, it does not open tunnels (405).
    MethodNotAllowed,
    /// The request has passed this region's proxies `passes` times: a loop
    /// between regions (508; see [`crate::via`]). `name`: the proxy's name
    /// in `Via`.
    LoopDetected { passes: usize, name: String },
    /// The client went away; nothing can be sent.
    ClientGone,
    /// A bug in the proxy (500).
    Internal,
}

impl ErrorReply {
    /// Classifies a Pingora error by where it came from.
    pub fn from_error(e: &Error) -> Self {
        match e.etype() {
            ErrorType::HTTPStatus(413) => ErrorReply::BodyTooLarge { limit: 0 },
            ErrorType::HTTPStatus(408) => ErrorReply::BodyTooSlow,
            ErrorType::HTTPStatus(400) => {
                ErrorReply::BadRequest(e.context.as_ref().map(|why| why.to_string()))
            }
            ErrorType::HTTPStatus(431) => ErrorReply::HeadTooLarge,
            ErrorType::HTTPStatus(501) => ErrorReply::UnsupportedCoding,
            ErrorType::HTTPStatus(505) => ErrorReply::VersionNotSupported,
            ErrorType::HTTPStatus(s) if (500..600).contains(s) => ErrorReply::Upstream {
                status: *s,
                code: "upstream_error",
            },
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => ErrorReply::Upstream {
                status: 504,
                code: "upstream_connect_timeout",
            },
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() != &ErrorSource::Downstream =>
            {
                ErrorReply::Upstream {
                    status: 504,
                    code: "upstream_timeout",
                }
            }
            ErrorType::InvalidHTTPHeader if e.esource() == &ErrorSource::Upstream => {
                ErrorReply::InvalidAnswer
            }
            _ => match e.esource() {
                ErrorSource::Upstream => ErrorReply::Upstream {
                    status: 502,
                    code: "upstream_unavailable",
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ConnectionClosed
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => ErrorReply::ClientGone,
                    _ => ErrorReply::BadRequest(None),
                },
                ErrorSource::Internal | ErrorSource::Unset => ErrorReply::Internal,
            },
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ErrorReply::Refused(_) => 503,
            ErrorReply::BodyTooLarge { .. } => 413,
            ErrorReply::BodyTooSlow => 408,
            ErrorReply::Upstream { status, .. } => *status,
            ErrorReply::InvalidAnswer => 502,
            ErrorReply::BadRequest(_) => 400,
            ErrorReply::HeadTooLarge => 431,
            ErrorReply::UnsupportedCoding => 501,
            ErrorReply::VersionNotSupported => 505,
            ErrorReply::MethodNotAllowed => 405,
            ErrorReply::LoopDetected { .. } => 508,
            ErrorReply::ClientGone => 0,
            ErrorReply::Internal => 500,
        }
    }

    pub fn client_gone(&self) -> bool {
        matches!(self, ErrorReply::ClientGone)
    }

    pub fn code(&self) -> &'static str {
        match self {
            ErrorReply::Refused(r) => r.code(),
            ErrorReply::BodyTooLarge { .. } => "body_too_large",
            ErrorReply::BodyTooSlow => "body_too_slow",
            ErrorReply::Upstream { code, .. } => code,
            // One code for every 502 a backend caused, as documented.
            ErrorReply::InvalidAnswer => "upstream_unavailable",
            ErrorReply::BadRequest(_) => "bad_request",
            ErrorReply::HeadTooLarge => "request_head_too_large",
            ErrorReply::UnsupportedCoding => "unsupported_transfer_coding",
            ErrorReply::VersionNotSupported => "http_version_not_supported",
            ErrorReply::MethodNotAllowed => "method_not_allowed",
            ErrorReply::LoopDetected { .. } => "loop_detected",
            ErrorReply::ClientGone => "client_gone",
            ErrorReply::Internal => "internal_error",
        }
    }

    fn message(&self) -> String {
        match self {
            ErrorReply::Refused(r) => r.message().to_owned(),
            ErrorReply::BodyTooLarge { limit: 0 } => {
                "the request body is larger than this proxy accepts".to_owned()
            }
            ErrorReply::BodyTooLarge { limit } => {
                format!("the request body is larger than this proxy accepts ({limit} bytes)")
            }
            ErrorReply::BodyTooSlow => {
                "the request body arrived more slowly than this proxy accepts".to_owned()
            }
            ErrorReply::Upstream { status: 504, .. } => {
                "the backend did not answer in time".to_owned()
            }
            ErrorReply::Upstream { .. } => {
                "the backend could not be reached or failed before answering".to_owned()
            }
            ErrorReply::InvalidAnswer => {
                "the backend's answer was not valid HTTP or could not be framed for this client; \
                 the proxy's log says what was wrong"
                    .to_owned()
            }
            ErrorReply::BadRequest(None) => "the request could not be parsed".to_owned(),
            ErrorReply::BadRequest(Some(why)) => {
                // It may quote the request: a line, not the whole head.
                let end = why.floor_char_boundary(300);
                format!("the request could not be parsed: {}", &why[..end])
            }
            ErrorReply::HeadTooLarge => format!(
                "the request head is larger than this proxy accepts ({} KiB, {} fields)",
                crate::downstream::MAX_HEAD / 1024,
                crate::downstream::MAX_FIELDS
            ),
            ErrorReply::UnsupportedCoding => {
                "the request body's transfer coding is not supported: send it chunked or with a Content-Length"
                    .to_owned()
            }
            ErrorReply::VersionNotSupported => {
                "the request line names an HTTP version other than 1.0 and 1.1: HTTP/1 requests \
                 are served as such (HTTP/2 is chosen by ALPN, or by its own preface on an h2c \
                 listener)"
                    .to_owned()
            }
            ErrorReply::MethodNotAllowed => {
                "CONNECT is not supported: this proxy forwards HTTP requests and opens no tunnels"
                    .to_owned()
            }
            ErrorReply::LoopDetected { passes, name } => format!(
                "the request has passed this region's proxies {passes} times (its Via field names \
                 {name} that often): regions are sending it to each other; check that each \
                 region's backends serve requests rather than pass them to another region's \
                 proxies, and that the regions' routing tables agree"
            ),
            ErrorReply::ClientGone => String::new(),
            ErrorReply::Internal => "internal proxy error".to_owned(),
        }
    }
}

/// Writes `reply` as a complete JSON response.
pub async fn write(
    client: &mut Client<'_>,
    reply: &ErrorReply,
    snapshot: Option<&Snapshot>,
    request_id: Option<&HeaderValue>,
    added: &[(http::HeaderName, HeaderValue)],
) -> Result<(), Box<Error>> {
    let mut body = serde_json::json!({
        "error": reply.code(),
        "message": reply.message(),
    });
    if let ErrorReply::Refused(r) = reply {
        body["retry_after_seconds"] = r.retry_after_secs().into();
    }
    if let Some(s) = snapshot {
        body["epoch"] = s.epoch().into();
    }
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        body["request_id"] = id.into();
    }
    let mut fields = Fields::with_capacity(6);
    fields.push(ERROR_HEADER, HeaderValue::from_static(reply.code()));
    if let ErrorReply::Refused(r) = reply {
        fields.push(header::RETRY_AFTER, HeaderValue::from(r.retry_after_secs()));
    }
    let status = http::StatusCode::from_u16(reply.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    client.close_after();
    write_json(client, status, &body, fields, request_id, added).await
}

/// Writes the proxy's own health (see [`crate::state::AppState::health`])
/// as the admin listener's `/health` does: 200 or 503, and its JSON body.
/// The connection stays open.
pub async fn write_health(
    client: &mut Client<'_>,
    (healthy, body): (bool, serde_json::Value),
    request_id: &HeaderValue,
) -> Result<(), Box<Error>> {
    let status = if healthy {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    close_if_body_unread(client);
    write_json(
        client,
        status,
        &body,
        Fields::with_capacity(4),
        Some(request_id),
        &[],
    )
    .await
}

/// Answers an `OPTIONS` or `TRACE` request with no hop left in its
/// `Max-Forwards` as its last recipient (RFC 9110 §7.6.2): `200`, empty
/// for `OPTIONS`; for `TRACE`, the request as received (RFC 9110 §9.3.8),
/// its fields' values shown only where they can hold no secret. It names the proxy's `region`
/// in `x-edgeroute-region`, so that the client sees which hop stopped it.
pub async fn write_last_hop(
    client: &mut Client<'_>,
    region: &HeaderValue,
    request_id: &HeaderValue,
) -> Result<(), Box<Error>> {
    close_if_body_unread(client);
    let mut fields = Fields::with_capacity(5);
    fields.push(crate::upstream::REGION, region.clone());
    let (content_type, body) = if client.request().method == http::Method::TRACE {
        (Some("message/http"), reflected(client))
    } else {
        (None, Bytes::new())
    };
    write_own(
        client,
        http::StatusCode::OK,
        content_type,
        body,
        fields,
        Some(request_id),
        &[],
    )
    .await
}

/// A `TRACE` request's head as received, as `message/http`: the request
/// line and every field's name, but only the values of fields that trace
/// a request's path and carry no secret. Anything else may be a
/// credential, or a secret that a hop in front of the proxy added and the
/// client never sees (an origin-verify header, an ALB's OIDC tokens).
fn reflected(client: &Client<'_>) -> Bytes {
    const SHOWN: [&str; 9] = [
        "host",
        "via",
        "max-forwards",
        "user-agent",
        "accept",
        "content-type",
        "content-length",
        "x-request-id",
        "x-forwarded-proto",
    ];
    let req = client.request();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(client.raw_target());
    out.push(b' ');
    out.extend_from_slice(format!("{:?}", req.version).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in client.fields().iter() {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        if SHOWN
            .iter()
            .any(|w| name.eq_ignore_ascii_case(w.as_bytes()))
        {
            out.extend_from_slice(value);
        } else {
            out.extend_from_slice(b"(withheld)");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// An answer of the proxy's own to a request whose body it does not read:
/// the connection cannot go on after it.
fn close_if_body_unread(client: &mut Client<'_>) {
    if !client.is_body_done() {
        client.close_after();
    }
}

/// Writes a complete response of the proxy's own: `body` as JSON, never
/// cached, with `fields` and the request's id.
async fn write_json(
    client: &mut Client<'_>,
    status: http::StatusCode,
    body: &serde_json::Value,
    fields: Fields,
    request_id: Option<&HeaderValue>,
    added: &[(http::HeaderName, HeaderValue)],
) -> Result<(), Box<Error>> {
    let body = Bytes::from(body.to_string());
    write_own(
        client,
        status,
        Some("application/json"),
        body,
        fields,
        request_id,
        added,
    )
    .await
}

/// Writes a complete response of the proxy's own, never cached, with
/// `fields` and the request's id.
async fn write_own(
    client: &mut Client<'_>,
    status: http::StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
    mut fields: Fields,
    request_id: Option<&HeaderValue>,
    added: &[(http::HeaderName, HeaderValue)],
) -> Result<(), Box<Error>> {
    if let Some(content_type) = content_type {
        fields.push(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    fields.push(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    fields.push(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    fields.push(header::DATE, crate::date::now());
    if let Some(id) = request_id {
        fields.push(crate::upstream::REQUEST_ID, id.clone());
    }
    client
        .write_head(
            ResponseHead {
                status,
                reason: None,
                fields,
                framing: Some(Framing::Length(body.len() as u64)),
            },
            added,
        )
        .await?;
    client.write_body(body, true).await
}

#[cfg(test)]
mod tests {
    use super::ErrorReply;
    use pingora_error::{Error, ErrorType};

    #[test]
    fn an_answer_that_is_not_http_is_a_502_that_says_so() {
        let unframeable = Error::explain(ErrorType::InvalidHTTPHeader, "two lengths").into_up();
        let reply = ErrorReply::from_error(&unframeable);
        assert_eq!(reply, ErrorReply::InvalidAnswer);
        assert_eq!(
            (reply.status(), reply.code()),
            (502, "upstream_unavailable")
        );
        assert!(
            reply.message().contains("not valid HTTP"),
            "{}",
            reply.message()
        );
        // A reset is still one that could not be reached.
        let reset = Error::explain(ErrorType::ConnectionClosed, "reset").into_up();
        assert!(
            ErrorReply::from_error(&reset)
                .message()
                .contains("could not be reached")
        );
        // From the client, the same kind is a bad request.
        let bad = Error::explain(ErrorType::InvalidHTTPHeader, "no Host").into_down();
        assert_eq!(ErrorReply::from_error(&bad).status(), 400);
    }

    #[test]
    fn a_400_quotes_at_most_300_bytes_of_its_reason_on_a_char_boundary() {
        let short = ErrorReply::BadRequest(Some("no Host".into())).message();
        assert_eq!(short, "the request could not be parsed: no Host");
        // 'é' is two bytes: 300 falls between characters only when even.
        for reason in ["é".repeat(400), format!("x{}", "é".repeat(400))] {
            let quoted = ErrorReply::BadRequest(Some(reason.clone())).message();
            let tail = quoted
                .strip_prefix("the request could not be parsed: ")
                .expect("prefix");
            assert!(
                reason.starts_with(tail) && (299..=300).contains(&tail.len()),
                "{}",
                tail.len()
            );
        }
    }
}
