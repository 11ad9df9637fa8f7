//! The forwarding path: read the request (HTTP/1.x on the proxy's own
//! session, HTTP/2 on pingora-core's, see [`crate::h2`]), route it, send it
//! to a backend over a pooled HTTP/1.1 connection, stream the answer back.
//! One request is one sequence of awaits on one task — no per-request
//! channels or helper tasks.
//!
//! Retries follow one rule: a request that reached no backend (the connect
//! failed, or the connection closed before any byte of the request went
//! out) may go to another; one that may have reached a backend goes again
//! only if it is safe to repeat (idempotent method or `Idempotency-Key`) and
//! its body is still held in full.

use crate::connect;
use crate::downstream::{self, Client};
use crate::h1;
use crate::health::outlier::Verdict;
use crate::kernel::Socket;
use crate::lifecycle::RequestGuard;
use crate::respond::{self, ErrorReply};
use crate::rng;
use crate::route::{Plan, Refusal, RouteClass, carry_tried, pick_backend};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::topology::{Backend, InflightGuard, policy};
use crate::tunnel::Conn;
use crate::upstream;
use bytes::Bytes;
use edgeroute_config::RouteTarget;
use http::HeaderValue;
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::{Error, ErrorType};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type BError = Box<Error>;

pub struct EdgeProxy {
    state: Arc<AppState>,
}

impl EdgeProxy {
    pub fn new(state: Arc<AppState>) -> Self {
        EdgeProxy { state }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves a client connection: HTTP/1.x on the proxy's own session
    /// ([`EdgeProxy::serve_h1`]), HTTP/2 on pingora-core's, one request
    /// per stream (see [`crate::h2`]).
    pub async fn serve_connection(
        self: &Arc<Self>,
        stream: Stream,
        http2: bool,
        shutdown: &ShutdownWatch,
    ) {
        if http2 {
            self.serve_h2(stream, shutdown).await;
        } else {
            self.serve_h1(stream, shutdown).await;
        }
    }
}

/// How long a backend that stopped taking the request body for
/// `timeouts.write` is given to answer it.
const EARLY_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Per-request state; small, and dropped when the request ends.
struct Ctx {
    started: Instant,
    /// When a `101` went to the client: an upgraded request's duration
    /// in the histogram ends there, not with its tunnel.
    upgraded_at: Option<Instant>,
    _inflight: RequestGuard,
    snapshot: Option<Arc<Snapshot>>,
    plan: Plan,
    region: Option<usize>,
    /// Regions this request already tried (bit per region index).
    excluded_regions: u64,
    /// Backends of `region` this request already tried (bit per index in
    /// `tried_list`).
    tried_backends: u64,
    /// The backend list `tried_backends` indexes: DNS may swap the region's
    /// list between attempts.
    tried_list: Option<Arc<Vec<Arc<Backend>>>>,
    /// Backends picked for this request so far.
    attempts: u32,
    backend: Option<InflightGuard>,
    /// The region of the backend picked last: the one whose answer, or
    /// failure, the client gets. `None` while no backend was picked.
    sent_to: Option<usize>,
    /// A read sent to the primary for its client's fresh write: it may go
    /// to the nearest region when the primary's backends fail.
    after_write: bool,
    request_id: HeaderValue,
    reply: Option<ErrorReply>,
    /// The code of the answer the proxy wrote itself, if it did.
    answered_with: Option<&'static str>,
    body_bytes: u64,
    /// Time spent waiting for the client's body bytes, over all attempts.
    body_waited: Duration,
    /// The request may be sent again after bytes of it reached a backend.
    repeatable: bool,
    /// Index of the backend picked last, in `region`.
    picked: usize,
    facts: upstream::RequestFacts,
}

impl Ctx {
    /// The region whose backend the request may have reached, given the
    /// reply the proxy makes (if it makes one): none for a refusal (503),
    /// which says nothing was done, even after failed connects there.
    fn reached(&self, reply: Option<&ErrorReply>) -> Option<usize> {
        self.sent_to
            .filter(|_| !matches!(reply, Some(ErrorReply::Refused(_))))
    }
}

/// The 503 refusal of a request no backend of its route can take now.
fn unavailable(ctx: &mut Ctx) -> BError {
    let refusal = match ctx.plan.target {
        RouteTarget::Primary => Refusal::PrimaryUnavailable,
        RouteTarget::Local => Refusal::LocalUnavailable,
        RouteTarget::Nearest => Refusal::NoRegionAvailable,
    };
    ctx.reply = Some(ErrorReply::Refused(refusal));
    Error::explain(ErrorType::HTTPStatus(503), refusal.message())
}

/// What a request ends with when no attempt is left: after one that may
/// have reached a backend, that backend's failure (a refusal would say
/// nothing was done); else the refusal, naming what the last attempt met.
fn ended(
    ctx: &mut Ctx,
    refused: BError,
    reached: Option<BError>,
    unreached: Option<BError>,
) -> BError {
    match (reached, unreached) {
        (Some(e), _) => {
            ctx.reply = None;
            e
        }
        (None, Some(e)) => {
            let why = refused.context.as_ref().map(ToString::to_string);
            Error::explain(
                refused.etype().clone(),
                format!("{}; the last attempt: {e}", why.unwrap_or_default()),
            )
        }
        (None, None) => refused,
    }
}

/// How an attempt at one backend failed.
struct Failure {
    error: BError,
    /// Another backend may be tried.
    retry: bool,
    /// It happened on a pooled connection, before any answer: the backend
    /// may have closed it just then, which says nothing of the backend.
    on_pooled: bool,
    /// The request may have reached the backend: it was no failed
    /// connect, and bytes of it were written (see `h1::Connection::unsent`).
    reached: bool,
}

impl Failure {
    fn last(error: BError) -> Self {
        Failure {
            error,
            retry: false,
            on_pooled: false,
            reached: true,
        }
    }
}

/// The client's `x-request-id`, when it names one that can be logged and
/// sent on as a token, else a new one: one that is not visible ASCII (a
/// blank, a byte past ASCII) is replaced as one too long is.
fn request_id_or_new(named: Option<HeaderValue>) -> HeaderValue {
    named
        .filter(|v| {
            !v.is_empty() && v.len() <= 200 && v.as_bytes().iter().all(u8::is_ascii_graphic)
        })
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID from the thread's fast generator ([`rng`]).
fn new_request_id() -> HeaderValue {
    let bits: u128 = rng::with(|r| r.random());
    let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Resolves once the server begins to shut down.
async fn shutting_down(shutdown: &ShutdownWatch) {
    let mut watch = shutdown.clone();
    if watch.wait_for(|down| *down).await.is_err() {
        // The server is gone without a shutdown: nothing will ever signal.
        std::future::pending::<()>().await;
    }
}

impl EdgeProxy {
    /// One HTTP/2 stream: its request, read by pingora-core's HTTP/2
    /// session when the stream was accepted, and its answer. A stream that
    /// failed is dropped unfinished, which resets it.
    pub(crate) async fn serve_h2_stream(&self, mut session: ServerSession) {
        if let Err(e) = session.read_request().await {
            tracing::debug!(error = %e, "no request read from an HTTP/2 stream");
            return;
        }
        let mut timer = h1::Deadline::default();
        let idle = self.state.config.timeouts.client_idle;
        let mut client = Client::h2(&mut session, idle);
        let pseudo = downstream::pseudo_size(client.request());
        if let Err(e) = downstream::check_h2_request(client.fields(), pseudo) {
            self.refuse_unreadable(&mut client, &e).await;
        } else if self.handle(&mut client, &mut timer).await {
            return;
        }
        if let Err(e) = session.finish().await {
            tracing::debug!(error = %e, "cannot finish the response");
        }
    }
}

impl EdgeProxy {
    /// One HTTP/1.x connection: a request, its answer, and the next while
    /// the connection is kept alive. A connection waiting for its next
    /// request is closed when the server shuts down; a request already
    /// buffered goes first.
    pub async fn serve_h1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut session = downstream::Session::new(stream, self.state.config.timeouts.client_idle);
        // One wait for the shutdown per connection, not one per request.
        let down = shutting_down(shutdown);
        tokio::pin!(down);
        // The timer for this connection's backend exchanges, one at a time.
        let mut backend_timer = h1::Deadline::default();
        let mut refused = false;
        loop {
            let read = tokio::select! {
                biased;
                read = session.read_request() => read,
                () = &mut down => break,
            };
            match read {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
                        self.refuse_unreadable(&mut Client::H1(&mut session), &e)
                            .await;
                        refused = true;
                    } else {
                        tracing::debug!(error = %e, "no request read");
                    }
                    break;
                }
            }
            // Stopping (also while still accepting): every answer, the
            // proxy's own too, ends its connection.
            if *shutdown.borrow() || self.state.lifecycle.is_shutting_down() {
                session.close_after();
            }
            if self
                .handle(&mut Client::H1(&mut session), &mut backend_timer)
                .await
                || !session.reusable()
            {
                break;
            }
        }
        session.close(refused).await;
    }

