//! The pool manager (VDSM's SPM) against the real control plane, the real controller and
//! simulated hosts over real sockets: one is chosen and started, shown with kubectl and in events,
//! and moved when its host is cut off, restarts, or goes to maintenance. Throughout, a sampler
//! reads every host's own role (what the agent holds in memory, not what the controller thinks)
//! and the test asserts that no two hosts were ever pool manager at once. When the master
//! changes, the manager switches it on storage before any host is told (the hosts' call logs).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use poolkeeper::agent::host::HostAgent;
use poolkeeper::agent::state::SpmRole;
use poolkeeper::api::{Host, MapStatus, PoolManagerStatus, StorageDomain};
use serde_json::json;
use support::cluster::{
    PoolOptions, SimPool, WAIT, condition, control, create_domain, host, merge_spec, pool, sim_pool,
};
use support::{client, eventually, kubectl_ok, unique, uuid};

/// The pool's recorded manager once its `PoolManager` condition is True.
async fn running_manager(pool_name: &str) -> PoolManagerStatus {
    eventually(
        &format!("pool {pool_name} has a running pool manager"),
        WAIT,
        || async move {
            let status = pool(pool_name).await.status?;
            let (s, ..) = condition(&status.conditions, "PoolManager")?;
            let m = status.pool_manager?;
            (s == "True" && m.lver > 0).then_some(m)
        },
    )
    .await
}

/// The hosts that hold the role now, by their own state.
fn holders(hosts: &[Arc<HostAgent>]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| matches!(h.spm_role(), SpmRole::Spm { .. }))
        .map(|h| h.name().to_owned())
        .collect()
}

