//! The Pingora request phases: route in `request_filter`/`upstream_peer`,
//! rewrite headers in `upstream_request_filter`, decide retries in
//! `fail_to_connect`/`error_while_proxy`, record in `logging`.

use crate::health::outlier::Verdict;
use crate::lifecycle::RequestGuard;
use crate::respond::{self, ErrorReply};
use crate::route::{CONSISTENCY_HEADER, Plan, RouteClass, pick_backend};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::topology::{Backend, InflightGuard, policy};
use async_trait::async_trait;
use bytes::Bytes;
use edgeroute_config::RouteTarget;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

pub const ROUTE_HEADER: &str = "x-edgeroute-route";
pub const EPOCH_HEADER: &str = "x-edgeroute-epoch";
pub const REGION_HEADER: &str = "x-edgeroute-region";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

pub struct EdgeProxy {
    pub state: Arc<AppState>,
}

/// Per-request state; small, and dropped when the request ends.
pub struct Ctx {
    started: Instant,
    _inflight: RequestGuard,
    snapshot: Option<Arc<Snapshot>>,
    plan: Plan,
    region: Option<usize>,
    /// Regions this request already tried (bit per region index).
    excluded_regions: u64,
    /// Backends of `region` this request already tried (bit per backend index).
    tried_backends: u64,
    attempts: u32,
    backend: Option<InflightGuard>,
    request_id: Option<HeaderValue>,
    reply: Option<ErrorReply>,
    body_bytes: u64,
    /// When the request header went to the backend, for its latency.
    sent_at: Option<Instant>,
}

/// A random (version 4) UUID from the thread's fast generator: no system
/// call per request.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

impl EdgeProxy {
    fn outlier_verdict(&self, b: &Backend, verdict: Verdict, cause: &str) {
        let region = &*self.state.topology.regions[b.region].name;
        match verdict {
            Verdict::Kept => {}
            Verdict::Ejected(for_) => {
                self.state
                    .metrics
                    .backend_ejections
                    .with_label_values(&[region, &b.label])
                    .inc();
                tracing::warn!(region, backend = %b.label, address = %b.addr, ejected_for = ?for_, cause, "backend ejected");
            }
            Verdict::CapReached => {
                self.state
                    .metrics
                    .ejections_suppressed
                    .with_label_values(&[region])
                    .inc();
                tracing::warn!(region, backend = %b.label, address = %b.addr, cause, "backend kept in rotation: the region's ejection cap is reached");
            }
        }
    }

