//! Pools of compatibility 3.4 and lower (VDSM's disk backend): hosts connect without the map and
//! read it from the master; the pool manager changes the map there first (`activate`,
//! `deactivate`), and only then are the other hosts told to `refresh`; raising the version to
//! 3.5 connects every host again, with the map.

use super::*;
use crate::api::PoolBackend;
use crate::plan::fixtures::step;
use crate::plan::manager::{ManagerCalls, ManagerVerb};

/// A converged 3.4 pool: every host connected from the master, h0000 its manager.
fn legacy_steady(hosts: usize, domains: usize) -> Observed {
    let mut o = world(hosts, domains, t0());
    o.pool.spec.compatibility_version = "3.4".into();
    converge(&mut o, t0(), 20);
    assert!(is_true(&o.pool.status.conditions, types::READY));
    o
}

fn backend_of(o: &Observed, host: &str) -> Option<PoolBackend> {
    o.hosts[host].report.parsed()?.pool.as_ref()?.backend
}

fn refreshes(p: &Plan) -> Vec<&str> {
    p.calls
        .iter()
        .filter(|c| c.kind() == CallKind::Refresh)
        .map(HostCall::host)
        .collect()
}

fn manager_verb(p: &Plan) -> Option<(ManagerVerb, Vec<String>)> {
    let c = p.manager.call.as_ref()?;
    Some((
        c.verb,
        c.storage
            .as_ref()
            .map(|s| s.domains.clone())
            .unwrap_or_default(),
    ))
}

#[test]
fn hosts_of_a_legacy_pool_connect_without_the_map() {
    let o = legacy_steady(3, 2);
    for h in o.hosts.keys() {
        assert_eq!(backend_of(&o, h), Some(PoolBackend::Disk), "{h}");
    }
    // What goes on the wire: no domainDict.
    let mut fresh = world(1, 1, t0());
    fresh.pool.spec.compatibility_version = "3.4".into();
    let p = plan(&fresh, t0());
    let HostCall::Connect { params, .. } = &p.calls[0] else {
        panic!("{:?}", p.calls);
    };
    let wire = crate::protocol::wire::ConnectParams::from(params);
    assert_eq!(wire.domain_dict, None);
}

#[test]
fn a_new_domain_is_attached_then_activated_on_the_master_before_any_host_refreshes() {
    let mut o = legacy_steady(3, 2);
    o.domains.insert("d002".into(), domain("d002", Some(POOL)));
    let sd = uuid_of("d002");

    let (p, _) = step(&mut o, t0());
    assert_eq!(
        manager_verb(&p),
        Some((ManagerVerb::Attach, vec![sd.clone()]))
    );
    assert!(p.calls.is_empty(), "{:?}", p.calls);

    let (p, _) = step(&mut o, t0());
    assert_eq!(
        manager_verb(&p),
        Some((ManagerVerb::Activate, vec![sd.clone()]))
    );
    assert!(p.manager.hold_connects && p.manager.hold_refreshes);
    assert!(
        p.calls.is_empty(),
        "nobody reads a half-written map: {:?}",
        p.calls
    );

    // The master holds the new map: the other hosts refresh (they are connected already).
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.manager.call, None);
    assert_eq!(refreshes(&p), vec!["h0001", "h0002"]);
    assert!(connects(&p).is_empty());
    converge(&mut o, t0(), 10);
    assert_eq!(phase(&o, "d002"), Some(DomainPhase::Active));
    assert!(is_true(&o.pool.status.conditions, types::READY));
}

#[test]
fn a_deactivation_is_written_on_the_master_first_and_the_master_names_its_successor() {
    let mut o = legacy_steady(3, 3);
    let before = o.pool.status.clone();

    o.domains.get_mut("d002").expect("d").spec.maintenance = true;
    let (p, _) = step(&mut o, t0());
    assert_eq!(
        manager_verb(&p),
        Some((ManagerVerb::Deactivate, vec![uuid_of("d002")]))
    );
    assert!(p.calls.is_empty(), "{:?}", p.calls);
    let (p, _) = step(&mut o, t0());
    assert_eq!(refreshes(&p), vec!["h0001", "h0002"]);
    converge(&mut o, t0(), 10);
    assert_eq!(phase(&o, "d002"), Some(DomainPhase::Maintenance));

    // The master: one deactivation that names the successor and the next version.
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let (p, _) = step(&mut o, t0());
    let call = p.manager.call.clone().expect("deactivate");
    let op = call.storage.expect("its parameters");
    assert_eq!(
        (call.verb, op.domains, op.master.as_str(), op.master_version),
        (
            ManagerVerb::Deactivate,
            vec![uuid_of("d000")],
            uuid_of("d001").as_str(),
            before.master_version + 1
        )
    );
    assert!(p.calls.is_empty(), "{:?}", p.calls);
    let (p, _) = step(&mut o, t0());
    assert_eq!(refreshes(&p), vec!["h0001", "h0002"]);
    let HostCall::Refresh { params, .. } = &p.calls[0] else {
        panic!("{:?}", p.calls);
    };
    assert_eq!(
        (params.master_domain.clone(), params.master_version),
        (Some(uuid_of("d001")), before.master_version + 1)
    );
    converge(&mut o, t0(), 10);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Maintenance));
}

