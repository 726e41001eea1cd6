//! The pool manager: chosen among responsive in-sync Up hosts, recorded before `spmStart`, moved
//! when its host fails or goes to maintenance, and what the hosts report is the truth.

use super::*;
use crate::api::PoolManagerStatus;
use crate::plan::ledger::CallState;
use crate::plan::manager::{ManagerCalls, ManagerState, ManagerVerb};

fn spm_of<'a>(o: &'a mut Observed, host: &str) -> &'a mut Option<i64> {
    &mut report_of(o, host)
        .pool
        .as_mut()
        .expect("connected")
        .spm_lver
}

fn manager_call(plan: &Plan) -> Option<(&str, ManagerVerb)> {
    plan.manager
        .call
        .as_ref()
        .map(|c| (c.host.as_str(), c.verb))
}

/// A converged pool whose hosts hold the map but where no manager was ever chosen.
fn no_manager_yet(hosts: usize) -> Observed {
    let mut o = steady(hosts, 1, t0());
    o.pool.status.pool_manager = None;
    for h in o.hosts.keys().cloned().collect::<Vec<_>>() {
        *spm_of(&mut o, &h) = None;
    }
    o
}

#[test]
fn a_converged_pool_has_its_lowest_id_host_as_running_manager() {
    let o = steady(3, 1, t0());
    assert_eq!(
        o.pool.status.pool_manager,
        Some(PoolManagerStatus {
            host: "h0000".into(),
            host_id: 1,
            lver: 1,
            prev_id: -1,
            prev_lver: -1,
        })
    );
    let c = cond(&o.pool.status.conditions, types::POOL_MANAGER);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::MANAGER_RUNNING)
    );
    let p = plan(&o, t0());
    assert_eq!(p.manager.call, None, "a running manager is left alone");
    assert_eq!(p.persist_first, None, "and nothing is written");
}

#[test]
fn the_choice_is_recorded_before_spm_start_is_sent() {
    let o = no_manager_yet(3);
    let p = plan(&o, t0());
    let recorded = p
        .persist_first
        .as_ref()
        .and_then(|s| s.pool_manager.clone())
        .expect("the choice is persisted first");
    assert_eq!((recorded.host.as_str(), recorded.lver), ("h0000", -1));
    let call = p.manager.call.as_ref().expect("spmStart");
    assert_eq!(
        (call.host.as_str(), call.verb, call.prev_id, call.prev_lver),
        ("h0000", ManagerVerb::Start, -1, -1)
    );
    assert_eq!(call.pool_uuid, POOL_UUID);
}

#[test]
fn a_host_that_cannot_be_called_is_never_chosen() {
    // The lowest-id host has no endpoint (an agent that predates status.endpoint, say): the role
    // goes to a host a call can reach, or no call could ever start it.
    let mut o = no_manager_yet(3);
    if let Some(h) = o.hosts.get_mut("h0000") {
        h.status_endpoint = None;
    }
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), Some(("h0001", ManagerVerb::Start)));
}

#[test]
fn a_restarted_controller_starts_the_recorded_host_not_another() {
    let mut o = no_manager_yet(3);
    // Another replica recorded h0002 and crashed before its spmStart was answered.
    o.pool.status.pool_manager = Some(PoolManagerStatus {
        host: "h0002".into(),
        host_id: 3,
        lver: -1,
        prev_id: -1,
        prev_lver: -1,
    });
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), Some(("h0002", ManagerVerb::Start)));
    assert_eq!(p.persist_first, None, "the record stands");
}