    /// Answers a request whose head could not be read as one (400, 431,
    /// 501, 505), or an HTTP/2 one whose head the proxy refuses.
    async fn refuse_unreadable(&self, client: &mut Client<'_>, e: &Error) {
        let reply = ErrorReply::from_error(e);
        // Like every other request, it gets an id and an access line, with
        // the method, path and id it named when its head was read whole
        // (a head refused for its fields, say); `-` when it was not.
        let read = client.head_read();
        let (method, path, request_id) = if read {
            let req = client.request();
            let named = upstream::RequestFacts::of(req, client.fields()).request_id;
            (
                req.method.to_string(),
                req.uri.path().to_owned(),
                request_id_or_new(named),
            )
        } else {
            ("-".to_owned(), "-".to_owned(), new_request_id())
        };
        // One of the proxy's own answers before a backend was picked, as
        // every other is counted.
        self.count_refusal(&reply);
        let written = respond::write(client, &reply, None, Some(&request_id), &[]).await;
        if let Err(e) = &written {
            tracing::debug!(error = %e, "cannot answer an unreadable request");
        }
        self.account(
            client,
            &Access {
                method: &method,
                path: &path,
                status: reply.status(),
                served_by: None,
                route: None,
                epoch: None,
                attempts: 0,
                backend: "",
                elapsed: Duration::ZERO,
                answered: Duration::ZERO,
                request_id: &request_id,
                code: written.is_ok().then(|| reply.code()),
                error: Some(e),
            },
        );
    }

    /// Serves one request read; whether it failed (the connection ends).
    /// `timer`: bounds the backend's reads and writes.
    async fn handle(&self, client: &mut Client<'_>, timer: &mut h1::Deadline) -> bool {
        let mut ctx = self.new_ctx(client);
        let error = match self.serve(client, &mut ctx, timer).await {
            Ok(()) => None,
            Err(e) => {
                self.fail(client, &mut ctx, &e).await;
                Some(e)
            }
        };
        let done = self.log(client, &ctx, error.as_deref());
        if let Client::H1(session) = client {
            session.count_idle_from(done);
        }
        error.is_some()
    }

