//! Convergence in the deployed shape, with the defaults a user gets: a real kube-apiserver and
//! etcd, `poolkeeper controller` as its own process and `poolkeeper agent --simulate N` as another
//! (Lease renewals every 10 s, domain checks every 10 s), one pool of N hosts and 20 domains (18
//! data, 2 ISO), over VDSM's wire with mutual TLS as deployed: the controller keeps the pool CA
//! (`--pool-ca-secret`), each simulated host serves a certificate of its own from it. For each N it prints, each measured `POOLKEEPER_BENCH_REPEATS` times (default 3)
//! as min / median / max:
//!
//! - **floor**: N `status.report` applies of a report shaped as a connected host's (the pool
//!   connection with a 20-domain map, 20 domain vitals) by the agent's own writer
//!   ([`poolkeeper::agent::report::apply_report`], [`MAX_IN_FLIGHT`] at once) to N Hosts of no
//!   pool, before any poolkeeper process starts (the Hosts are deleted after): what the API server
//!   allows;
//! - **registered**: the agent process starts until every one of its N Hosts has a report; its
//!   floor is N Hosts created with a first status and a Lease each (what registering writes at
//!   the least), [`MAX_IN_FLIGHT`] at once, before any poolkeeper process starts;
//! - **pool Ready**: a new pool and its 20 domains are created (the N hosts already name it) until
//!   the pool is Ready with every host in sync; its floor is the floor per write times the writes
//!   it needs at the least: every host's report and every host's first status (`Up`), the pool's
//!   status twice (the map, then `Ready`) and each domain's status once (the controller's actual
//!   writes are printed on stderr);
//! - **toggle**: one data domain is put in maintenance until it is `Maintenance` (every host
//!   reported it gone), with the controller's CPU seconds for it; then **activate**: back to
//!   `Active`, which includes the agents' first check of the domain (one 10 s monitor period);
//! - **restart**: one simulated host loses its memory (new bootId) until its report holds the
//!   pool again;
//! - **3.4 toggle**: the same toggle in a new pool of compatibility 3.4 (the map on the master:
//!   the pool manager deactivates the domain there, then every other host refreshes), with the
//!   controller's CPU seconds;
//! - the controller's peak RSS (VmHWM).
//!
//! `cargo bench --bench deployed` (needs `make control-plane`); `POOLKEEPER_BENCH_HOSTS=250,2000`
//! picks the sizes. Prints a table; asserts nothing (speed is measured here, not in tests).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use poolkeeper::{
    agent::report::{MAX_IN_FLIGHT, apply_report},
    api::{
        DomainPhase, DomainVitals, Host, HostReport, HostSpec, MapStatus, PoolConnection,
        StorageDomain, StoragePool,
    },
};
use serde_json::json;

mod common;

const TOKEN: &str = "poolkeeper-bench-token-0123456789";
const NS: &str = "poolkeeper-system";
const DATA_DOMAINS: usize = 18;
const ISO_DOMAINS: usize = 2;
const DOMAINS: usize = DATA_DOMAINS + ISO_DOMAINS;
const BIN: &str = env!("CARGO_BIN_EXE_poolkeeper");

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::var("POOLKEEPER_BENCH_HOSTS")
        .unwrap_or_else(|_| "250,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repeats: usize = std::env::var("POOLKEEPER_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let (cp, client) = common::control_plane(NS).await;
    let _ = CLUSTER.set(client.clone());
    let token_file = cp.dir().join("agent-token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let env = Env {
        kubeconfig: cp.kubeconfig_path().to_owned(),
        token_file,
        logs: std::env::temp_dir().join("poolkeeper-bench"),
    };
    std::fs::create_dir_all(&env.logs).expect("log directory");
    eprintln!("process logs: {}", env.logs.display());

    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("measuring {n} hosts × {DOMAINS} domains, {repeats} repeats");
        rows.push(measure(&client, &env, n, repeats).await);
    }
    println!();
    println!(
        "one pool, N hosts × {DOMAINS} domains ({DATA_DOMAINS} data, {ISO_DOMAINS} ISO); controller and agent as separate processes with default settings; min / median / max of {repeats}"
    );
    println!();
    println!(
        "| hosts | floor (N reports) | registered | registration floor | registered ÷ floor | pool Ready | Ready floor | Ready ÷ floor | toggle | toggle ÷ floor | controller CPU per toggle | 3.4 toggle | 3.4 toggle ÷ floor | controller CPU per 3.4 toggle | activate | host restart | controller peak RSS |"
    );
    println!(
        "|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|------:|"
    );
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "floor: N status.report applies ({MAX_IN_FLIGHT} in flight) before any poolkeeper process starts. Registration floor: N Hosts created with their first status and their Lease, {MAX_IN_FLIGHT} at once. Ready floor: the floor per write times the writes a new pool needs at the least (N reports, N host statuses, the pool's twice, each domain's once). Ready and toggle are compared with the median floors."
    );
}

