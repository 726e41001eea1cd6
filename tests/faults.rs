//! Fault injection against the real control plane, with the controller running as its own process
//! (the `poolkeeper` binary) and simulated hosts in this process:
//!
//! - kube-apiserver restarted mid-rollout, etcd stopped and started again mid-rollout;
//! - the controller aborted (as by `kill -9`) at named points of a rollout
//!   ([`poolkeeper::controller::crash`]), then started again;
//! - the leader's Lease taken by another holder: the old leader stops calling hosts;
//! - another writer racing on pool and domain statuses;
//! - watches expired (etcd compacted while the controller was frozen) and relisted.
//!
//! Every scenario checks that the pool converges and that nothing was lost: the pool's map and
//! master, host ids (stable, unique, what hosts hold), each domain's phase as the specs say, and,
//! from every call each host received ([`HostAgent::calls`]), that no host was ever told a map
//! without a domain it held active unless that domain had been asked to leave.
//!
//! The tests share one control plane that some of them restart, and each runs its own controller
//! process: they take turns.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use poolkeeper::{
    agent::host::HostAgent,
    api::{DomainPhase, Host, MapStatus, StorageDomain, StoragePool},
    controller::context::FENCE_FRESH,
};
use serde_json::json;
use support::{
    client,
    cluster::{LEASE_NAMESPACE, ProcessPool, TOKEN, condition, merge_spec},
    control_plane, eventually, unique,
};

/// The tests take turns: one controller at a time, and some restart the control plane.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long etcd stays down.
const ETCD_OUTAGE: Duration = Duration::from_secs(4);

/// How long a scenario may take to converge (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The controller process.

/// A `poolkeeper controller` process against the test control plane.
struct Controller {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

/// How a controller process is started.
#[derive(Clone, Debug, Default)]
struct Launch {
    /// `POOLKEEPER_CRASH_AT`.
    crash_at: Option<String>,
    /// `--leader-elect`, with this identity.
    leader: Option<String>,
}

/// A directory for the token file and the controllers' logs, inside the control plane's (removed
/// with it).
fn workdir() -> &'static std::path::Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = control_plane().dir().join("faults");
        std::fs::create_dir_all(&dir).expect("work dir");
        std::fs::write(dir.join("token"), TOKEN).expect("token file");
        dir
    })
}