#[test]
fn a_call_in_flight_or_backing_off_is_not_sent_again() {
    let mut o = no_manager_yet(2);
    let call = plan(&o, t0()).manager.call.expect("spmStart");
    let boot = report_of(&mut o, "h0000").boot_id.clone();
    o.manager = Some(ManagerCalls::started(None, &call, &boot, t0()));
    o.pool.status.pool_manager = plan(&o, t0()).manager.record;
    assert_eq!(manager_call(&plan(&o, t0())), None, "in flight");
    // Refused (the lease is still held elsewhere): retried after the backoff, not before.
    let failure = CallFailure {
        code: Some(651),
        message: "cannot obtain lock".into(),
    };
    if let Some(e) = o.manager.as_mut() {
        e.finished(t0(), &Err(failure), t0());
    }
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), None);
    let retry = p.manager.retry_at.expect("a retry time");
    assert!(retry > t0() && retry <= later(t0(), 2), "{retry}");
    assert!(p.requeue_after.is_some_and(|d| d <= Duration::from_secs(2)));
    match &p.manager.state {
        ManagerState::Starting { host, failure } => {
            assert_eq!(host, "h0000");
            assert!(failure.as_deref().is_some_and(|f| f.contains("651")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        manager_call(&plan(&o, later(t0(), 2))),
        Some(("h0000", ManagerVerb::Start))
    );
}

#[test]
fn a_manager_that_stops_responding_is_replaced_naming_it_as_previous() {
    let mut o = steady(3, 1, t0());
    let now = later(t0(), 1);
    renew_all(&mut o, now);
    expire_lease(&mut o, "h0000");
    let p = plan(&o, now);
    let recorded = p
        .persist_first
        .as_ref()
        .and_then(|s| s.pool_manager.clone())
        .expect("the new choice is persisted first");
    assert_eq!(
        recorded,
        PoolManagerStatus {
            host: "h0001".into(),
            host_id: 2,
            lver: -1,
            prev_id: 1,
            prev_lver: 1,
        }
    );
    let call = p.manager.call.as_ref().expect("spmStart");
    assert_eq!(
        (call.host.as_str(), call.prev_id, call.prev_lver),
        ("h0001", 1, 1)
    );
    // The stale report of the silent host still says SPM; it is not believed, and the new
    // manager runs once its own report says so.
    let (_, report) = step(&mut o, now);
    assert_eq!(*spm_of(&mut o, "h0001"), Some(2));
    let (p, _) = step(&mut o, now);
    assert_eq!(p.manager.call, None);
    assert!(
        matches!(&p.manager.state, ManagerState::Running { host, lver: 2, .. } if host == "h0001")
    );
    assert!(
        report
            .events
            .iter()
            .any(|e| e.reason == reasons::MANAGER_CHOSEN && e.note.contains("h0000 -> h0001"))
    );
}

#[test]
fn a_host_put_in_maintenance_gives_the_role_up_before_it_is_disconnected() {
    let mut o = steady(3, 1, t0());
    o.hosts.get_mut("h0000").expect("host").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(
        disconnects(&p),
        Vec::<&str>::new(),
        "VDSM refuses to disconnect its pool manager (656)"
    );
    assert_eq!(manager_call(&p), Some(("h0000", ManagerVerb::Stop)));
    assert!(matches!(p.manager.state, ManagerState::Stopping { .. }));
    // Stopped: now it is disconnected, and another host takes the role.
    step(&mut o, t0());
    assert_eq!(*spm_of(&mut o, "h0000"), None);
    let p = plan(&o, t0());
    assert_eq!(disconnects(&p), vec!["h0000"]);
    assert_eq!(manager_call(&p), Some(("h0001", ManagerVerb::Start)));
    let recorded = p.manager.record.expect("recorded");
    assert_eq!((recorded.prev_id, recorded.prev_lver), (1, 1));
}

#[test]
fn what_the_hosts_report_is_the_truth() {
    let mut o = steady(3, 1, t0());
    // The record says h0000, but h0002 reports the role (the status was restored from a backup).
    *spm_of(&mut o, "h0000") = None;
    *spm_of(&mut o, "h0002") = Some(7);
    let p = plan(&o, t0());
    assert_eq!(p.manager.call, None, "no second manager is started");
    let recorded = p.manager.record.expect("recorded");
    assert_eq!(
        (recorded.host.as_str(), recorded.host_id, recorded.lver),
        ("h0002", 3, 7)
    );
    assert!(p.persist_first.is_some());
}

#[test]
fn a_second_host_reporting_the_role_is_stopped() {
    let mut o = steady(3, 1, t0());
    *spm_of(&mut o, "h0001") = Some(9);
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), Some(("h0001", ManagerVerb::Stop)));
    assert!(matches!(&p.manager.state, ManagerState::Running { host, .. } if host == "h0000"));
}

