//! The master domain: no master without an active data domain, the master moving and its
//! version growing, the last data domain kept while other domains are active, no blame for
//! domains a host's map does not ask it to monitor, the preferred master, and pools whose
//! compatibility version the planner does not manage.

use super::*;

#[test]
fn pool_without_active_data_domain_has_no_master_and_disconnects_hosts() {
    let mut o = steady(2, 1, t0());
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, None);
    // The pool manager (h0000) is disconnected once it gave the role up (VDSM: 656 before).
    assert_eq!(disconnects(&p), vec!["h0001"]);
    assert!(p.manager.call.as_ref().is_some_and(|c| c.host == "h0000"));
    converge(&mut o, t0(), 5);
    assert!(
        o.hosts
            .values()
            .all(|h| h.report.parsed().is_some_and(|r| r.pool.is_none()))
    );
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
fn newer_compatibility_versions_are_managed() {
    let mut o = world(1, 1, t0());
    o.pool.spec.compatibility_version = "4.10".into();
    assert_eq!(plan(&o, t0()).halted, None);
}

/// A converged world with two hosts, the data domains `d000..` and an active ISO domain `iso`.
fn with_iso(data_domains: usize) -> Observed {
    let mut o = world(2, data_domains, t0());
    let mut iso = domain("iso", Some(POOL));
    iso.spec.type_ = DomainType::Iso;
    o.domains.insert("iso".into(), iso);
    converge(&mut o, t0(), 6);
    assert_eq!(phase(&o, "iso"), Some(DomainPhase::Active));
    o
}

#[test]
fn last_data_domain_stays_active_and_master_while_another_domain_is_active() {
    let mut o = with_iso(1);
    let before = o.pool.status.clone();
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let (p, r) = step(&mut o, t0());
    assert!(p.calls.is_empty(), "no host is disconnected: {:?}", p.calls);
    assert_eq!(p.desired.domain_map, before.domain_map);
    assert_eq!(p.desired.master_domain, before.master_domain);
    assert_eq!(
        p.domains["d000"].last_data_domain,
        Some(BTreeSet::from(["iso".to_string()]))
    );
    let d = &r.domains["d000"];
    assert_eq!(d.phase, Some(DomainPhase::Active));
    let stalled = cond(&d.conditions, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reasons::LAST_DATA_DOMAIN)
    );
    assert!(stalled.message.contains("iso"), "{}", stalled.message);
    assert_eq!(cond(&d.conditions, types::READY).status, "False");
    assert_eq!(
        cond(&r.pool.conditions, types::STALLED).reason,
        reasons::LAST_DATA_DOMAIN
    );
    // Nothing moves, however long it waits; no host is blamed.
    let much_later = later(t0(), 3600);
    renew_all(&mut o, much_later);
    converge(&mut o, much_later, 4);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));
    assert_eq!(phase(&o, "iso"), Some(DomainPhase::Active));
    assert_eq!(host_phase(&o, "h0000"), Some(HostPhase::Up));

    // With the ISO domain in maintenance too, the pool goes to maintenance.
    o.domains.get_mut("iso").expect("d").spec.maintenance = true;
    converge(&mut o, much_later, 6);
    assert_eq!(o.pool.status.master_domain, None);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Maintenance));
    assert_eq!(phase(&o, "iso"), Some(DomainPhase::Maintenance));
    let ready = cond(&o.pool.status.conditions, types::READY);
    assert_eq!(ready.reason, reasons::NO_ACTIVE_DATA_DOMAIN);
    assert!(
        ready.message.contains("in maintenance"),
        "{}",
        ready.message
    );
    assert!(
        o.hosts
            .values()
            .all(|h| { h.report.parsed().is_some_and(|r| r.pool.is_none()) })
    );
}

#[test]
fn of_two_data_domains_leaving_at_once_the_master_stays_while_an_iso_domain_is_active() {
    let mut o = with_iso(2);
    let master = o.pool.status.master_domain.clone();
    assert_eq!(master.as_deref(), Some(uuid_of("d000").as_str()));
    for d in ["d000", "d001"] {
        o.domains.get_mut(d).expect("d").spec.maintenance = true;
    }
    converge(&mut o, t0(), 6);
    assert_eq!(o.pool.status.master_domain, master);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert_eq!(
        cond(&o.domains["d000"].status.conditions, types::STALLED).reason,
        reasons::LAST_DATA_DOMAIN
    );
}

#[test]
fn last_data_domain_detached_while_an_iso_domain_is_active_stays_active() {
    let mut o = with_iso(1);
    o.domains.get_mut("d000").expect("d").spec.pool = None;
    converge(&mut o, t0(), 6);
    assert_eq!(
        o.pool.status.domain_map.get(&uuid_of("d000")),
        Some(&MapStatus::Active)
    );
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));
    assert_eq!(
        cond(&o.domains["d000"].status.conditions, types::STALLED).reason,
        reasons::LAST_DATA_DOMAIN
    );
}

#[test]
fn hosts_are_not_blamed_for_a_domain_their_map_does_not_ask_them_to_monitor() {
    // A pool whose only domain is an ISO domain has no master: its hosts are disconnected.
    let mut o = world(2, 0, t0());
    let mut iso = domain("iso", Some(POOL));
    iso.spec.type_ = DomainType::Iso;
    o.domains.insert("iso".into(), iso);
    converge(&mut o, t0(), 6);
    let much_later = later(t0(), 3600);
    renew_all(&mut o, much_later);
    converge(&mut o, much_later, 4);
    let s = &o.domains["iso"].status;
    assert_eq!(cond(&s.conditions, types::PROBLEM).status, "False");
    assert_eq!(
        cond(&s.conditions, types::STALLED).reason,
        reasons::NO_ACTIVE_DATA_DOMAIN
    );
    for h in ["h0000", "h0001"] {
        assert_eq!(host_phase(&o, h), Some(HostPhase::Up));
    }
    assert_eq!(
        cond(&o.pool.status.conditions, types::STALLED).reason,
        reasons::NO_ACTIVE_DATA_DOMAIN
    );
}
