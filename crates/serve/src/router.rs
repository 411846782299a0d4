//! Which replica serves a request, and what happens when it cannot.
//!
//! - `"model": "auto"` goes through the policy: `complexity` (a score over the request against
//!   a threshold), `cascade` (the fast tier answers; a weak answer is handed to the strong tier)
//!   or `fixed` (always one tier).
//! - A tier name (`fast`, `strong`) picks that tier; a model id pins its replicas (no fallback:
//!   the client asked for that model).
//! - Within a tier, the replica with the fewest outstanding requests among those healthy and out
//!   of cooldown. A replica that fails `failures_before_cooldown` times in a row rests for
//!   `cooldown`; a background health check marks unreachable ones down.
//! - When a tier errors, times out or is overloaded before the first token, the other tier
//!   serves the request. Every answer carries a [`RouteInfo`] saying who served it and why.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{EventRx, GenRequest, ResponseFormat, StreamEvent, Upstream};
use crate::cascade::{collect, judge, mean_logprob, replay};
use crate::complexity;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Fast,
    Strong,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Strong => "strong",
        }
    }
    pub fn other(self) -> Tier {
        match self {
            Tier::Fast => Tier::Strong,
            Tier::Strong => Tier::Fast,
        }
    }
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "fast" => Some(Tier::Fast),
            "strong" => Some(Tier::Strong),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingPolicy {
    Complexity,
    Cascade,
    Fixed,
}

impl std::str::FromStr for RoutingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "complexity" => Ok(RoutingPolicy::Complexity),
            "cascade" => Ok(RoutingPolicy::Cascade),
            "fixed" => Ok(RoutingPolicy::Fixed),
            o => Err(format!("unknown policy `{o}` (complexity, cascade, fixed)")),
        }
    }
}

impl RoutingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::Complexity => "complexity",
            RoutingPolicy::Cascade => "cascade",
            RoutingPolicy::Fixed => "fixed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub policy: RoutingPolicy,
    /// `complexity`: scores at or above go to the strong tier.
    pub complexity_threshold: f32,
    pub complexity_weights: complexity::Weights,
    /// `cascade`: a fast answer whose mean token log-probability is below this goes to the
    /// strong tier.
    pub cascade_logprob_threshold: f32,
    /// `fixed`: the tier that serves `auto`.
    pub fixed_tier: Tier,
    /// Serve from the other tier when one fails before its first token.
    pub fallback: bool,
    /// Time a replica has to produce its first token before the router gives up on it.
    pub first_token_timeout: Duration,
    /// Time the cascade waits for the fast tier's whole answer.
    pub cascade_timeout: Duration,
    pub failures_before_cooldown: u32,
    pub cooldown: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        // `complexity::tests` checks that the shipped file reads.
        let shipped = complexity::shipped().expect("the shipped router calibration reads");
        RouterConfig {
            policy: RoutingPolicy::Complexity,
            complexity_threshold: shipped.calibration.threshold,
            complexity_weights: shipped.weights,
            cascade_logprob_threshold: -1.5,
            fixed_tier: Tier::Fast,
            fallback: true,
            first_token_timeout: Duration::from_secs(60),
            cascade_timeout: Duration::from_secs(120),
            failures_before_cooldown: 2,
            cooldown: Duration::from_secs(30),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
        }
    }
}

pub struct Replica {
    pub backend: Arc<dyn Upstream>,
    pub tier: Tier,
    outstanding: AtomicUsize,
    failures: AtomicU32,
    cooldown_until: Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    pub model: String,
    pub tier: Tier,
    pub kind: &'static str,
    pub healthy: bool,
    pub cooling_down: bool,
    pub outstanding: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
}

impl Replica {
    pub fn new(tier: Tier, backend: Arc<dyn Upstream>) -> Self {
        Replica {
            backend,
            tier,
            outstanding: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            cooldown_until: Mutex::new(None),
            healthy: AtomicBool::new(true),
        }
    }

