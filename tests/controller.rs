//! The controller against a real API server and simulated hosts over real sockets: what an
//! operator sees with kubectl while pools roll out, domains go to maintenance, move, detach, fail
//! and recover, and hosts restart or drop off the network.

mod support;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams};
use poolkeeper::api::{DomainPhase, Host, HostPhase, MapStatus, StorageDomain, StoragePool};
use serde_json::json;
use support::{
    client,
    cluster::{
        PoolOptions, SimPool, WAIT, condition, create_domain, domain, domain_phase, host, host_map,
        host_monitors, merge_spec, pool, set_host_pool, sim_pool, wait_domain_phase,
        wait_host_phase,
    },
    eventually, kubectl, unique, uuid,
};

/// Waits until every host of `hosts` reports `uuid` in its map as `entry` (`None`: absent).
async fn wait_entry(hosts: &[String], uuid: &str, entry: Option<MapStatus>, what: &str) {
    for h in hosts {
        eventually(&format!("host {h}: {what}"), WAIT, || async move {
            (host_map(h).await.get(uuid).copied() == entry).then_some(())
        })
        .await;
    }
}

/// Waits until every host of `hosts` reports holding exactly `expected`.
async fn wait_maps(hosts: &[String], expected: &std::collections::BTreeMap<String, MapStatus>) {
    for h in hosts {
        eventually(
            &format!("host {h} holds the pool map"),
            WAIT,
            || async move { (host_map(h).await == *expected).then_some(()) },
        )
        .await;
    }
}

/// Waits until every host of `sim` holds its map with every domain active.
async fn wait_hosts_hold_all_active(sim: &SimPool) {
    let expected: std::collections::BTreeMap<_, _> = sim
        .uuids
        .values()
        .map(|u| (u.clone(), MapStatus::Active))
        .collect();
    wait_maps(&sim.hosts, &expected).await;
}