/// The Secret of the pool CA the controller creates (and reuses across sizes).
const POOL_CA: &str = "poolkeeper-pool-ca";

/// The pool CA as files, once the controller has created its Secret.
async fn pool_ca_files(client: &kube::Client, env: &Env) -> (PathBuf, PathBuf) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let mut found = None;
    wait_for("the pool CA", async || {
        found = secrets.get_opt(POOL_CA).await.ok().flatten();
        found.is_some()
    })
    .await;
    let secret = found.unwrap_or_default();
    let data = secret.data.unwrap_or_default();
    let write = |key: &str| {
        let path = env.logs.join(format!("pool-ca-{key}"));
        std::fs::write(
            &path,
            data.get(key).map(|b| b.0.clone()).unwrap_or_default(),
        )
        .expect("write the pool CA");
        path
    };
    (write("tls.crt"), write("tls.key"))
}

/// Where the processes find their configuration and put their logs.
struct Env {
    kubeconfig: PathBuf,
    token_file: PathBuf,
    logs: PathBuf,
}

impl Env {
    /// CPU seconds of the test control plane's kube-apiserver (the one whose command line names
    /// this run's kubeconfig directory).
    fn apiserver_cpu_seconds(&self) -> f64 {
        let Some(dir) = self.kubeconfig.parent().map(|d| d.display().to_string()) else {
            return 0.0;
        };
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("kube-apiserver") && cmdline.contains(&dir) {
                return cpu_seconds_of(pid);
            }
        }
        0.0
    }
}

/// User plus system CPU seconds of a process so far.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name and state.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// A child process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn spawn(env: &Env, log: &str, args: &[String]) -> Self {
        let out = std::fs::File::create(env.logs.join(log)).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env(
                "RUST_LOG",
                // Info: a few hundred KB per run at 2,000 hosts, and what a stall needs to be
                // understood.
                std::env::var("POOLKEEPER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn poolkeeper");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid())
    }

    /// Peak resident set size in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
}

/// min / median / max of a sample, in seconds.
struct Stats(Vec<f64>);

impl Stats {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn show(&self, unit: &str) -> String {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match (v.first(), v.last()) {
            (Some(min), Some(max)) => format!("{min:.1} / {:.1} / {max:.1}{unit}", self.median()),
            _ => "-".into(),
        }
    }
}

/// The hosts as the bench sees them, from one watch.
type HostStore = reflector::Store<Host>;

async fn host_store(client: &Client) -> HostStore {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Host>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(|_| async {});
    tokio::spawn(stream);
    reader.wait_until_ready().await.expect("host cache");
    reader
}

/// The bench's API server, for [`wait_for`]'s account of a stall.
static CLUSTER: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done().await {
        if Instant::now() >= deadline {
            // The pools' statuses say who is behind and why; the processes' logs say the rest.
            if let Some(client) = CLUSTER.get() {
                let pools = Api::<StoragePool>::all(client.clone());
                for p in pools
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    eprintln!(
                        "pool {}: {}",
                        p.metadata.name.unwrap_or_default(),
                        serde_json::to_string(&p.status).unwrap_or_default()
                    );
                }
            }
            panic!("gave up waiting: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every host named `<prefix>-…` reports no pool.
async fn disconnected(store: &HostStore, prefix: &str) {
    let ours = format!("{prefix}-");
    wait_for("hosts disconnected", async || {
        store
            .state()
            .iter()
            .filter(|h| {
                h.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&ours))
            })
            .all(|h| report_of(h).is_some_and(|r| r.pool.is_none()))
    })
    .await;
}