    fn cooling(&self) -> bool {
        let g = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|t| Instant::now() < t)
    }

    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.cooling()
    }

    fn record(&self, result: Result<(), ErrorKind>, cfg: &RouterConfig) {
        match result {
            Ok(()) => self.failures.store(0, Ordering::Relaxed),
            Err(kind) if kind.is_replica_fault() => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= cfg.failures_before_cooldown {
                    let mut g = self
                        .cooldown_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    *g = Some(Instant::now() + cfg.cooldown);
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            Err(_) => {}
        }
    }

    pub fn status(&self) -> ReplicaStatus {
        let load = self.backend.load();
        ReplicaStatus {
            model: self.backend.model_id().to_string(),
            tier: self.tier,
            kind: self.backend.kind(),
            healthy: self.healthy.load(Ordering::Relaxed),
            cooling_down: self.cooling(),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            queued: load.map(|l| l.queued),
            active: load.map(|l| l.active),
            context_length: self.backend.context_len(),
        }
    }
}

/// Who served a request and why: the `x-bakeoff-route` header and the `route` field.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteInfo {
    pub tier: Tier,
    pub model: String,
    pub policy: String,
    pub reason: String,
    pub fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_logprob: Option<f32>,
}

impl RouteInfo {
    /// The header form, ASCII only: `tier=fast; model=m; policy=complexity; reason=...`.
    pub fn header(&self) -> String {
        let s = format!(
            "tier={}; model={}; policy={}; fallback={}; reason={}",
            self.tier.as_str(),
            self.model,
            self.policy,
            self.fallback,
            self.reason
        );
        s.chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    }
}

/// Holds a replica's outstanding count up while its answer streams; records how it ended.
pub struct Lease {
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    cfg: RouterConfig,
}

impl Lease {
    fn new(replica: Arc<Replica>, metrics: Arc<Metrics>, cfg: RouterConfig) -> Self {
        let n = replica.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.set(
            "bakeoff_outstanding_requests",
            &[("model", replica.backend.model_id())],
            n as f64,
        );
        Lease {
            replica,
            metrics,
            cfg,
        }
    }

    /// An error in the middle of the stream counts against the replica.
    pub fn failed(&self, kind: ErrorKind) {
        self.replica.record(Err(kind), &self.cfg);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let n = self
            .replica
            .outstanding
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.metrics.set(
            "bakeoff_outstanding_requests",
            &[("model", self.replica.backend.model_id())],
            n as f64,
        );
    }
}

/// A request that has produced its first event: the response can start.
pub struct Served {
    pub route: RouteInfo,
    pub first: StreamEvent,
    pub rx: EventRx,
    pub lease: Option<Lease>,
}

enum Target {
    Auto,
    Tier(Tier),
    Model(String),
}

pub struct Router {
    replicas: Vec<Arc<Replica>>,
    cfg: RouterConfig,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(
        replicas: Vec<Replica>,
        cfg: RouterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        if replicas.is_empty() {
            return Err(ApiError::invalid(
                "no models configured: give at least one --model fast=... or strong=...",
            ));
        }
        let r = Router {
            replicas: replicas.into_iter().map(Arc::new).collect(),
            cfg,
            metrics,
        };
        for rep in &r.replicas {
            r.metrics.set(
                "bakeoff_replica_up",
                &[
                    ("tier", rep.tier.as_str()),
                    ("model", rep.backend.model_id()),
                ],
                1.0,
            );
        }
        Ok(r)
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    fn has_tier(&self, t: Tier) -> bool {
        self.replicas.iter().any(|r| r.tier == t)
    }

    /// Names a client may use: `auto`, the tiers present, and every model id.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec!["auto".to_string()];
        for t in [Tier::Fast, Tier::Strong] {
            if self.has_tier(t) {
                v.push(t.as_str().to_string());
            }
        }
        for r in &self.replicas {
            let id = r.backend.model_id().to_string();
            if !v.contains(&id) {
                v.push(id);
            }
        }
        v
    }