    fn new_ctx(&self, client: &Client<'_>) -> Ctx {
        let req = client.request();
        let facts = upstream::RequestFacts::of(req, client.fields());
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
            tried_list: None,
            attempts: 0,
            backend: None,
            sent_to: None,
            after_write: false,
            request_id: request_id_or_new(facts.request_id.clone()),
            reply: None,
            answered_with: None,
            body_bytes: 0,
            body_waited: Duration::ZERO,
            repeatable: req.method.is_idempotent() || facts.idempotency_key,
            picked: 0,
            upgraded_at: None,
            facts,
        }
    }

    /// Answers the request: proxied, or refused with a reply of our own.
    /// An error means nothing complete was sent; [`Self::fail`] answers it.
    async fn serve(
        &self,
        client: &mut Client<'_>,
        ctx: &mut Ctx,
        timer: &mut h1::Deadline,
    ) -> Result<(), BError> {
        if self.asks_health(client) {
            return respond::write_health(client, self.state.health(), &ctx.request_id)
                .await
                .map_err(Error::into_down);
        }
        // (A TRACE of `*` goes on, to be refused as any target `*` but
        // OPTIONS's.)
        if ctx.facts.max_forwards == upstream::MaxForwards::Left(0)
            && upstream::MaxForwards::applies_to(&client.request().method)
            && (client.raw_target() != b"*" || client.request().method == http::Method::OPTIONS)
        {
            // No hop left: the proxy answers as the last recipient.
            return respond::write_last_hop(
                client,
                &self.state.topology.regions[self.state.topology.local].name_header,
                &ctx.request_id,
            )
            .await
            .map_err(Error::into_down);
        }
        if let Some(reply) = self.admit(client, ctx) {
            return self.reply(client, ctx, reply).await;
        }
        if ctx.facts.expects_continue
            && client.request().version == http::Version::HTTP_11
            && !client.is_body_done()
        {
            // The proxy takes the body itself (it may need it for a retry),
            // so it invites the client to send it.
            client.write_continue().await?;
        }
        client.await_declared_empty().await?;
        client.enable_retry_buffering();
        let mut reached_failure = None;
        // What the last attempt that reached nothing met (a refused
        // connect, say): the log of a refusal that follows says it.
        let mut unreached_failure = None;
        loop {
            // The first pick uses the request's start: ejection windows are
            // seconds long.
            let now = if ctx.attempts == 0 {
                ctx.started
            } else {
                Instant::now()
            };
            let backend = match self.pick(ctx, now) {
                Ok(backend) => backend,
                Err(refused) => {
                    return Err(ended(ctx, refused, reached_failure, unreached_failure));
                }
            };
            match self.attempt(client, ctx, &backend, timer).await {
                Ok(()) => return Ok(()),
                // The attempts are used up on backends that took nothing
                // of it: as when none is left.
                Err(f)
                    if f.retry
                        && !f.reached
                        && ctx.attempts >= self.state.config.retries.max_attempts =>
                {
                    let refused = unavailable(ctx);
                    return Err(ended(ctx, refused, reached_failure, Some(f.error)));
                }
                Err(f) if f.retry && ctx.attempts < self.state.config.retries.max_attempts => {
                    if f.on_pooled {
                        // A stale keep-alive connection: the backend may take it again.
                        ctx.tried_backends &= !(1 << ctx.picked);
                    }
                    tracing::debug!(error = %f.error, backend = %backend.label, attempt = ctx.attempts, "trying another backend");
                    if f.reached {
                        reached_failure = Some(f.error);
                    } else {
                        unreached_failure = Some(f.error);
                    }
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// Whether the request is a `GET` or `HEAD` of `health.listener_path`,
    /// which the proxy answers itself.
    fn asks_health(&self, client: &Client<'_>) -> bool {
        let req = client.request();
        self.state
            .config
            .health
            .listener_path
            .as_deref()
            .is_some_and(|path| {
                req.uri.path() == path
                    && matches!(req.method, http::Method::GET | http::Method::HEAD)
            })
    }

    /// The routing decision for a request just read: a region, or a reply.
    fn admit(&self, client: &Client<'_>, ctx: &mut Ctx) -> Option<ErrorReply> {
        let req = client.request();
        let strong = ctx.facts.strong;
        ctx.plan = self
            .state
            .classifier
            .classify(req.method.as_str(), req.uri.path(), strong);
        // Refused, it is still counted as the read or write it is.
        // Whatever the table says, a tunnel is refused as such.
        if req.method == http::Method::CONNECT {
            return Some(ErrorReply::MethodNotAllowed);
        }
        if let Some(reply) = self.hops_refusal(client, &ctx.facts) {
            return Some(reply);
        }
        let limit = self.state.config.limits.max_request_body;
        if ctx.facts.content_length.is_some_and(|len| len > limit) {
            return Some(ErrorReply::BodyTooLarge { limit });
        }
        // A read from a client that wrote within the window goes to the
        // primary, which has the write before the replicas do.
        let after_write = ctx.plan.target == RouteTarget::Nearest
            && ctx.facts.has_cookie
            && self
                .state
                .ryw
                .as_ref()
                .is_some_and(|ryw| ryw.fresh(client.fields(), SystemTime::now));
        if ctx.plan.class == RouteClass::Write && self.state.table_too_old_for_writes() {
            return Some(ErrorReply::Refused(Refusal::TableStale));
        }
        let Some(snapshot) = self.state.router.load() else {
            return Some(ErrorReply::Refused(Refusal::NoTable));
        };
        // The request's clock: ejection windows are seconds long.
        // A primary that cannot take such a read (a failover under way,
        // say) leaves it to the nearest region: a read that may miss the
        // write beats none.
        let primary = after_write
            .then(|| {
                self.state
                    .choose_region(&snapshot, RouteTarget::Primary, 0, ctx.started)
                    .ok()
            })
            .flatten();
        let decision = match primary {
            Some(region) => {
                ctx.plan.target = RouteTarget::Primary;
                ctx.after_write = true;
                self.state.metrics.reads_after_write.inc();
                Ok(region)
            }
            None => self
                .state
                .choose_region(&snapshot, ctx.plan.target, 0, ctx.started),
        };
        ctx.snapshot = Some(snapshot);
        match decision {
            Ok(region) => {
                ctx.region = Some(region);
                None
            }
            Err(refusal) => Some(ErrorReply::Refused(refusal)),
        }
    }

    /// A request that has gone round in a loop between regions (see
    /// [`crate::via`]), or an `OPTIONS` or `TRACE` whose `Max-Forwards`
    /// cannot be read.
    fn hops_refusal(
        &self,
        client: &Client<'_>,
        facts: &upstream::RequestFacts,
    ) -> Option<ErrorReply> {
        if facts.has_via {
            let passes = self.state.via.passes(client.fields());
            if passes >= crate::via::MAX_PASSES {
                return Some(ErrorReply::LoopDetected {
                    passes,
                    name: self.state.via.name().to_owned(),
                });
            }
        }
        if facts.max_forwards == upstream::MaxForwards::Malformed
            && upstream::MaxForwards::applies_to(&client.request().method)
        {
            return Some(ErrorReply::BadRequest(Some(
                "Max-Forwards must be one field of one decimal number (the hops the request may still take)"
                    .to_owned(),
            )));
        }
        None
    }

    /// Counts one of the proxy's own answers in `edgeroute_refusals_total`.
    fn count_refusal(&self, reply: &ErrorReply) {
        self.state
            .metrics
            .refusals
            .with_label_values(&[reply.code()])
            .inc();
    }

    async fn reply(
        &self,
        client: &mut Client<'_>,
        ctx: &mut Ctx,
        reply: ErrorReply,
    ) -> Result<(), BError> {
        // Every refusal, every other answer of its own the proxy makes
        // before a backend is picked, and a request it turns down while
        // forwarding it (a body too large, too slow, or malformed).
        if ctx.sent_to.is_none()
            || matches!(
                reply,
                ErrorReply::Refused(_)
                    | ErrorReply::BodyTooLarge { .. }
                    | ErrorReply::BodyTooSlow
                    | ErrorReply::BadRequest(_)
            )
        {
            self.count_refusal(&reply);
        }
        // The region whose backend failed (a 502 or 504) is named, as the
        // one that answers is; a write that may have reached it may have
        // been made, and gets the read-your-writes cookie.
        // Empty, and no allocation, for a refusal.
        let mut added = Vec::new();
        if let Some(region) = ctx.reached(Some(&reply)) {
            added.push((
                upstream::REGION,
                self.state.topology.regions[region].name_header.clone(),
            ));
            if let Some(token) = self.write_token(client, ctx) {
                added.push((http::header::SET_COOKIE, token));
            }
        }
        let written = respond::write(
            client,
            &reply,
            ctx.snapshot.as_deref(),
            Some(&ctx.request_id),
            &added,
        )
        .await;
        // A reply that could not be written leaves nothing more to say.
        ctx.answered_with = written.is_ok().then(|| reply.code());
        ctx.reply = Some(if written.is_ok() {
            reply
        } else {
            ErrorReply::ClientGone
        });
        written.map_err(Error::into_down)
    }

    /// The read-your-writes cookie for the answer to a write. A write by
    /// its method: a read that a `primary` rule sends to the primary has
    /// nothing for later reads to follow.
    fn write_token(&self, client: &Client<'_>, ctx: &Ctx) -> Option<HeaderValue> {
        let ryw = self.state.ryw.as_ref()?;
        let write = ctx.plan.class == RouteClass::Write
            && !self
                .state
                .config
                .methods
                .is_read(client.request().method.as_str());
        write.then(|| ryw.set_cookie(SystemTime::now()))
    }

    /// The next backend for this request: in the chosen region, or — for a
    /// nearest-region read whose region has none left — in the next nearest.
    fn pick(&self, ctx: &mut Ctx, now: Instant) -> Result<Arc<Backend>, BError> {
        // The backend tried last stays named (for the log) unless another
        // is picked.
        let previous = ctx.backend.take();
        let topo = &self.state.topology;
        let snapshot = ctx.snapshot.clone().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "no routing snapshot for this request",
            )
        })?;
        loop {
            let region = ctx
                .region
                .ok_or_else(|| Error::explain(ErrorType::InternalError, "no region chosen"))?;
            let backends = topo.regions[region].backends();
            if let Some(before) = ctx.tried_list.as_ref()
                && !Arc::ptr_eq(before, &backends)
            {
                ctx.tried_backends = carry_tried(before, ctx.tried_backends, &backends);
            }
            let panic_threshold = self.state.config.health.panic_threshold;
            let pick =
                rng::with(|r| pick_backend(&backends, ctx.tried_backends, panic_threshold, now, r));
            if let Some(pick) = pick {
                if pick.panic {
                    self.state
                        .metrics
                        .panic_picks
                        .with_label_values(&[&*topo.regions[region].name])
                        .inc();
                }
                ctx.tried_backends |= 1 << pick.index;
                ctx.picked = pick.index;
                ctx.backend = Some(pick.backend.start_request());
                ctx.sent_to = Some(region);
                ctx.attempts += 1;
                if ctx.attempts > 1 {
                    self.state.metrics.retries.inc();
                }
                let picked = Arc::clone(pick.backend);
                ctx.tried_list = Some(backends);
                return Ok(picked);
            }
            // Every backend of this region is tried or out of rotation. Only a
            // nearest-region read may move on (one sent to the primary for
            // its client's write too); writes stay on the primary.
            ctx.excluded_regions |= 1 << region;
            if ctx.after_write {
                ctx.plan.target = RouteTarget::Nearest;
                ctx.after_write = false;
            }
            let next = (ctx.plan.target == RouteTarget::Nearest)
                .then(|| {
                    self.state
                        .choose_region(&snapshot, RouteTarget::Nearest, ctx.excluded_regions, now)
                        .ok()
                })
                .flatten();
            match next {
                Some(r) => {
                    ctx.region = Some(r);
                    ctx.tried_backends = 0;
                    ctx.tried_list = None;
                }
                None => {
                    ctx.backend = previous;
                    return Err(unavailable(ctx));
                }
            }
        }
    }

    /// One try at one backend, from the connection to the last body byte.
    async fn attempt(
        &self,
        client: &mut Client<'_>,
        ctx: &mut Ctx,
        backend: &Arc<Backend>,
        timer: &mut h1::Deadline,
    ) -> Result<(), Failure> {
        let head = match self.upstream_request(client, ctx) {
            Ok(head) => head,
            Err(e) => {
                // The request itself cannot be forwarded (its first attempt
                // finds so): nothing was sent, and no backend or region is
                // named for it, as for the proxy's other refusals.
                ctx.backend = None;
                ctx.sent_to = None;
                ctx.attempts -= 1;
                return Err(Failure {
                    error: e,
                    retry: false,
                    on_pooled: false,
                    reached: false,
                });
            }
        };
        let head_request = client.request().method == http::Method::HEAD;
        let upgrade = ctx.facts.websocket;
        let peer = backend.peer_template();
        // The first attempt's clock is the request's: microseconds apart.
        let mut sent_at = if ctx.attempts == 1 {
            ctx.started
        } else {
            Instant::now()
        };
        let check = pool_check(
            ctx.repeatable,
            ctx.attempts < self.state.config.retries.max_attempts,
            !client.retry_buffer_truncated()
                && ctx
                    .facts
                    .content_length
                    .is_none_or(|len| len <= downstream::RETRY_BUFFER as u64),
        );
        let pooled = backend.idle.take(sent_at, check);
        let on_pooled = pooled.is_some();
        let conn = match pooled {
            Some(conn) => conn,
            None => match client
                .unless_gone(connect::connect(&self.state.connector, peer))
                .await
            {
                Ok(stream) => {
                    // Latency is the backend's answer time, not the handshake.
                    sent_at = Instant::now();
                    h1::Idle::new(stream)
                }
                Err(e) if e.esource() == &pingora_error::ErrorSource::Downstream => {
                    return Err(Failure {
                        error: e,
                        retry: false,
                        on_pooled: false,
                        reached: false,
                    });
                }
                Err(e) => {
                    self.failed(backend, None, "failed connects");
                    // Nothing reached the backend: any request may go elsewhere.
                    return Err(Failure {
                        error: e.into_up(),
                        retry: true,
                        on_pooled: false,
                        reached: false,
                    });
                }
            },
        };
        let mut up = h1::Connection::new(
            conn,
            peer.options.read_timeout,
            peer.options.write_timeout,
            timer,
        );

        let mut answered_early = false;
        let bodiless = client.is_body_empty();
        if bodiless {
            // The head goes out whole in one write: unless that write has
            // to wait, the answer is due from when it was sent.
            up.count_answer_from(sent_at);
        }
        let sent: Result<h1::ResponseHead, BError> = async {
            up.write_head(head.bytes, head.chunked);
            if let Err(e) = self.send_body(client, ctx, &mut up).await {
                // A backend may answer before it has read the whole body
                // (401, 413, ...) and stop reading: its answer is the one
                // the client should get. Bytes from one that has not been
                // sent the request answer nothing of it (a pooled
                // connection closed with a 408, say).
                if e.esource() == &pingora_error::ErrorSource::Downstream
                    || ctx.reply.is_some()
                    || up.unsent()
                {
                    return Err(e);
                }
                // One that took nothing for timeouts.write had the time to
                // answer already: what it sent is taken, but its silence is
                // not waited on for timeouts.read again.
                let early = client.unless_gone(up.read_head(head_request, upgrade));
                let answer = if e.etype() == &ErrorType::WriteTimedout {
                    tokio::time::timeout(EARLY_ANSWER_GRACE, early)
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    early.await.ok()
                };
                let resp = answer.ok_or(e)?;
                answered_early = true;
                return Ok(resp);
            }
            // Interim answers (103 Early Hints, ...) go on to the client as
            // they come; a 100 Continue was the proxy's own to give.
            loop {
                match client
                    .unless_gone(up.read_answer(head_request, upgrade))
                    .await?
                {
                    h1::Answer::Final(resp) => return Ok(resp),
                    h1::Answer::Interim(mut interim)
                        if interim.status != http::StatusCode::CONTINUE =>
                    {
                        upstream::interim_response(&mut interim);
                        client.write_interim(&interim).await?;
                    }
                    h1::Answer::Interim(_) => {}
                }
            }
        }
        .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // Bytes may have reached the backend. Downstream trouble (the
                // client left, its body was too large) ends the request, and
                // so does an answer gone wrong: the backend took the request.
                // Unless nothing was written yet: the head waits for the
                // body's first bytes, and a backend that closed the
                // connection meanwhile saw none of the request, which may
                // go again whatever its method.
                let unsent = up.unsent();
                let retry = e.esource() != &pingora_error::ErrorSource::Downstream
                    && ctx.reply.is_none()
                    && !client.retry_buffer_truncated()
                    && (unsent
                        || ctx.repeatable
                            && !up.answered()
                            && !matches!(
                                e.etype(),
                                ErrorType::ReadTimedout | ErrorType::WriteTimedout
                            ));
                let error = if e.esource() == &pingora_error::ErrorSource::Unset {
                    e.into_up()
                } else {
                    e
                };
                // A pooled connection that failed before any answer may
                // just have been closed by the backend while it idled: the
                // request goes again on a new one, and counts against no
                // one. A backend that let a timeout pass did not close it.
                let timed_out = matches!(
                    error.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                );
                let stale = on_pooled && (unsent || !up.answered() && !timed_out);
                if !stale {
                    // Only a wait for the head of an answer to a request
                    // sent whole at once tells how slow the answer is (an
                    // upload's time is the client's).
                    let waited_head = bodiless && error.etype() == &ErrorType::ReadTimedout;
                    self.exchange_failed(backend, &error, waited_head.then_some(sent_at));
                }
                return Err(Failure {
                    error,
                    retry,
                    on_pooled: stale,
                    reached: !unsent,
                });
            }
        };
        let answered_at = self.record_response(backend, resp.status.as_u16(), sent_at);
        // A 5xx counted as a failure already; any other answer is a success
        // once all of it has come.
        let served = resp.status.as_u16() < 500;
        let region = ctx
            .region
            .map(|r| &self.state.topology.regions[r].name_header);
        let (resp, mut own) = upstream::client_response(resp, region, &ctx.request_id);
        if let Some(token) = self.write_token(client, ctx) {
            own.push(http::header::SET_COOKIE, token);
        }
        let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if answered_early || self.state.lifecycle.is_shutting_down() {
            // The client's body was not read in full, or the proxy is
            // stopping: this connection ends with this response.
            client.close_after();
        }
        client.write_head(resp, &own).await.map_err(Failure::last)?;

        if upgrade && client.was_upgraded() {
            ctx.upgraded_at = Some(Instant::now());
            backend.record_success();
            let idle = self.state.config.timeouts.tunnel_idle;
            return tunnel(client, &mut up, idle).await.map_err(Failure::last);
        }
        if let Err(e) = pass_body(client, &mut up).await {
            // A 5xx counted already.
            if served {
                self.exchange_failed(backend, &e, None);
            }
            return Err(Failure::last(e));
        }
        if served {
            backend.record_success();
        }
        if answered_early {
            return Ok(());
        }
        if up.out_of_step() {
            // Counted as bytes that come while it idles are.
            backend.idle.discard(upstream::Discard::UnexpectedBytes, 1);
        } else if let Some(conn) = up.into_reusable() {
            // Idle since the answer began: a pooled connection may only
            // look older than it is.
            backend.idle.put(conn, answered_at);
        }
        Ok(())
    }

    /// The request head a backend gets: the client's, without hop-by-hop
    /// fields, with the route, epoch, request id and forwarding fields.
    fn upstream_request(
        &self,
        client: &mut Client<'_>,
        ctx: &Ctx,
    ) -> Result<upstream::BackendHead, BError> {
        let has_body = !client.is_body_empty();
        let region = ctx.region.map(|r| &self.state.topology.regions[r]);
        let fwd = upstream::Forwarding {
            route: HeaderValue::from_static(ctx.plan.class.as_str()),
            epoch: ctx.snapshot.as_ref().map(|s| &s.epoch_header),
            request_id: &ctx.request_id,
            client_ip: client.client_ip(),
            tls: client.is_tls(),
            host: region.and_then(|r| r.host.as_ref()),
            via: self.state.via.entry(client.request().version),
        };
        upstream::backend_request(
            client.request(),
            client.fields(),
            client.raw_target(),
            &ctx.facts,
            has_body,
            &fwd,
        )
        .map_err(|e| downstream::bad_request(e.0))
    }

    /// Sends the request body: what earlier attempts read (kept for
    /// retries), then the rest as it arrives from the client.
    async fn send_body(
        &self,
        client: &mut Client<'_>,
        ctx: &mut Ctx,
        up: &mut h1::Connection<'_>,
    ) -> Result<(), BError> {
        if let Some(held) = client.retry_buffer().filter(|b| !b.is_empty()) {
            up.write_body(&held).await?;
        }
        if client.is_body_done() {
            return up.finish_request().await;
        }
        let config = &self.state.config;
        let limit = config.limits.max_request_body;
        // The body keeps a pace: the proxy waits for its bytes at most
        // `timeouts.request_body` in all, plus a second for every
        // `limits.min_request_body_rate` bytes received, so a client that
        // sends a byte now and then cannot hold a backend connection for
        // long. Only waits for the client count, not the time a backend
        // takes to connect or to take the bytes. (The proxy invites a body
        // that waits for `100-continue` at once; a request without a body
        // sets up no timer.)
        let rate = config.limits.min_request_body_rate;
        let mut pace = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        while !client.is_body_done() {
            let allowed = config.timeouts.body_allowance(ctx.body_bytes, rate);
            let waiting = tokio::time::Instant::now();
            if let Some(allowed) = allowed {
                pace.as_mut()
                    .reset(waiting + allowed.saturating_sub(ctx.body_waited));
            }
            // A backend that answers and closes before the body is all
            // there takes no more of it: its answer goes to the client now,
            // not once the client has sent the rest.
            let read = tokio::select! {
                read = client.read_body() => read,
                () = &mut pace, if allowed.is_some() => {
                    ctx.reply = Some(ErrorReply::BodyTooSlow);
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(408),
                        format!(
                            "request body slower than limits.min_request_body_rate after timeouts.request_body ({} bytes received)",
                            ctx.body_bytes
                        ),
                    )
                    .into_down());
                }
                closed = up.closed_early() => closed.and_then(|()| {
                    Err(Error::explain(
                        ErrorType::ConnectionClosed,
                        "the backend closed the connection before the whole request body was sent",
                    )
                    .into_up())
                }),
            };
            // Charged however the wait ended: a backend that closes early
            // may be retried, and the next attempt goes on from here.
            ctx.body_waited += waiting.elapsed();
            let Some(chunk) = read? else {
                break;
            };
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                ctx.reply = Some(ErrorReply::BodyTooLarge { limit });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over limits.max_request_body",
                )
                .into_down());
            }
            up.write_body(&chunk).await?;
        }
        up.finish_request().await
    }

    /// Records the backend's answer for its health and latency; when it came.
    fn record_response(&self, b: &Backend, status: u16, sent_at: Instant) -> Instant {
        let now = Instant::now();
        let h = &self.state.config.health;
        let cap = self.state.topology.regions[b.region].cap(h.max_ejection_percent);
        let verdict = b.record_response(status, now - sent_at, &policy(h), now, cap);
        self.outlier_verdict(b, verdict, "5xx responses");
        now
    }

    /// Records an exchange that failed after the request went out, if the
    /// backend's side failed it (`e` from upstream); a client that left
    /// says nothing of the backend.
    /// `sent_at`: when the request went out, given while its answer's head
    /// was awaited; a read timeout then is an answer at least that slow.
    fn exchange_failed(&self, b: &Backend, e: &Error, sent_at: Option<Instant>) {
        if e.esource() != &pingora_error::ErrorSource::Upstream {
            return;
        }
        let slow_since = sent_at.filter(|_| e.etype() == &ErrorType::ReadTimedout);
        self.failed(b, slow_since, "failed exchanges");
    }

    /// Records a failure other than a 5xx answer (`cause`, for the log);
    /// one slow since `slow_since` counts as a latency sample too.
    fn failed(&self, b: &Backend, slow_since: Option<Instant>, cause: &str) {
        let now = Instant::now();
        let h = &self.state.config.health;
        let cap = self.state.topology.regions[b.region].cap(h.max_ejection_percent);
        let slow = slow_since.map(|at| now - at);
        let verdict = b.record_failure(slow, &policy(h), now, cap);
        self.outlier_verdict(b, verdict, cause);
    }

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
                tracing::warn!(region, backend = %b.label, address = %b.addr, cause, "backend kept in rotation: the region's ejection cap is reached, or it is the region's last backend in rotation and its answers are 5xx");
            }
        }
    }

    /// Answers a request that could not be served, unless its response had
    /// already begun (then the connection is closed) or the client is gone.
    async fn fail(&self, client: &mut Client<'_>, ctx: &mut Ctx, e: &Error) {
        let reply = ctx
            .reply
            .take()
            .unwrap_or_else(|| ErrorReply::from_error(e));
        if client.response_status().is_some() {
            if let Some(region) = ctx.reached(None) {
                let by = match e.esource() {
                    pingora_error::ErrorSource::Downstream => "client",
                    _ => "backend",
                };
                self.state
                    .metrics
                    .responses_cut
                    .with_label_values(&[&*self.state.topology.regions[region].name, by])
                    .inc();
            }
            if let Some(left_out) = CUT_SHORT.take() {
                tracing::warn!(error = %e, request_id = ctx.request_id.to_str().unwrap_or(""), left_out, "response cut short");
            }
            ctx.reply = Some(reply);
        } else if reply.client_gone() {
            ctx.reply = Some(reply);
        } else {
            if let Some(left_out) = FAILED.take() {
                tracing::warn!(
                    error = %e,
                    method = %client.request().method,
                    path = edgeroute_config::logged_path(client.request().uri.path()),
                    request_id = ctx.request_id.to_str().unwrap_or(""),
                    attempts = ctx.attempts,
                    status = reply.status(),
                    left_out,
                    "request failed"
                );
            }
            if let Err(err) = self.reply(client, ctx, reply).await {
                tracing::debug!(error = %err, "cannot send the error response; the client is gone");
            }
        }
    }

    /// Counts and (if asked) logs the request; when it ended.
    fn log(&self, client: &Client<'_>, ctx: &Ctx, e: Option<&Error>) -> Instant {
        let status = client.response_status().map_or_else(
            || ctx.reply.as_ref().map_or(0, ErrorReply::status),
            |s| s.as_u16(),
        );
        let done = Instant::now();
        let req = client.request();
        self.account(
            client,
            &Access {
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                served_by: ctx.reached(ctx.reply.as_ref()),
                route: Some(ctx.plan.class),
                epoch: ctx.snapshot.as_ref().map(|s| s.epoch()),
                attempts: ctx.attempts,
                backend: ctx
                    .backend
                    .as_ref()
                    .map_or("", |b| b.backend().label.as_str()),
                elapsed: done - ctx.started,
                answered: ctx.upgraded_at.unwrap_or(done) - ctx.started,
                request_id: &ctx.request_id,
                code: ctx.answered_with,
                error: e,
            },
        );
        done
    }

    /// Counts a request in the request metrics and, with `log.access`,
    /// writes its access line: every request's, with the same fields.
    fn account(&self, client: &Client<'_>, a: &Access<'_>) {
        self.state
            .request_metrics
            .record(a.served_by, a.route, a.status, a.answered.as_secs_f64());
        // (Asked before any field is read: a filter that leaves the
        // access lines out costs nothing more.)
        if self.state.config.log.access
            && tracing::enabled!(target: "edgeroute::access", tracing::Level::INFO)
        {
            let region = a
                .served_by
                .map_or("none", |r| &*self.state.topology.regions[r].name);
            // A head that could not be read says nothing of itself.
            let read = a.method != "-";
            let req = client.request();
            let host = req
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| client.fields().get("host"))
                .filter(|_| read);
            let mut listed = client.fields().get_all("x-forwarded-for").filter(|_| read);
            let forwarded_for = match (listed.next(), listed.next()) {
                (None, _) => None,
                (Some(one), None) => Some(logged_list(one)),
                (Some(first), Some(second)) => {
                    let all: Vec<&[u8]> = [first, second].into_iter().chain(listed).collect();
                    Some(logged_list(&all.join(&b", "[..])))
                }
            };
            tracing::info!(
                target: "edgeroute::access",
                method = %a.method,
                path = edgeroute_config::logged_path(a.path),
                status = a.status,
                region,
                route = a.route.map_or("none", RouteClass::as_str),
                epoch = a.epoch,
                attempts = a.attempts,
                backend = a.backend,
                duration_ms = a.elapsed.as_secs_f64() * 1000.0,
                request_id = a.request_id.to_str().unwrap_or(""),
                client = client.client_ip().as_ref().and_then(|ip| ip.to_str().ok()),
                forwarded_for,
                host = host.map(logged_text),
                protocol = read.then(|| version_text(req.version)),
                bytes_sent = client.body_sent(),
                code = a.code,
                error = a.error.map(|e| e.to_string()),
                "request"
            );
        }
    }
}

