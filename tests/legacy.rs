//! Pools of compatibility 3.4 and lower (VDSM's disk backend) against the real control plane,
//! the real controller and simulated hosts over real sockets, whose storage keeps the map on the
//! master domain as VDSM lays it out: hosts connect without `domainDict` and read the map from
//! the master; every membership change is written there by the pool manager first
//! (`StorageDomain.activate`/`deactivate`), and only then are the other hosts told to
//! `StoragePool.refresh`. The verb sequence each host received is asserted from the hosts' own
//! call logs, and so is what each host holds (by its own state, not the controller's view).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use poolkeeper::agent::host::{HostAgent, ReceivedCall};
use poolkeeper::agent::state::SpmRole;
use poolkeeper::api::{DomainPhase, MapStatus, PoolBackend, StorageDomain, StoragePool};
use serde_json::json;
use support::cluster::{
    PoolOptions, SimPool, WAIT, condition, control, domain_phase, merge_spec, pool, sim_pool,
    wait_domain_phase,
};
use support::eventually;

const ACTIVATE: &str = "StorageDomain.activate";
const DEACTIVATE: &str = "StorageDomain.deactivate";
const REFRESH: &str = "StoragePool.refresh";
const CONNECT: &str = "StoragePool.connect";

fn legacy(hosts: usize, domains: usize) -> PoolOptions {
    PoolOptions {
        hosts,
        domains,
        compatibility: Some("3.4"),
        ..PoolOptions::default()
    }
}

/// Waits until the pool is Ready because every host holds the map (not merely "no host yet").
async fn ready(pool_name: &str) {
    eventually(&format!("pool {pool_name} Ready"), WAIT, || async move {
        let status = pool(pool_name).await.status?;
        let (s, reason, _) = condition(&status.conditions, "Ready")?;
        (s == "True" && reason == "InSync").then_some(())
    })
    .await;
}

/// The pool manager's host name, once one runs.
async fn manager(pool_name: &str) -> String {
    eventually(&format!("pool {pool_name} manager"), WAIT, || async move {
        let m = pool(pool_name).await.status?.pool_manager?;
        (m.lver > 0).then_some(m.host)
    })
    .await
}

fn calls(sim: &SimPool, host: &str) -> Vec<ReceivedCall> {
    sim.agents.host(host).expect("host").calls().0
}

/// Every host's own connection satisfies `check`.
async fn every_host(sim: &SimPool, what: &str, check: impl Fn(&HostAgent) -> bool) {
    eventually(what, WAIT, || async {
        sim.agents.hosts().iter().all(|h| check(h)).then_some(())
    })
    .await;
}

fn holds(h: &HostAgent, sd: &str, status: MapStatus) -> bool {
    h.connection()
        .is_some_and(|c| c.domain_map.get(sd) == Some(&status))
}

/// No host refused a connect or a refresh (each would be a call VDSM refuses: 304, 324...).
fn none_refused(sim: &SimPool) {
    for h in &sim.hosts {
        let log = calls(sim, h);
        for c in log
            .iter()
            .filter(|c| c.verb == CONNECT || c.verb == REFRESH)
        {
            assert!(c.ok, "{h} refused {}: {log:?}", c.verb);
        }
    }
}