#[test]
fn a_pool_without_master_has_no_manager_and_stops_the_holder_first() {
    let mut o = steady(2, 1, t0());
    o.domains.get_mut("d000").expect("domain").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, None);
    assert_eq!(
        disconnects(&p),
        vec!["h0001"],
        "the manager's disconnect waits"
    );
    assert_eq!(manager_call(&p), Some(("h0000", ManagerVerb::Stop)));
    assert_eq!(p.manager.record, None);
    converge(&mut o, t0(), 10);
    assert_eq!(o.pool.status.pool_manager, None);
    assert!(
        o.hosts
            .values()
            .all(|h| h.report.parsed().is_some_and(|r| r.pool.is_none()))
    );
    let c = cond(&o.pool.status.conditions, types::POOL_MANAGER);
    assert_eq!(c.status, "False");
}

#[test]
fn no_candidate_while_no_host_is_in_sync_and_up() {
    let mut o = world(2, 1, t0());
    for h in ["h0000", "h0001"] {
        expire_lease(&mut o, h);
    }
    let p = plan(&o, t0());
    assert_eq!(p.manager.call, None);
    assert_eq!(p.manager.state, ManagerState::NoCandidate { last: None });
}

#[test]
fn a_confirmed_call_is_forgotten() {
    let mut o = no_manager_yet(2);
    let call = plan(&o, t0()).manager.call.expect("spmStart");
    let mut entry = ManagerCalls::started(None, &call, "", t0());
    entry.finished(t0(), &Ok(()), t0());
    assert!(matches!(entry.state, CallState::Accepted { .. }));
    o.manager = Some(entry);
    *spm_of(&mut o, "h0000") = Some(1);
    let p = plan(&o, t0());
    assert!(p.manager.confirmed);
    assert_eq!(p.manager.call, None);
}

#[test]
fn a_recorded_host_whose_connects_fail_loses_the_choice() {
    let mut o = no_manager_yet(2);
    o.pool.status.pool_manager = Some(PoolManagerStatus {
        host: "h0000".into(),
        host_id: 1,
        lver: -1,
        prev_id: -1,
        prev_lver: -1,
    });
    // h0000 restarted and its connects are refused: it cannot take the role, h0001 can.
    report_of(&mut o, "h0000").pool = None;
    report_of(&mut o, "h0000").boot_id = "h0000-boot-2".into();
    let call = call_to(&o, "h0000", t0());
    refuse(&mut o, &call, 1, t0(), 304, "master domain not found");
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), Some(("h0001", ManagerVerb::Start)));
    let recorded = p.manager.record.expect("recorded");
    assert_eq!(recorded.host, "h0001");
    assert_eq!(
        (recorded.prev_id, recorded.prev_lver),
        (-1, -1),
        "h0000 never held the role"
    );
}

#[test]
fn a_restarted_manager_keeps_the_choice_while_it_is_reconnected() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0000").pool = None;
    report_of(&mut o, "h0000").boot_id = "h0000-boot-2".into();
    let p = plan(&o, t0());
    assert_eq!(connects(&p), vec!["h0000"]);
    assert_eq!(p.manager.call, None, "not before it is connected");
    assert_eq!(p.manager.record, o.pool.status.pool_manager);
    step(&mut o, t0());
    assert_eq!(
        manager_call(&plan(&o, t0())),
        Some(("h0000", ManagerVerb::Start))
    );
}

/// The master each host's own connection names.
fn masters(o: &mut Observed) -> Vec<(String, Option<String>, i64)> {
    let names: Vec<String> = o.hosts.keys().cloned().collect();
    names
        .into_iter()
        .map(|h| {
            let c = report_of(o, &h).pool.clone().expect("connected");
            (h, c.master_domain, c.master_version)
        })
        .collect()
}