/// At most ten "request failed" and ten "response cut short" lines a
/// second (see [`edgeroute_config::LogBudget`]); each says how many were left
/// out before it. The access line of every request stays.
static FAILED: edgeroute_config::LogBudget = edgeroute_config::LogBudget::new();
static CUT_SHORT: edgeroute_config::LogBudget = edgeroute_config::LogBudget::new();

/// What the request metrics and the access line say of one request.
struct Access<'a> {
    /// `-` for a request whose head could not be read, as its path.
    method: &'a str,
    path: &'a str,
    status: u16,
    /// The region whose backend answered or failed; `None`: none was
    /// reached (the proxy's own answers).
    served_by: Option<usize>,
    /// `None` for a request whose head could not be read.
    route: Option<RouteClass>,
    /// `None`: refused before a table was read.
    epoch: Option<u64>,
    attempts: u32,
    backend: &'a str,
    elapsed: Duration,
    /// What the duration histogram takes: `elapsed`, but for an upgraded
    /// request the time to its `101` (its tunnel may stay open for hours).
    answered: Duration,
    request_id: &'a HeaderValue,
    /// The `x-edgeroute-error` code of the proxy's own answer, when the
    /// client got one.
    code: Option<&'static str>,
    error: Option<&'a Error>,
}

/// An HTTP version as requests name it.
fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "?",
    }
}