/// Waits until every host of `sim` holds its map with every domain active, and every domain is
/// `Active`.
async fn wait_all_active(sim: &SimPool) {
    wait_hosts_hold_all_active(sim).await;
    for d in &sim.domains {
        wait_domain_phase(d, DomainPhase::Active).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hosts_get_the_map_and_kubectl_wait_returns_ready() {
    let sim = sim_pool(PoolOptions {
        hosts: 10,
        domains: 3,
        ..PoolOptions::default()
    })
    .await;
    // kubectl blocks; run it off the runtime that serves the simulated hosts.
    let target = format!("storagepool/{}", sim.pool);
    let out = tokio::task::spawn_blocking(move || {
        kubectl(&["wait", "--for=condition=Ready", &target, "--timeout=60s"])
    })
    .await
    .expect("kubectl wait");
    if !out.status.success() {
        let yaml = kubectl(&["get", "sp,sd,host", "-o", "wide"]);
        panic!(
            "kubectl wait: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&yaml.stdout)
        );
    }

    wait_all_active(&sim).await;
    let p = pool(&sim.pool).await;
    let status = p.status.expect("pool status");
    assert_eq!(status.counts.hosts, 10);
    assert_eq!(status.domain_map.len(), 3);
    assert_eq!(status.observed_generation, p.metadata.generation);
    let ids: Vec<i32> = status.host_ids.iter().map(|h| h.id).collect();
    assert_eq!(
        ids.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        (1..=10).collect(),
        "ids 1..=10, each once"
    );
    for h in &sim.hosts {
        wait_host_phase(h, HostPhase::Up).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_toggle_stops_and_restarts_monitoring() {
    let sim = sim_pool(PoolOptions::default()).await;
    let target = &sim.domains[1];
    let uuid = sim.uuids[target].clone();
    wait_domain_phase(target, DomainPhase::Active).await;

    merge_spec::<StorageDomain>(target, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::Maintenance).await;
    for h in &sim.hosts {
        assert!(
            !host_monitors(h).await.contains(&uuid),
            "{h} still monitors {uuid}"
        );
    }
    wait_entry(
        &sim.hosts,
        &uuid,
        Some(MapStatus::Attached),
        "holds the domain as attached",
    )
    .await;
    let d = domain(target).await;
    let status = d.status.expect("status");
    assert_eq!(
        condition(&status.conditions, "Ready")
            .map(|c| c.0)
            .as_deref(),
        Some("True"),
        "requested maintenance is Ready"
    );
    assert_eq!(
        condition(&status.conditions, "MovingToMaintenance")
            .map(|c| c.0)
            .as_deref(),
        Some("False")
    );

    merge_spec::<StorageDomain>(target, json!({"maintenance": false})).await;
    wait_domain_phase(target, DomainPhase::Active).await;
    for h in &sim.hosts {
        eventually("host monitors the domain again", WAIT, || async {
            host_monitors(h).await.contains(&uuid).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_at_most_max_concurrent_connects_calls_in_flight() {
    const HOSTS: usize = 8;
    const CAP: i32 = 2;
    const LATENCY: std::time::Duration = std::time::Duration::from_millis(400);
    let sim = sim_pool(PoolOptions {
        hosts: HOSTS,
        ..PoolOptions::default()
    })
    .await;
    let target = &sim.domains[1];
    wait_domain_phase(target, DomainPhase::Active).await;
    merge_spec::<StoragePool>(&sim.pool, json!({"sync": {"maxConcurrentConnects": CAP}})).await;
    eventually("the pool observes its new cap", WAIT, || async {
        let p = pool(&sim.pool).await;
        (p.status.and_then(|s| s.observed_generation) == p.metadata.generation).then_some(())
    })
    .await;
    // Every host takes 400 ms to answer: with two calls in flight at most, any three calls
    // handled one after the other span at least one call's time.
    for h in sim.agents.hosts() {
        h.set_latency(LATENCY);
    }
    let toggled = std::time::SystemTime::now();
    merge_spec::<StorageDomain>(target, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::Maintenance).await;

    let mut handled: Vec<std::time::SystemTime> = sim
        .agents
        .hosts()
        .iter()
        .flat_map(|h| h.calls().0)
        .filter(|c| c.connect && c.at > toggled)
        .map(|c| c.at)
        .collect();
    handled.sort();
    assert!(
        handled.len() >= HOSTS,
        "every host was told: {} connects",
        handled.len()
    );
    for w in handled.windows(3) {
        let span = w[2].duration_since(w[0]).unwrap_or_default();
        assert!(
            span >= LATENCY.mul_f32(0.9),
            "three connects handled within {span:?}: more than {CAP} were in flight"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_and_reattach() {
    let sim = sim_pool(PoolOptions::default()).await;
    let target = &sim.domains[1];
    let uuid = sim.uuids[target].clone();
    wait_domain_phase(target, DomainPhase::Active).await;

    merge_spec::<StorageDomain>(target, json!({"pool": null})).await;
    wait_domain_phase(target, DomainPhase::Unattached).await;
    wait_entry(&sim.hosts, &uuid, None, "map lacks the detached domain").await;
    let p = pool(&sim.pool).await.status.expect("status");
    assert!(!p.domain_map.contains_key(&uuid));

    merge_spec::<StorageDomain>(target, json!({"pool": sim.pool})).await;
    wait_domain_phase(target, DomainPhase::Active).await;
    wait_entry(
        &sim.hosts,
        &uuid,
        Some(MapStatus::Active),
        "map holds the domain again",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_an_active_domain_is_refused_and_the_original_keeps_its_place() {
    let a = sim_pool(PoolOptions::default()).await;
    let b = sim_pool(PoolOptions::default()).await;
    let original = &a.domains[1];
    let u = a.uuids[original].clone();
    wait_domain_phase(original, DomainPhase::Active).await;
    wait_entry(&a.hosts, &u, Some(MapStatus::Active), "holds the original").await;

    // A copy-paste in a GitOps repo: the same uuid, in the same pool and in another one.
    let same = unique("copy");
    let elsewhere = unique("copy");
    create_domain(&same, &u, Some(&a.pool)).await;
    create_domain(&elsewhere, &u, Some(&b.pool)).await;
    for copy in [&same, &elsewhere] {
        eventually("the copy is Stalled, naming the original", WAIT, || async {
            let d = domain(copy).await;
            let (status, reason, message) = condition(&d.status?.conditions, "Stalled")?;
            (status == "True"
                && reason == "DuplicateDomainUuid"
                && message.contains(original.as_str()))
            .then_some(())
        })
        .await;
    }
    eventually("pool A says why it is Stalled", WAIT, || async {
        let p = pool(&a.pool).await;
        let (status, reason, _) = condition(&p.status?.conditions, "Stalled")?;
        (status == "True" && reason == "DuplicateDomainUuid").then_some(())
    })
    .await;

    // The original keeps its place, its phase and its hosts.
    assert_eq!(domain_phase(original).await, Some(DomainPhase::Active));
    let map = pool(&a.pool).await.status.expect("status").domain_map;
    assert_eq!(map.get(&u), Some(&MapStatus::Active));
    for h in &a.hosts {
        assert_eq!(host_map(h).await.get(&u), Some(&MapStatus::Active), "{h}");
        assert!(
            host_monitors(h).await.contains(&u),
            "{h} stopped monitoring"
        );
    }
    for h in &b.hosts {
        assert_eq!(host_map(h).await.get(&u), None, "{h} was given the copy");
    }
    assert_eq!(domain_phase(&same).await, Some(DomainPhase::Unattached));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_moves_between_pools() {
    let a = sim_pool(PoolOptions::default()).await;
    let b = sim_pool(PoolOptions::default()).await;
    let moving = &a.domains[1];
    let uuid = a.uuids[moving].clone();
    wait_domain_phase(moving, DomainPhase::Active).await;

    merge_spec::<StorageDomain>(moving, json!({"pool": b.pool})).await;
    wait_entry(&a.hosts, &uuid, None, "pool A's hosts drop the domain").await;
    wait_entry(
        &b.hosts,
        &uuid,
        Some(MapStatus::Active),
        "pool B's hosts get the domain",
    )
    .await;
    wait_domain_phase(moving, DomainPhase::Active).await;
    assert_eq!(
        domain(moving).await.status.and_then(|s| s.pool).as_deref(),
        Some(b.pool.as_str())
    );
}

/// The notes of the events.k8s.io events about `object` (series folded: one note per Event).
async fn event_notes(object: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client().await, "default");
    let list = events.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_the_hosts_a_domain_waits_for() {
    let sim = sim_pool(PoolOptions::default()).await;
    let target = &sim.domains[1];
    wait_domain_phase(target, DomainPhase::Active).await;
    // One host is slow to answer (but within the connect timeout): the domain waits for it alone
    // after the others let go, with nothing failing (events of type Normal only).
    let slow = &sim.hosts[0];
    sim.agents
        .host(slow)
        .expect("host")
        .set_latency(std::time::Duration::from_millis(1200));

    merge_spec::<StorageDomain>(target, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::Maintenance).await;
    let notes = eventually(
        "events naming the hosts the domain waited for",
        WAIT,
        || async {
            let notes = event_notes(target).await;
            notes
                .iter()
                .any(|n| n.starts_with("still monitored by") && n.contains(slow.as_str()))
                .then_some(notes)
        },
    )
    .await;
    assert!(
        notes.iter().any(|n| n.contains("-> MovingToMaintenance")),
        "the phase change is an event of its own: {notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_host_holds_deactivation_until_put_in_maintenance() {
    let sim = sim_pool(PoolOptions::default()).await;
    let target = &sim.domains[1];
    wait_domain_phase(target, DomainPhase::Active).await;
    let cut = &sim.hosts[0];
    sim.agents.host(cut).expect("host").set_blackholed(true);

    merge_spec::<StorageDomain>(target, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::MovingToMaintenance).await;
    let (status, _reason, message) = eventually(
        "MovingToMaintenance names the blocking host",
        WAIT,
        || async {
            let d = domain(target).await;
            let c = condition(&d.status?.conditions, "MovingToMaintenance")?;
            c.2.contains(cut.as_str()).then_some(c)
        },
    )
    .await;
    assert_eq!(status, "True");
    assert!(message.contains(cut.as_str()), "{message}");
    // No timeout: it stays blocked while the host may still use the domain.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        domain_phase(target).await,
        Some(DomainPhase::MovingToMaintenance)
    );

    // An event about the domain names the blocking host, for `kubectl events`.
    let events: Api<Event> = Api::namespaced(client().await, "default");
    eventually("an event naming the blocking host", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(target.as_str())
                        && e.note.as_deref().is_some_and(|n| n.contains(cut.as_str()))
                })
                .then_some(())
        }
    })
    .await;

    merge_spec::<Host>(cut, json!({"maintenance": true})).await;
    wait_domain_phase(target, DomainPhase::Maintenance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_is_reconnected_without_help() {
    let sim = sim_pool(PoolOptions::default()).await;
    wait_hosts_hold_all_active(&sim).await;
    let h = &sim.hosts[1];
    let before = host(h)
        .await
        .status
        .and_then(|s| s.report)
        .map(|r| r.boot_id);
    sim.agents.host(h).expect("host").restart();
    eventually(
        "new bootId reported and the map pushed again",
        WAIT,
        || async {
            let report = host(h).await.status?.report?;
            (Some(&report.boot_id) != before.as_ref()
                && report.pool.map(|p| p.domain_map.len()) == Some(sim.uuids.len()))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_domain_makes_host_nonoperational_then_domain_inactive_then_recovers() {
    let sim = sim_pool(PoolOptions {
        hosts: 3,
        domains: 2,
        grace_seconds: 2,
        ..PoolOptions::default()
    })
    .await;
    let target = &sim.domains[1];
    let uuid = sim.uuids[target].clone();
    wait_domain_phase(target, DomainPhase::Active).await;
    let faults = sim.agents.faults().expect("simulator").clone();
    let first = sim.agents.host(&sim.hosts[0]).expect("host").index();

    faults.set(
        &uuid,
        poolkeeper::agent::sim::Fault::Unreadable,
        Some(&[first]),
    );
    wait_host_phase(&sim.hosts[0], HostPhase::NonOperational).await;
    let h = host(&sim.hosts[0]).await.status.expect("status");
    let (_, reason, _) = condition(&h.conditions, "Operational").expect("Operational condition");
    assert_eq!(reason, "StorageDomainUnreachable");
    assert_eq!(
        domain_phase(target).await,
        Some(DomainPhase::Active),
        "others still see it"
    );

    faults.set(&uuid, poolkeeper::agent::sim::Fault::Unreadable, None);
    wait_domain_phase(target, DomainPhase::Inactive).await;

    faults.clear(&uuid);
    wait_domain_phase(target, DomainPhase::Active).await;
    wait_host_phase(&sim.hosts[0], HostPhase::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_naming_a_missing_pool_says_so() {
    super_controller();
    let name = unique("orphan");
    create_domain(&name, &uuid(), Some("no-such-pool")).await;
    let (status, _reason, message) = eventually("PoolNotFound condition", WAIT, || async {
        let d = domain(&name).await;
        let c = condition(&d.status?.conditions, "Ready")?;
        (c.1 == "PoolNotFound").then_some(c)
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("no-such-pool"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_domain_is_held_until_hosts_let_go() {
    let sim = sim_pool(PoolOptions::default()).await;
    let target = sim.domains[1].clone();
    let uuid = sim.uuids[&target].clone();
    wait_domain_phase(&target, DomainPhase::Active).await;
    let api: Api<StorageDomain> = Api::all(client().await);
    api.delete(&target, &DeleteParams::default())
        .await
        .expect("delete");
    wait_entry(&sim.hosts, &uuid, None, "map lacks the deleted domain").await;
    eventually("domain object gone", WAIT, || {
        let api = api.clone();
        let target = target.clone();
        async move {
            api.get_opt(&target)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_leaving_the_pool_is_disconnected() {
    let sim = sim_pool(PoolOptions::default()).await;
    wait_hosts_hold_all_active(&sim).await;
    let leaving = &sim.hosts[2];
    set_host_pool(leaving, None).await;
    eventually("host disconnected", WAIT, || async {
        host(leaving)
            .await
            .status?
            .report?
            .pool
            .is_none()
            .then_some(())
    })
    .await;
    eventually("pool counts one host fewer", WAIT, || async {
        (pool(&sim.pool).await.status?.counts.hosts == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_hosts_under_connected_hosts_stalls_and_touches_no_host() {
    let sim = sim_pool(PoolOptions::default()).await;
    wait_hosts_hold_all_active(&sim).await;
    let reported_ids = || async {
        let mut ids = Vec::new();
        for h in &sim.hosts {
            ids.push(
                host(h)
                    .await
                    .status
                    .and_then(|s| s.report?.pool)
                    .map(|p| p.host_id),
            );
        }
        ids
    };
    let before = reported_ids().await;
    assert!(before.iter().all(Option::is_some), "{before:?}");

    merge_spec::<StoragePool>(&sim.pool, json!({"sync": {"maxHosts": 1}})).await;
    let message = eventually("pool Stalled for maxHosts", WAIT, || async {
        let status = pool(&sim.pool).await.status?;
        let (s, reason, message) = condition(&status.conditions, "Stalled")?;
        (s == "True" && reason == "MaxHostsTooLow").then_some(message)
    })
    .await;
    assert!(
        message.contains("raise spec.sync.maxHosts to at least 3"),
        "{message}"
    );
    assert_eq!(
        reported_ids().await,
        before,
        "no host was disconnected or renumbered"
    );

    merge_spec::<StoragePool>(&sim.pool, json!({"sync": {"maxHosts": 3}})).await;
    eventually("pool no longer Stalled", WAIT, || async {
        let status = pool(&sim.pool).await.status?;
        (condition(&status.conditions, "Stalled")?.0 == "False").then_some(())
    })
    .await;
    assert_eq!(reported_ids().await, before);
}

fn super_controller() {
    support::cluster::controller();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsensical_host_report_is_ignored_and_the_pool_still_converges() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams, PostParams};

    let sim = sim_pool(PoolOptions::default()).await;
    // A Host with a live Lease whose report makes no sense: a pool "uuid" that is not one and a
    // domain reported twice. The schema accepts it (types are right), the controller must not.
    let name = unique("garbage");
    let hosts: Api<Host> = Api::all(client().await);
    let h: Host = serde_json::from_value(json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host", "metadata": {"name": name},
        "spec": {"pool": sim.pool, "endpoint": "127.0.0.1:9"},
    }))
    .expect("host");
    hosts
        .create(&PostParams::default(), &h)
        .await
        .expect("create host");
    let leases: Api<Lease> = Api::namespaced(client().await, support::cluster::LEASE_NAMESPACE);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600, "renewTime": now},
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    let sd = sim.uuids.values().next().expect("a domain").clone();
    let report = json!({"status": {"report": {
        "agentVersion": "x", "bootId": "b",
        "pool": {"uuid": "not-a-uuid", "hostId": 1},
        "domains": [
            {"uuid": sd, "valid": true, "code": 0, "actual": true},
            {"uuid": sd, "valid": false, "code": 379, "actual": true}
        ],
    }}});
    hosts
        .patch_status(
            &name,
            &PatchParams::apply("garbage-writer").force(),
            &Patch::Apply(json!({
                "apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host", "status": report["status"],
            })),
        )
        .await
        .expect("status");

    let (status, reason, _) = eventually("InSync=Unknown with ReportUnparsable", WAIT, || async {
        let h = host(&name).await;
        let c = condition(&h.status?.conditions, "InSync")?;
        (c.1 == "ReportUnparsable").then_some(c)
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "ReportUnparsable")
    );
    // The garbage neither crashed the controller nor stopped the real hosts from converging.
    wait_all_active(&sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_waits_for_its_domains_to_leave() {
    use poolkeeper::api::StoragePool;

    let sim = sim_pool(PoolOptions::default()).await;
    for d in &sim.domains {
        wait_domain_phase(d, DomainPhase::Active).await;
    }
    let pools: Api<StoragePool> = Api::all(client().await);
    pools
        .delete(&sim.pool, &DeleteParams::default())
        .await
        .expect("delete pool");
    let (status, _, message) = eventually("Stalled names the attached domains", WAIT, || async {
        let p = pools.get_opt(&sim.pool).await.ok()??;
        let c = condition(&p.status?.conditions, "Stalled")?;
        (c.1 == "DomainsAttached").then_some(c)
    })
    .await;
    assert_eq!(status, "True");
    assert!(message.contains(sim.domains[0].as_str()), "{message}");

    for d in &sim.domains {
        merge_spec::<StorageDomain>(d, json!({"pool": null})).await;
    }
    eventually("pool deleted once its domains left", WAIT, || {
        let pools = pools.clone();
        let name = sim.pool.clone();
        async move { pools.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    for d in &sim.domains {
        wait_domain_phase(d, DomainPhase::Unattached).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deleted_and_created_again_under_its_name_starts_afresh() {
    use poolkeeper::api::StoragePool;

    // What a GitOps pipeline does when it replaces a pool: delete the pool and its domains, then
    // apply them again, same names, same domain uuids.
    let sim = sim_pool(PoolOptions::default()).await;
    for d in &sim.domains {
        wait_domain_phase(d, DomainPhase::Active).await;
    }
    let client = client().await;
    let pools: Api<StoragePool> = Api::all(client.clone());
    let domains: Api<StorageDomain> = Api::all(client);
    let old = pools.get(&sim.pool).await.expect("pool");
    let old_uuid = old.status.as_ref().and_then(|s| s.uuid.clone());
    assert!(old_uuid.is_some(), "the first pool has its uuid");
    for d in &sim.domains {
        domains
            .delete(d, &DeleteParams::default())
            .await
            .expect("delete domain");
    }
    pools
        .delete(&sim.pool, &DeleteParams::default())
        .await
        .expect("delete pool");
    eventually("the pool and its domains are gone", WAIT, || async {
        let pool_gone = pools.get_opt(&sim.pool).await.ok()?.is_none();
        let domains_gone = domains
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .all(|d| {
                !sim.domains
                    .contains(&d.metadata.name.clone().unwrap_or_default())
            });
        (pool_gone && domains_gone).then_some(())
    })
    .await;

    let spec = json!({"sync": {"problemGraceSeconds": 2, "connectTimeoutSeconds": 2}});
    let p: StoragePool =
        serde_json::from_value(support::cluster::obj("StoragePool", &sim.pool, spec))
            .expect("pool object");
    let created = pools
        .create(&kube::api::PostParams::default(), &p)
        .await
        .expect("create the pool again");
    for d in &sim.domains {
        create_domain(d, &sim.uuids[d], Some(&sim.pool)).await;
    }

    // The new pool is a pool of its own: its uuid is its own uid, not the old pool's, and its
    // hosts hold its map with every domain active.
    wait_all_active(&sim).await;
    let status = pool(&sim.pool).await.status.expect("status");
    assert_eq!(status.uuid, created.metadata.uid, "the new pool's own uuid");
    assert_ne!(status.uuid, old_uuid);
    for h in &sim.hosts {
        let report = host(h).await.status.and_then(|s| s.report).expect("report");
        assert_eq!(
            report.pool.map(|c| c.uuid),
            status.uuid,
            "{h} is connected to the new pool"
        );
    }
}
