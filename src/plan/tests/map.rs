//! The desired map: built from the domains' specs (maintenance domains `attached`, Inactive ones
//! still `active`) and persisted in the pool status before any host is told; a steady pool plans
//! and writes nothing.

use super::*;

#[test]
fn a_persisted_new_map_never_says_ready() {
    // The status that persists a map is the pool's word until the report after the calls: it
    // must not carry over a Ready=True from before (here: no domains yet, so Ready said so).
    let mut o = world(3, 0, t0());
    let (_, before) = step(&mut o, t0());
    assert_eq!(cond(&before.pool.conditions, types::READY).status, "True");
    for i in 0..2 {
        let d = crate::plan::fixtures::domain(&format!("d{i:03}"), Some(POOL));
        add_attached(&mut o, d);
    }
    let p = plan(&o, later(t0(), 1));
    let persisted = p.persist_first.as_ref().expect("persist first");
    let ready = cond(&persisted.conditions, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::ROLLING_OUT)
    );
    assert_eq!(
        cond(&persisted.conditions, types::RECONCILING).status,
        "True"
    );
}

#[test]
fn new_pool_persists_map_master_and_ids_before_telling_hosts() {
    let o = world(2, 2, t0());
    let p = plan(&o, t0());
    let persisted = p.persist_first.as_ref().expect("persist first");
    assert_eq!(persisted.map_version, 1);
    assert_eq!(persisted.master_version, 1);
    assert_eq!(
        persisted.master_domain.as_deref(),
        Some(uuid_of("d000").as_str())
    );
    assert_eq!(persisted.uuid.as_deref(), Some(POOL_UUID));
    assert_eq!(
        persisted
            .host_ids
            .iter()
            .map(|e| (e.host.as_str(), e.id))
            .collect::<Vec<_>>(),
        vec![("h0000", 1), ("h0001", 2)]
    );
    let rec = cond(&persisted.conditions, types::RECONCILING);
    assert_eq!(
        (rec.status.as_str(), rec.last_transition_time.0),
        ("True", t0())
    );
    let map: DomainMap = [
        (uuid_of("d000"), MapStatus::Active),
        (uuid_of("d001"), MapStatus::Active),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        p.calls[0],
        HostCall::Connect {
            host: "h0000".into(),
            endpoint: "h0000:54321".into(),
            params: PoolConnection {
                uuid: POOL_UUID.into(),
                host_id: 1,
                master_domain: Some(uuid_of("d000")),
                master_version: 1,
                domain_map: map,
                spm_lver: None,
                backend: None,
            },
        }
    );
    assert_eq!(connects(&p), vec!["h0000", "h0001"]);
}

#[test]
fn maintenance_domain_is_attached_in_map_and_others_active() {
    let mut o = world(1, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.domain_map[&uuid_of("d000")], MapStatus::Active);
    assert_eq!(p.desired.domain_map[&uuid_of("d001")], MapStatus::Attached);
}

#[test]
fn inactive_domain_stays_active_in_map() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").status.phase = Some(DomainPhase::Inactive);
    let p = plan(&o, t0());
    assert_eq!(p.desired.domain_map[&uuid_of("d001")], MapStatus::Active);
    assert!(p.persist_first.is_none());
}

#[test]
fn steady_pool_plans_nothing_and_writes_nothing() {
    let o = steady(5, 3, t0());
    let now = later(t0(), 10);
    let p = plan(&o, now);
    assert!(p.calls.is_empty() && p.persist_first.is_none());
    assert!(p.guards.is_empty() && p.finalizers.is_empty());
    let r = report(&o, &p, &[], now);
    assert!(!needs_write(Some(&o.pool.status), &r.pool));
    for (n, s) in &r.domains {
        assert!(!needs_write(Some(&o.domains[n].status), s), "domain {n}");
    }
    for (n, s) in &r.hosts {
        assert!(!needs_write(Some(&*o.hosts[n].controller), s), "host {n}");
    }
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert!(is_true(&r.pool.conditions, types::READY));
    assert_eq!(r.pool.counts.in_sync, 5);
}

#[test]
fn every_condition_carries_observed_generation() {
    let mut o = steady(2, 2, t0());
    o.pool.generation = Some(7);
    o.domains.get_mut("d000").expect("d").generation = Some(3);
    o.hosts.get_mut("h0000").expect("h").generation = Some(4);
    let p = plan(&o, t0());
    let r = report(&o, &p, &[], t0());
    assert_eq!(r.pool.observed_generation, Some(7));
    assert!(
        r.pool
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
    let d = &r.domains["d000"];
    assert_eq!(d.observed_generation, Some(3));
    assert!(
        d.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    let h = &r.hosts["h0000"];
    assert_eq!(h.observed_generation, Some(4));
    assert!(
        h.conditions
            .iter()
            .all(|c| c.observed_generation == Some(4))
    );
    assert_eq!(h.conditions.len(), 4);
    assert_eq!(d.conditions.len(), 5);
}

#[test]
fn pool_fixture_has_its_uuid() {
    assert_eq!(crate::plan::map::pool_uuid(&pool()), POOL_UUID);
}

#[test]
fn versions_at_the_top_of_their_range_stop_growing_and_a_change_is_still_persisted() {
    let mut o = steady(2, 2, t0());
    o.pool.status.map_version = i64::MAX;
    o.pool.status.master_version = i64::MAX;
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.map_version, i64::MAX);
    let persisted = p.persist_first.expect("the new map is persisted first");
    assert_eq!(
        persisted.domain_map.get(&uuid_of("d001")),
        Some(&MapStatus::Attached)
    );
    assert!(!p.calls.is_empty());
}
