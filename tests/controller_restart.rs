//! Killing the controller in the middle of a rollout and starting it again: it converges, nothing
//! is lost, grace timers continue. That holds because the map and host ids are persisted before
//! any host is told, a grace period runs from a condition's `lastTransitionTime`, and each
//! reconcile starts from what the objects say, not from memory. Run against this binary's own
//! control plane and its own controller, which the tests kill and start again. Killing means what
//! a crash or `kill -9` does: the controller's runtime is dropped with its reconciles, calls and
//! writes wherever they stand.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use kube::{Api, runtime::watcher};
use poolkeeper::{
    agent::sim::Fault,
    api::{DomainPhase, Host, HostPhase, MapStatus, StorageDomain, StoragePool, StoragePoolStatus},
    controller::{self, Settings},
    protocol::{self, Token},
};
use serde_json::json;
use support::{
    client,
    cluster::{
        LEASE_NAMESPACE, ProcessPool, TOKEN, WAIT, condition, domain, host, host_map, pool,
        wait_domain_phase, wait_host_phase,
    },
    control_plane, eventually,
};

/// Only one controller may run against this control plane at a time, and each test starts its
/// own: the tests take turns.
static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// A controller that can be killed.

/// A controller running on a thread and runtime of its own.
struct ControllerProcess {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its `/metrics`, `/healthz` and `/readyz`.
    metrics: SocketAddr,
}

impl ControllerProcess {
    /// Starts a controller with the test token and a free metrics port.
    fn start() -> Self {
        let cp = control_plane();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let metrics = listener.local_addr().expect("addr");
        drop(listener);
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("controller runtime");
                rt.block_on(async move {
                    let client = cp.client().await.expect("client");
                    let settings = Settings {
                        lease_namespace: LEASE_NAMESPACE.into(),
                        concurrency: 8,
                        rpc: protocol::Client::new(Token::new(TOKEN).expect("token"), None)
                            .expect("rpc client"),
                        signer: None,
                    };
                    tokio::select! {
                        r = controller::run_with(client, settings, metrics, std::future::pending()) => {
                            r.expect("controller stopped by itself");
                        }
                        _ = killed => {}
                    }
                });
                // No graceful shutdown: every task is dropped where it stands, as in a crash.
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("controller thread");
        Self {
            kill: Some(kill),
            thread: Some(thread),
            metrics,
        }
    }

    /// Waits until `/readyz` says every cache is synced; returns how long that took.
    async fn ready(&self) -> Duration {
        let started = Instant::now();
        eventually("controller ready", WAIT, || async {
            http_get(self.metrics, "/readyz")
                .await
                .filter(|(status, _)| *status == 200)
                .map(|_| ())
        })
        .await;
        started.elapsed()
    }

    /// Successful connect calls this controller made.
    async fn connects_ok(&self) -> u64 {
        let (_, text) = http_get(self.metrics, "/metrics")
            .await
            .expect("controller /metrics");
        text.lines()
            .filter(|l| {
                l.starts_with("poolkeeper_host_calls_total{")
                    && l.contains("verb=\"connect\"")
                    && l.contains("outcome=\"ok\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let v = v as u64;
                v
            })
            .sum()
    }

    /// Kills the controller and waits until its thread is gone.
    async fn kill(mut self) {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .expect("kill controller");
    }

    fn stop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        // A failing test must not leave its controller running into the next test.
        self.stop();
    }
}

/// GET `path` over HTTP/1.0 (the body ends with the connection); `None` when nothing listens.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// A pool.

/// A pool, its domains and its simulated hosts.
type Pool = ProcessPool;

/// The map every host must hold when all domains are active.
fn all_active(p: &Pool) -> BTreeMap<String, MapStatus> {
    p.uuids
        .values()
        .map(|u| (u.clone(), MapStatus::Active))
        .collect()
}

/// Starts `hosts` simulated hosts and creates a pool with `domains` data domains and `sync` as its
/// `spec.sync`; every host joins it. Nothing happens until a controller runs.
async fn create_pool(hosts: usize, domains: usize, sync: serde_json::Value) -> Pool {
    ProcessPool::create("h", hosts, domains, sync).await
}

/// Hosts that report holding exactly `expected` (pool map), read in one list.
async fn hosts_holding(hosts: &[String], expected: &BTreeMap<String, MapStatus>) -> Vec<String> {
    let all = Api::<Host>::all(client().await)
        .list(&Default::default())
        .await
        .expect("list hosts");
    all.items
        .into_iter()
        .filter(|h| {
            let name = h.metadata.name.clone().unwrap_or_default();
            let map: BTreeMap<String, MapStatus> = h
                .status
                .as_ref()
                .and_then(|s| s.report.as_ref())
                .and_then(|r| r.pool.as_ref())
                .map(|p| {
                    p.domain_map
                        .iter()
                        .map(|(uuid, status)| (uuid.clone(), *status))
                        .collect()
                })
                .unwrap_or_default();
            hosts.contains(&name) && map == *expected
        })
        .filter_map(|h| h.metadata.name)
        .collect()
}