fn report_of(h: &Host) -> Option<&HostReport> {
    h.status.as_ref().and_then(|s| s.report.as_ref())
}

/// A report shaped as a host connected to a pool of 20 domains writes it, different in each round
/// (so every apply changes the object).
fn floor_report(round: usize) -> HostReport {
    let uuids: Vec<String> = (0..DOMAINS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    HostReport {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: uuid::Uuid::new_v4().to_string(),
        pool: Some(PoolConnection {
            uuid: uuid::Uuid::new_v4().to_string(),
            host_id: 1,
            master_domain: uuids.first().cloned(),
            master_version: i64::try_from(round).unwrap_or(0) + 1,
            domain_map: uuids
                .iter()
                .map(|u| (u.clone(), MapStatus::Active))
                .collect(),
            spm_lver: None,
            backend: None,
        }),
        domains: uuids
            .iter()
            .map(|u| DomainVitals {
                uuid: u.clone(),
                valid: true,
                code: 0,
                delay_seconds: 0.0,
                last_check_seconds: 0.0,
                acquired: true,
                actual: true,
                version: 5,
            })
            .collect(),
        domain_count: i32::try_from(DOMAINS).unwrap_or(0),
    }
}

/// The controller's part of an Up host's status, as it writes it.
fn controller_status() -> serde_json::Value {
    let at = jiff::Timestamp::now().to_string();
    let cond = |type_: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": at})
    };
    json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": "Host",
        "status": {
            "phase": "Up",
            "observedGeneration": 1,
            "conditions": [
                cond("Responsive", "LeaseCurrent", "the agent renews its Lease"),
                cond("InSync", "InSync", "the host holds the pool's current map"),
                cond("Operational", "DomainsReachable", ""),
                cond("Ready", "HostUp", ""),
            ],
        },
    })
}