impl Controller {
    fn start(launch: &Launch) -> Self {
        let cp = control_plane();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let metrics = listener.local_addr().expect("addr");
        drop(listener);
        let log = workdir().join(format!("{}.log", unique("controller")));
        let out = std::fs::File::create(&log).expect("controller log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolkeeper"));
        cmd.arg("controller")
            .arg("--insecure")
            .arg("--token-file")
            .arg(workdir().join("token"))
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .arg("--lease-namespace")
            .arg(LEASE_NAMESPACE)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAMESPACE", LEASE_NAMESPACE)
            .env_remove("POOLKEEPER_CRASH_AT")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        if let Some(point) = &launch.crash_at {
            cmd.env("POOLKEEPER_CRASH_AT", point);
        }
        if let Some(identity) = &launch.leader {
            cmd.arg("--leader-elect").env("POD_NAME", identity);
        }
        let child = cmd.spawn().expect("start the controller");
        Self {
            child,
            metrics,
            log,
        }
    }

    /// The exit status, once the process is gone.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("controller status")
    }

    /// Its last log lines, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} the controller");
    }

    /// Waits until `/readyz` answers 200.
    async fn ready(&self) {
        let url = format!("http://{}/readyz", self.metrics);
        eventually("controller ready", WAIT, || {
            let url = url.clone();
            async move {
                let resp = reqwest::get(url).await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller kept running as a Deployment would: started armed with a crash point, and started
/// again (unarmed) whenever it exits. Polled by the scenario's waits.
struct Supervised {
    current: Controller,
    /// How each earlier process ended.
    ended: Vec<ExitStatus>,
}

impl Supervised {
    fn start(launch: &Launch) -> Self {
        Self {
            current: Controller::start(launch),
            ended: Vec::new(),
        }
    }

    /// Starts a new process when the current one exited.
    fn keep_running(&mut self) {
        if let Some(status) = self.current.exited() {
            eprintln!(
                "controller exited ({status}); starting it again. Its last lines:\n{}",
                self.current.log_tail()
            );
            self.ended.push(status);
            self.current = Controller::start(&Launch::default());
        }
    }

    /// Whether a process ended by aborting (a crash point). The last crash point of a scenario
    /// can be its very last write: the pool looks converged the moment that write lands, which may
    /// be before this process has seen the controller exit, so the armed process gets a moment to
    /// be reaped before the answer is no.
    async fn aborted(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ended.is_empty() && Instant::now() < deadline {
            self.keep_running();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ended.iter().any(|s| s.signal() == Some(6))
    }
}

// ---------------------------------------------------------------------------------------------
// A pool and what it must look like.

/// A pool, its domains and its simulated hosts, and when the test asked each domain to leave.
struct Pool {
    /// The pool (its first domain is the master: it never leaves).
    pool: ProcessPool,
    /// When the test asked each domain (by uuid) to leave: maintenance or detach.
    leaving: Mutex<BTreeMap<String, SystemTime>>,
}

impl std::ops::Deref for Pool {
    type Target = ProcessPool;

    fn deref(&self) -> &ProcessPool {
        &self.pool
    }
}

/// What a domain should end as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Active,
    Maintenance,
    /// Deleted: detached, then gone.
    Deleted,
}

/// Starts `hosts` simulated hosts and a pool with `domains` data domains and `sync` as its
/// `spec.sync`; every host joins it.
async fn create_pool(hosts: usize, domains: usize, sync: serde_json::Value) -> Pool {
    Pool {
        pool: ProcessPool::create("f", hosts, domains, sync).await,
        leaving: Mutex::new(BTreeMap::new()),
    }
}

impl Pool {
    /// Puts `domain` in maintenance (recording that it may now leave hosts' active sets).
    async fn maintenance(&self, domain: &str) {
        self.mark_leaving(domain);
        merge_spec::<StorageDomain>(domain, json!({"maintenance": true})).await;
    }

    /// Deletes `domain` (it detaches, then its finalizer goes).
    async fn delete(&self, domain: &str) {
        self.mark_leaving(domain);
        Api::<StorageDomain>::all(client().await)
            .delete(domain, &Default::default())
            .await
            .expect("delete domain");
    }

    fn mark_leaving(&self, domain: &str) {
        self.leaving
            .lock()
            .expect("leaving")
            .entry(self.uuids[domain].clone())
            .or_insert_with(SystemTime::now);
    }

    fn host(&self, name: &str) -> &HostAgent {
        self.agents.host(name).expect("host of this pool")
    }

    /// The map every host must end with.
    fn map(&self, want: &BTreeMap<&str, Want>) -> BTreeMap<String, MapStatus> {
        want.iter()
            .filter_map(|(d, w)| match w {
                Want::Active => Some((self.uuids[*d].clone(), MapStatus::Active)),
                Want::Maintenance => Some((self.uuids[*d].clone(), MapStatus::Attached)),
                Want::Deleted => None,
            })
            .collect()
    }

    /// Waits until the pool, its domains and its hosts show `want`, keeping the controller
    /// running; then checks that nothing was lost on the way.
    async fn converge(&self, want: &BTreeMap<&str, Want>, ctl: &mut Supervised) -> Converged {
        let map = self.map(want);
        let started = Instant::now();
        loop {
            ctl.keep_running();
            if let Some(state) = self.converged(want, &map).await {
                self.assert_no_loss();
                return state;
            }
            assert!(
                started.elapsed() < WAIT,
                "pool {} did not converge to {want:?} within {WAIT:?}; controller's last lines:\n{}",
                self.name,
                ctl.current.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The converged state, or `None` while something is still on its way.
    async fn converged(
        &self,
        want: &BTreeMap<&str, Want>,
        map: &BTreeMap<String, MapStatus>,
    ) -> Option<Converged> {
        let c = client().await;
        let pool = Api::<StoragePool>::all(c.clone())
            .get(&self.name)
            .await
            .ok()?;
        let status = pool.status?;
        let persisted: BTreeMap<String, MapStatus> = status
            .domain_map
            .iter()
            .map(|(u, s)| (u.clone(), *s))
            .collect();
        if persisted != *map || condition(&status.conditions, "Ready")?.0 != "True" {
            return None;
        }
        if status.counts.in_sync != i32::try_from(self.hosts.len()).ok()? {
            return None;
        }
        let domains = Api::<StorageDomain>::all(c.clone());
        for (d, w) in want {
            let found = domains.get_opt(d).await.ok()?;
            let phase = match found {
                Some(domain) => domain.status?.phase?,
                None if *w == Want::Deleted => continue,
                None => panic!("domain {d} is gone"),
            };
            let expected = match w {
                Want::Active => DomainPhase::Active,
                Want::Maintenance => DomainPhase::Maintenance,
                Want::Deleted => return None,
            };
            if phase != expected {
                return None;
            }
        }
        let ids: BTreeMap<String, i32> = status
            .host_ids
            .iter()
            .map(|e| (e.host.clone(), e.id))
            .collect();
        let hosts = Api::<Host>::all(c);
        for h in &self.hosts {
            let conn = hosts.get(h).await.ok()?.status?.report?.pool?;
            let held: BTreeMap<String, MapStatus> = conn
                .domain_map
                .iter()
                .map(|(u, s)| (u.clone(), *s))
                .collect();
            if held != *map || Some(&conn.host_id) != ids.get(h) {
                return None;
            }
            if conn.master_domain != status.master_domain {
                return None;
            }
        }
        let distinct: BTreeSet<i32> = self
            .hosts
            .iter()
            .filter_map(|h| ids.get(h))
            .copied()
            .collect();
        assert_eq!(
            distinct.len(),
            self.hosts.len(),
            "every host has its own id: {ids:?}"
        );
        Some(Converged {
            ids: self.hosts.iter().map(|h| (h.clone(), ids[h])).collect(),
            master: status.master_domain,
        })
    }

    /// From every call each host received: no host was told a map without a domain it held active
    /// before, unless that domain had been asked to leave by then; every call told a host the same
    /// host id; the master never changed (the first domain never leaves).
    fn assert_no_loss(&self) {
        let leaving = self.leaving.lock().expect("leaving").clone();
        let master = &self.uuids[&self.domains[0]];
        for name in &self.hosts {
            let (calls, total) = self.host(name).calls();
            assert_eq!(
                usize::try_from(total).ok(),
                Some(calls.len()),
                "{name}: the call log kept every call"
            );
            let mut held_active: BTreeSet<String> = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for call in calls.iter().filter(|c| c.ok) {
                let map: BTreeMap<&str, MapStatus> = call
                    .held
                    .iter()
                    .flat_map(|c| c.domain_map.iter().map(|(u, s)| (u.as_str(), *s)))
                    .collect();
                for sd in &held_active {
                    let allowed = leaving.get(sd).is_some_and(|asked| *asked <= call.at);
                    assert!(
                        allowed || map.get(sd.as_str()) == Some(&MapStatus::Active),
                        "{name} was told a map without {sd} active ({map:?}) although it was not leaving; calls: {calls:#?}"
                    );
                }
                held_active = map
                    .iter()
                    .filter(|(_, s)| **s == MapStatus::Active)
                    .map(|(u, _)| (*u).to_owned())
                    .collect();
                if let Some(conn) = &call.held {
                    ids.insert(conn.host_id);
                    assert_eq!(
                        conn.master_domain.as_deref(),
                        Some(master.as_str()),
                        "{name} was told another master"
                    );
                }
            }
            assert!(ids.len() <= 1, "{name} was told several host ids: {ids:?}");
        }
    }

    /// How many calls the hosts received in all.
    fn calls(&self) -> u64 {
        self.hosts.iter().map(|h| self.host(h).calls().1).sum()
    }
}

/// What a converged pool says.
#[derive(Debug, PartialEq)]
struct Converged {
    ids: BTreeMap<String, i32>,
    master: Option<String>,
}

/// Hosts that hold exactly `map` now (in memory, as their call logs show).
fn holding(p: &Pool, map: &BTreeMap<String, MapStatus>) -> usize {
    p.hosts
        .iter()
        .filter(|h| {
            let held = p.host(h).report().pool.map(|c| {
                c.domain_map
                    .iter()
                    .map(|(u, s)| (u.clone(), *s))
                    .collect::<BTreeMap<_, _>>()
            });
            held.as_ref() == Some(map)
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_and_etcd_restarted_mid_rollout_lose_nothing() {
    let _turn = TURN.lock().await;
    // One call at a time, 500 ms each: the rollout outlasts the API server's restart.
    const N: usize = 12;
    let p = create_pool(
        N,
        2,
        json!({"maxConcurrentConnects": 1, "connectTimeoutSeconds": 5}),
    )
    .await;
    for h in p.agents.hosts() {
        h.set_latency(Duration::from_millis(500));
    }
    let (a, b) = (p.domains[0].as_str(), p.domains[1].as_str());
    let all_active = BTreeMap::from([(a, Want::Active), (b, Want::Active)]);
    let mut ctl = Supervised::start(&Launch::default());

    // kube-apiserver goes away while some hosts hold the map and others wait for it.
    let map = p.map(&all_active);
    eventually("a rollout half-way", WAIT, || async {
        let n = holding(&p, &map);
        assert!(n < N, "the rollout finished before it could be interrupted");
        (n >= 2).then_some(())
    })
    .await;
    let outage = Instant::now();
    control_plane()
        .restart_apiserver()
        .await
        .expect("restart kube-apiserver");
    eprintln!(
        "kube-apiserver restarted in {:?} with {} of {N} hosts holding the map",
        outage.elapsed(),
        holding(&p, &map)
    );
    let first = p.converge(&all_active, &mut ctl).await;
    eprintln!("converged {:?} after the restart began", outage.elapsed());

    // etcd goes away while a domain leaves.
    let moving = BTreeMap::from([(a, Want::Active), (b, Want::Maintenance)]);
    let map = p.map(&moving);
    p.maintenance(b).await;
    eventually("the maintenance map half-way", WAIT, || async {
        (holding(&p, &map) >= 1).then_some(())
    })
    .await;
    let outage = Instant::now();
    control_plane().stop_etcd();
    // The outage's length is the fault itself (kube-apiserver's `/readyz` takes up to a minute
    // to notice): longer than the agents' renewal interval, shorter than their Leases.
    tokio::time::sleep(ETCD_OUTAGE).await;
    control_plane().start_etcd().await.expect("start etcd");
    eprintln!("etcd was down for {:?}", outage.elapsed());
    let second = p.converge(&moving, &mut ctl).await;
    eprintln!("converged {:?} after etcd stopped", outage.elapsed());
    assert_eq!(first, second, "host ids and master unchanged");
    assert!(ctl.ended.is_empty(), "the controller rode out both outages");
}

/// The crash points of a rollout (attach two domains to a new pool of three hosts, put the second
/// in maintenance, delete it), each with the hit at which the controller aborts.
const CRASH_POINTS: &[&str] = &[
    // The first map is persisted, no host told.
    "map-persisted",
    // The maintenance map is persisted, no host told.
    "map-persisted@2",
    // The first connect is recorded in the ledger, not sent.
    "calling:connect",
    // Mid-calls: some hosts told, others not.
    "calling:connect@3",
    // A host took the map; its outcome is not recorded.
    "called:connect",
    // Mid-calls of the maintenance map.
    "called:connect@5",
    // Mid-status-writes: the pool written, its domains and hosts not.
    "status-written:StoragePool",
    "status-written:StoragePool@3",
    "status-written:StorageDomain@2",
    "status-written:Host",
    // The first reconcile's last finalizer step: the domains' on since before their attach, the
    // pool's just added.
    "finalizers-written:StoragePool",
    // The first domain's finalizer added, the second's not, nothing attached yet.
    "finalizers-written:StorageDomain",
    // The deleted domain detached and its finalizer gone: the last step.
    "finalizers-written:StorageDomain@3",
    // An event out, the rest of the report not.
    "event-published:StorageDomain@2",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_at_each_crash_point_converges_without_loss() {
    let _turn = TURN.lock().await;
    // Pools of earlier cases stay converged (their hosts keep running), so they write nothing
    // and never hit a crash point meant for the current case.
    let mut done = Vec::new();
    for point in CRASH_POINTS {
        let started = Instant::now();
        let p = create_pool(3, 2, json!({"connectTimeoutSeconds": 5})).await;
        let (a, b) = (p.domains[0].as_str(), p.domains[1].as_str());
        let mut ctl = Supervised::start(&Launch {
            crash_at: Some((*point).to_owned()),
            leader: None,
        });
        let all_active = BTreeMap::from([(a, Want::Active), (b, Want::Active)]);
        let first = p.converge(&all_active, &mut ctl).await;
        p.maintenance(b).await;
        let moving = BTreeMap::from([(a, Want::Active), (b, Want::Maintenance)]);
        assert_eq!(p.converge(&moving, &mut ctl).await, first, "{point}");
        p.delete(b).await;
        let gone = BTreeMap::from([(a, Want::Active), (b, Want::Deleted)]);
        assert_eq!(p.converge(&gone, &mut ctl).await, first, "{point}");
        assert!(
            ctl.aborted().await,
            "crash point {point} was never reached (earlier processes ended: {:?}); the controller said:\n{}",
            ctl.ended,
            ctl.current.log_tail()
        );
        eprintln!(
            "crash point {point}: converged in {:?}, {} host calls",
            started.elapsed(),
            p.calls()
        );
        done.push(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_leader_calls_no_host_after_its_lease_is_taken() {
    let _turn = TURN.lock().await;
    // One call at a time, 600 ms each: the first wave takes about ten seconds, long after the
    // Lease is taken and long after the reconcile that started it checked the fence.
    const N: usize = 16;
    const LATENCY: Duration = Duration::from_millis(600);
    let p = create_pool(
        N,
        2,
        json!({"maxConcurrentConnects": 1, "connectTimeoutSeconds": 5}),
    )
    .await;
    for h in p.agents.hosts() {
        h.set_latency(LATENCY);
    }
    let leases: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    let leader = unique("leader");
    let mut old = Controller::start(&Launch {
        crash_at: None,
        leader: Some(leader.clone()),
    });
    let (a, b) = (p.domains[0].as_str(), p.domains[1].as_str());
    let all_active = BTreeMap::from([(a, Want::Active), (b, Want::Active)]);
    let map = p.map(&all_active);
    eventually("the rollout under way", WAIT, || async {
        (holding(&p, &map) >= 2).then_some(())
    })
    .await;

    // Another holder takes the Lease (as a replica that judged it expired would).
    let mut lease = leases.get("poolkeeper-controller").await.expect("lease");
    let spec = lease.spec.as_mut().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(leader.as_str()));
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15));
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    spec.holder_identity = Some("intruder".into());
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    leases
        .replace("poolkeeper-controller", &PostParams::default(), &lease)
        .await
        .expect("take the lease");
    let taken = SystemTime::now();
    let held_then = holding(&p, &map);

    let status = eventually("the old leader stops", WAIT, || {
        let status = old.exited();
        async move { status }
    })
    .await;
    let stopped = taken.elapsed().unwrap_or_default();
    let last_call = p
        .hosts
        .iter()
        .filter_map(|h| p.host(h).calls().0.last().map(|c| c.at))
        .max()
        .expect("some host was called");
    let after = last_call.duration_since(taken).ok();
    eprintln!(
        "lease taken with {held_then} of {N} hosts holding the map; the old leader exited ({status}) {stopped:?} later; its last host call was answered {}",
        after.map_or_else(
            || "before the Lease was taken".to_owned(),
            |d| format!("{d:?} after")
        )
    );
    assert!(!status.success(), "the old leader exits with an error");
    assert!(
        held_then < N,
        "the wave was still going when the Lease was taken"
    );
    // A call sent before the fence could see the new holder is answered up to one call's latency
    // later; the slack absorbs a loaded machine. Without a fence check per call, the wave goes on
    // for seconds (and, with the API server out of reach, past the Lease's expiry).
    let bound = FENCE_FRESH + LATENCY + Duration::from_secs(2);
    assert!(
        after.is_none_or(|d| d < bound.min(duration)),
        "the old leader called a host {after:?} after losing its Lease (bound {bound:?})"
    );

    // The intruder never acts; once its Lease is gone a new leader finishes the rollout.
    leases
        .delete("poolkeeper-controller", &Default::default())
        .await
        .expect("release the lease");
    let mut ctl = Supervised::start(&Launch {
        crash_at: None,
        leader: Some(unique("leader")),
    });
    p.converge(&all_active, &mut ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_status_writer_racing_loses_nothing() {
    let _turn = TURN.lock().await;
    let p = create_pool(3, 2, json!({})).await;
    let (a, b) = (p.domains[0].as_str(), p.domains[1].as_str());
    let mut ctl = Supervised::start(&Launch::default());
    ctl.current.ready().await;

    // Races the controller on every status of the pool: a condition of its own (server-side
    // apply, another field manager), and whole-status updates of what it just read
    // (compare-and-swap on the resourceVersion), which make the controller's writes conflict.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let objects: Vec<String> = p.domains.clone();
    let pool_name = p.name.clone();
    let racer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let c = client().await;
            let pools: Api<StoragePool> = Api::all(c.clone());
            let domains: Api<StorageDomain> = Api::all(c);
            let (mut applied, mut replaced) = (0_u32, 0_u32);
            let mut n = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let probe = racer_condition(n);
                if race(&pools, &pool_name, "StoragePool", &probe).await {
                    replaced += 1;
                }
                for d in &objects {
                    if race(&domains, d, "StorageDomain", &probe).await {
                        replaced += 1;
                    }
                }
                applied += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (applied, replaced)
        }
    });

    let all_active = BTreeMap::from([(a, Want::Active), (b, Want::Active)]);
    let first = p.converge(&all_active, &mut ctl).await;
    p.maintenance(b).await;
    let moving = BTreeMap::from([(a, Want::Active), (b, Want::Maintenance)]);
    let second = p.converge(&moving, &mut ctl).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (applied, replaced) = racer.await.expect("racer");
    eprintln!("the racer applied {applied} rounds, {replaced} whole-status updates went through");
    assert!(replaced > 0, "the racer's updates never went through");
    assert_eq!(first, second);
    // Still converged once the racer stops, and the racer's own condition is kept.
    p.converge(&moving, &mut ctl).await;
    let pool = Api::<StoragePool>::all(client().await)
        .get(&p.name)
        .await
        .expect("pool");
    assert!(
        condition(&pool.status.expect("status").conditions, "RacerProbe").is_some(),
        "the controller kept another manager's condition"
    );
    assert!(ctl.ended.is_empty());
}

/// The racer's condition, changing every round.
fn racer_condition(n: u64) -> serde_json::Value {
    json!({
        "type": "RacerProbe",
        "status": "True",
        "reason": "Racing",
        "message": format!("round {n}"),
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// One round of the racer on one object: applies its condition, then writes back the status it
/// read with every count zeroed, if nobody wrote meanwhile. Whether that update went through.
async fn race<K>(api: &Api<K>, name: &str, kind: &str, probe: &serde_json::Value) -> bool
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": kind,
        "status": {"conditions": [probe]},
    });
    let _ = api
        .patch_status(
            name,
            &PatchParams::apply("racer").force(),
            &Patch::Apply(&body),
        )
        .await;
    let Ok(obj) = api.get_status(name).await else {
        return false;
    };
    let mut value = serde_json::to_value(&obj).expect("object as JSON");
    if let Some(counts) = value
        .pointer_mut("/status/counts")
        .and_then(|c| c.as_object_mut())
    {
        for v in counts.values_mut() {
            if v.is_number() {
                *v = json!(0);
            }
        }
    }
    let obj: K = serde_json::from_value(value).expect("object");
    let params = PostParams {
        dry_run: false,
        field_manager: Some("racer".into()),
    };
    api.replace_status(name, &params, &obj).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watches_are_relisted_and_the_missed_change_is_acted_on() {
    let _turn = TURN.lock().await;
    let p = create_pool(3, 2, json!({})).await;
    let (a, b) = (p.domains[0].as_str(), p.domains[1].as_str());
    let mut ctl = Supervised::start(&Launch::default());
    let all_active = BTreeMap::from([(a, Want::Active), (b, Want::Active)]);
    let first = p.converge(&all_active, &mut ctl).await;
    let domains: Api<StorageDomain> = Api::all(client().await);
    let seen = domains
        .get(b)
        .await
        .expect("domain")
        .resource_version()
        .expect("rv");

    // The controller is frozen while the domain is put in maintenance and etcd forgets the
    // history; the API server restarts, so no watch cache remembers it either.
    ctl.current.signal("STOP");
    p.maintenance(b).await;
    compact_etcd().await;
    control_plane()
        .restart_apiserver()
        .await
        .expect("restart kube-apiserver");
    let domains: Api<StorageDomain> = Api::all(client().await);
    assert!(
        watch_expired(&domains, &seen).await,
        "a watch from before the compaction must get 410 Gone"
    );
    ctl.current.signal("CONT");

    let moving = BTreeMap::from([(a, Want::Active), (b, Want::Maintenance)]);
    assert_eq!(p.converge(&moving, &mut ctl).await, first);
    assert!(ctl.ended.is_empty());
}

/// Compacts etcd at its current revision through its JSON gateway, so every older revision is
/// gone.
async fn compact_etcd() {
    let http = reqwest::Client::new();
    let base = control_plane().etcd_url();
    // The key "/" (base64 "Lw==") with range_end "\0" covers everything; only the header matters.
    let range: serde_json::Value = http
        .post(format!("{base}/v3/kv/range"))
        .json(&json!({"key": "Lw==", "limit": 1}))
        .send()
        .await
        .expect("etcd range")
        .json()
        .await
        .expect("etcd range answer");
    let revision = range
        .pointer("/header/revision")
        .and_then(|r| {
            r.as_str()
                .map(str::to_owned)
                .or_else(|| r.as_i64().map(|n| n.to_string()))
        })
        .expect("etcd revision");
    let compacted = http
        .post(format!("{base}/v3/kv/compaction"))
        .json(&json!({"revision": revision, "physical": true}))
        .send()
        .await
        .expect("etcd compaction");
    assert!(
        compacted.status().is_success(),
        "etcd compaction: {}",
        compacted.text().await.unwrap_or_default()
    );
    eprintln!("etcd compacted at revision {revision}");
}

/// Whether a watch from `version` is refused as expired (410).
async fn watch_expired<K>(api: &Api<K>, version: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use futures::StreamExt;
    let Ok(stream) = api.watch(&WatchParams::default().timeout(5), version).await else {
        return false;
    };
    let mut stream = stream.boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(WatchEvent::Error(e)) => return e.code == 410,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}