    async fn reply(&self, session: &mut Session, ctx: &mut Ctx, reply: ErrorReply) -> Result<bool> {
        if let ErrorReply::Refused(r) = &reply {
            self.state
                .metrics
                .refusals
                .with_label_values(&[r.code()])
                .inc();
        }
        respond::write(
            session,
            &reply,
            ctx.snapshot.as_deref(),
            ctx.request_id.as_ref(),
        )
        .await?;
        ctx.reply = Some(reply);
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            _inflight: self.state.lifecycle.request_started(),
            snapshot: None,
            plan: Plan {
                class: RouteClass::Read,
                target: RouteTarget::Nearest,
            },
            region: None,
            excluded_regions: 0,
            tried_backends: 0,
            attempts: 0,
            backend: None,
            request_id: None,
            reply: None,
            body_bytes: 0,
            sent_at: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(
            req.headers
                .get(REQUEST_ID_HEADER)
                .filter(|v| !v.is_empty() && v.len() <= 200)
                .cloned()
                .unwrap_or_else(new_request_id),
        );
        let limit = self.state.config.limits.max_request_body;
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return self
                .reply(session, ctx, ErrorReply::BodyTooLarge { limit })
                .await;
        }
        let strong = req
            .headers
            .get(CONSISTENCY_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"strong"));
        ctx.plan = self
            .state
            .classifier
            .classify(req.method.as_str(), req.uri.path(), strong);

        if ctx.plan.class == RouteClass::Write && self.state.table_too_old_for_writes() {
            return self
                .reply(
                    session,
                    ctx,
                    ErrorReply::Refused(crate::route::Refusal::TableStale),
                )
                .await;
        }
        let Some(snapshot) = self.state.router.load() else {
            return self
                .reply(
                    session,
                    ctx,
                    ErrorReply::Refused(crate::route::Refusal::NoTable),
                )
                .await;
        };
        let decision = self.state.choose_region(&snapshot, ctx.plan.target, 0);
        ctx.snapshot = Some(snapshot);
        match decision {
            Ok(region) => {
                ctx.region = Some(region);
                Ok(false)
            }
            Err(refusal) => self.reply(session, ctx, ErrorReply::Refused(refusal)).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        if ctx.attempts > 1 {
            self.state.metrics.retries.inc();
        }
        ctx.backend = None;
        let topo = &self.state.topology;
        let snapshot = ctx.snapshot.clone().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "no routing snapshot for this request",
            )
        })?;
        let mut rng = rand::rng();
        loop {
            let region = ctx
                .region
                .ok_or_else(|| Error::explain(ErrorType::InternalError, "no region chosen"))?;
            let backends = topo.regions[region].backends();
            let panic_threshold = self.state.config.health.panic_threshold;
            if let Some(pick) = pick_backend(
                &backends,
                ctx.tried_backends,
                panic_threshold,
                Instant::now(),
                &mut rng,
            ) {
                if pick.panic {
                    self.state
                        .metrics
                        .panic_picks
                        .with_label_values(&[&*topo.regions[region].name])
                        .inc();
                }
                ctx.tried_backends |= 1 << pick.index;
                ctx.backend = Some(pick.backend.start_request());
                return Ok(pick.backend.peer());
            }
            // Every backend of this region is tried or out of rotation. Only a
            // nearest-region read may move on; writes stay on the primary.
            ctx.excluded_regions |= 1 << region;
            let next = (ctx.plan.target == RouteTarget::Nearest)
                .then(|| {
                    self.state
                        .choose_region(&snapshot, RouteTarget::Nearest, ctx.excluded_regions)
                        .ok()
                })
                .flatten();
            match next {
                Some(r) => {
                    ctx.region = Some(r);
                    ctx.tried_backends = 0;
                }
                None => {
                    let refusal = match ctx.plan.target {
                        RouteTarget::Primary => crate::route::Refusal::PrimaryUnavailable,
                        RouteTarget::Local => crate::route::Refusal::LocalUnavailable,
                        RouteTarget::Nearest => crate::route::Refusal::NoRegionAvailable,
                    };
                    ctx.reply = Some(ErrorReply::Refused(refusal));
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        refusal.message(),
                    ));
                }
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.sent_at = Some(Instant::now());
        upstream.insert_header(ROUTE_HEADER, ctx.plan.class.as_str())?;
        if let Some(s) = &ctx.snapshot {
            upstream.insert_header(EPOCH_HEADER, s.epoch_header.clone())?;
        }
        if let Some(id) = &ctx.request_id {
            upstream.insert_header(REQUEST_ID_HEADER, id.clone())?;
        }
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            let xff = match upstream.headers.get("x-forwarded-for").map(|v| v.to_str()) {
                Some(Ok(prior)) if !prior.is_empty() => format!("{prior}, {ip}"),
                _ => ip,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header(
            "x-forwarded-proto",
            if is_tls(session) { "https" } else { "http" },
        )?;
        if let Some(host) = ctx
            .region
            .and_then(|r| self.state.topology.regions[r].host.as_deref())
        {
            upstream.insert_header(http::header::HOST, host)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            let limit = self.state.config.limits.max_request_body;
            if ctx.body_bytes > limit {
                ctx.reply = Some(ErrorReply::BodyTooLarge { limit });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over limits.max_request_body",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(r) = ctx.region {
            resp.insert_header(REGION_HEADER, &*self.state.topology.regions[r].name)?;
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header(REQUEST_ID_HEADER, id.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        if let (Some(guard), Some(sent_at)) = (&ctx.backend, ctx.sent_at) {
            let b = guard.backend();
            let now = Instant::now();
            let h = &self.state.config.health;
            let may_eject =
                self.state.topology.regions[b.region].may_eject(h.max_ejection_percent, now);
            let verdict = b.record_response(
                resp.status.as_u16(),
                now - sent_at,
                &policy(h),
                now,
                may_eject,
            );
            self.outlier_verdict(b, verdict, "5xx responses");
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(guard) = &ctx.backend {
            let b = guard.backend();
            let now = Instant::now();
            let h = &self.state.config.health;
            let may_eject =
                self.state.topology.regions[b.region].may_eject(h.max_ejection_percent, now);
            let verdict = b.record_connect_failure(&policy(h), now, may_eject);
            self.outlier_verdict(b, verdict, "failed connects");
        }
        // Nothing reached the backend: any request may try another one.
        if ctx.attempts < self.state.config.retries.max_attempts {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // Bytes may have reached the backend: retry only what is safe to
        // repeat, and never a body we no longer hold in full.
        let req = session.req_header();
        let repeatable =
            req.method.is_idempotent() || req.headers.contains_key(IDEMPOTENCY_KEY_HEADER);
        if repeatable
            && ctx.attempts < self.state.config.retries.max_attempts
            && !session.as_ref().retry_buffer_truncated()
        {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reply = ctx
            .reply
            .take()
            .unwrap_or_else(|| ErrorReply::from_error(e));
        if let ErrorReply::Refused(r) = &reply {
            self.state
                .metrics
                .refusals
                .with_label_values(&[r.code()])
                .inc();
        }
        let code = reply.status();
        let written = if reply.client_gone() {
            0
        } else {
            match respond::write(
                session,
                &reply,
                ctx.snapshot.as_deref(),
                ctx.request_id.as_ref(),
            )
            .await
            {
                Ok(()) => code,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot send the error response; the client is gone");
                    0
                }
            }
        };
        ctx.reply = Some(reply);
        FailToProxy {
            error_code: written,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or_else(
            || ctx.reply.as_ref().map_or(0, ErrorReply::status),
            |r| r.status.as_u16(),
        );
        let served_by_index = if ctx.reply.is_some() {
            None
        } else {
            ctx.region
        };
        let served_by = served_by_index.map_or("none", |r| &*self.state.topology.regions[r].name);
        let route = ctx.plan.class.as_str();
        let elapsed = ctx.started.elapsed();
        self.state.request_metrics.record(
            served_by_index,
            ctx.plan.class,
            status,
            elapsed.as_secs_f64(),
        );
        if self.state.config.log.access {
            let req = session.req_header();
            tracing::info!(
                target: "edgeroute::access",
                method = %req.method,
                path = req.uri.path(),
                status,
                region = served_by,
                route,
                epoch = ctx.snapshot.as_ref().map_or(0, |s| s.epoch()),
                attempts = ctx.attempts,
                backend = ctx.backend.as_ref().map_or("", |b| b.backend().label.as_str()),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                error = e.map(|e| e.to_string()),
                "request"
            );
        }
    }
}