/// A list a client began and proxies appended to (`x-forwarded-for`) as
/// log text: its end kept when it is long, since what the last proxies
/// (a load balancer) appended is what can be trusted, behind `…`.
fn logged_list(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match edgeroute_config::logged_end(&text) {
        end if end.len() == text.len() => text.into_owned(),
        end => format!("…{end}"),
    }
}

/// A client's bytes as log text: what is not UTF-8 replaced, cut as a
/// logged path is.
fn logged_text(bytes: &[u8]) -> String {
    edgeroute_config::logged_path(&String::from_utf8_lossy(bytes)).to_owned()
}

/// Passes the response body on as it comes. What the backend already sent
/// goes to the client with the head in one write; the head goes out alone
/// only before a wait for more.
async fn pass_body(client: &mut Client<'_>, up: &mut h1::Connection<'_>) -> Result<(), BError> {
    let mut ready = up.body_now()?;
    loop {
        let chunk = match ready.take() {
            Some(chunk) => chunk,
            None => {
                client.flush().await?;
                client.unless_gone(up.read_body()).await?
            }
        };
        let Some(data) = chunk else {
            return client.write_body(Bytes::new(), true).await;
        };
        ready = up.body_now()?;
        let end = matches!(ready, Some(None));
        client.write_body(data, end).await?;
        if end {
            return Ok(());
        }
    }
}