#[test]
fn without_a_running_manager_hosts_connect_but_none_refreshes() {
    let mut o = legacy_steady(3, 2);
    // The manager is gone (its Lease expired): storage may hold a half-written map.
    expire_lease(&mut o, "h0000");
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert!(p.manager.hold_refreshes);
    assert!(refreshes(&p).is_empty(), "{:?}", p.calls);
    // A host that restarted (not connected) may still connect: it reads what the master holds,
    // and the next manager is chosen among connected hosts.
    report_of(&mut o, "h0002").pool = None;
    let p = plan(&o, t0());
    assert_eq!(connects(&p), vec!["h0002"]);
}

#[test]
fn raising_the_version_to_3_5_connects_every_host_again_with_the_map() {
    let mut o = legacy_steady(3, 2);
    o.pool.spec.compatibility_version = "3.5".into();
    let p = plan(&o, t0());
    assert_eq!(connects(&p), vec!["h0000", "h0001", "h0002"]);
    for c in &p.calls {
        let HostCall::Connect { params, .. } = c else {
            panic!("{c:?}");
        };
        assert_eq!(params.backend, None);
        assert_eq!(params.domain_map, o.pool.status.domain_map);
    }
    converge(&mut o, t0(), 10);
    for h in o.hosts.keys() {
        assert_eq!(backend_of(&o, h), Some(PoolBackend::Memory), "{h}");
    }
    assert!(is_true(&o.pool.status.conditions, types::READY));
}

#[test]
fn a_master_no_host_can_read_is_rebuilt_on_a_disconnected_host_then_every_host_follows() {
    rebuild_lost_master(legacy_steady(3, 2));
}

#[test]
fn a_3_5_pool_rebuilds_a_lost_master_the_same_way() {
    rebuild_lost_master(steady(3, 2, t0()));
}

/// Every host of `o` (converged, d000 master) loses the master; the pool manager's host rebuilds
/// it on d001 and every host follows: a legacy pool's connected hosts refresh, a 3.5 pool's are
/// connected with the map.
fn rebuild_lost_master(mut o: Observed) {
    let legacy = crate::plan::map::legacy(&o.pool.spec);
    let before = o.pool.status.clone();
    // Every host fails the master past the grace period: it is Inactive.
    for h in ["h0000", "h0001", "h0002"] {
        set_vitals(&mut o, h, "d000", |v| {
            v.valid = false;
            v.code = 2001;
        });
    }
    o.domains.get_mut("d000").expect("d").status.phase = Some(DomainPhase::Inactive);

    // A new master; the manager (its lease is on the lost master) is stopped first.
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.desired.master_domain, Some(uuid_of("d001")));
    assert_eq!(p.desired.master_version, before.master_version + 1);
    assert_eq!(manager_verb(&p).map(|(v, _)| v), Some(ManagerVerb::Stop));
    assert!(p.calls.is_empty(), "{:?}", p.calls);
    // Then the manager-to-be lets go of the pool ...
    let (p, r) = step(&mut o, t0());
    assert_eq!(disconnects(&p), vec!["h0000"]);
    assert_eq!(connects(&p), Vec::<&str>::new());
    let c = cond(&r.pool.conditions, types::POOL_MANAGER);
    assert_eq!(c.reason, reasons::RECONSTRUCTING_MASTER, "{}", c.message);
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::RECONSTRUCTING_MASTER && e.type_ == EventType::Warning),
        "{:?}",
        r.events
    );
    // ... and rebuilds the pool's metadata on the new master.
    let p = plan(&o, t0());
    let call = p.manager.call.clone().expect("reconstructMaster");
    let op = call.storage.clone().expect("its parameters");
    assert_eq!(
        (
            call.host.as_str(),
            call.verb,
            op.master.as_str(),
            op.master_version
        ),
        (
            "h0000",
            ManagerVerb::Reconstruct,
            uuid_of("d001").as_str(),
            before.master_version + 1
        )
    );
    assert_eq!(
        op.reconstruct,
        Some((1, o.pool.status.domain_map.clone())),
        "hostID and domainDict"
    );
    assert!(
        p.calls.is_empty(),
        "nobody follows before it: {:?}",
        p.calls
    );
    let mut entry = ManagerCalls::started(
        None,
        &call,
        &report_of(&mut o, "h0000").boot_id.clone(),
        t0(),
    );
    entry.finished(t0(), &Ok(()), t0());
    o.manager = Some(entry);

    // Accepted: it connects to the new master, the others follow.
    let p = plan(&o, t0());
    if legacy {
        assert_eq!(connects(&p), vec!["h0000"]);
        assert_eq!(refreshes(&p), vec!["h0001", "h0002"]);
    } else {
        assert_eq!(connects(&p), vec!["h0000", "h0001", "h0002"]);
    }
    converge(&mut o, t0(), 10);
    for h in ["h0000", "h0001", "h0002"] {
        let c = report_of(&mut o, h).pool.clone().expect("connected");
        assert_eq!(
            (c.master_domain, c.master_version),
            (Some(uuid_of("d001")), before.master_version + 1),
            "{h}"
        );
    }
    let m = o.pool.status.pool_manager.clone().expect("a manager again");
    assert!(m.lver > 0, "{m:?}");
}

