//! The write budget (a healthy rollout of a map change to N hosts costs O(1) controller writes per
//! pool and changed domain), counted where it costs: at the API server. Its `/metrics`
//! (`apiserver_request_total` by verb, resource and subresource) counts every request this test
//! binary's control plane served, so the numbers below are what an operator would see on a real
//! cluster's dashboards:
//! - an idle, converged pool gets no status writes at all (controller or agent); only Lease renewals;
//! - a healthy rollout of a map change to N hosts costs N connect calls, the hosts' own report
//!   writes, and a bounded number of pool and domain status writes that does not grow with N; the
//!   controller writes no Host status.
//!
//! The control plane is this binary's own (the support module starts one per test binary), and the
//! scenarios run one after another inside a single test so that no other test's requests are
//! counted.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use kube::{Api, ResourceExt, runtime::watcher};
use poolkeeper::api::{DomainPhase, Host, HostPhase, HostReport, MapStatus, StorageDomain};
use serde_json::json;
use support::{
    client,
    cluster::{
        PoolOptions, SimPool, WAIT, condition, controller, host_map, merge_spec, pool, sim_pool,
        wait_domain_phase, wait_host_phase,
    },
    eventually,
};

/// The verbs `apiserver_request_total` reports for requests that write (server-side apply is
/// reported as `APPLY`, a PUT as `UPDATE`, a POST as `CREATE`).
const WRITE_VERBS: [&str; 6] = [
    "APPLY",
    "PATCH",
    "UPDATE",
    "CREATE",
    "DELETE",
    "DELETECOLLECTION",
];

/// How long "idle" is watched: 3 s is ten monitor periods of the simulated hosts (300 ms), three
/// Lease renewals (every 1 s) and more than the 2 s problem grace of the test pools, so anything
/// that ticks would show up.
const IDLE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Prometheus text, parsed just enough: `name{label="value",...} number`.

/// The samples of `metric` in a Prometheus text exposition, as (labels, value).
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = if let Some(body) = rest.strip_prefix('{') {
            let Some((labels, value)) = parse_labels(body) else {
                continue;
            };
            (labels, value)
        } else if rest.starts_with(' ') {
            (BTreeMap::new(), rest)
        } else {
            // Another metric whose name starts with `metric`.
            continue;
        };
        let Some(value) = value.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push((labels, value));
    }
    out
}

/// Parses `a="x",b="y"} rest` into the labels and `rest`.
fn parse_labels(body: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}

#[test]
fn prometheus_text_is_parsed() {
    let text = "# HELP x\n\
        apiserver_request_total{code=\"201\",resource=\"hosts\",subresource=\"status\",verb=\"APPLY\"} 7\n\
        apiserver_request_total{resource=\"a\\\"b\",subresource=\"\",verb=\"GET\"} 2e+00\n\
        apiserver_request_total_other{verb=\"GET\"} 9\n\
        plain 3\n";
    let s = samples(text, "apiserver_request_total");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0["verb"], "APPLY");
    assert_eq!(s[0].1, 7.0);
    assert_eq!(s[1].0["resource"], "a\"b");
    assert_eq!(s[1].1, 2.0);
    assert_eq!(samples(text, "plain"), vec![(BTreeMap::new(), 3.0)]);
}

// ---------------------------------------------------------------------------------------------
// Request counts at the API server.

/// `apiserver_request_total` summed by (verb, resource, subresource).
#[derive(Clone, Debug, Default, PartialEq)]
struct Requests(BTreeMap<(String, String, String), u64>);