/// When `host` accepted `verb` with the connection it then held satisfying `held`.
fn accepted_at(
    sim: &SimPool,
    host: &str,
    verb: &str,
    held: impl Fn(&poolkeeper::api::PoolConnection) -> bool,
) -> Option<SystemTime> {
    calls(sim, host)
        .iter()
        .find(|c| c.verb == verb && c.ok && c.held.as_ref().is_some_and(&held))
        .map(|c| c.at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_pool_is_activated_by_its_manager_on_the_master_and_every_host_reads_it_there() {
    let sim = sim_pool(legacy(3, 3)).await;
    let m = manager(&sim.pool).await;
    ready(&sim.pool).await;
    let uuids: Vec<&String> = sim.domains.iter().map(|d| &sim.uuids[d]).collect();

    // Every host holds the whole map, read from the master (the disk backend).
    every_host(&sim, "every host holds the map from the master", |h| {
        h.connection().is_some_and(|c| {
            c.backend == Some(PoolBackend::Disk)
                && uuids
                    .iter()
                    .all(|u| c.domain_map.get(*u) == Some(&MapStatus::Active))
        })
    })
    .await;
    // No connect ever carried a map: each left its host on the disk backend.
    for h in &sim.hosts {
        for c in calls(&sim, h).iter().filter(|c| c.verb == CONNECT && c.ok) {
            assert_eq!(
                c.held.as_ref().and_then(|p| p.backend),
                Some(PoolBackend::Disk),
                "{h}: {c:?}"
            );
        }
    }
    // `create` made the master active and attached the others; the manager activated those
    // two on the master, and no other host was asked to.
    for sd in &uuids[1..] {
        assert!(
            accepted_at(&sim, &m, ACTIVATE, |p| p.domain_map.get(*sd)
                == Some(&MapStatus::Active))
            .is_some(),
            "{m} activated {sd}: {:?}",
            calls(&sim, &m)
        );
    }
    for h in sim.hosts.iter().filter(|h| **h != m) {
        assert!(
            !calls(&sim, h).iter().any(|c| c.verb == ACTIVATE),
            "{h} is not the manager"
        );
    }
    none_refused(&sim);
    let status = pool(&sim.pool).await.status.expect("status");
    assert_eq!(status.master_domain.as_deref(), Some(uuids[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_is_written_on_the_master_then_refreshed_and_waits_for_a_cut_off_host() {
    let sim = sim_pool(legacy(3, 3)).await;
    let m = manager(&sim.pool).await;
    ready(&sim.pool).await;
    let d2 = sim.domains[2].clone();
    let sd = sim.uuids[&d2].clone();

    let cut = sim
        .hosts
        .iter()
        .find(|h| **h != m)
        .expect("another host")
        .clone();
    control(&sim, reqwest::Method::PUT, &cut, "blackhole").await;
    let edited = SystemTime::now();
    merge_spec::<StorageDomain>(&d2, json!({"maintenance": true})).await;

    // The manager deactivates it on the master; the responsive hosts refresh and let go.
    let live: Vec<&String> = sim.hosts.iter().filter(|h| **h != cut).collect();
    every_host(&sim, "the responsive hosts hold d2 attached", |h| {
        !live.contains(&&h.name().to_owned()) || holds(h, &sd, MapStatus::Attached)
    })
    .await;
    let deactivated = accepted_at(&sim, &m, DEACTIVATE, |p| {
        p.domain_map.get(&sd) == Some(&MapStatus::Attached)
    })
    .unwrap_or_else(|| panic!("{m} deactivated {sd}: {:?}", calls(&sim, &m)));
    for h in live.iter().filter(|h| ***h != m) {
        accepted_at(&sim, h, REFRESH, |p| {
            p.domain_map.get(&sd) == Some(&MapStatus::Attached)
        })
        .unwrap_or_else(|| panic!("{h} refreshed: {:?}", calls(&sim, h)));
        // Nothing reached it between the edit and the manager's write.
        let log = calls(&sim, h);
        assert!(
            !log.iter().any(|c| (c.verb == REFRESH || c.verb == CONNECT)
                && c.at >= edited
                && c.at < deactivated),
            "{h} told before the manager wrote: {log:?}"
        );
        assert!(
            !calls(&sim, h).iter().any(|c| c.verb == DEACTIVATE),
            "{h} is not the manager"
        );
    }
    // The cut-off host still holds the pool (and, for all anyone knows, the domain): the
    // domain stays MovingToMaintenance.
    wait_domain_phase(&d2, DomainPhase::MovingToMaintenance).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        domain_phase(&d2).await,
        Some(DomainPhase::MovingToMaintenance)
    );
    assert!(holds(
        sim.agents.host(&cut).expect("host"),
        &sd,
        MapStatus::Active
    ));

    // Back, it refreshes too; the domain reaches Maintenance.
    control(&sim, reqwest::Method::DELETE, &cut, "blackhole").await;
    wait_domain_phase(&d2, DomainPhase::Maintenance).await;
    assert!(holds(
        sim.agents.host(&cut).expect("host"),
        &sd,
        MapStatus::Attached
    ));

    // Out of the pool: the manager detaches it on the master, then every host refreshes it away.
    merge_spec::<StorageDomain>(&d2, json!({"pool": null})).await;
    wait_domain_phase(&d2, DomainPhase::Unattached).await;
    every_host(&sim, "no host holds d2", |h| {
        h.connection()
            .is_some_and(|c| !c.domain_map.contains_key(&sd))
    })
    .await;
    assert!(
        calls(&sim, &m)
            .iter()
            .any(|c| c.verb == "StorageDomain.detach" && c.ok),
        "{m} detached it: {:?}",
        calls(&sim, &m)
    );
    none_refused(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_moves_with_its_deactivation_and_the_pool_upgrades_live_to_3_5() {
    let sim = sim_pool(legacy(3, 2)).await;
    let m = manager(&sim.pool).await;
    ready(&sim.pool).await;
    let (d0, d1) = (sim.domains[0].clone(), sim.domains[1].clone());
    let (old, new) = (sim.uuids[&d0].clone(), sim.uuids[&d1].clone());
    let before = pool(&sim.pool).await.status.expect("status");
    assert_eq!(before.master_domain.as_deref(), Some(old.as_str()));

    // The master's deactivation names its successor: the role moves first (one call).
    merge_spec::<StorageDomain>(&d0, json!({"maintenance": true})).await;
    let version = before.master_version + 1;
    every_host(&sim, "every host on the new master", |h| {
        h.connection().is_some_and(|c| {
            c.master_domain.as_deref() == Some(new.as_str())
                && c.master_version == version
                && c.domain_map.get(&old) == Some(&MapStatus::Attached)
        })
    })
    .await;
    // On whichever host held the pool manager's role then (the first choice may have moved on).
    let moved = sim
        .hosts
        .iter()
        .flat_map(|h| calls(&sim, h))
        .find(|c| {
            c.verb == DEACTIVATE
                && c.held.as_ref().and_then(|p| p.master_domain.as_deref()) == Some(new.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "no host deactivated the master; {m} was manager first: {:?}",
                calls(&sim, &m)
            )
        });
    assert!(moved.ok);
    wait_domain_phase(&d0, DomainPhase::Maintenance).await;
    none_refused(&sim);

    // Raised to 3.5: each host is connected again, now with the map, and none ever stops
    // monitoring the active domain on the way (sampled from the hosts' own reports).
    let dropped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let hosts: Vec<Arc<HostAgent>> = sim.agents.hosts().to_vec();
        let (dropped, stop, new) = (dropped.clone(), stop.clone(), new.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let monitors =
                    |h: &Arc<HostAgent>| h.report().domains.iter().any(|d| d.uuid == new);
                if hosts
                    .iter()
                    .any(|h| !monitors(h) || !holds(h, &new, MapStatus::Active))
                {
                    dropped.store(true, Ordering::Release);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    merge_spec::<StoragePool>(&sim.pool, json!({"compatibilityVersion": "3.5"})).await;
    every_host(&sim, "every host on the memory backend", |h| {
        h.connection()
            .is_some_and(|c| c.backend == Some(PoolBackend::Memory))
    })
    .await;
    ready(&sim.pool).await;
    stop.store(true, Ordering::Release);
    sampler.await.expect("sampler");
    assert!(
        !dropped.load(Ordering::Acquire),
        "a host let go of the master"
    );
    none_refused(&sim);
}

/// Makes `sd` unreadable for every host and every verb, as a storage outage would: its
/// `dom_md` becomes a plain file (reads and leases fail with an I/O error, 2001).
fn lose_domain(sim: &SimPool, sd: &str) {
    let prefix = sim.hosts[0]
        .rsplit_once('-')
        .map(|(p, _)| p)
        .expect("host prefix");
    let dom_md = std::env::temp_dir()
        .join(format!("poolkeeper-sim-{prefix}"))
        .join("sim")
        .join(sd)
        .join("dom_md");
    std::fs::remove_dir_all(&dom_md).expect("remove dom_md");
    std::fs::write(&dom_md, b"lost").expect("a file in its place");
}

const RECONSTRUCT: &str = "StoragePool.reconstructMaster";
const DISCONNECT: &str = "StoragePool.disconnect";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_every_host_loses_is_reconstructed_on_a_disconnected_host_and_the_rest_follow() {
    let sim = sim_pool(legacy(3, 2)).await;
    manager(&sim.pool).await;
    ready(&sim.pool).await;
    let before = pool(&sim.pool).await.status.expect("status");
    let (old, new) = (
        sim.uuids[&sim.domains[0]].clone(),
        sim.uuids[&sim.domains[1]].clone(),
    );
    assert_eq!(before.master_domain.as_deref(), Some(old.as_str()));

    lose_domain(&sim, &old);
    let version = before.master_version + 1;
    every_host(&sim, "every host on the rebuilt master", |h| {
        h.connection().is_some_and(|c| {
            c.master_domain.as_deref() == Some(new.as_str())
                && c.master_version == version
                && c.backend == Some(PoolBackend::Disk)
        })
    })
    .await;

    // One host rebuilt it, disconnected first, then connected to it; no host was told the new
    // master before it existed on storage.
    let rebuilt: Vec<(String, SystemTime)> = sim
        .hosts
        .iter()
        .filter_map(|h| {
            let log = calls(&sim, h);
            let c = log.iter().find(|c| c.verb == RECONSTRUCT && c.ok)?;
            Some((h.clone(), c.at))
        })
        .collect();
    assert_eq!(rebuilt.len(), 1, "one reconstructMaster: {rebuilt:?}");
    let (r, at) = &rebuilt[0];
    let log = calls(&sim, r);
    let i = log
        .iter()
        .position(|c| c.verb == RECONSTRUCT && c.ok)
        .expect("reconstructMaster");
    assert!(
        log[..i]
            .iter()
            .any(|c| c.verb == DISCONNECT && c.ok && c.held.is_none()),
        "{r} disconnected first: {log:?}"
    );
    assert!(log[i].held.is_none(), "{r} ran it disconnected");
    for h in &sim.hosts {
        for c in calls(&sim, h).iter().filter(|c| c.ok) {
            let names_new = c
                .held
                .as_ref()
                .is_some_and(|p| p.master_domain.as_deref() == Some(new.as_str()));
            assert!(
                !names_new || c.at >= *at,
                "{h} on {new} before it was rebuilt: {c:?}"
            );
        }
    }
    // The pool has a manager again, on the new master (by its own state).
    let m = eventually("a pool manager again", WAIT, || async {
        let m = pool(&sim.pool).await.status?.pool_manager?;
        (m.lver > 0).then_some(m.host)
    })
    .await;
    let agent = sim.agents.host(&m).expect("host");
    let held = agent.connection().expect("connected");
    assert_eq!(held.master_domain.as_deref(), Some(new.as_str()));
    assert!(
        matches!(agent.spm_role(), SpmRole::Spm { .. }),
        "{m} holds the role"
    );
    let status = pool(&sim.pool).await.status.expect("status");
    assert_eq!(status.master_domain.as_deref(), Some(new.as_str()));
    none_refused(&sim);
}