/// After a `101 Switching Protocols`, both directions carry raw bytes, each
/// on its own (see [`crate::tunnel`]), until each side has ended its
/// stream, or until no byte has moved either way for `idle`
/// (`timeouts.tunnel_idle`): an idle tunnel ends normally.
async fn tunnel(
    client: &mut Client<'_>,
    up: &mut h1::Connection<'_>,
    idle: Duration,
) -> Result<(), BError> {
    let Some((client_early, client_stream)) = client.tunnel() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "an HTTP/2 stream cannot carry an upgraded connection",
        ));
    };
    let client_kernel = Socket::of(client_stream);
    let (backend_early, backend_stream) = up.tunnel();
    let backend_kernel = Socket::of(backend_stream);
    let ended = crate::tunnel::carry(
        Conn {
            stream: client_stream,
            early: client_early,
            kernel: &client_kernel,
        },
        Conn {
            stream: backend_stream,
            early: backend_early,
            kernel: &backend_kernel,
        },
        idle,
    )
    .await;
    // A side whose connection failed (reset, mostly) ends the other's with
    // a reset too when it is closed: an end of stream would tell that peer
    // the tunnel was closed in good order.
    if let Err(e) = &ended {
        match e.esource() {
            pingora_error::ErrorSource::Downstream => {
                if let Some(socket) = backend_kernel {
                    socket.reset_on_close();
                }
            }
            pingora_error::ErrorSource::Upstream => client.end_with_reset(),
            _ => {}
        }
    }
    let ended = ended?;
    if ended == crate::tunnel::Ended::Idle {
        tracing::debug!("tunnel idle for timeouts.tunnel_idle; closing it");
    }
    Ok(())
}

