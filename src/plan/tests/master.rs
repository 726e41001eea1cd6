//! The master domain and legacy pools: no master without an active data domain, the master
//! moving and its version growing, the preferred master, and pools whose compatibility version
//! the planner does not manage.

use super::*;

#[test]
fn pool_without_active_data_domain_has_no_master_and_disconnects_hosts() {
    let mut o = steady(2, 1, t0());
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, None);
    assert_eq!(disconnects(&p), vec!["h0000", "h0001"]);
    converge(&mut o, t0(), 5);
    let ready = cond(&o.pool.status.conditions, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::NO_ACTIVE_DATA_DOMAIN)
    );
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Maintenance));
}

#[test]
fn master_moves_when_it_goes_to_maintenance_and_versions_grow() {
    let mut o = steady(2, 2, t0());
    let old = o.pool.status.clone();
    assert_eq!(old.master_domain.as_deref(), Some(uuid_of("d000").as_str()));
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let (p, r) = step(&mut o, t0());
    assert_eq!(
        p.desired.master_domain.as_deref(),
        Some(uuid_of("d001").as_str())
    );
    assert_eq!(p.desired.master_version, old.master_version + 1);
    assert_eq!(p.desired.map_version, old.map_version + 1);
    assert!(r.events.iter().any(|e| e.reason == reasons::MASTER_CHANGED));
}

#[test]
fn preferred_master_is_used_when_healthy() {
    let mut o = world(1, 3, t0());
    o.pool.spec.master_domain = Some(uuid_of("d002"));
    assert_eq!(plan(&o, t0()).desired.master_domain, Some(uuid_of("d002")));
}

#[test]
fn legacy_pool_is_stalled_and_gets_no_rpcs() {
    let mut o = world(2, 2, t0());
    o.pool.spec.compatibility_version = "3.4".into();
    let p = plan(&o, t0());
    assert!(p.calls.is_empty() && p.persist_first.is_none() && p.finalizers.is_empty());
    assert_eq!(
        p.halted,
        Some(Halt::Legacy {
            version: "3.4".into()
        })
    );
    let r = report(&o, &p, &[], t0());
    let c = cond(&r.pool.conditions, types::STALLED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::LEGACY_POOL_UNSUPPORTED)
    );
    assert!(c.message.contains("3.4"));
    assert!(r.domains.is_empty() && r.hosts.is_empty());
}

#[test]
fn newer_compatibility_versions_are_managed() {
    let mut o = world(1, 1, t0());
    o.pool.spec.compatibility_version = "4.10".into();
    assert_eq!(plan(&o, t0()).halted, None);
}
