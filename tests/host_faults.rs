//! Host-side faults against the real control plane, the real controller and simulated hosts over
//! real sockets: a host the controller cannot call while its Lease stays fresh, a host that takes
//! calls but never reports, and agents restarting while a domain goes to maintenance.
//!
//! Every scenario checks that nothing was lost (the pool's map, master and host ids; each domain's
//! phase as the specs imply), that no host was ever told to drop a domain that was not leaving or
//! to leave the pool, and, where a host cannot converge, that the controller names it truthfully
//! and never assumes it gone. Faults are set through the simulator's HTTP control surface, as an
//! operator of the demo would.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::runtime::watcher;
use poolkeeper::api::{
    DomainPhase, Host, LagReason, LaggingHost, MapStatus, StorageDomain, StoragePool,
    StoragePoolStatus,
};
use serde_json::json;
use support::cluster::{
    PoolOptions, SimPool, WAIT, condition, control, create_domain, domain, domain_phase, host,
    host_map, merge_spec, pool, sim_pool, start_hosts, wait_domain_phase,
};
use support::{client, eventually, unique, uuid};

// ---------------------------------------------------------------------------------------------
// Faults, through the simulator's control surface.

/// Sets (`on`) or clears a host fault (`rpc-drop`, `report-freeze`).
async fn fault(sim: &SimPool, host: &str, fault: &str, on: bool) {
    let method = if on {
        reqwest::Method::PUT
    } else {
        reqwest::Method::DELETE
    };
    control(sim, method, host, fault).await;
}

// ---------------------------------------------------------------------------------------------
// What every scenario checks.

/// Every domain map the pool persisted and every host reported holding while it runs, and every
/// host that let go of the pool without restarting (a disconnect).
struct MapLog {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    /// (who, map) for each distinct map seen.
    maps: Vec<(String, BTreeMap<String, MapStatus>)>,
    /// Per host: the bootId and whether it was connected, at the last version seen.
    last: BTreeMap<String, (String, bool)>,
    /// Hosts seen leaving the pool under the same bootId.
    disconnected: BTreeSet<String>,
}

impl Seen {
    fn map(&mut self, who: &str, map: BTreeMap<String, MapStatus>) {
        if !self.maps.iter().any(|(w, m)| w == who && *m == map) {
            self.maps.push((who.to_owned(), map));
        }
    }
}

impl MapLog {
    /// Starts recording the maps of `sim`'s pool and hosts; returns once both watches listed.
    async fn start(sim: &SimPool) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pool_uuid = pool(&sim.pool)
            .await
            .status
            .and_then(|s| s.uuid)
            .expect("pool uuid");
        let hosts: BTreeSet<String> = sim.hosts.iter().cloned().collect();
        let host_task = watch(
            Api::<Host>::all(client().await),
            watcher::Config::default(),
            Arc::clone(&seen),
            move |seen, h: Host| {
                let name = h.metadata.name.clone().unwrap_or_default();
                if !hosts.contains(&name) {
                    return;
                }
                let Some(report) = h.status.and_then(|s| s.report) else {
                    return;
                };
                let conn = report.pool.filter(|p| p.uuid == pool_uuid);
                if let Some(c) = &conn {
                    seen.map(
                        &name,
                        c.domain_map.iter().map(|(u, s)| (u.clone(), *s)).collect(),
                    );
                }
                let now = (report.boot_id, conn.is_some());
                if let Some((boot, true)) = seen.last.get(&name)
                    && *boot == now.0
                    && !now.1
                {
                    seen.disconnected.insert(name.clone());
                }
                seen.last.insert(name, now);
            },
        )
        .await;
        let name = sim.pool.clone();
        let pool_task = watch(
            Api::<StoragePool>::all(client().await),
            watcher::Config::default().fields(&format!("metadata.name={}", sim.pool)),
            Arc::clone(&seen),
            move |seen, p: StoragePool| {
                if let Some(s) = p.status {
                    seen.map(
                        &format!("pool {name}"),
                        s.domain_map.iter().map(|(u, s)| (u.clone(), *s)).collect(),
                    );
                }
            },
        )
        .await;
        Self {
            seen,
            tasks: vec![host_task, pool_task],
        }
    }

    /// Asserts that every map seen kept each of `kept` (uuids) active and that no host was
    /// disconnected; stops recording.
    fn assert_kept(self, kept: &[&str]) {
        for t in &self.tasks {
            t.abort();
        }
        let seen = self.seen.lock().expect("map log");
        for (who, map) in &seen.maps {
            for uuid in kept {
                assert_eq!(
                    map.get(*uuid),
                    Some(&MapStatus::Active),
                    "{who} was told to drop {uuid}, which was not leaving: {map:?}"
                );
            }
        }
        assert!(
            seen.disconnected.is_empty(),
            "hosts told to leave the pool: {:?}",
            seen.disconnected
        );
    }
}