impl Requests {
    /// Scrapes the API server's `/metrics` with the admin client.
    async fn scrape() -> Self {
        let request = http::Request::get("/metrics")
            .body(vec![])
            .expect("metrics request");
        let text = client()
            .await
            .request_text(request)
            .await
            .expect("kube-apiserver /metrics");
        let mut counts = BTreeMap::new();
        for (labels, value) in samples(&text, "apiserver_request_total") {
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            // Counters are integers; the text format prints them as floats.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = value as u64;
            *counts
                .entry((label("verb"), label("resource"), label("subresource")))
                .or_insert(0) += value;
        }
        assert!(
            !counts.is_empty(),
            "no apiserver_request_total samples in /metrics"
        );
        Self(counts)
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    /// Requests with `verb` on `resource`/`subresource` (`""`: the object itself).
    fn count(&self, verb: &str, resource: &str, subresource: &str) -> u64 {
        self.0
            .get(&(verb.to_owned(), resource.to_owned(), subresource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Write requests of any verb on `resource`/`subresource`.
    fn writes(&self, resource: &str, subresource: &str) -> u64 {
        WRITE_VERBS
            .iter()
            .map(|v| self.count(v, resource, subresource))
            .sum()
    }

    /// Write requests on `resource`, every subresource included.
    fn writes_any(&self, resource: &str) -> u64 {
        self.0
            .iter()
            .filter(|((verb, r, _), _)| r == resource && WRITE_VERBS.contains(&verb.as_str()))
            .map(|(_, v)| v)
            .sum()
    }

    /// The write requests only, one per line, for failure messages and the log.
    fn writes_table(&self) -> String {
        self.0
            .iter()
            .filter(|((verb, _, _), _)| WRITE_VERBS.contains(&verb.as_str()))
            .map(|((verb, r, s), v)| format!("  {verb:<7} {r}/{s}: {v}\n"))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The controller's own metrics.

/// GET `path` from the controller's metrics server (HTTP/1.0: the body ends with the connection).
async fn controller_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the controller's metrics server");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.contains(" 200 "), "GET {path}: {head}");
    body.to_owned()
}

/// A counter of the controller's `/metrics` with exactly these labels (0 when absent).
async fn controller_counter(addr: SocketAddr, metric: &str, labels: &[(&str, &str)]) -> u64 {
    let text = controller_get(addr, "/metrics").await;
    let value: f64 = samples(&text, metric)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = value as u64;
    value
}

/// Successful connect calls the controller has made.
async fn connects_ok(addr: SocketAddr) -> u64 {
    controller_counter(
        addr,
        "poolkeeper_host_calls_total",
        &[("verb", "connect"), ("outcome", "ok")],
    )
    .await
}

/// Host status writes the controller counts itself (a cross-check, not the proof).
async fn controller_host_writes(addr: SocketAddr) -> u64 {
    controller_counter(addr, "poolkeeper_status_writes_total", &[("kind", "Host")]).await
}

/// Pool and domain status writes the controller's writer counted, whatever their outcome.
async fn writer_pool_domain_status(addr: SocketAddr) -> u64 {
    let mut total = 0;
    for kind in ["StoragePool", "StorageDomain"] {
        total += controller_counter(
            addr,
            "poolkeeper_api_writes_total",
            &[("kind", kind), ("op", "status")],
        )
        .await;
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Telling the agents' Host status writes from the controller's.

/// Counts, from a watch on Hosts, the writes that changed a host's `status.report`: only the agent
/// writes that field (field manager `poolkeeper-agent`), and it writes only when its report
/// changed, so each such change is exactly one agent write.
struct ReportWatch {
    /// host → (last resourceVersion seen, report changes seen)
    seen: Arc<Mutex<BTreeMap<String, (String, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReportWatch {
    /// Starts watching `hosts`; returns once the watch has listed them (changes from then on are
    /// seen).
    async fn start(hosts: &[String]) -> Self {
        let names: BTreeSet<String> = hosts.iter().cloned().collect();
        let api: Api<Host> = Api::all(client().await);
        let seen = Arc::new(Mutex::new(BTreeMap::<String, (String, u64)>::new()));
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut last: BTreeMap<String, Option<HostReport>> = BTreeMap::new();
                let mut listed = Some(listed_tx);
                let mut events = watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = events.try_next().await.expect("host watch") {
                    let (object, initial) = match event {
                        watcher::Event::Init => continue,
                        watcher::Event::InitDone => {
                            if let Some(tx) = listed.take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        // A re-list after a lost watch counts nothing: the controller's share
                        // can then only be over-estimated, never hidden.
                        watcher::Event::InitApply(h) => (h, true),
                        watcher::Event::Apply(h) | watcher::Event::Delete(h) => (h, false),
                    };
                    let name = object.name_any();
                    if !names.contains(&name) {
                        continue;
                    }
                    let report = object.status.as_ref().and_then(|s| s.report.clone());
                    let previous = last.insert(name.clone(), report.clone());
                    let mut seen = seen.lock().expect("seen");
                    let entry = seen.entry(name).or_default();
                    entry.0 = object.resource_version().unwrap_or_default();
                    if !initial && previous.as_ref() != Some(&report) {
                        entry.1 += 1;
                    }
                }
            }
        });
        listed_rx.await.expect("host watch listed");
        Self { seen, task }
    }

    /// Waits until the watch has seen every host's current version (so no write made before this
    /// call is missed), stops it, and returns the number of report changes it saw.
    async fn finish(self, hosts: &[String]) -> u64 {
        let api: Api<Host> = Api::all(client().await);
        let mut current = BTreeMap::new();
        for h in hosts {
            let o = api.get(h).await.expect("get host");
            current.insert(h.clone(), o.resource_version().unwrap_or_default());
        }
        eventually("the host watch caught up", WAIT, || async {
            let seen = self.seen.lock().expect("seen");
            current
                .iter()
                .all(|(h, rv)| seen.get(h).map(|s| &s.0) == Some(rv))
                .then_some(())
        })
        .await;
        self.task.abort();
        let seen = self.seen.lock().expect("seen");
        seen.values().map(|s| s.1).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario steps.

/// Waits until the pool has converged: Ready, not Reconciling, every host counted in sync and Up,
/// every domain Active, every host holding the whole map.
async fn wait_converged(sim: &SimPool) {
    let n = i32::try_from(sim.hosts.len()).expect("host count");
    let expected: BTreeMap<String, MapStatus> = sim
        .uuids
        .values()
        .map(|u| (u.clone(), MapStatus::Active))
        .collect();
    for d in &sim.domains {
        wait_domain_phase(d, DomainPhase::Active).await;
    }
    for h in &sim.hosts {
        wait_host_phase(h, HostPhase::Up).await;
        eventually(&format!("{h} holds the map"), WAIT, || async {
            (host_map(h).await == expected).then_some(())
        })
        .await;
    }
    wait_pool_settled(&sim.pool, n).await;
}

/// Waits until the pool says Ready=True, Reconciling=False and counts `n` hosts, all in sync.
async fn wait_pool_settled(name: &str, n: i32) {
    eventually(&format!("pool {name} settled"), WAIT, || async {
        let s = pool(name).await.status?;
        let ready = condition(&s.conditions, "Ready")?.0 == "True";
        let reconciling = condition(&s.conditions, "Reconciling").is_some_and(|c| c.0 == "True");
        let c = &s.counts;
        (ready && !reconciling && c.hosts == n && c.in_sync == n && c.connecting == 0).then_some(())
    })
    .await;
}

/// Asserts that nothing but Lease renewals writes during [`IDLE`]; returns the requests seen.
async fn assert_idle(what: &str) -> Requests {
    let before = Requests::scrape().await;
    // A fixed wait on purpose: the claim is that nothing happens during this interval.
    tokio::time::sleep(IDLE).await;
    let during = Requests::scrape().await.since(&before);
    eprintln!(
        "idle {what}: writes in {IDLE:?}:\n{}",
        during.writes_table()
    );
    assert!(
        during.writes("leases", "") > 0,
        "no Lease renewals counted: the counters do not move\n{}",
        during.writes_table()
    );
    for (resource, who) in [
        ("storagepools", "the controller"),
        ("storagedomains", "the controller"),
        ("hosts", "the controller or the agents"),
        ("events", "the controller"),
    ] {
        assert_eq!(
            during.writes_any(resource),
            0,
            "{what}: {who} wrote {resource} on an idle cluster\n{}",
            during.writes_table()
        );
    }
    during
}

/// What a rollout cost.
#[derive(Debug)]
struct Budget {
    hosts: usize,
    pool_status: u64,
    domain_status: u64,
    domain_object: u64,
    host_status_total: u64,
    agent_reports: u64,
    controller_host_writes: u64,
    controller_host_writes_self_count: u64,
    /// Pool and domain status writes the controller's writer counted (every outcome).
    writer_pool_domain_status: u64,
    connects: u64,
    events: u64,
}

/// Puts one domain of a converged pool in maintenance and counts what it cost, until the rollout
/// is over and a further idle interval has passed (so trailing writes are counted too).
async fn rollout_budget(sim: &SimPool, metrics: SocketAddr) -> Budget {
    let n = sim.hosts.len();
    let target = &sim.domains[1];
    let uuid = &sim.uuids[target];
    let watch = ReportWatch::start(&sim.hosts).await;
    let connects_before = connects_ok(metrics).await;
    let self_count_before = controller_host_writes(metrics).await;
    let writer_before = writer_pool_domain_status(metrics).await;
    let before = Requests::scrape().await;

    merge_spec::<StorageDomain>(target, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::Maintenance).await;
    for h in &sim.hosts {
        eventually(&format!("{h} holds {uuid} attached"), WAIT, || async {
            (host_map(h).await.get(uuid.as_str()) == Some(&MapStatus::Attached)).then_some(())
        })
        .await;
        assert_eq!(
            support::cluster::host_phase(h).await,
            Some(HostPhase::Up),
            "{h} left Up during a healthy rollout"
        );
    }
    wait_pool_settled(&sim.pool, i32::try_from(n).expect("n")).await;
    // Anything still trailing the rollout is either counted below or fails this.
    assert_idle(&format!("after the rollout to {n} hosts")).await;

    let cost = Requests::scrape().await.since(&before);
    let agent_reports = watch.finish(&sim.hosts).await;
    let connects = connects_ok(metrics).await - connects_before;
    let self_count = controller_host_writes(metrics).await - self_count_before;
    let writer = writer_pool_domain_status(metrics).await - writer_before;
    eprintln!(
        "rollout to {n} hosts: writes at the API server:\n{}",
        cost.writes_table()
    );
    let host_status_total = cost.writes("hosts", "status");
    Budget {
        hosts: n,
        pool_status: cost.writes("storagepools", "status"),
        domain_status: cost.writes("storagedomains", "status"),
        domain_object: cost.writes("storagedomains", ""),
        host_status_total,
        agent_reports,
        // Every hosts/status write that did not change a report: the controller's writes, plus
        // any agent write that changed nothing (there should be none), so an upper bound.
        controller_host_writes: host_status_total.saturating_sub(agent_reports),
        controller_host_writes_self_count: self_count,
        writer_pool_domain_status: writer,
        connects,
        events: cost.writes_any("events"),
    }
}

/// Asserts the write budget on one rollout's cost: about one connect per host, pool and domain
/// status writes that do not grow with the number of hosts, and no Host status writes by the
/// controller.
fn assert_budget(b: &Budget) {
    let n = u64::try_from(b.hosts).expect("n");
    eprintln!("{b:#?}");
    assert!(
        b.connects >= n && b.connects <= 2 * n,
        "connect calls for a rollout to {n} hosts: {}",
        b.connects
    );
    assert!(
        b.pool_status <= 15,
        "StoragePool status writes: {} (O(1) expected)",
        b.pool_status
    );
    assert!(
        b.domain_status <= 15,
        "StorageDomain status writes: {} (O(1) expected)",
        b.domain_status
    );
    assert_eq!(
        b.domain_object, 1,
        "storagedomains writes other than status: only the test's own maintenance patch expected"
    );
    // Each host reports the new map; a host may report twice (map, then monitors) but no more.
    assert!(
        b.agent_reports >= n && b.agent_reports <= 2 * n,
        "agent report writes: {} for {n} hosts",
        b.agent_reports
    );
    assert!(
        b.host_status_total >= b.agent_reports,
        "the watch saw more report changes than the API server counted hosts/status writes: {b:?}"
    );
    assert_eq!(
        b.controller_host_writes, 0,
        "Host status writes that were not agent reports: {b:?}"
    );
    assert_eq!(
        b.controller_host_writes_self_count, 0,
        "the controller counted Host status writes of its own"
    );
    assert!(
        b.events <= 15,
        "events written during the rollout: {}",
        b.events
    );
    // Only the controller writes pool and domain statuses, all through its one writer: its count
    // is the API server's.
    assert_eq!(
        b.writer_pool_domain_status,
        b.pool_status + b.domain_status,
        "the writer's count of pool and domain status writes against the API server's: {b:?}"
    );
}

/// Both scenarios in one test: requests are counted for the whole control plane, so nothing else
/// may run beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_costs_nothing_and_rollout_writes_do_not_grow_with_hosts() {
    let metrics = controller();

    // N = 20: idle, then one rollout.
    let started = Instant::now();
    let small = sim_pool(PoolOptions {
        hosts: 20,
        domains: 3,
        ..PoolOptions::default()
    })
    .await;
    wait_converged(&small).await;
    eprintln!("20 hosts converged in {:?}", started.elapsed());
    assert_idle("20 hosts converged").await;
    let at_20 = rollout_budget(&small, metrics).await;
    assert_budget(&at_20);

    // N = 60 beside the idle 20-host pool (which must stay silent: it is in the counts too).
    let started = Instant::now();
    let large = sim_pool(PoolOptions {
        hosts: 60,
        domains: 3,
        ..PoolOptions::default()
    })
    .await;
    wait_converged(&large).await;
    eprintln!("60 hosts converged in {:?}", started.elapsed());
    assert_idle("80 hosts converged").await;
    let at_60 = rollout_budget(&large, metrics).await;
    assert_budget(&at_60);

    // Not growing with N: the planner writes a fresh progress snapshot at most once per tenth of
    // the pool (src/plan/mod.rs, "Write budget"), so the count depends on how many tenths the
    // reconciles happen to observe, not on N; two rollouts may differ by up to those ten
    // snapshots (measured: 3 to 7 pool writes), while O(N) writes would be ~40 more at 60 hosts.
    for (what, small, large) in [
        ("pool", at_20.pool_status, at_60.pool_status),
        ("domain", at_20.domain_status, at_60.domain_status),
    ] {
        assert!(
            large <= small + 10,
            "{what} status writes grow with N: {small} at 20 hosts, {large} at 60"
        );
    }
    eprintln!("write budget: N=20 {at_20:?}\nN=60 {at_60:?}");
}