#[test]
fn a_new_master_is_switched_to_on_the_manager_before_any_host_is_told() {
    let mut o = steady(3, 2, t0());
    let old = o.pool.status.clone();
    assert_eq!(old.master_domain, Some(uuid_of("d000")));
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;

    // The map with the new master is persisted first; no host gets a connect naming it yet, the
    // running manager gets switchMaster(old, new, bumped version).
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, Some(uuid_of("d001")));
    assert!(p.persist_first.is_some(), "the new map is persisted first");
    assert!(
        p.calls.iter().all(|c| c.kind() != CallKind::Connect),
        "{:?}",
        p.calls
    );
    assert!(p.manager.hold_connects);
    let call = p.manager.call.clone().expect("switchMaster");
    assert_eq!(
        (call.host.as_str(), call.verb),
        ("h0000", ManagerVerb::SwitchMaster)
    );
    let switch = call.switch.clone().expect("its parameters");
    assert_eq!(
        (switch.old, switch.new, switch.version),
        (uuid_of("d000"), uuid_of("d001"), old.master_version + 1)
    );

    // The manager did not answer yet (its call is in flight): still nothing to the hosts.
    let boot = report_of(&mut o, "h0000").boot_id.clone();
    o.manager = Some(ManagerCalls::started(None, &call, &boot, t0()));
    let p = plan(&o, t0());
    assert_eq!(manager_call(&p), None, "in flight");
    assert!(p.calls.iter().all(|c| c.kind() != CallKind::Connect));

    // Once its report names the new master, the connects go out, every one naming it.
    o.manager = None;
    let (p, _) = step(&mut o, t0());
    assert_eq!(manager_call(&p), Some(("h0000", ManagerVerb::SwitchMaster)));
    let (p, _) = step(&mut o, t0());
    assert!(!p.manager.hold_connects);
    assert!(p.calls.iter().any(|c| c.kind() == CallKind::Connect));
    for c in &p.calls {
        if let HostCall::Connect { params, .. } = c {
            assert_eq!(params.master_domain, Some(uuid_of("d001")));
            assert_eq!(params.master_version, old.master_version + 1);
        }
    }
    converge(&mut o, t0(), 10);
    for (h, master, version) in masters(&mut o) {
        assert_eq!(
            (master, version),
            (Some(uuid_of("d001")), old.master_version + 1),
            "{h}"
        );
    }
    assert_eq!(
        manager_call(&plan(&o, t0())),
        None,
        "nothing more to switch"
    );
}

#[test]
fn a_master_leaving_as_its_successor_activates_stays_until_the_manager_holds_the_successor() {
    let mut o = steady(3, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 10);
    let old = o.pool.status.clone();
    assert_eq!(old.master_domain, Some(uuid_of("d000")));
    // One edit: d001 back to active and the master d000 to maintenance. The manager's map holds
    // d001 attached, so it cannot switch to it (VDSM: 369): d000 stays active and master.
    o.domains.get_mut("d001").expect("d").spec.maintenance = false;
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, Some(uuid_of("d000")));
    for d in ["d000", "d001"] {
        assert_eq!(
            p.desired.domain_map.get(&uuid_of(d)),
            Some(&MapStatus::Active),
            "{d}"
        );
    }
    assert!(p.domains["d000"].master_handover);
    // Every connect names the master the manager holds when it is sent (another one is
    // refused by VDSM with 324), and the master moves through switchMaster.
    let mut switched = false;
    for _ in 0..10 {
        let held = report_of(&mut o, "h0000")
            .pool
            .as_ref()
            .and_then(|c| c.master_domain.clone());
        let (p, _) = step(&mut o, t0());
        switched |= manager_call(&p) == Some(("h0000", ManagerVerb::SwitchMaster));
        for c in &p.calls {
            if let HostCall::Connect { params, .. } = c {
                assert_eq!(params.master_domain, held, "{c:?}");
            }
        }
    }
    assert!(switched, "the master moved on storage");
    assert_eq!(o.pool.status.master_domain, Some(uuid_of("d001")));
    assert_eq!(o.pool.status.master_version, old.master_version + 1);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Maintenance));
    for (h, master, _) in masters(&mut o) {
        assert_eq!(master, Some(uuid_of("d001")), "{h}");
    }
}

#[test]
fn without_a_running_manager_connects_are_not_held_for_a_switch() {
    // The manager's host is gone (its role lost): a stalled switch must not stall the pool.
    let mut o = steady(2, 2, t0());
    for h in o.hosts.keys().cloned().collect::<Vec<_>>() {
        *spm_of(&mut o, &h) = None;
    }
    o.pool.status.pool_manager = None;
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert!(!p.manager.hold_connects);
    assert!(p.calls.iter().any(|c| c.kind() == CallKind::Connect));
    assert_ne!(
        manager_call(&p).map(|c| c.1),
        Some(ManagerVerb::SwitchMaster)
    );
}