/// Watches `api` and hands every version of its objects to `record`; returns once listed.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    seen: Arc<Mutex<Seen>>,
    record: impl Fn(&mut Seen, K) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut listed = Some(listed_tx);
        let mut events = watcher(api, config).boxed();
        while let Ok(Some(event)) = events.try_next().await {
            match event {
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                    record(&mut seen.lock().expect("map log"), o);
                }
                watcher::Event::InitDone => {
                    if let Some(tx) = listed.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Init | watcher::Event::Delete(_) => {}
            }
        }
    });
    listed_rx.await.expect("watch listed");
    task
}

/// The pool's identity on storage: master, master version and host ids.
#[derive(Debug, PartialEq)]
struct Identity {
    master: Option<String>,
    master_version: i64,
    ids: BTreeMap<String, i32>,
}

fn identity(s: &StoragePoolStatus) -> Identity {
    Identity {
        master: s.master_domain.clone(),
        master_version: s.master_version,
        ids: s.host_ids.iter().map(|e| (e.host.clone(), e.id)).collect(),
    }
}

/// The map every host holds when `sim`'s domains are active except those in `attached`.
fn map_with(sim: &SimPool, attached: &[&str]) -> BTreeMap<String, MapStatus> {
    sim.uuids
        .values()
        .map(|u| {
            let status = if attached.contains(&u.as_str()) {
                MapStatus::Attached
            } else {
                MapStatus::Active
            };
            (u.clone(), status)
        })
        .collect()
}

/// Waits until `host` reports holding exactly `expected`.
async fn wait_map(host: &str, expected: &BTreeMap<String, MapStatus>) {
    eventually(&format!("{host} holds {expected:?}"), WAIT, || async move {
        (host_map(host).await == *expected).then_some(())
    })
    .await;
}

/// Waits until the pool is converged: every host holds `expected` and the pool is Ready.
async fn wait_converged(
    sim: &SimPool,
    expected: &BTreeMap<String, MapStatus>,
) -> StoragePoolStatus {
    for h in &sim.hosts {
        wait_map(h, expected).await;
    }
    let map: poolkeeper::api::DomainMap = expected.iter().map(|(u, s)| (u.clone(), *s)).collect();
    eventually("pool Ready", WAIT, || async {
        let s = pool(&sim.pool).await.status?;
        (condition(&s.conditions, "Ready")?.0 == "True" && s.domain_map == map).then_some(s)
    })
    .await
}

/// Waits until the domain's blocking hosts name `host` with `reason`; returns its conditions'
/// `MovingToMaintenance` message.
async fn wait_blocked_by(domain_name: &str, host: &str, reason: LagReason) -> String {
    let last = Mutex::new(None);
    let what = format!("{domain_name} blocked by {host} ({reason:?})");
    let found = within_wait(|| async {
        let s = domain(domain_name).await.status?;
        *last.lock().expect("last") = Some(s.clone());
        let blocked = s
            .blocking_hosts
            .iter()
            .any(|b| b.host == host && b.reason == reason);
        let (status, _, message) = condition(&s.conditions, "MovingToMaintenance")?;
        (blocked
            && s.phase == Some(DomainPhase::MovingToMaintenance)
            && status == "True"
            && message.contains(host))
        .then_some(message)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; last status: {:#?}",
            last.lock().expect("last")
        )
    })
}

/// Polls `check` for [`WAIT`] until it returns `Some`; `None` on timeout (the caller says why).
async fn within_wait<T, F, Fut>(mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .ok()
}

/// Waits until every domain of `sim` has the phase its spec implies: `Maintenance` for those in
/// `maintenance`, `Active` for the others.
async fn wait_phases(sim: &SimPool, maintenance: &[&String]) {
    for d in &sim.domains {
        let phase = if maintenance.contains(&d) {
            DomainPhase::Maintenance
        } else {
            DomainPhase::Active
        };
        wait_domain_phase(d, phase).await;
    }
}

/// The pool's lagging-host entry for `host`.
async fn lagging(pool_name: &str, host: &str) -> Option<LaggingHost> {
    pool(pool_name)
        .await
        .status?
        .lagging_hosts
        .into_iter()
        .find(|l| l.host == host)
}