/// The id each host has in the pool status.
fn ids(status: &StoragePoolStatus) -> BTreeMap<String, i32> {
    status
        .host_ids
        .iter()
        .map(|e| (e.host.clone(), e.id))
        .collect()
}

/// Records, from now on, what `extract` takes from every version of the object `name` the API
/// server sends (consecutive repeats once).
struct WatchLog<T> {
    versions: Arc<Mutex<Vec<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + PartialEq + Send + 'static> WatchLog<T> {
    async fn start<K>(name: &str, extract: impl Fn(K) -> Option<T> + Send + 'static) -> Self
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let api: Api<K> = Api::all(client().await);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let versions = Arc::clone(&versions);
            async move {
                let mut listed = Some(listed_tx);
                let mut events = watcher(api, config).boxed();
                while let Some(event) = events.try_next().await.expect("watch") {
                    match event {
                        watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                            if let Some(entry) = extract(o) {
                                let mut v = versions.lock().expect("versions");
                                if v.last() != Some(&entry) {
                                    v.push(entry);
                                }
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = listed.take() {
                                let _ = tx.send(());
                            }
                        }
                        watcher::Event::Init | watcher::Event::Delete(_) => {}
                    }
                }
            }
        });
        listed_rx.await.expect("watch listed");
        Self { versions, task }
    }

    fn stop(self) -> Vec<T> {
        self.task.abort();
        let v = self.versions.lock().expect("versions");
        v.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_rollout_converges_without_losing_ids_or_map() {
    let _turn = ONE_CONTROLLER.lock().await;
    const N: usize = 20;
    // Everything exists before the controller starts, so the whole rollout is one map change to
    // 20 hosts, two at a time, 300 ms per call: about three seconds to catch it half-way.
    let p = create_pool(
        N,
        3,
        json!({"maxConcurrentConnects": 2, "connectTimeoutSeconds": 5}),
    )
    .await;
    for h in p.agents.hosts() {
        h.set_latency(Duration::from_millis(300));
    }
    let expected = all_active(&p);

    let first = ControllerProcess::start();
    let held = eventually(
        "a quarter of the hosts, not all, hold the map",
        WAIT,
        || async {
            let held = hosts_holding(&p.hosts, &expected).await;
            assert!(
                held.len() < N,
                "the rollout finished before it could be interrupted"
            );
            (held.len() >= N / 4).then_some(held)
        },
    )
    .await;
    first.kill().await;
    let killed_at = Instant::now();

    // What the dead controller left behind: the map and every id are persisted before any host is
    // told, so they are all there although only part of the hosts got the map.
    let before = pool(&p.name)
        .await
        .status
        .expect("pool status after the kill");
    let ids_before = ids(&before);
    // Calls the dead controller sent just before the kill still land: a host executes a request
    // it received whatever became of the connection, as VDSM does. What the new controller owes
    // is what is left once they have (each takes the 300 ms latency): the hosts' own memory,
    // then their reports, settle.
    let in_memory = || {
        let mut held: Vec<String> = p
            .agents
            .hosts()
            .iter()
            .filter(|h| {
                h.report().pool.is_some_and(|c| {
                    c.domain_map
                        .iter()
                        .map(|(uuid, status)| (uuid.clone(), *status))
                        .collect::<BTreeMap<_, _>>()
                        == expected
                })
            })
            .map(|h| h.name().to_owned())
            .collect();
        held.sort();
        held
    };
    let mut settled = in_memory();
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = in_memory();
        if now == settled {
            break;
        }
        settled = now;
    }
    let held_after_kill = eventually("the reports of the calls that landed", WAIT, || async {
        let mut reported = hosts_holding(&p.hosts, &expected).await;
        reported.sort();
        (reported == settled).then_some(reported)
    })
    .await;
    eprintln!(
        "killed with {} of {N} hosts holding the map (seen {} just before), mapVersion {}",
        held_after_kill.len(),
        held.len(),
        before.map_version
    );
    assert!(
        held_after_kill.len() < N,
        "the rollout finished before the kill took effect"
    );
    assert_eq!(
        ids_before.len(),
        N,
        "every host has an id before any is told: {ids_before:?}"
    );
    assert_eq!(
        before.domain_map.len(),
        3,
        "the whole map was persisted first"
    );
    let reported_ids: BTreeMap<String, i32> = {
        let mut m = BTreeMap::new();
        for h in &held_after_kill {
            let report = host(h).await.status.and_then(|s| s.report);
            let id = report.and_then(|r| r.pool).map(|c| c.host_id).expect("id");
            m.insert(h.clone(), id);
        }
        m
    };
    for (h, id) in &reported_ids {
        assert_eq!(
            ids_before.get(h),
            Some(id),
            "{h} holds the map under another id than the pool status says"
        );
    }

    // Every status the new controller writes is recorded: nothing may be lost even for a moment
    // (a reconcile on half-filled caches would drop ids or the map).
    let log = WatchLog::start(&p.name, |p: StoragePool| p.status).await;
    let second = ControllerProcess::start();
    let startup = second.ready().await;
    for h in &p.hosts {
        eventually(&format!("{h} holds the map"), WAIT, || async {
            (host_map(h).await == expected).then_some(())
        })
        .await;
    }
    eventually("pool Ready with every host in sync", WAIT, || async {
        let s = pool(&p.name).await.status?;
        let ready = condition(&s.conditions, "Ready")?.0 == "True";
        (ready && s.counts.in_sync == i32::try_from(N).ok()?).then_some(())
    })
    .await;
    let converged = killed_at.elapsed();
    for d in &p.domains {
        wait_domain_phase(d, DomainPhase::Active).await;
    }
    for h in &p.hosts {
        wait_host_phase(h, HostPhase::Up).await;
    }
    let connects = second.connects_ok().await;
    second.kill().await;
    let after = pool(&p.name).await.status.expect("pool status");
    let versions = log.stop();
    eprintln!(
        "restarted controller ready in {startup:?}; converged {converged:?} after the kill; \
         {connects} connect calls; {} pool status versions written since",
        versions.len()
    );

    assert_eq!(
        after.map_version, before.map_version,
        "the map did not change, so neither may mapVersion"
    );
    assert_eq!(
        ids(&after),
        ids_before,
        "host ids are stable across the restart"
    );
    for h in &p.hosts {
        let id = host(h)
            .await
            .status
            .and_then(|s| s.report)
            .and_then(|r| r.pool)
            .map(|c| c.host_id);
        assert_eq!(id, ids_before.get(h).copied(), "{h} connected under its id");
    }
    for s in &versions {
        assert_eq!(
            ids(s),
            ids_before,
            "a status written after the restart changed host ids"
        );
        assert_eq!(
            s.map_version, before.map_version,
            "a status written after the restart changed mapVersion"
        );
        assert_eq!(
            s.domain_map, before.domain_map,
            "a status written after the restart changed the map"
        );
    }
    // Nothing redone: hosts that held the map at the kill were in sync and needed no call.
    let owed = u64::try_from(N - held_after_kill.len()).expect("count");
    assert!(
        connects >= owed && connects <= owed + 2,
        "the new controller made {connects} connect calls; {owed} hosts still needed the map"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_grace_period_survives_a_controller_restart() {
    let _turn = ONE_CONTROLLER.lock().await;
    const GRACE: i64 = 8;
    let p = create_pool(
        3,
        2,
        json!({"problemGraceSeconds": GRACE, "connectTimeoutSeconds": 2}),
    )
    .await;
    let target = &p.domains[1];
    let uuid = p.uuids[target].clone();
    let first = ControllerProcess::start();
    wait_domain_phase(target, DomainPhase::Active).await;
    for h in &p.hosts {
        wait_host_phase(h, HostPhase::Up).await;
    }

    let sick = &p.hosts[0];
    let index = p.agents.host(sick).expect("host").index();
    p.agents
        .faults()
        .expect("simulator")
        .set(&uuid, Fault::Unreadable, Some(&[index]));
    let since: Timestamp = eventually("Problem=True on the domain", WAIT, || async {
        let d = domain(target).await;
        let c = d
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Problem")?;
        (c.status == "True").then_some(c.last_transition_time.0)
    })
    .await;
    let grace_ends = since + SignedDuration::from_secs(GRACE);

    // Kill the controller three seconds into the grace period and keep it down for two: a
    // controller that kept the timer in memory would start it again and blame the host no
    // earlier than `restart + grace`, five seconds after the true end. (Both waits place the
    // restart in time; neither waits for something to happen.)
    sleep_until(since + SignedDuration::from_secs(3)).await;
    assert_eq!(
        host_phase_now(sick).await,
        Some(HostPhase::Up),
        "the grace period is not over yet"
    );
    first.kill().await;
    // The `Problem` condition (status, lastTransitionTime) of every version of the domain.
    let problem_log = WatchLog::start(target, |d: StorageDomain| {
        let c = d
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Problem")?;
        Some((c.status, c.last_transition_time.0))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = ControllerProcess::start();
    second.ready().await;
    let restarted = Timestamp::now();

    wait_host_phase(sick, HostPhase::NonOperational).await;
    let blamed = Timestamp::now();
    eprintln!(
        "Problem since {since}; grace ends {grace_ends}; restarted at {restarted}; \
         NonOperational seen at {blamed} ({} after the grace ended)",
        blamed.duration_since(grace_ends)
    );
    let h = host(sick).await.status.expect("host status");
    let (_, reason, _) = condition(&h.conditions, "Operational").expect("Operational condition");
    assert_eq!(reason, "StorageDomainUnreachable");
    second.kill().await;
    let problems = problem_log.stop();

    // Every version of the domain written since the restart: the Problem condition stays True
    // with the original lastTransitionTime until the blame, which clears it (the problem is now
    // the host's); it never goes False and True again, which would restart the grace period.
    let first_false = problems
        .iter()
        .position(|(status, _)| status != "True")
        .unwrap_or(problems.len());
    assert!(
        problems[..first_false].iter().all(|(_, at)| *at == since)
            && problems[first_false..]
                .iter()
                .all(|(status, _)| status != "True"),
        "the Problem condition (status, lastTransitionTime) went through {problems:?} after the \
         restart; it became True at {since}"
    );
    if let Some((_, cleared)) = problems.get(first_false) {
        assert!(
            *cleared >= grace_ends,
            "Problem cleared at {cleared}, before the grace period ended at {grace_ends}"
        );
    }
    assert!(
        blamed >= grace_ends,
        "NonOperational at {blamed}, before the grace period ended at {grace_ends}"
    );
    let latest = std::cmp::max(grace_ends, restarted) + SignedDuration::from_millis(3500);
    assert!(
        blamed <= latest,
        "NonOperational at {blamed}: later than the grace end {grace_ends} (or the restart at \
         {restarted}) allows; the grace period was restarted"
    );
}

/// The host's phase right now.
async fn host_phase_now(name: &str) -> Option<HostPhase> {
    host(name).await.status.and_then(|s| s.phase)
}

/// Sleeps until the wall clock reads `at`.
async fn sleep_until(at: Timestamp) {
    let left = at.duration_since(Timestamp::now());
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs()).await;
    }
}

/// When the `Responsive` condition of `name` last changed, and its status.
async fn responsive_since(name: &str) -> Option<(String, Timestamp)> {
    let h = host(name).await;
    let c = h
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Responsive")?;
    Some((c.status, c.last_transition_time.0))
}

/// What an API server outage longer than the Lease looks like to the controller's Lease data:
/// while it was away, no renewal was written, and when it is back every `renewTime` is older than
/// the Lease. The controller judges liveness from when it observed a renewal, with a grace of one
/// Lease duration from its start, so no host flips to NonResponsive and back (two writes and an
/// event per host) while the agents catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_leases_found_at_start_flip_no_host() {
    let _turn = ONE_CONTROLLER.lock().await;
    let p = create_pool(3, 1, json!({"connectTimeoutSeconds": 2})).await;
    let first = ControllerProcess::start();
    let mut before = BTreeMap::new();
    for h in &p.hosts {
        wait_host_phase(h, HostPhase::Up).await;
        let (status, since) = responsive_since(h).await.expect("Responsive condition");
        assert_eq!(status, "True");
        before.insert(h.clone(), since);
    }
    first.kill().await;

    // The agents cannot write (as in an outage) until every Lease is older than its duration.
    for h in p.agents.hosts() {
        h.set_blackholed(true);
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client().await, LEASE_NAMESPACE);
    for h in &p.hosts {
        eventually(&format!("the Lease of {h} is stale"), WAIT, || async {
            let l = leases.get(h).await.ok()?;
            let spec = l.spec?;
            let renewed = spec.renew_time?.0;
            let duration = SignedDuration::from_secs(spec.lease_duration_seconds?.into());
            (renewed + duration + SignedDuration::from_secs(1) < Timestamp::now()).then_some(())
        })
        .await;
    }

    // The controller comes back and finds them so; the agents are back at once too.
    let second = ControllerProcess::start();
    second.ready().await;
    for h in p.agents.hosts() {
        h.set_blackholed(false);
    }
    // Longer than a Lease (6 s in these tests): the grace has ended, renewals were seen.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for h in &p.hosts {
        assert_eq!(
            responsive_since(h).await,
            Some(("True".to_owned(), before[h])),
            "{h} flipped Responsive across the restart"
        );
        assert_eq!(host_phase_now(h).await, Some(HostPhase::Up));
    }
    second.kill().await;
}