    /// The local model whose tokenizer `/tokenize` and `/detokenize` use: `model` names a model
    /// or a tier (default: the first local replica). `auto` is refused, since its choice depends
    /// on each request's text; a remote upstream's tokenizer is on its own server.
    pub fn tokenizer_for(
        &self,
        model: Option<&str>,
    ) -> Result<(String, bakeoff_engine::prompt::Prompter), ApiError> {
        let pick = |r: &&Arc<Replica>| match model {
            None => true,
            Some(m) => r.backend.model_id() == m || Tier::parse(m).is_some_and(|t| t == r.tier),
        };
        if model == Some("auto") {
            return Err(ApiError::invalid(
                "`auto` picks a model per request; name a model or a tier (fast, strong) to tokenize with",
            ));
        }
        let matching: Vec<&Arc<Replica>> = self.replicas.iter().filter(pick).collect();
        if matching.is_empty() {
            return Err(ApiError::model_not_found(
                model.unwrap_or(""),
                &self.names(),
            ));
        }
        matching
            .iter()
            .find_map(|r| {
                r.backend
                    .prompter()
                    .map(|p| (r.backend.model_id().to_string(), p.clone()))
            })
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "`{}` is served by a remote upstream; its tokenizer is on that server",
                    model.unwrap_or_else(|| matching[0].backend.model_id())
                ))
            })
    }

    fn resolve(&self, model: &str) -> Result<Target, ApiError> {
        if model == "auto" {
            return Ok(Target::Auto);
        }
        if let Some(t) = Tier::parse(model)
            && self.has_tier(t)
        {
            return Ok(Target::Tier(t));
        }
        if self.replicas.iter().any(|r| r.backend.model_id() == model) {
            return Ok(Target::Model(model.to_string()));
        }
        Err(ApiError::model_not_found(model, &self.names()))
    }

    /// Replicas to try, best first: available ones by fewest outstanding requests.
    fn candidates(&self, pick: impl Fn(&Replica) -> bool) -> Vec<Arc<Replica>> {
        let mut v: Vec<Arc<Replica>> = self
            .replicas
            .iter()
            .filter(|r| pick(r) && r.available())
            .cloned()
            .collect();
        v.sort_by_key(|r| r.outstanding.load(Ordering::Relaxed));
        v
    }

    /// Routes and starts a request; returns once its first event is in hand.
    pub async fn dispatch(&self, req: GenRequest) -> Result<Served, ApiError> {
        let policy = self.cfg.policy.as_str().to_string();
        match self.resolve(&req.model)? {
            Target::Model(id) => {
                let route = RouteInfo {
                    tier: Tier::Fast,
                    model: id.clone(),
                    policy: "none".into(),
                    reason: "model requested by name".into(),
                    fallback: false,
                    score: None,
                    mean_logprob: None,
                };
                let reps = self.candidates(|r| r.backend.model_id() == id);
                let reps = if reps.is_empty() {
                    // Every replica is resting: trying one beats refusing outright.
                    self.replicas
                        .iter()
                        .filter(|r| r.backend.model_id() == id)
                        .cloned()
                        .collect()
                } else {
                    reps
                };
                self.try_list(&reps, &req, route, "requested").await
            }
            Target::Tier(t) => {
                let route = RouteInfo {
                    tier: t,
                    model: String::new(),
                    policy: "none".into(),
                    reason: format!("tier `{}` requested", t.as_str()),
                    fallback: false,
                    score: None,
                    mean_logprob: None,
                };
                self.serve_tier(t, &req, route, "requested").await
            }
            Target::Auto => match self.cfg.policy {
                RoutingPolicy::Fixed => {
                    let t = if self.has_tier(self.cfg.fixed_tier) {
                        self.cfg.fixed_tier
                    } else {
                        self.cfg.fixed_tier.other()
                    };
                    let route = RouteInfo {
                        tier: t,
                        model: String::new(),
                        policy,
                        reason: format!("fixed policy: always `{}`", t.as_str()),
                        fallback: false,
                        score: None,
                        mean_logprob: None,
                    };
                    self.serve_tier(t, &req, route, "policy").await
                }
                RoutingPolicy::Complexity => {
                    let s =
                        complexity::score(&req.input, req.max_tokens, &self.cfg.complexity_weights);
                    let th = self.cfg.complexity_threshold;
                    let (t, cmp) = if s.total >= th {
                        (Tier::Strong, ">=")
                    } else {
                        (Tier::Fast, "<")
                    };
                    let t = if self.has_tier(t) { t } else { t.other() };
                    let route = RouteInfo {
                        tier: t,
                        model: String::new(),
                        policy,
                        reason: format!(
                            "complexity {:.3} {cmp} threshold {th:.3} ({})",
                            s.total,
                            s.explain()
                        ),
                        fallback: false,
                        score: Some(s.total),
                        mean_logprob: None,
                    };
                    self.serve_tier(t, &req, route, "policy").await
                }
                RoutingPolicy::Cascade => self.cascade(req).await,
            },
        }
    }

    /// The tier's replicas, then (with fallback on) the other tier's.
    async fn serve_tier(
        &self,
        tier: Tier,
        req: &GenRequest,
        route: RouteInfo,
        why: &'static str,
    ) -> Result<Served, ApiError> {
        let mut errors: Vec<ApiError> = Vec::new();
        let mut route = route;
        for (t, is_fallback) in [(tier, false), (tier.other(), true)] {
            if is_fallback && (!self.cfg.fallback || !self.has_tier(t)) {
                break;
            }
            let mut reps = self.candidates(|r| r.tier == t);
            let nowhere_else = !self.cfg.fallback || !self.has_tier(t.other());
            if reps.is_empty() && !is_fallback && nowhere_else {
                // Every replica is resting and there is no other tier: trying one beats refusing.
                reps = self
                    .replicas
                    .iter()
                    .filter(|r| r.tier == t)
                    .cloned()
                    .collect();
            }
            if is_fallback {
                let cause = errors.last().map_or_else(
                    || format!("no `{}` replica available", tier.as_str()),
                    |e| e.message.clone(),
                );
                route.reason = format!(
                    "{}; fell back from `{}`: {cause}",
                    route.reason,
                    tier.as_str()
                );
                route.fallback = true;
                route.tier = t;
            }
            for rep in reps {
                match self.try_replica(&rep, req).await {
                    Ok((first, rx, lease)) => {
                        route.model = rep.backend.model_id().to_string();
                        if !errors.is_empty() {
                            self.metrics.inc(
                                "bakeoff_fallbacks_total",
                                &[("from", tier.as_str()), ("to", t.as_str())],
                            );
                        }
                        let label = if route.fallback { "fallback" } else { why };
                        self.metrics.inc(
                            "bakeoff_route_decisions_total",
                            &[("tier", t.as_str()), ("reason", label)],
                        );
                        return Ok(Served {
                            route,
                            first,
                            rx,
                            lease: Some(lease),
                        });
                    }
                    Err(e) if e.kind.may_fall_back() => errors.push(e),
                    Err(e) => return Err(e),
                }
            }
            if errors.is_empty() && self.has_tier(t) {
                errors.push(ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "no `{}` replica is available (all unhealthy or cooling down)",
                        t.as_str()
                    ),
                ));
            }
        }
        Err(pick_error(errors))
    }

    async fn try_list(
        &self,
        reps: &[Arc<Replica>],
        req: &GenRequest,
        mut route: RouteInfo,
        why: &'static str,
    ) -> Result<Served, ApiError> {
        let mut errors = Vec::new();
        for rep in reps {
            match self.try_replica(rep, req).await {
                Ok((first, rx, lease)) => {
                    route.model = rep.backend.model_id().to_string();
                    route.tier = rep.tier;
                    route.fallback = !errors.is_empty();
                    self.metrics.inc(
                        "bakeoff_route_decisions_total",
                        &[("tier", rep.tier.as_str()), ("reason", why)],
                    );
                    return Ok(Served {
                        route,
                        first,
                        rx,
                        lease: Some(lease),
                    });
                }
                Err(e) if e.kind.may_fall_back() => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        Err(pick_error(errors))
    }

    /// Starts the request on one replica and waits for its first event.
    async fn try_replica(
        &self,
        rep: &Arc<Replica>,
        req: &GenRequest,
    ) -> Result<(StreamEvent, EventRx, Lease), ApiError> {
        let lease = Lease::new(rep.clone(), self.metrics.clone(), self.cfg.clone());
        let id = rep.backend.model_id().to_string();
        let limit = self.cfg.first_token_timeout;
        let progress_before = rep.backend.progress();
        let attempt = async {
            let mut rx = rep.backend.start(req.clone()).await?;
            match rx.recv().await {
                Some(StreamEvent::Error(e)) => Err(e),
                Some(ev) => Ok((ev, rx)),
                None => Err(ApiError::upstream(format!(
                    "`{id}` ended the stream without output"
                ))),
            }
        };
        // A timeout while the engine kept stepping (a queue, a long prefill, a full batch) is
        // load: the client is told, another tier may answer, but the replica is not faulted.
        let mut busy = false;
        let result = match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => {
                busy = progress_before.is_some() && rep.backend.progress() != progress_before;
                Err(ApiError::timeout(format!(
                    "`{id}` produced no token within {} s{}",
                    limit.as_secs_f32(),
                    if busy {
                        " (it was busy with other requests)"
                    } else {
                        ""
                    }
                )))
            }
        };
        match result {
            Ok((ev, rx)) => {
                rep.record(Ok(()), &self.cfg);
                Ok((ev, rx, lease))
            }
            Err(mut e) => {
                if e.kind == ErrorKind::ContextLength {
                    // The engine reports the model it knows; say which replica refused.
                    e.message = e.message.replace("model `?`", &format!("model `{id}`"));
                }
                if busy {
                    self.metrics.inc(
                        "bakeoff_replica_failures_total",
                        &[("model", &id), ("kind", "timeout_busy")],
                    );
                    return Err(e);
                }
                rep.record(Err(e.kind), &self.cfg);
                self.update_up(rep);
                if e.kind != ErrorKind::InvalidRequest {
                    self.metrics.inc(
                        "bakeoff_replica_failures_total",
                        &[("model", &id), ("kind", e.kind.label())],
                    );
                }
                Err(e)
            }
        }
    }

    /// The fast tier answers in full; a confident, well-formed answer is served, a weak one goes
    /// to the strong tier.
    async fn cascade(&self, req: GenRequest) -> Result<Served, ApiError> {
        let th = self.cfg.cascade_logprob_threshold;
        let mut fast_req = req.clone();
        // The chosen token's log-probability is what the cascade judges by.
        fast_req.logprobs = Some(req.logprobs.unwrap_or(0));
        let fast = if self.has_tier(Tier::Fast) {
            Tier::Fast
        } else {
            Tier::Strong
        };
        let mut reps = self.candidates(|r| r.tier == fast);
        if reps.is_empty() {
            reps = self
                .replicas
                .iter()
                .filter(|r| r.tier == fast)
                .cloned()
                .collect();
        }
        let base = RouteInfo {
            tier: Tier::Strong,
            model: String::new(),
            policy: "cascade".into(),
            reason: String::new(),
            fallback: false,
            score: None,
            mean_logprob: None,
        };
        let first = self
            .try_list(&reps, &fast_req, base.clone(), "cascade_fast")
            .await;
        let served = match first {
            Ok(s) => s,
            Err(e)
                if e.kind.may_fall_back() && self.has_tier(Tier::Strong) && fast == Tier::Fast =>
            {
                let route = RouteInfo {
                    reason: format!("cascade: fast tier failed ({})", e.message),
                    fallback: true,
                    ..base
                };
                return self.serve_tier(Tier::Strong, &req, route, "fallback").await;
            }
            Err(e) => return Err(e),
        };
        let fast_model = served.route.model.clone();
        let (events, outcome) = collect(served, self.cfg.cascade_timeout).await;
        let verdict = match &outcome {
            Err(e) => Err(format!("fast answer failed: {}", e.message)),
            Ok(()) => judge(
                &events,
                th,
                req.response_format
                    .as_ref()
                    .is_some_and(ResponseFormat::is_json),
            ),
        };
        let mean = mean_logprob(&events);
        if verdict.is_ok() || fast != Tier::Fast || !self.has_tier(Tier::Strong) {
            if let Err(e) = outcome {
                return Err(e);
            }
            let reason = match &verdict {
                Ok(why) => format!("cascade: fast answer accepted ({why})"),
                Err(why) => format!("cascade: fast answer kept, no strong tier ({why})"),
            };
            self.metrics.inc(
                "bakeoff_route_decisions_total",
                &[("tier", fast.as_str()), ("reason", "cascade_accept")],
            );
            let route = RouteInfo {
                tier: fast,
                model: fast_model,
                reason,
                mean_logprob: mean,
                ..base
            };
            return replay(events, req.logprobs.is_some(), route);
        }
        let why = verdict.err().unwrap_or_default();
        let reps = self.candidates(|r| r.tier == Tier::Strong);
        let route = RouteInfo {
            reason: format!("cascade: fast answer rejected ({why})"),
            mean_logprob: mean,
            ..base.clone()
        };
        match self.try_list(&reps, &req, route, "cascade_escalate").await {
            Ok(s) => Ok(s),
            Err(e) if outcome.is_ok() => {
                // The strong tier is down: a weak answer beats none.
                self.metrics.inc(
                    "bakeoff_route_decisions_total",
                    &[("tier", "fast"), ("reason", "fallback")],
                );
                let route = RouteInfo {
                    tier: Tier::Fast,
                    model: fast_model,
                    reason: format!(
                        "cascade: fast answer rejected ({why}) but the strong tier failed ({}); kept it",
                        e.message
                    ),
                    fallback: true,
                    mean_logprob: mean,
                    ..base
                };
                replay(events, req.logprobs.is_some(), route)
            }
            Err(e) => Err(e),
        }
    }

    fn update_up(&self, rep: &Replica) {
        let up = if rep.available() { 1.0 } else { 0.0 };
        self.metrics.set(
            "bakeoff_replica_up",
            &[
                ("tier", rep.tier.as_str()),
                ("model", rep.backend.model_id()),
            ],
            up,
        );
    }

    /// Probes every replica once and marks it up or down.
    pub async fn check_health(&self) {
        for rep in &self.replicas {
            let ok = rep.backend.health(self.cfg.health_timeout).await;
            rep.healthy.store(ok, Ordering::Relaxed);
            self.update_up(rep);
        }
    }

    /// Probes replicas every `health_interval` until the router is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.cfg.health_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(r) => r.check_health().await,
                    None => return,
                }
            }
        });
    }
}

/// The error to report when every attempt failed: all alike, that one; any overload, 429 (a
/// retry may succeed); otherwise the first (the primary tier's).
fn pick_error(mut errors: Vec<ApiError>) -> ApiError {
    if errors.is_empty() {
        return ApiError::new(ErrorKind::Unavailable, "no replica is available");
    }
    if let Some(i) = errors.iter().position(|e| e.kind == ErrorKind::Overloaded)
        && !errors.iter().all(|e| e.kind == errors[0].kind)
    {
        return errors.swap_remove(i);
    }
    errors.swap_remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_prefer_overload_when_mixed() {
        let e = pick_error(vec![ApiError::upstream("x"), ApiError::overloaded("m", 2)]);
        assert_eq!(e.kind, ErrorKind::Overloaded);
        let e = pick_error(vec![
            ApiError::context_length(10, 5, "a"),
            ApiError::context_length(10, 8, "b"),
        ]);
        assert_eq!(e.kind, ErrorKind::ContextLength);
    }
}