/// N report applies by the agent's writer, as many in flight as the agent allows.
async fn floor(client: &Client, names: &[String], report: &HostReport) -> f64 {
    let api: Api<Host> = Api::all(client.clone());
    let started = Instant::now();
    stream::iter(names)
        .map(|name| {
            let api = api.clone();
            let report = report.clone();
            async move { apply_report(&api, name, "127.0.0.1:9", &report).await }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("floor writes");
    started.elapsed().as_secs_f64()
}

/// What the reconciles between two step snapshots cost: runs, and mean milliseconds per step.
fn step_summary(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> String {
    let runs =
        after.get("observe").map_or(0.0, |a| a.0) - before.get("observe").map_or(0.0, |b| b.0);
    let mut parts = vec![format!("{runs:.0} reconciles")];
    for step in ["observe", "plan", "act", "report", "finalize"] {
        let (Some(a), b) = (
            after.get(step),
            before.get(step).copied().unwrap_or_default(),
        ) else {
            continue;
        };
        let n = a.0 - b.0;
        if n > 0.0 {
            parts.push(format!("{step} {:.1} ms", (a.1 - b.1) / n * 1000.0));
        }
    }
    parts.join(", ")
}

/// The controller's API writes so far, per kind, operation and outcome
/// (`poolkeeper_api_writes_total`).
async fn api_writes(metrics: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let body = common::metrics_text(metrics).await;
    body.lines()
        .filter_map(|l| l.strip_prefix("poolkeeper_api_writes_total"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn writes_summary(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    after
        .iter()
        .filter_map(|(series, a)| {
            let n = a - before.get(series).copied().unwrap_or(0.0);
            (n > 0.0).then(|| format!("{series} {n:.0}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The controller's own status writes so far (`poolkeeper_status_writes_total`).
async fn controller_writes(metrics: std::net::SocketAddr) -> u64 {
    let body = common::metrics_text(metrics).await;
    body.lines()
        .filter(|l| l.starts_with("poolkeeper_status_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

#[allow(clippy::too_many_lines)]
async fn measure(client: &Client, env: &Env, n: usize, repeats: usize) -> String {
    let prefix = format!("h{n}");
    let pool_name = format!("pool-{n}");
    let hosts_api: Api<Host> = Api::all(client.clone());
    let pools: Api<StoragePool> = Api::all(client.clone());
    let domains: Api<StorageDomain> = Api::all(client.clone());
    let store = host_store(client).await;

    // The floor's own Hosts: no agent, no pool, but shaped as a pool's hosts are (registered by
    // the agent's field manager, the controller's phase and conditions), since a write costs the
    // API server in proportion to the object it rewrites. Registering them is the registration
    // floor: what registering N hosts writes at the least (each Host created, its first status,
    // its Lease created by the agent's own renewal), the same number at once as the agent.
    let floor_names: Vec<String> = (0..n).map(|i| format!("floor{n}-{i:04}")).collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let registering_floor = Instant::now();
    stream::iter(&floor_names)
        .map(|name| {
            let api = hosts_api.clone();
            let leases = leases.clone();
            async move {
                poolkeeper::agent::lease::renew(&leases, name, 40, false).await?;
                let host = Host::new(
                    name,
                    HostSpec {
                        pool: None,
                        endpoint: None,
                        maintenance: false,
                    },
                );
                let pp = PostParams {
                    field_manager: Some(poolkeeper::agent::report::FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                api.create(&pp, &host).await?;
                api.patch_status(
                    name,
                    &PatchParams::apply(poolkeeper::controller::FIELD_MANAGER).force(),
                    &Patch::Apply(controller_status()),
                )
                .await
            }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .expect("floor hosts");
    let registration_floor = registering_floor.elapsed().as_secs_f64();

    let mut floors = Vec::new();
    for round in 0..repeats {
        let cpu_before = env.apiserver_cpu_seconds();
        floors.push(floor(client, &floor_names, &floor_report(round)).await);
        eprintln!(
            "{n} hosts: floor round {round}: {:.1} s, the API server {:.1} CPU-s",
            floors.last().copied().unwrap_or_default(),
            env.apiserver_cpu_seconds() - cpu_before
        );
    }
    let floors = Stats(floors);
    let per_write = floors.median() / n as f64;
    for name in &floor_names {
        let _ = hosts_api.delete(name, &DeleteParams::default()).await;
        let _ = leases.delete(name, &DeleteParams::default()).await;
    }
    wait_for("floor hosts deleted", async || {
        store.state().iter().all(|h| {
            !h.metadata
                .name
                .as_deref()
                .is_some_and(|x| x.starts_with("floor"))
        })
    })
    .await;

    let metrics = free_port();
    let controller = Proc::spawn(
        env,
        &format!("controller-{n}.log"),
        &[
            "controller".into(),
            // As deployed: mutual TLS with the pool CA the controller keeps in a Secret.
            "--pool-ca-secret".into(),
            POOL_CA.into(),
            "--leader-election-namespace".into(),
            NS.into(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--lease-namespace".into(),
            NS.into(),
        ],
    );
    // Each simulated host serves TLS with a certificate of its own from the pool CA (real hosts
    // request theirs; a simulator has no node-bound token per host), as the controller created
    // it.
    let (ca_cert, ca_key) = pool_ca_files(client, env).await;
    // The fault-injection API; simulated host i serves VDSM's wire on 127.2.0.1 plus i.
    let agent_addr = free_port();
    let first_host = std::net::SocketAddr::new([127, 2, 0, 1].into(), agent_addr.port());
    let registering = Instant::now();
    let agent = Proc::spawn(
        env,
        &format!("agent-{n}.log"),
        &[
            "agent".into(),
            "--simulate".into(),
            n.to_string(),
            "--sim-prefix".into(),
            prefix.clone(),
            "--listen".into(),
            first_host.to_string(),
            "--control-listen".into(),
            agent_addr.to_string(),
            "--sim-ca-cert".into(),
            ca_cert.display().to_string(),
            "--sim-ca-key".into(),
            ca_key.display().to_string(),
            // The fault-injection API's token (RPC is mutual TLS).
            "--token-file".into(),
            env.token_file.display().to_string(),
            "--lease-namespace".into(),
            NS.into(),
        ],
    );
    let ours = |h: &Arc<Host>| {
        h.metadata
            .name
            .as_deref()
            .is_some_and(|x| x.starts_with(&format!("{prefix}-")))
    };
    wait_for("registration", async || {
        store
            .state()
            .iter()
            .filter(|h| ours(h) && report_of(h).is_some())
            .count()
            == n
    })
    .await;
    let registered = registering.elapsed().as_secs_f64();
    let names: Vec<String> = store
        .state()
        .iter()
        .filter(|h| ours(h))
        .filter_map(|h| h.metadata.name.clone())
        .collect();

    // Every host names the pool before it exists, so the measured interval is the controller's.
    stream::iter(&names)
        .map(|name| {
            let api = hosts_api.clone();
            let pool = pool_name.clone();
            async move {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"pool": pool}})),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("join");
    // Let the Lease renewals settle into their steady cadence.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // What the API server spends while nothing changes (the hosts renew their Leases): the load a
    // toggle runs on top of, which the floor does not carry.
    let idle_from = env.apiserver_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!(
        "{n} hosts idle (Lease renewals only): the API server spends {:.2} CPU-s per second",
        (env.apiserver_cpu_seconds() - idle_from) / 10.0
    );

    let domain_names: Vec<String> = (0..DOMAINS)
        .map(|d| format!("{pool_name}-sd{d:02}"))
        .collect();
    let uuids: Vec<String> = (0..DOMAINS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut readies = Vec::new();
    let mut ready_writes = Vec::new();
    for round in 0..repeats {
        if round > 0 {
            // Delete the pool and its domains; every host disconnects before the pool is gone.
            delete_pool(&pools, &domains, &pool_name, &domain_names).await;
            wait_for("domains deleted", async || {
                domains
                    .list(&Default::default())
                    .await
                    .map(|l| l.items.is_empty())
                    .unwrap_or(false)
            })
            .await;
            disconnected(&store, &prefix).await;
        }
        let writes_before = controller_writes(metrics).await;
        let started = Instant::now();
        create_pool(
            &pools,
            &domains,
            &pool_name,
            &domain_names,
            &uuids,
            poolkeeper::api::pool::DEFAULT_COMPATIBILITY_VERSION,
        )
        .await;
        let mut pool_said = None;
        let mut hosts_held = None;
        wait_for("pool Ready", async || {
            let Ok(p) = pools.get(&pool_name).await else {
                return false;
            };
            let s = p.status.unwrap_or_default();
            if pool_said.is_none()
                && s.counts.in_sync as usize == n
                && s.domain_map.len() == DOMAINS
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                pool_said = Some(started.elapsed().as_secs_f64());
                if std::env::var_os("POOLKEEPER_BENCH_TRACE").is_some() {
                    // The API server's own answer at that moment, not a cache.
                    let listed = hosts_api.list(&Default::default()).await.expect("hosts");
                    let holding = listed
                        .items
                        .iter()
                        .filter(|h| {
                            report_of(h).and_then(|r| r.pool.as_ref()).is_some_and(|c| {
                                Some(&c.uuid) == s.uuid.as_ref() && c.domain_map.len() == DOMAINS
                            })
                        })
                        .count();
                    let cached = store
                        .state()
                        .iter()
                        .filter(|h| {
                            report_of(h).and_then(|r| r.pool.as_ref()).is_some_and(|c| {
                                Some(&c.uuid) == s.uuid.as_ref() && c.domain_map.len() == DOMAINS
                            })
                        })
                        .count();
                    eprintln!(
                        "when the pool said Ready: {holding} hosts held its map (listed), {cached} in the bench's cache; pool uuid {:?}, map {}, master {:?}, conditions {:?}",
                        s.uuid, s.map_version, s.master_domain,
                        s.conditions.iter().map(|c| (&c.type_, &c.status, &c.reason, &c.message)).collect::<Vec<_>>()
                    );
                    if let Some(h) = listed.items.iter().find(|h| {
                        ours(&Arc::new((*h).clone()))
                            && !report_of(h).and_then(|r| r.pool.as_ref()).is_some_and(|c| {
                                Some(&c.uuid) == s.uuid.as_ref() && c.domain_map.len() == DOMAINS
                            })
                    }) {
                        eprintln!(
                            "a host without it: {:?} spec.pool {:?} report.pool {:?} conditions {:?}",
                            h.metadata.name,
                            h.spec.pool,
                            report_of(h).and_then(|r| r.pool.as_ref()).map(|c| (&c.uuid, c.domain_map.len())),
                            h.status.as_ref().map(|s| s.conditions.iter().map(|c| (&c.type_, &c.status, &c.reason)).collect::<Vec<_>>())
                        );
                    }
                }
            }
            // What a user checks besides the pool's word: every host holds this pool's map.
            if hosts_held.is_none()
                && store.state().iter().filter(|h| ours(h)).all(|h| {
                    report_of(h).and_then(|r| r.pool.as_ref()).is_some_and(|c| {
                        Some(&c.uuid) == s.uuid.as_ref() && c.domain_map.len() == DOMAINS
                    })
                })
            {
                hosts_held = Some(started.elapsed().as_secs_f64());
            }
            pool_said.is_some() && hosts_held.is_some()
        })
        .await;
        eprintln!(
            "{n} hosts: the pool said Ready after {:.1} s, every host held its map after {:.1} s",
            pool_said.unwrap_or(f64::NAN),
            hosts_held.unwrap_or(f64::NAN)
        );
        readies.push(started.elapsed().as_secs_f64());
        eprintln!(
            "{n} hosts: pool Ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // The writes it needs at the least: each host's report and first status, the pool's map
        // and its Ready, each domain's status.
        let writes = controller_writes(metrics)
            .await
            .saturating_sub(writes_before);
        eprintln!(
            "{n} hosts: the controller wrote {writes} statuses for the new pool (at the least {})",
            n + 2 + DOMAINS
        );
        ready_writes.push((2 * n + 2 + DOMAINS) as f64);
        // The next phase starts from a quiet pool: every host has checked every domain (the
        // agents' first checks, one monitor period after the map, are not the next phase's work).
        wait_for("first checks", async || {
            store.state().iter().filter(|h| ours(h)).all(|h| {
                report_of(h).is_some_and(|r| {
                    r.domains.len() == DOMAINS && r.domains.iter().all(|d| d.valid)
                })
            })
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let readies = Stats(readies);

    let ready_floors = Stats(ready_writes.iter().map(|w| w * per_write).collect());

    let target = &domain_names[DATA_DOMAINS - 1];
    let target_uuid = &uuids[DATA_DOMAINS - 1];
    let steps_before = common::steps(metrics).await;
    let writes_before = api_writes(metrics).await;
    let looking = Looking {
        n,
        domains: &domains,
        store: &store,
        prefix: &prefix,
        env,
        controller: &controller,
        agent: &agent,
    };
    let (toggles, cpu, activations) = toggle_rounds(&looking, target, target_uuid, repeats).await;
    eprintln!(
        "{n} hosts, toggles and activations: {}",
        step_summary(&steps_before, &common::steps(metrics).await)
    );
    eprintln!(
        "{n} hosts, toggles and activations, API writes: {}",
        writes_summary(&writes_before, &api_writes(metrics).await)
    );

    let rpc = reqwest::Client::new();
    let mut restarts = Vec::new();
    for round in 0..repeats {
        let name = &names[(round * 7919) % names.len()];
        let boot_before = store
            .get(&reflector::ObjectRef::new(name))
            .and_then(|h| report_of(&h).map(|r| r.boot_id.clone()));
        let started = Instant::now();
        rpc.post(format!("http://{agent_addr}/control/hosts/{name}/restart"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("restart");
        wait_for("reconnect", async || {
            store
                .get(&reflector::ObjectRef::new(name))
                .as_deref()
                .and_then(report_of)
                .is_some_and(|r| Some(&r.boot_id) != boot_before.as_ref() && r.pool.is_some())
        })
        .await;
        restarts.push(started.elapsed().as_secs_f64());
    }
    // The same toggle in a pool of compatibility 3.4: the map lives on the master, so the pool
    // manager deactivates the domain there first, then every other host refreshes from it.
    delete_pool(&pools, &domains, &pool_name, &domain_names).await;
    disconnected(&store, &prefix).await;
    let started = Instant::now();
    create_pool(&pools, &domains, &pool_name, &domain_names, &uuids, "3.4").await;
    wait_for("3.4 pool Ready", async || {
        pools.get(&pool_name).await.is_ok_and(|p| {
            let s = p.status.unwrap_or_default();
            s.counts.in_sync as usize == n
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "InSync")
        })
    })
    .await;
    eprintln!(
        "{n} hosts: the 3.4 pool Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wait_for("first checks", async || {
        store.state().iter().filter(|h| ours(h)).all(|h| {
            report_of(h)
                .is_some_and(|r| r.domains.len() == DOMAINS && r.domains.iter().all(|d| d.valid))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (legacy_toggles, legacy_cpu, _) =
        toggle_rounds(&looking, target, target_uuid, repeats).await;
    let rss = controller.peak_rss_mib();

    // Leave nothing for the next size: the pool goes while its agents still answer.
    delete_pool(&pools, &domains, &pool_name, &domain_names).await;
    drop(agent);
    drop(controller);

    let toggle_ratio = toggles.median() / floors.median();
    let legacy_ratio = legacy_toggles.median() / floors.median();
    let ready_ratio = readies.median() / ready_floors.median();
    format!(
        "| {n} | {} | {registered:.1} s | {registration_floor:.1} s | {:.2} | {} | {} | {ready_ratio:.2} | {} | {toggle_ratio:.2} | {} | {} | {legacy_ratio:.2} | {} | {} | {} | {rss:.1} MiB |",
        floors.show(" s"),
        registered / registration_floor,
        readies.show(" s"),
        ready_floors.show(" s"),
        toggles.show(" s"),
        cpu.show(" s"),
        legacy_toggles.show(" s"),
        legacy_cpu.show(" s"),
        activations.show(" s"),
        Stats(restarts).show(" s"),
    )
}

/// What the toggles look at and measure.
#[derive(Clone, Copy)]
struct Looking<'a> {
    n: usize,
    domains: &'a Api<StorageDomain>,
    store: &'a HostStore,
    prefix: &'a str,
    env: &'a Env,
    controller: &'a Proc,
    agent: &'a Proc,
}

/// `repeats` times: `target` to maintenance until it is `Maintenance` (seconds, and the
/// controller's CPU seconds), then back until it is `Active` (seconds).
async fn toggle_rounds(
    at: &Looking<'_>,
    target: &str,
    target_uuid: &str,
    repeats: usize,
) -> (Stats, Stats, Stats) {
    let Looking {
        n,
        domains,
        store,
        prefix,
        env,
        controller,
        agent,
    } = *at;
    let ours = |h: &Arc<Host>| {
        h.metadata
            .name
            .as_deref()
            .is_some_and(|x| x.starts_with(&format!("{prefix}-")))
    };
    let mut toggles = Vec::new();
    let mut cpu = Vec::new();
    let mut activations = Vec::new();
    eprintln!("{n} hosts: toggling {target}");
    for _ in 0..repeats {
        let cpu_before = controller.cpu_seconds();
        let others_before = (agent.cpu_seconds(), env.apiserver_cpu_seconds());
        let started = Instant::now();
        set_maintenance(domains, target, true).await;
        let mut reported = None;
        let mut progress = Vec::new();
        let mut last_sample = Instant::now();
        wait_for("maintenance", async || {
            if std::env::var_os("POOLKEEPER_BENCH_TRACE").is_some()
                && last_sample.elapsed() >= Duration::from_millis(1000)
            {
                last_sample = Instant::now();
                let done = store
                    .state()
                    .iter()
                    .filter(|h| ours(h))
                    .filter(|h| {
                        report_of(h)
                            .is_some_and(|r| r.domains.iter().all(|d| d.uuid != target_uuid))
                    })
                    .count();
                progress.push(format!("{:.0}s:{done}", started.elapsed().as_secs_f64()));
            }
            if reported.is_none()
                && store.state().iter().filter(|h| ours(h)).all(|h| {
                    report_of(h).is_some_and(|r| r.domains.iter().all(|d| d.uuid != target_uuid))
                })
            {
                reported = Some(started.elapsed().as_secs_f64());
            }
            phase(domains, target).await == Some(DomainPhase::Maintenance)
        })
        .await;
        toggles.push(started.elapsed().as_secs_f64());
        eprintln!(
            "{n} hosts: toggle {:.1} s, every host had reported it {:.1} s after the change {}",
            started.elapsed().as_secs_f64(),
            reported.unwrap_or(f64::NAN),
            progress.join(" ")
        );
        cpu.push(controller.cpu_seconds() - cpu_before);
        eprintln!(
            "{n} hosts: that toggle cost the controller {:.1} CPU-s, the agent {:.1}, the API server {:.1}",
            controller.cpu_seconds() - cpu_before,
            agent.cpu_seconds() - others_before.0,
            env.apiserver_cpu_seconds() - others_before.1
        );
        let started = Instant::now();
        set_maintenance(domains, target, false).await;
        wait_for("active", async || {
            phase(domains, target).await == Some(DomainPhase::Active)
        })
        .await;
        activations.push(started.elapsed().as_secs_f64());
    }
    (Stats(toggles), Stats(cpu), Stats(activations))
}

/// Creates the pool (of compatibility `version`) and its domains: 18 data, 2 ISO.
async fn create_pool(
    pools: &Api<StoragePool>,
    domains: &Api<StorageDomain>,
    pool_name: &str,
    domain_names: &[String],
    uuids: &[String],
    version: &str,
) {
    let pool: StoragePool = serde_json::from_value(json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": pool_name}, "spec": {"compatibilityVersion": version, "sync": {"maxHosts": 2000}}})).expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool");
    for (d, name) in domain_names.iter().enumerate() {
        let kind = if d < DATA_DOMAINS { "Data" } else { "ISO" };
        let sd: StorageDomain = serde_json::from_value(json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StorageDomain", "metadata": {"name": name},
            "spec": {"uuid": uuids[d], "type": kind, "storage": {"path": format!("nfs:/{name}")}, "pool": pool_name}})).expect("domain");
        domains
            .create(&PostParams::default(), &sd)
            .await
            .expect("domain");
    }
}

/// Deletes the pool's domains and the pool, and waits until the pool is gone (its finalizer
/// disconnects every host first).
async fn delete_pool(
    pools: &Api<StoragePool>,
    domains: &Api<StorageDomain>,
    pool: &str,
    domain_names: &[String],
) {
    for d in domain_names {
        let _ = domains.delete(d, &DeleteParams::default()).await;
    }
    let _ = pools.delete(pool, &DeleteParams::default()).await;
    wait_for("pool deleted", async || {
        pools.get_opt(pool).await.ok().flatten().is_none()
    })
    .await;
}

async fn set_maintenance(domains: &Api<StorageDomain>, name: &str, on: bool) {
    domains
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": on}})),
        )
        .await
        .expect("maintenance");
}

async fn phase(domains: &Api<StorageDomain>, name: &str) -> Option<DomainPhase> {
    domains
        .get(name)
        .await
        .ok()
        .and_then(|d| d.status.and_then(|s| s.phase))
}