/// Samples every host's own role until stopped; remembers the most holders seen at once.
struct Sampler {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(sim: &SimPool) -> Self {
        let hosts: Vec<Arc<HostAgent>> = sim.agents.hosts().to_vec();
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (most.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Acquire) {
                m.fetch_max(holders(&hosts).len(), Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { most, stop, task }
    }

    /// Stops sampling; the most pool managers seen at once.
    async fn most(self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("sampler");
        self.most.load(Ordering::Acquire)
    }
}

/// The verbs a host received, in order, with whether it accepted each.
fn verbs(sim: &SimPool, host: &str) -> Vec<(&'static str, bool)> {
    let (calls, _) = sim.agents.host(host).expect("host").calls();
    calls.iter().map(|c| (c.verb, c.ok)).collect()
}

/// The reasons of the events.k8s.io events about `object`.
async fn event_reasons(object: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client().await, "default");
    let list = events.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_gets_one_pool_manager_after_its_hosts_connect() {
    let sim = sim_pool(PoolOptions::default()).await;
    let sampler = Sampler::start(&sim);
    let m = running_manager(&sim.pool).await;
    assert!(sim.hosts.contains(&m.host), "{m:?}");
    assert_eq!((m.prev_id, m.prev_lver), (-1, -1));
    // The host holds the role, and says so in its report.
    assert_eq!(holders(sim.agents.hosts()), vec![m.host.clone()]);
    let report = host(&m.host)
        .await
        .status
        .and_then(|s| s.report)
        .and_then(|r| r.pool)
        .expect("connected");
    assert_eq!(report.spm_lver, Some(m.lver));
    assert_eq!(report.host_id, m.host_id);

    // kubectl shows it.
    let table = kubectl_ok(&["get", "sp", &sim.pool]);
    assert!(table.contains("MANAGER"), "{table}");
    assert!(table.contains(&m.host), "{table}");
    let reasons = eventually("pool manager events", WAIT, || async {
        let r = event_reasons(&sim.pool).await;
        (r.iter().any(|x| x == "PoolManagerChosen") && r.iter().any(|x| x == "PoolManagerStarted"))
            .then_some(r)
    })
    .await;
    assert!(!reasons.is_empty());

    // The verbs each host received: every host connected; the manager then took the role, once,
    // after its connect; no other host was asked.
    for h in &sim.hosts {
        let v = verbs(&sim, h);
        let first_connect = v
            .iter()
            .position(|c| *c == ("StoragePool.connect", true))
            .unwrap_or_else(|| panic!("{h} connected: {v:?}"));
        let starts: Vec<usize> = v
            .iter()
            .enumerate()
            .filter(|(_, c)| c.0 == "StoragePool.spmStart")
            .map(|(i, _)| i)
            .collect();
        if *h == m.host {
            assert_eq!(starts.len(), 1, "{h}: one spmStart: {v:?}");
            assert!(
                starts[0] > first_connect,
                "{h}: spmStart after connect: {v:?}"
            );
            assert!(v[starts[0]].1, "{h}: accepted");
        } else {
            assert!(starts.is_empty(), "{h} was never asked: {v:?}");
        }
        assert!(
            v.iter().all(|c| c.0 != "StoragePool.spmStop"),
            "{h}: no spmStop: {v:?}"
        );
    }
    assert_eq!(sampler.most().await, 1, "never two pool managers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_moves_off_a_cut_off_host_and_back_after_a_restart_never_two_at_once() {
    let sim = sim_pool(PoolOptions::default()).await;
    let sampler = Sampler::start(&sim);
    let first = running_manager(&sim.pool).await;

    // Cut off: the host renews nothing; it gives the role up at half its lease and another host
    // takes it once the lease expired.
    control(&sim, reqwest::Method::PUT, &first.host, "blackhole").await;
    let second = eventually("the role moved off the cut-off host", WAIT, || async {
        let m = running_manager(&sim.pool).await;
        (m.host != first.host).then_some(m)
    })
    .await;
    assert_eq!(
        (second.prev_id, second.prev_lver),
        (first.host_id, first.lver)
    );
    assert!(second.lver > first.lver, "the lease version grows");
    assert_eq!(holders(sim.agents.hosts()), vec![second.host.clone()]);
    control(&sim, reqwest::Method::DELETE, &first.host, "blackhole").await;

    // The manager's agent restarts: memory lost, its lease left on storage under its old boot
    // until it expires; then the controller starts it again on the same host (the recorded one).
    sim.agents.host(&second.host).expect("host").restart();
    let third = eventually("the restarted manager runs again", WAIT, || async {
        let m = running_manager(&sim.pool).await;
        (m.lver > second.lver).then_some(m)
    })
    .await;
    assert_eq!(third.host, second.host, "the recorded host keeps the role");
    assert_eq!(holders(sim.agents.hosts()), vec![third.host.clone()]);
    // A refused spmStart (lease still held by the old boot) may precede the accepted one.
    let v = verbs(&sim, &third.host);
    assert!(v.contains(&("StoragePool.spmStart", true)), "{v:?}");
    assert_eq!(sampler.most().await, 1, "never two pool managers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_put_in_maintenance_stops_the_role_before_it_is_disconnected() {
    let sim = sim_pool(PoolOptions::default()).await;
    let sampler = Sampler::start(&sim);
    let first = running_manager(&sim.pool).await;
    merge_spec::<Host>(&first.host, json!({"maintenance": true})).await;
    let second = eventually("the role moved to another host", WAIT, || async {
        let m = running_manager(&sim.pool).await;
        (m.host != first.host).then_some(m)
    })
    .await;
    assert_eq!(
        (second.prev_id, second.prev_lver),
        (first.host_id, first.lver)
    );
    eventually("the old manager is disconnected", WAIT, || async {
        host(&first.host)
            .await
            .status
            .and_then(|s| s.report)
            .is_some_and(|r| r.pool.is_none())
            .then_some(())
    })
    .await;
    // It was stopped first, then disconnected, and never refused a disconnect (656).
    let v = verbs(&sim, &first.host);
    let stop = v
        .iter()
        .position(|c| *c == ("StoragePool.spmStop", true))
        .unwrap_or_else(|| panic!("spmStop: {v:?}"));
    let disconnect = v
        .iter()
        .position(|c| *c == ("StoragePool.disconnect", true))
        .unwrap_or_else(|| panic!("disconnect: {v:?}"));
    assert!(stop < disconnect, "{v:?}");
    assert!(
        !v.contains(&("StoragePool.disconnect", false)),
        "no disconnect refused: {v:?}"
    );
    assert_eq!(sampler.most().await, 1, "never two pool managers");
}

/// Waits until every host of `sim` holds `sd` active in its own connection.
async fn every_host_monitors(sim: &SimPool, sd: &str) {
    eventually(&format!("every host monitors {sd}"), WAIT, || async {
        sim.agents
            .hosts()
            .iter()
            .all(|h| {
                h.connection()
                    .is_some_and(|c| c.domain_map.get(sd) == Some(&MapStatus::Active))
            })
            .then_some(())
    })
    .await;
}

/// Waits until every host's own connection names `master` at `version`.
async fn every_host_on(sim: &SimPool, master: &str, version: i64) {
    eventually(
        &format!("every host connected with master {master} v{version}"),
        WAIT,
        || async move {
            sim.agents
                .hosts()
                .iter()
                .all(|h| {
                    h.connection().is_some_and(|c| {
                        c.master_domain.as_deref() == Some(master) && c.master_version == version
                    })
                })
                .then_some(())
        },
    )
    .await;
}

/// Moves the master to `to` by putting `from` in maintenance (and `to` out of it); then
/// asserts the manager switched it on storage (`switchMaster`, accepted, keeping its role)
/// before any host received a connect naming it, and that no host refused a connect.
async fn master_moves(sim: &SimPool, from: &str, to: &str, version: i64) {
    let before = running_manager(&sim.pool).await;
    let new_master = sim.uuids[to].clone();
    merge_spec::<StorageDomain>(to, json!({"maintenance": false})).await;
    merge_spec::<StorageDomain>(from, json!({"maintenance": true})).await;
    every_host_on(sim, &new_master, version).await;
    let status = pool(&sim.pool).await.status.expect("status");
    assert_eq!(status.master_domain.as_deref(), Some(new_master.as_str()));
    assert_eq!(status.master_version, version, "masterVersion bumped");

    // The manager's switch, accepted, names the new master in what it holds after it.
    let (calls, _) = sim.agents.host(&before.host).expect("host").calls();
    let switch = calls
        .iter()
        .find(|c| {
            c.verb == "StoragePool.switchMaster"
                && c.held.as_ref().and_then(|h| h.master_domain.as_deref())
                    == Some(new_master.as_str())
        })
        .unwrap_or_else(|| panic!("switchMaster on {}: {calls:?}", before.host));
    assert!(switch.ok, "{calls:?}");
    assert_eq!(
        switch.held.as_ref().map(|h| h.master_version),
        Some(version)
    );
    // No host received a connect naming the new master before it, and none refused one.
    for h in &sim.hosts {
        let (calls, _) = sim.agents.host(h).expect("host").calls();
        for c in calls.iter().filter(|c| c.connect) {
            assert!(c.ok, "{h} refused a connect: {calls:?}");
            let names_new = c.held.as_ref().and_then(|x| x.master_domain.as_deref())
                == Some(new_master.as_str());
            if names_new && c.held.as_ref().is_some_and(|x| x.master_version == version) {
                assert!(
                    c.at >= switch.at,
                    "{h}: connect before the switch: {calls:?}"
                );
            }
        }
    }
    // The manager kept its role through the move (its lease moved with the master).
    let after = running_manager(&sim.pool).await;
    assert_eq!((after.host, after.lver), (before.host.clone(), before.lver));
    assert_eq!(holders(sim.agents.hosts()), vec![before.host]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_switched_through_the_manager_before_hosts_are_told_and_back_again() {
    let sim = sim_pool(PoolOptions::default()).await;
    let sampler = Sampler::start(&sim);
    let m = running_manager(&sim.pool).await;
    let first = pool(&sim.pool).await.status.expect("status");
    let (d0, d1) = (sim.domains[0].clone(), sim.domains[1].clone());
    assert_eq!(
        first.master_domain.as_deref(),
        Some(sim.uuids[&d0].as_str())
    );
    every_host_on(&sim, &sim.uuids[&d0], first.master_version).await;
    assert!(m.lver > 0);

    master_moves(&sim, &d0, &d1, first.master_version + 1).await;
    // And back to the domain that was master before (the simulator refused that with 324).
    master_moves(&sim, &d1, &d0, first.master_version + 2).await;
    assert_eq!(sampler.most().await, 1, "never two pool managers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_created_on_storage_before_hosts_connect_and_a_new_domain_attached_before_hosts_hear_of_it()
 {
    let sim = sim_pool(PoolOptions::default()).await;
    let m = running_manager(&sim.pool).await;
    // One host created the pool on storage (the simulated storage checks the master as VDSM
    // does: a connect to a pool that does not exist there is refused), before any connect.
    let created: Vec<(String, std::time::SystemTime)> = sim
        .hosts
        .iter()
        .flat_map(|h| {
            let (calls, _) = sim.agents.host(h).expect("host").calls();
            calls
                .iter()
                .filter(|c| c.verb == "StoragePool.create")
                .map(|c| {
                    assert!(c.ok, "{h}: create accepted: {calls:?}");
                    (h.clone(), c.at)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(created.len(), 1, "one create: {created:?}");
    let (creator, created_at) = &created[0];
    assert_eq!(creator, &m.host, "the manager-to-be created it");
    for h in &sim.hosts {
        let (calls, _) = sim.agents.host(h).expect("host").calls();
        for c in calls.iter().filter(|c| c.connect) {
            assert!(c.ok, "{h} refused a connect: {calls:?}");
            assert!(c.at >= *created_at, "{h}: connect before create: {calls:?}");
        }
    }
    let status = pool(&sim.pool).await.status.expect("status");
    let on_storage = status.storage.expect("the pool on storage is recorded");
    for d in &sim.domains {
        assert!(on_storage.attached.contains(&sim.uuids[d]), "{d} attached");
    }

    // A domain added later is attached by the manager before any host is told about it.
    let (name, sd) = (unique("sd"), uuid());
    create_domain(&name, &sd, Some(&sim.pool)).await;
    every_host_monitors(&sim, &sd).await;
    let (calls, _) = sim.agents.host(&m.host).expect("host").calls();
    let attach = calls
        .iter()
        .find(|c| c.verb == "StorageDomain.attach")
        .unwrap_or_else(|| panic!("attach on {}: {calls:?}", m.host));
    assert!(attach.ok, "{calls:?}");
    for h in &sim.hosts {
        let (calls, _) = sim.agents.host(h).expect("host").calls();
        for c in calls.iter().filter(|c| c.connect) {
            assert!(c.ok, "{h} refused a connect: {calls:?}");
            let names_it = c
                .held
                .as_ref()
                .is_some_and(|x| x.domain_map.contains_key(&sd));
            if names_it {
                assert!(c.at >= attach.at, "{h}: told before the attach: {calls:?}");
            }
        }
    }
    let status = pool(&sim.pool).await.status.expect("status");
    assert!(status.storage.is_some_and(|s| s.attached.contains(&sd)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_of_a_pool_in_maintenance_is_freed_on_storage_and_joins_another_pool() {
    let a = sim_pool(PoolOptions {
        domains: 1,
        ..PoolOptions::default()
    })
    .await;
    let b = sim_pool(PoolOptions {
        domains: 0,
        ..PoolOptions::default()
    })
    .await;
    let d = a.domains[0].clone();
    let sd = a.uuids[&d].clone();
    running_manager(&a.pool).await;
    // Pool A goes into maintenance: no master, no manager, its hosts disconnected.
    merge_spec::<StorageDomain>(&d, json!({"maintenance": true})).await;
    eventually("pool A has no master", WAIT, || async {
        let s = pool(&a.pool).await.status?;
        (s.master_domain.is_none() && s.pool_manager.is_none()).then_some(())
    })
    .await;
    // The domain moves to pool B. Its metadata still names A (a real VDSM would refuse it in
    // B with 380): a host of A detaches it from every pool first, and B is created on it.
    merge_spec::<StorageDomain>(&d, json!({"pool": b.pool, "maintenance": false})).await;
    every_host_monitors(&b, &sd).await;
    let forced: Vec<&String> = a
        .hosts
        .iter()
        .filter(|h| {
            let (calls, _) = a.agents.host(h).expect("host").calls();
            calls
                .iter()
                .any(|c| c.verb == "StorageDomain.detach" && c.ok)
        })
        .collect();
    assert_eq!(forced.len(), 1, "one host of A freed it: {forced:?}");
    let status = pool(&b.pool).await.status.expect("status");
    assert_eq!(status.master_domain.as_deref(), Some(sd.as_str()));
    assert!(
        status
            .storage
            .is_some_and(|s| s.created && s.attached.contains(&sd))
    );
    let status = pool(&a.pool).await.status.expect("status");
    assert!(status.storage.is_some_and(|s| !s.attached.contains(&sd)));
    // On A's storage (B's simulated hosts keep theirs apart), the domain names no pool any
    // more and is no master: what a create elsewhere needs.
    let prefix = a.hosts[0].rsplit_once('-').expect("prefix").0;
    let root = std::env::temp_dir().join(format!("poolkeeper-sim-{prefix}"));
    let md = poolkeeper::agent::domains::FileDomains::new(root)
        .read(&sd)
        .expect("metadata");
    assert!(md.pools().is_empty(), "{:?}", md.pools());
    assert!(!md.is_master());
}