/// A pool made through the manager from the start, so the record of the pool on storage names
/// its master (`status.storage.master`).
fn created_through_the_manager(hosts: usize, domains: usize, version: &str) -> Observed {
    let mut o = crate::plan::fixtures::new_pool(hosts, domains, t0());
    o.pool.spec.compatibility_version = version.into();
    converge(&mut o, t0(), 30);
    let s = o.pool.status.storage.clone().expect("on storage");
    assert_eq!(s.master, Some(uuid_of("d000")));
    assert_eq!(s.master_version, Some(o.pool.status.master_version));
    o
}

#[test]
fn a_single_host_pool_rebuilds_its_lost_master_although_the_rebuilder_is_its_only_host() {
    let mut o = created_through_the_manager(1, 2, "3.4");
    let before = o.pool.status.master_version;
    set_vitals(&mut o, "h0000", "d000", |v| {
        v.valid = false;
        v.code = 2001;
    });
    o.domains.get_mut("d000").expect("d").status.phase = Some(DomainPhase::Inactive);
    // Stopped, disconnected (the only connected host), then the rebuild still goes on.
    let mut verbs = Vec::new();
    for _ in 0..8 {
        let (p, _) = step(&mut o, t0());
        verbs.extend(p.manager.call.map(|c| c.verb));
    }
    assert!(verbs.contains(&ManagerVerb::Reconstruct), "{verbs:?}");
    let c = report_of(&mut o, "h0000")
        .pool
        .clone()
        .expect("connected again");
    assert_eq!(
        (c.master_domain, c.master_version, c.spm_lver.is_some()),
        (Some(uuid_of("d001")), before + 1, true)
    );
    let s = o.pool.status.storage.clone().expect("on storage");
    assert_eq!(s.master, Some(uuid_of("d001")));
}

#[test]
fn a_master_move_left_without_a_manager_is_rebuilt_instead_of_stalling() {
    // The manager stops responding; then the master is put in maintenance. No manager can
    // switch it, and hosts cannot connect to a master storage does not know, so no manager
    // could start either: the metadata is rebuilt on the new master instead.
    let mut o = created_through_the_manager(3, 2, "3.5");
    expire_lease(&mut o, "h0000");
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let mut verbs = Vec::new();
    for _ in 0..10 {
        let (p, _) = step(&mut o, t0());
        verbs.extend(p.manager.call.map(|c| (c.host, c.verb)));
    }
    assert!(
        verbs.contains(&("h0001".to_owned(), ManagerVerb::Reconstruct)),
        "{verbs:?}"
    );
    for h in ["h0001", "h0002"] {
        let c = report_of(&mut o, h).pool.clone().expect("connected");
        assert_eq!(c.master_domain, Some(uuid_of("d001")), "{h}");
    }
    assert_eq!(
        o.pool.status.storage.clone().and_then(|s| s.master),
        Some(uuid_of("d001"))
    );
}