/// How sure a request must be that a pooled connection is still open: a
/// request that could not go again if the backend had closed it (not
/// repeatable, its last attempt, or a body larger than the retry buffer
/// holds) asks the socket (see [`upstream::Check`]).
fn pool_check(repeatable: bool, attempts_left: bool, body_held: bool) -> upstream::Check {
    if repeatable && attempts_left && body_held {
        upstream::Check::Readiness
    } else {
        upstream::Check::Socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn only_a_request_that_can_go_again_skips_the_socket_check() {
        let mut free = Vec::new();
        for repeatable in [false, true] {
            for attempts_left in [false, true] {
                for body_held in [false, true] {
                    if pool_check(repeatable, attempts_left, body_held)
                        == upstream::Check::Readiness
                    {
                        free.push((repeatable, attempts_left, body_held));
                    }
                }
            }
        }
        assert_eq!(free, [(true, true, true)]);
    }

    #[test]
    fn new_request_ids_are_distinct_version_4_uuids() {
        let ids: HashSet<String> = (0..1000)
            .map(|_| new_request_id().to_str().expect("text").to_owned())
            .collect();
        assert_eq!(ids.len(), 1000, "an id came twice");
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, &uuid.hyphenated().to_string(), "lower-case, hyphenated");
        }
    }
}
