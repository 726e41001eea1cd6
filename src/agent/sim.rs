//! The simulator's storage and fault-injection control surface.
//!
//! Simulated storage holds every domain a host is asked to monitor (its metadata names it
//! correctly) unless a fault says otherwise; it goes through the same monitor code as file
//! storage. Faults are set per domain for all hosts or for chosen hosts. The simulator's hosts
//! share one temporary storage directory in VDSM's layout: a domain appears there (unattached,
//! as `make-domain` writes it) the first time a host reads it, and the pool verbs read and write
//! its metadata as on real file storage, so monitors read what the pool manager wrote.
//!
//! # Control surface
//! HTTP on the agent's `--control-listen` address (each simulated host serves VDSM's wire on
//! its own address), the agent's token as a bearer token, JSON bodies:
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /control/hosts` | every host: name, endpoint, bootId, blackholed, rpcDropped, reportFrozen, latencyMillis, pool, domainCount, spmLver (while pool manager) |
//! | `GET /control/hosts/{host}` | one host, as above |
//! | `GET /control/hosts/{host}/calls` | the host's call log: `total` pool calls received, and the latest `calls` (at most 64), oldest first, each `{atUnixMillis, verb, ok, held}` (`verb`: `connect`, `disconnect`, or VDSM's method name of a pool-manager verb such as `StoragePool.spmStart`; `held`: the connection after the call) |
//! | `PUT /control/hosts/{host}/blackhole` | the host answers no RPC (calls hang until the caller's timeout), renews no Lease, writes no report and renews no pool-manager lease (it gives the role up at half the lease) |
//! | `DELETE /control/hosts/{host}/blackhole` | undo |
//! | `PUT /control/hosts/{host}/rpc-drop` | the host answers no RPC (calls hang until the caller's timeout and are never executed), but renews its Lease and writes its reports |
//! | `DELETE /control/hosts/{host}/rpc-drop` | undo |
//! | `PUT /control/hosts/{host}/report-freeze` | the host serves RPCs and renews its Lease, but writes no report (`status.report` stays as last written) |
//! | `DELETE /control/hosts/{host}/report-freeze` | undo (the held report goes out) |
//! | `POST /control/hosts/{host}/restart` | memory lost: new bootId, no pool, no monitors |
//! | `PUT /control/hosts/{host}/latency` `{"millis": 500}` | every RPC of the host waits that long first |
//! | `DELETE /control/hosts/{host}/latency` | undo |
//! | `PUT /control/hosts/{host}/tasks` `{"unfinished": 2}` | the host has that many unfinished pool-manager tasks (`spmStop` fails with 653) |
//! | `DELETE /control/hosts/{host}/tasks` | undo |
//! | `PUT /control/domains/{sdUUID}/fault` `{"kind": K, "seconds": S, "hosts": [..]}` | reads of the domain fail or slow down for the hosts listed (all hosts without `hosts`) |
//! | `DELETE /control/domains/{sdUUID}/fault` | undo for every host |
//!
//! Fault kinds: `unreadable` (2001), `missing` (358), `wrong-uuid` (379), `slow` (each read takes
//! `seconds`; past the monitor's check timeout it is 2001 until it returns), `hang` (reads never
//! return until the fault changes), `healthy` (overrides a fault set for all hosts). Answers: 204
//! on success, 404 for an unknown host, 400 for a bad body.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::domains::{DomainError, FileDomains};
use super::host::HostAgent;
use super::state::SpmRole;
use super::storage::{ReadError, Storage, metadata_text};
use crate::api::PoolConnection;
use crate::protocol::Token;
use crate::protocol::server::answer;
use crate::protocol::session::Handler;
use crate::protocol::wire::method;

/// How long a call to a blackholed (or rpc-dropped) host is held before it is dropped unanswered
/// (callers time out long before).
const BLACKHOLE_HOLD: Duration = Duration::from_secs(300);

/// What reads of a domain do.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Reads succeed.
    Healthy,
    /// Reads fail with an I/O error (2001).
    Unreadable,
    /// The domain is not found (358).
    Missing,
    /// The metadata names another domain (379).
    WrongUuid,
    /// Each read takes `seconds`.
    Slow {
        /// Read latency in seconds.
        seconds: f64,
    },
    /// Reads never return until the fault changes.
    Hang,
}

#[derive(Debug, Default)]
struct DomainFaults {
    all: Option<Fault>,
    hosts: HashMap<usize, Fault>,
}

/// Faults of simulated storage, shared by every simulated host.
#[derive(Debug)]
pub struct FaultTable {
    by_domain: RwLock<HashMap<String, DomainFaults>>,
    /// Bumped on every change, so hung reads re-evaluate.
    generation: watch::Sender<u64>,
}

impl Default for FaultTable {
    fn default() -> Self {
        Self {
            by_domain: RwLock::new(HashMap::new()),
            generation: watch::Sender::new(0),
        }
    }
}

impl FaultTable {
    /// The fault of `sd` for host `host`.
    pub fn fault(&self, host: usize, sd: &str) -> Fault {
        let table = self
            .by_domain
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        table
            .get(sd)
            .and_then(|d| d.hosts.get(&host).copied().or(d.all))
            .unwrap_or(Fault::Healthy)
    }

    /// Sets the fault of `sd` for `hosts` (every host when `None`, replacing per-host faults).
    pub fn set(&self, sd: &str, fault: Fault, hosts: Option<&[usize]>) {
        {
            let mut table = self
                .by_domain
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = table.entry(sd.to_ascii_lowercase()).or_default();
            match hosts {
                None => {
                    entry.all = Some(fault);
                    entry.hosts.clear();
                }
                Some(hosts) => {
                    for h in hosts {
                        entry.hosts.insert(*h, fault);
                    }
                }
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Clears every fault of `sd`.
    pub fn clear(&self, sd: &str) {
        self.by_domain
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sd.to_ascii_lowercase());
        self.generation.send_modify(|g| *g += 1);
    }
}

/// The simulated storage of one host.
#[derive(Debug)]
pub struct SimStorage {
    table: Arc<FaultTable>,
    host: usize,
    domains: Option<FileDomains>,
}

impl SimStorage {
    /// The storage of host number `host`; healthy reads give a fresh domain's metadata.
    pub fn new(table: Arc<FaultTable>, host: usize) -> Self {
        Self {
            table,
            host,
            domains: None,
        }
    }

    /// The same, with healthy reads from the domains of `domains` (the pool verbs' storage).
    #[must_use]
    pub fn reading(mut self, domains: FileDomains) -> Self {
        self.domains = Some(domains);
        self
    }
}

fn healthy_read(domains: Option<&FileDomains>, sd: &str) -> Result<Vec<u8>, ReadError> {
    match domains {
        None => Ok(metadata_text(sd).into_bytes()),
        Some(d) => d.read_bytes(sd).map_err(|e| match e {
            DomainError::NotFound(_) => ReadError::NotFound,
            other => ReadError::Io(std::io::Error::other(other.to_string())),
        }),
    }
}

impl Storage for SimStorage {
    fn read_metadata(&self, sd_uuid: &str) -> BoxFuture<'static, Result<Vec<u8>, ReadError>> {
        let table = Arc::clone(&self.table);
        let (host, sd) = (self.host, sd_uuid.to_owned());
        let domains = self.domains.clone();
        Box::pin(async move {
            let started = Instant::now();
            let mut changes = table.generation.subscribe();
            loop {
                match table.fault(host, &sd) {
                    Fault::Healthy => return healthy_read(domains.as_ref(), &sd),
                    Fault::Unreadable => {
                        return Err(ReadError::Io(std::io::Error::other("simulated I/O error")));
                    }
                    Fault::Missing => return Err(ReadError::NotFound),
                    Fault::WrongUuid => {
                        return Ok(
                            metadata_text("00000000-0000-0000-0000-000000000000").into_bytes()
                        );
                    }
                    Fault::Slow { seconds } => {
                        let until = started + slow_read_time(seconds);
                        tokio::select! {
                            _ = tokio::time::sleep_until(until.into()) => {
                                return healthy_read(domains.as_ref(), &sd);
                            }
                            _ = changes.changed() => {}
                        }
                    }
                    Fault::Hang => {
                        if changes.changed().await.is_err() {
                            return Err(ReadError::Io(std::io::Error::other("simulator stopped")));
                        }
                    }
                }
            }
        })
    }
}

/// How long a read of a `slow` domain takes: `seconds`, within zero and a day (a body may say
/// anything JSON can hold; NaN, which no body can, counts as zero).
fn slow_read_time(seconds: f64) -> Duration {
    if seconds.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0))
}

/// The simulator's shared state for the HTTP handlers.
#[derive(Clone)]
pub(crate) struct Sim {
    pub(crate) hosts: Arc<[Arc<HostAgent>]>,
    pub(crate) by_name: Arc<HashMap<String, usize>>,
    pub(crate) faults: Arc<FaultTable>,
    /// Bumped when a host's reachability changes, so held calls re-check.
    pub(crate) reachability: watch::Sender<u64>,
}

impl Sim {
    fn host(&self, name: &str) -> Option<&Arc<HostAgent>> {
        self.by_name.get(name).and_then(|i| self.hosts.get(*i))
    }
}

/// The simulator's control routes, `/control/...` (the caller adds the token check).
pub(crate) fn routes(sim: Sim) -> Router {
    Router::new()
        .route("/control/hosts", get(list_hosts))
        .route("/control/hosts/{host}", get(show_host))
        .route("/control/hosts/{host}/calls", get(show_calls))
        .route(
            "/control/hosts/{host}/blackhole",
            put(blackhole_on).delete(blackhole_off),
        )
        .route(
            "/control/hosts/{host}/rpc-drop",
            put(rpc_drop_on).delete(rpc_drop_off),
        )
        .route(
            "/control/hosts/{host}/report-freeze",
            put(report_freeze_on).delete(report_freeze_off),
        )
        .route("/control/hosts/{host}/restart", post(restart))
        .route(
            "/control/hosts/{host}/latency",
            put(latency_set).delete(latency_clear),
        )
        .route(
            "/control/domains/{sd}/fault",
            put(fault_set).delete(fault_clear),
        )
        .route(
            "/control/hosts/{host}/tasks",
            put(tasks_set).delete(tasks_clear),
        )
        .with_state(sim)
}

/// The largest control request body.
const MAX_CONTROL_BODY: usize = 64 * 1024;

/// Adds the body limit and the bearer-token check (401 without the right token, before anything
/// else runs) to every route of `router`.
pub(crate) fn protect(router: Router, token: Token) -> Router {
    router
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY))
        .layer(middleware::from_fn_with_state(token, require_token))
}

async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| token.matches_header(v.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response()
    }
}

/// How a simulated host answers its wire: as a real host does, unless a fault holds its calls
/// (blackhole, rpc-drop: never executed, never answered) or delays them (latency).
pub(crate) struct SimRpc {
    pub(crate) host: Arc<HostAgent>,
    /// Bumped when a host's reachability changes, so held calls re-check.
    pub(crate) reachability: watch::Sender<u64>,
}

impl Handler for SimRpc {
    fn call(&self, body: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        let host = Arc::clone(&self.host);
        let mut changes = self.reachability.subscribe();
        Box::pin(async move {
            let cut_off = |h: &HostAgent| h.is_blackholed() || h.is_rpc_dropped();
            if cut_off(&host) {
                let _held = tokio::time::timeout(BLACKHOLE_HOLD, async {
                    while cut_off(&host) {
                        if changes.changed().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
                // Whatever happens, a call sent while cut off is never executed.
                return None;
            }
            let latency = host.latency();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer(host.as_ref(), &body)
        })
    }
}

/// A host as the control surface shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostView {
    name: String,
    endpoint: String,
    boot_id: String,
    blackholed: bool,
    rpc_dropped: bool,
    report_frozen: bool,
    latency_millis: u128,
    pool: Option<PoolConnection>,
    domain_count: i32,
    /// The pool manager's lease version while this host is pool manager.
    spm_lver: Option<i64>,
}

fn view(host: &HostAgent) -> HostView {
    let report = host.report();
    HostView {
        name: host.name().to_owned(),
        endpoint: host.endpoint().to_owned(),
        boot_id: report.boot_id,
        blackholed: host.is_blackholed(),
        rpc_dropped: host.is_rpc_dropped(),
        report_frozen: host.is_report_frozen(),
        latency_millis: host.latency().as_millis(),
        pool: report.pool,
        domain_count: report.domain_count,
        spm_lver: match host.spm_role() {
            SpmRole::Spm { lver } => Some(lver),
            SpmRole::Free => None,
        },
    }
}

async fn list_hosts(State(sim): State<Sim>) -> Json<Vec<HostView>> {
    Json(sim.hosts.iter().map(|h| view(h)).collect())
}

async fn show_host(State(sim): State<Sim>, Path(name): Path<String>) -> Response {
    match sim.host(&name) {
        Some(h) => Json(view(h)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A host's call log as the control surface shows it.
#[derive(Serialize)]
struct CallsView {
    total: u64,
    calls: Vec<CallView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallView {
    at_unix_millis: u128,
    verb: &'static str,
    ok: bool,
    held: Option<PoolConnection>,
}

async fn show_calls(State(sim): State<Sim>, Path(name): Path<String>) -> Response {
    let Some(host) = sim.host(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (calls, total) = host.calls();
    let calls = calls
        .into_iter()
        .map(|c| CallView {
            at_unix_millis: c
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            verb: match c.verb {
                method::POOL_CONNECT => "connect",
                method::POOL_DISCONNECT => "disconnect",
                other => other,
            },
            ok: c.ok,
            held: c.held,
        })
        .collect();
    Json(CallsView { total, calls }).into_response()
}

fn with_host(sim: &Sim, name: &str, f: impl FnOnce(&HostAgent)) -> StatusCode {
    match sim.host(name) {
        Some(h) => {
            f(h);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn blackhole_on(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    let code = with_host(&sim, &name, |h| h.set_blackholed(true));
    sim.reachability.send_modify(|g| *g += 1);
    code
}

async fn blackhole_off(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    let code = with_host(&sim, &name, |h| h.set_blackholed(false));
    sim.reachability.send_modify(|g| *g += 1);
    code
}

async fn rpc_drop_on(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    let code = with_host(&sim, &name, |h| h.set_rpc_dropped(true));
    sim.reachability.send_modify(|g| *g += 1);
    code
}

async fn rpc_drop_off(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    let code = with_host(&sim, &name, |h| h.set_rpc_dropped(false));
    sim.reachability.send_modify(|g| *g += 1);
    code
}

async fn report_freeze_on(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    with_host(&sim, &name, |h| h.set_report_frozen(true))
}

async fn report_freeze_off(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    with_host(&sim, &name, |h| h.set_report_frozen(false))
}

async fn restart(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    with_host(&sim, &name, HostAgent::restart)
}

#[derive(Deserialize)]
struct LatencyBody {
    millis: u64,
}

async fn latency_set(State(sim): State<Sim>, Path(name): Path<String>, body: Bytes) -> Response {
    match serde_json::from_slice::<LatencyBody>(&body) {
        Ok(b) => with_host(&sim, &name, |h| {
            h.set_latency(Duration::from_millis(b.millis))
        })
        .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn latency_clear(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    with_host(&sim, &name, |h| h.set_latency(Duration::ZERO))
}

#[derive(Deserialize)]
struct TasksBody {
    unfinished: u32,
}

async fn tasks_set(State(sim): State<Sim>, Path(name): Path<String>, body: Bytes) -> Response {
    match serde_json::from_slice::<TasksBody>(&body) {
        Ok(b) => with_host(&sim, &name, |h| h.set_unfinished_tasks(b.unfinished)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn tasks_clear(State(sim): State<Sim>, Path(name): Path<String>) -> StatusCode {
    with_host(&sim, &name, |h| h.set_unfinished_tasks(0))
}

#[derive(Deserialize)]
struct FaultBody {
    #[serde(flatten)]
    fault: Fault,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

async fn fault_set(State(sim): State<Sim>, Path(sd): Path<String>, body: Bytes) -> Response {
    let body = match serde_json::from_slice::<FaultBody>(&body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let hosts = match &body.hosts {
        None => None,
        Some(names) => {
            let mut idx = Vec::with_capacity(names.len());
            for n in names {
                match sim.by_name.get(n) {
                    Some(i) => idx.push(*i),
                    None => {
                        return (StatusCode::NOT_FOUND, format!("unknown host {n}"))
                            .into_response();
                    }
                }
            }
            Some(idx)
        }
    };
    tracing::info!(domain = %sd, fault = ?body.fault, hosts = hosts.as_ref().map_or(0, Vec::len), "storage fault set");
    sim.faults.set(&sd, body.fault, hosts.as_deref());
    StatusCode::NO_CONTENT.into_response()
}

async fn fault_clear(State(sim): State<Sim>, Path(sd): Path<String>) -> StatusCode {
    tracing::info!(domain = %sd, "storage faults cleared");
    sim.faults.clear(&sd);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::storage::parse_metadata;
    use proptest::prelude::*;

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    #[tokio::test]
    async fn faults_apply_to_chosen_hosts_and_clear() {
        let table = Arc::new(FaultTable::default());
        let h0 = SimStorage::new(Arc::clone(&table), 0);
        let h1 = SimStorage::new(Arc::clone(&table), 1);
        table.set(A, Fault::Missing, Some(&[1]));
        assert!(h0.read_metadata(A).await.is_ok());
        assert!(matches!(
            h1.read_metadata(A).await,
            Err(ReadError::NotFound)
        ));
        table.set(A, Fault::WrongUuid, None);
        let md = parse_metadata(&h0.read_metadata(A).await.expect("reads"));
        assert_ne!(md.sd_uuid.as_deref(), Some(A));
        table.clear(A);
        assert!(h1.read_metadata(A).await.is_ok());
    }

    #[tokio::test]
    async fn a_hung_read_returns_when_the_fault_is_cleared() {
        let table = Arc::new(FaultTable::default());
        let h0 = SimStorage::new(Arc::clone(&table), 0);
        table.set(A, Fault::Hang, None);
        let read = tokio::spawn(h0.read_metadata(A));
        tokio::task::yield_now().await;
        assert!(!read.is_finished());
        table.clear(A);
        let done = tokio::time::timeout(Duration::from_secs(5), read).await;
        assert!(matches!(done, Ok(Ok(Ok(_)))));
    }

    proptest! {
        #![proptest_config(crate::properties::config(256))]

        /// Any body is a fault or a clear error, and no fault's delay panics.
        #[test]
        fn any_fault_body_parses_or_is_refused(
            body in prop_oneof![
                crate::properties::body(),
                crate::properties::json().prop_map(|v| v.to_string().into_bytes()),
                (crate::properties::json(), any::<f64>()).prop_map(|(hosts, s)| {
                    serde_json::json!({"kind": "slow", "seconds": s, "hosts": hosts})
                        .to_string()
                        .into_bytes()
                }),
            ],
        ) {
            if let Ok(FaultBody { fault: Fault::Slow { seconds }, .. }) =
                serde_json::from_slice::<FaultBody>(&body)
            {
                prop_assert!(slow_read_time(seconds) <= Duration::from_secs(86_400));
            }
        }

        #[test]
        fn every_delay_is_within_a_day(seconds in proptest::num::f64::ANY) {
            prop_assert!(slow_read_time(seconds) <= Duration::from_secs(86_400));
        }

        #[test]
        fn any_latency_body_parses_or_is_refused(body in crate::properties::body()) {
            if let Ok(b) = serde_json::from_slice::<LatencyBody>(&body) {
                let _ = Duration::from_millis(b.millis);
            }
        }
    }

    /// A call-only fault: calls to the host hang and are never executed while the flag is set
    /// (other hosts answer); its report writer and Lease are left alone (`report-freeze` is the
    /// converse: calls served, reports held). Both show in the host view and are undone.
    #[tokio::test]
    async fn rpc_drop_and_report_freeze_are_set_shown_and_undone() {
        use crate::agent::{Hosts, Options, monitor::MonitorConfig, start};
        use crate::api::MapStatus;
        use crate::protocol::wire::ConnectParams;
        use crate::protocol::{Client, RpcError, Token};

        const TOKEN: &str = "sim-unit-test-token-0123456789abc";
        let running = start(Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            control_listen: Some("127.0.0.1:0".parse().expect("addr")),
            tls: None,
            token: Some(Token::new(TOKEN).expect("token")),
            max_frame_bytes: 64 * 1024,
            monitor: MonitorConfig {
                period: Duration::from_millis(200),
                check_timeout: Duration::from_secs(1),
            },
            hosts: Hosts::Simulated {
                count: 2,
                prefix: "unit".into(),
                storage: None,
            },
            kube: None,
        })
        .await
        .expect("simulator starts");
        let base = format!(
            "http://{}/control/hosts",
            running.control_addr().expect("control")
        );
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let control = |method: reqwest::Method, path: String| {
            http.request(method, format!("{base}/{path}"))
                .bearer_auth(TOKEN)
                .send()
        };
        let rpc = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
        let (dropped, other) = (&running.hosts()[0], &running.hosts()[1]);
        let connect = ConnectParams {
            storagepool_id: A.into(),
            host_id: 1,
            scsi_key: A.into(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_dict: Some([(A.to_owned(), MapStatus::Active)].into_iter().collect()),
        };
        let short = Duration::from_millis(300);
        // The pool exists on the shared simulated storage once a host created it.
        let create = crate::protocol::wire::CreateParams {
            storagepool_id: A.into(),
            name: "dc".into(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_list: vec![A.into()],
        };
        rpc.call::<_, serde_json::Value>(
            other.endpoint(),
            crate::protocol::wire::method::POOL_CREATE,
            &create,
            Duration::from_secs(5),
        )
        .await
        .expect("create");

        let put = control(reqwest::Method::PUT, "unit-0000/rpc-drop".into());
        assert_eq!(put.await.expect("sent").status(), 204);
        assert!(dropped.is_rpc_dropped() && !dropped.is_blackholed());
        let e = rpc.connect(dropped.endpoint(), &connect, short).await;
        assert!(matches!(e, Err(RpcError::Timeout { .. })), "{e:?}");
        rpc.get_stats(other.endpoint(), short)
            .await
            .expect("the other host answers");
        let view: serde_json::Value = control(reqwest::Method::GET, "unit-0000".into())
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(view["rpcDropped"], true);
        assert_eq!(view["blackholed"], false);

        let del = control(reqwest::Method::DELETE, "unit-0000/rpc-drop".into());
        assert_eq!(del.await.expect("sent").status(), 204);
        assert!(!dropped.is_rpc_dropped());
        assert!(
            dropped.report().pool.is_none(),
            "a call sent while calls were dropped was executed"
        );
        rpc.connect(dropped.endpoint(), &connect, Duration::from_secs(5))
            .await
            .expect("answers again");
        assert!(dropped.report().pool.is_some());

        let put = control(reqwest::Method::PUT, "unit-0001/report-freeze".into());
        assert_eq!(put.await.expect("sent").status(), 204);
        assert!(other.is_report_frozen());
        rpc.connect(other.endpoint(), &connect, Duration::from_secs(5))
            .await
            .expect("a frozen host serves calls");
        let view: serde_json::Value = control(reqwest::Method::GET, "unit-0001".into())
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(view["reportFrozen"], true);
        let del = control(reqwest::Method::DELETE, "unit-0001/report-freeze".into());
        assert_eq!(del.await.expect("sent").status(), 204);
        assert!(!other.is_report_frozen());

        let unknown = control(reqwest::Method::PUT, "nope/rpc-drop".into());
        assert_eq!(unknown.await.expect("sent").status(), 404);
        running.shutdown().await;
    }

    #[test]
    fn fault_bodies_parse() {
        let b: FaultBody =
            serde_json::from_str(r#"{"kind":"slow","seconds":2.5,"hosts":["a"]}"#).expect("parses");
        assert_eq!(b.fault, Fault::Slow { seconds: 2.5 });
        let b: FaultBody = serde_json::from_str(r#"{"kind":"wrong-uuid"}"#).expect("parses");
        assert_eq!(b.fault, Fault::WrongUuid);
        assert!(b.hosts.is_none());
    }
}