/// Asserts for `hold` that the domain stays in `MovingToMaintenance` (no timeout assumes a host
/// gone).
async fn assert_stays_moving(domain_name: &str, hold: Duration) {
    let until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < until {
        assert_eq!(
            domain_phase(domain_name).await,
            Some(DomainPhase::MovingToMaintenance),
            "{domain_name} left MovingToMaintenance while a host may still use it"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// A host whose calls are dropped while its Lease and reports stay fresh: it is named as failing
/// (not as unresponsive), the domain it still monitors waits for it and names it, the other hosts
/// take the map, and once calls get through again everything converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_unreachable_with_a_fresh_lease_blocks_only_the_domain_it_still_monitors() {
    let sim = sim_pool(PoolOptions::default()).await;
    let (kept, leaving) = (&sim.domains[0], &sim.domains[1]);
    let (kept_uuid, leaving_uuid) = (sim.uuids[kept].as_str(), sim.uuids[leaving].as_str());
    let before = identity(&wait_converged(&sim, &map_with(&sim, &[])).await);
    let log = MapLog::start(&sim).await;
    let cut = &sim.hosts[0];

    fault(&sim, cut, "rpc-drop", true).await;
    merge_spec::<StorageDomain>(leaving, json!({"maintenance": true})).await;

    // The others are not held back.
    let target = map_with(&sim, &[leaving_uuid]);
    for h in &sim.hosts[1..] {
        wait_map(h, &target).await;
    }
    let message = wait_blocked_by(leaving, cut, LagReason::ConnectFailing).await;
    assert!(message.contains("connect failing"), "{message}");
    let lag = eventually("the pool names the failing host", WAIT, || async {
        lagging(&sim.pool, cut)
            .await
            .filter(|l| l.reason == LagReason::ConnectFailing)
    })
    .await;
    assert!(lag.message.contains("no answer"), "{lag:?}");
    let p = pool(&sim.pool).await.status.expect("status");
    assert_eq!(
        (p.counts.failing, p.counts.unresponsive),
        (1, 0),
        "{:?}",
        p.counts
    );
    let (ready, reason, _) = condition(&p.conditions, "Ready").expect("Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "SyncFailing"));
    // Its Lease is fresh: the controller does not call it unresponsive.
    let h = host(cut).await.status.expect("host status");
    assert_eq!(
        condition(&h.conditions, "Responsive")
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    // It still monitors the domain, and no deadline makes the controller assume otherwise.
    assert!(
        host_map(cut).await.get(leaving_uuid) == Some(&MapStatus::Active),
        "{cut} never got the call"
    );
    assert_stays_moving(leaving, Duration::from_secs(3)).await;

    fault(&sim, cut, "rpc-drop", false).await;
    wait_map(cut, &target).await;
    wait_domain_phase(leaving, DomainPhase::Maintenance).await;
    let after = wait_converged(&sim, &target).await;
    assert_eq!(identity(&after), before, "master or host ids changed");
    wait_phases(&sim, &[leaving]).await;
    log.assert_kept(&[kept_uuid]);
}

/// A host that takes calls but never reports: once the confirmation window passes it is named as
/// not confirming and the pool is not Ready; a domain it was told to monitor and is then asked to
/// leave waits for it, as the host may still use it; once it reports again, all converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_that_never_reports_is_named_and_holds_a_domain_it_was_told() {
    let mut sim = sim_pool(PoolOptions::default()).await;
    let before = identity(&wait_converged(&sim, &map_with(&sim, &[])).await);
    let kept: Vec<String> = sim.uuids.values().cloned().collect();
    let log = MapLog::start(&sim).await;
    let silent = sim.hosts[0].clone();

    fault(&sim, &silent, "report-freeze", true).await;
    // A new domain: every host is told to monitor it; the silent one takes the call and says
    // nothing.
    let added = unique("sd");
    let added_uuid = uuid();
    create_domain(&added, &added_uuid, Some(&sim.pool)).await;
    sim.uuids.insert(added.clone(), added_uuid.clone());
    sim.domains.push(added.clone());
    let all_active = map_with(&sim, &[]);
    for h in &sim.hosts[1..] {
        wait_map(h, &all_active).await;
    }
    eventually(
        "the silent host is named as not confirming",
        WAIT,
        || async {
            lagging(&sim.pool, &silent)
                .await
                .filter(|l| l.reason == LagReason::NotConfirming)
        },
    )
    .await;
    let p = pool(&sim.pool).await.status.expect("status");
    let (ready, _, message) = condition(&p.conditions, "Ready").expect("Ready");
    assert_eq!(ready, "False", "{message}");
    assert!(message.contains(silent.as_str()), "{message}");
    assert!(
        sim.agents
            .host(&silent)
            .expect("host")
            .report()
            .domains
            .iter()
            .any(|d| d.uuid == added_uuid),
        "the silent host does monitor the new domain"
    );

    // The new domain goes to maintenance again: the silent host may still monitor it.
    merge_spec::<StorageDomain>(&added, json!({"maintenance": true})).await;
    let leaving = map_with(&sim, &[&added_uuid]);
    for h in &sim.hosts[1..] {
        wait_map(h, &leaving).await;
    }
    wait_blocked_by(&added, &silent, LagReason::NotConfirming).await;
    assert_stays_moving(&added, Duration::from_secs(3)).await;

    fault(&sim, &silent, "report-freeze", false).await;
    wait_domain_phase(&added, DomainPhase::Maintenance).await;
    let after = wait_converged(&sim, &leaving).await;
    assert_eq!(identity(&after), before, "master or host ids changed");
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    wait_phases(&sim, &[&added]).await;
    log.assert_kept(&kept);
}

/// A host restarts (memory lost, new bootId) while a domain waits for it on its way to
/// maintenance: it is connected again with the current map, which no longer has the domain
/// active, under the same host id, and the deactivation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_restarted_during_a_deactivation_gets_the_current_map() {
    let sim = sim_pool(PoolOptions::default()).await;
    let (kept, leaving) = (&sim.domains[0], &sim.domains[1]);
    let (kept_uuid, leaving_uuid) = (sim.uuids[kept].as_str(), sim.uuids[leaving].as_str());
    let before = identity(&wait_converged(&sim, &map_with(&sim, &[])).await);
    let log = MapLog::start(&sim).await;
    let restarted = &sim.hosts[0];

    // The deactivation waits for the host (its calls are dropped)...
    fault(&sim, restarted, "rpc-drop", true).await;
    merge_spec::<StorageDomain>(leaving, json!({"maintenance": true})).await;
    wait_blocked_by(leaving, restarted, LagReason::ConnectFailing).await;
    // ...when it restarts, and then answers again.
    let boot = host(restarted)
        .await
        .status
        .and_then(|s| s.report)
        .map(|r| r.boot_id);
    control(&sim, reqwest::Method::POST, restarted, "restart").await;
    fault(&sim, restarted, "rpc-drop", false).await;

    let target = map_with(&sim, &[leaving_uuid]);
    wait_map(restarted, &target).await;
    let report = host(restarted)
        .await
        .status
        .and_then(|s| s.report)
        .expect("report");
    assert_ne!(Some(report.boot_id), boot, "the host did not restart");
    assert!(
        !report.domains.iter().any(|d| d.uuid == leaving_uuid),
        "the restarted host monitors the leaving domain again"
    );
    wait_domain_phase(leaving, DomainPhase::Maintenance).await;
    let after = wait_converged(&sim, &target).await;
    assert_eq!(identity(&after), before, "master or host ids changed");
    wait_phases(&sim, &[leaving]).await;
    log.assert_kept(&[kept_uuid]);
}

/// The whole agent process (every host of the pool) stops while a domain goes to maintenance and
/// starts again at another address: the domain waits for the hosts that last reported it, then
/// every host is connected again with the current map under its own host id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_process_restarted_during_a_deactivation_reconnects_every_host() {
    let mut sim = sim_pool(PoolOptions::default()).await;
    let (kept, leaving) = (sim.domains[0].clone(), sim.domains[1].clone());
    let (kept_uuid, leaving_uuid) = (sim.uuids[&kept].clone(), sim.uuids[&leaving].clone());
    let before = identity(&wait_converged(&sim, &map_with(&sim, &[])).await);
    let log = MapLog::start(&sim).await;
    let slow = sim.hosts[0].clone();

    fault(&sim, &slow, "rpc-drop", true).await;
    merge_spec::<StorageDomain>(&leaving, json!({"maintenance": true})).await;
    wait_blocked_by(&leaving, &slow, LagReason::ConnectFailing).await;

    // The process dies (every host's memory with it) and comes back with the same host names.
    let prefix = slow
        .rsplit_once('-')
        .map(|(p, _)| p.to_owned())
        .expect("prefix");
    let old = sim.agents;
    old.shutdown().await;
    // Still blocked: the last reports say the host monitors it.
    assert_eq!(
        domain_phase(&leaving).await,
        Some(DomainPhase::MovingToMaintenance)
    );
    sim.agents = start_hosts(&prefix, sim.hosts.len()).await;

    let target = map_with(&sim, &[&leaving_uuid]);
    wait_domain_phase(&leaving, DomainPhase::Maintenance).await;
    let after = wait_converged(&sim, &target).await;
    assert_eq!(identity(&after), before, "master or host ids changed");
    for (i, h) in sim.hosts.iter().enumerate() {
        let endpoint = host(h).await.status.and_then(|s| s.endpoint);
        assert_eq!(
            endpoint.as_deref(),
            Some(sim.agents.hosts()[i].endpoint()),
            "{h} registered its new address"
        );
    }
    wait_phases(&sim, &[&leaving]).await;
    log.assert_kept(&[&kept_uuid]);
}
