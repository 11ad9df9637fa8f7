//! Every response the proxy makes itself, in one place: the cause decides the
//! status, a JSON body says what happened and what to do, and
//! `x-edgeroute-error` carries a stable code for dashboards and clients.

use crate::route::Refusal;
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;

pub const ERROR_HEADER: &str = "x-edgeroute-error";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReply {
    /// The routing rules refuse the request (503 + Retry-After).
    Refused(Refusal),
    /// Body over `limits.max_request_body` (413).
    BodyTooLarge { limit: u64 },
    /// The backend could not be reached or failed mid-way (502), or was too slow (504).
    Upstream { status: u16, code: &'static str },
    /// The client sent something the proxy cannot parse (400).
    BadRequest,
    /// `CONNECT`: the proxy forwards requests, it does not open tunnels (405).
    MethodNotAllowed,
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
            ErrorType::HTTPStatus(400) => ErrorReply::BadRequest,
            ErrorType::HTTPStatus(s) if (500..600).contains(s) => ErrorReply::Upstream {
                status: *s,
                code: "upstream_error",
            },
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => ErrorReply::Upstream {
                status: 504,
                code: "upstream_connect_timeout",
            },
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => ErrorReply::Upstream {
                status: 504,
                code: "upstream_timeout",
            },
            _ => match e.esource() {
                ErrorSource::Upstream => ErrorReply::Upstream {
                    status: 502,
                    code: "upstream_unavailable",
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                        ErrorReply::ClientGone
                    }
                    _ => ErrorReply::BadRequest,
                },
                ErrorSource::Internal | ErrorSource::Unset => ErrorReply::Internal,
            },
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ErrorReply::Refused(_) => 503,
            ErrorReply::BodyTooLarge { .. } => 413,
            ErrorReply::Upstream { status, .. } => *status,
            ErrorReply::BadRequest => 400,
            ErrorReply::MethodNotAllowed => 405,
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
            ErrorReply::Upstream { code, .. } => code,
            ErrorReply::BadRequest => "bad_request",
            ErrorReply::MethodNotAllowed => "method_not_allowed",
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
            ErrorReply::Upstream { status: 504, .. } => {
                "the backend did not answer in time".to_owned()
            }
            ErrorReply::Upstream { .. } => {
                "the backend could not be reached or failed before answering".to_owned()
            }
            ErrorReply::BadRequest => "the request could not be parsed".to_owned(),
            ErrorReply::MethodNotAllowed => {
                "CONNECT is not supported: this proxy forwards HTTP requests and opens no tunnels"
                    .to_owned()
            }
            ErrorReply::ClientGone => String::new(),
            ErrorReply::Internal => "internal proxy error".to_owned(),
        }
    }
}

/// Writes `reply` as a complete JSON response.
pub async fn write(
    session: &mut ServerSession,
    reply: &ErrorReply,
    snapshot: Option<&Snapshot>,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
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
    let body = Bytes::from(body.to_string());
    let mut resp = ResponseHeader::build(reply.status(), Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(ERROR_HEADER, reply.code())?;
    if let ErrorReply::Refused(r) = reply {
        resp.insert_header(http::header::RETRY_AFTER, r.retry_after_secs())?;
    }
    if let Some(id) = request_id {
        resp.insert_header(&crate::upstream::REQUEST_ID, id.clone())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}
