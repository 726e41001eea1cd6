//! Behaviour tests of the planner: each rule of issue 4 as small synchronous scenarios built from
//! [`super::fixtures`].

use std::collections::BTreeSet;
use std::time::Duration;

use super::fixtures::{
    POOL, POOL_UUID, at, converge, domain, failed, host, later, obey, pool, renew_all, steady,
    step, uuid_of, vitals, world, write_back,
};
use super::*;
use crate::api::condition::{find, is_true, reasons, types};
use crate::api::{DomainPhase, DomainType, HostPhase, MapStatus, PoolConnection};

fn t0() -> Timestamp {
    at(0)
}

fn cond<'a>(c: &'a [Condition], type_: &str) -> &'a Condition {
    find(c, type_).unwrap_or_else(|| panic!("no {type_} condition in {c:?}"))
}

fn connects(plan: &Plan) -> Vec<&str> {
    plan.calls
        .iter()
        .filter(|c| c.kind() == CallKind::Connect)
        .map(HostCall::host)
        .collect()
}

fn disconnects(plan: &Plan) -> Vec<&str> {
    plan.calls
        .iter()
        .filter(|c| c.kind() == CallKind::Disconnect)
        .map(HostCall::host)
        .collect()
}

fn report_of<'a>(o: &'a mut Observed, name: &str) -> &'a mut crate::api::HostReport {
    match &mut o.hosts.get_mut(name).expect("host").report {
        ReportView::Parsed(r) => r,
        other => panic!("no parsed report: {other:?}"),
    }
}

fn set_vitals(
    o: &mut Observed,
    host: &str,
    domain: &str,
    f: impl Fn(&mut crate::api::DomainVitals),
) {
    let uuid = uuid_of(domain);
    let r = report_of(o, host);
    match r.domains.iter_mut().find(|v| v.uuid == uuid) {
        Some(v) => f(v),
        None => {
            let mut v = vitals(&uuid);
            f(&mut v);
            r.domains.push(v);
        }
    }
}

fn drop_domain_report(o: &mut Observed, host: &str, domain: &str) {
    let uuid = uuid_of(domain);
    report_of(o, host).domains.retain(|v| v.uuid != uuid);
}

fn expire_lease(o: &mut Observed, host: &str) {
    o.hosts.get_mut(host).expect("host").lease = Some(LeaseView {
        renew_time: Some(at(-1000)),
        lease_duration_seconds: Some(40),
    });
}

fn phase(o: &Observed, d: &str) -> Option<DomainPhase> {
    o.domains[d].status.phase
}

fn host_phase(o: &Observed, h: &str) -> Option<HostPhase> {
    o.hosts[h].controller.phase
}

/// Runs one reconcile with the given outcomes replacing success for the named hosts; agents obey
/// only the calls that succeeded.
fn step_with(o: &mut Observed, now: Timestamp, failures: &[CallOutcome]) -> (Plan, Report) {
    let plan = plan(o, now);
    let mut outcomes = Vec::new();
    for call in &plan.calls {
        if let Some(f) = failures.iter().find(|f| f.host == call.host()) {
            outcomes.push(f.clone());
            continue;
        }
        if let Some(h) = o.hosts.get_mut(call.host()) {
            obey(h, call);
        }
        outcomes.push(CallOutcome {
            host: call.host().into(),
            kind: call.kind(),
            result: Ok(()),
        });
    }
    let report = report(o, &plan, &outcomes, now);
    write_back(o, &plan, &report);
    (plan, report)
}

// ---------------------------------------------------------------------------------------------
// Rule 1: the desired map, persisted first
// ---------------------------------------------------------------------------------------------

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
    let map: BTreeMap<String, MapStatus> = [
        (uuid_of("d000"), MapStatus::Active),
        (uuid_of("d001"), MapStatus::Active),
    ]
    .into();
    assert_eq!(
        p.calls[0],
        HostCall::Connect {
            host: "h0000".into(),
            endpoint: "http://h0000:54321/jsonrpc".into(),
            params: ConnectParams {
                pool_uuid: POOL_UUID.into(),
                host_id: 1,
                master_domain: uuid_of("d000"),
                master_version: 1,
                domain_map: map,
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
    assert!(p.calls.is_empty() && p.persist_first.is_none() && p.finalizers.is_empty());
    let r = report(&o, &p, &[], now);
    assert!(!needs_write(Some(&o.pool.status), &r.pool));
    for (n, s) in &r.domains {
        assert!(!needs_write(Some(&o.domains[n].status), s), "domain {n}");
    }
    for (n, s) in &r.hosts {
        assert!(!needs_write(Some(&o.hosts[n].controller), s), "host {n}");
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

// ---------------------------------------------------------------------------------------------
// Rules 2, 3: sync by content, connect and disconnect
// ---------------------------------------------------------------------------------------------

#[test]
fn host_that_restarted_gets_full_map_again() {
    let mut o = steady(3, 2, t0());
    let r = report_of(&mut o, "h0001");
    r.boot_id = "h0001-boot-2".into();
    r.pool = None;
    r.domains.clear();
    let p = plan(&o, t0());
    assert_eq!(connects(&p), vec!["h0001"]);
    let HostCall::Connect { params, .. } = &p.calls[0] else {
        panic!("connect")
    };
    assert_eq!(params.domain_map.len(), 2);
    assert_eq!(params.host_id, 2);
    // Catching up is not a status change for the host.
    let r = report(
        &o,
        &p,
        &[CallOutcome {
            host: "h0001".into(),
            kind: CallKind::Connect,
            result: Ok(()),
        }],
        t0(),
    );
    assert!(!needs_write(
        Some(&o.hosts["h0001"].controller),
        &r.hosts["h0001"]
    ));
    converge(&mut o, t0(), 5);
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::Up));
}

#[test]
fn host_with_stale_master_version_is_reconnected() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0000")
        .pool
        .as_mut()
        .expect("pool")
        .master_version = 0;
    assert_eq!(connects(&plan(&o, t0())), vec!["h0000"]);
}

#[test]
fn host_holding_an_extra_domain_is_out_of_sync() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0001")
        .pool
        .as_mut()
        .expect("pool")
        .domain_map
        .push(crate::api::DomainMapEntry {
            uuid: uuid_of("stray"),
            status: MapStatus::Attached,
        });
    assert_eq!(connects(&plan(&o, t0())), vec!["h0001"]);
}

#[test]
fn map_listed_in_any_order_is_in_sync() {
    let mut o = steady(1, 3, t0());
    report_of(&mut o, "h0000")
        .pool
        .as_mut()
        .expect("pool")
        .domain_map
        .reverse();
    assert!(plan(&o, t0()).calls.is_empty());
}

#[test]
fn host_put_in_maintenance_is_disconnected_then_maintenance() {
    let mut o = steady(2, 1, t0());
    o.hosts.get_mut("h0001").expect("h").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(
        p.calls,
        vec![HostCall::Disconnect {
            host: "h0001".into(),
            endpoint: "http://h0001:54321/jsonrpc".into(),
            params: DisconnectParams {
                pool_uuid: POOL_UUID.into(),
                host_id: 2
            },
        }]
    );
    assert_eq!(p.hosts["h0001"].phase, HostPhase::PreparingForMaintenance);
    step(&mut o, t0());
    step(&mut o, t0());
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::Maintenance));
    assert!(is_true(
        &o.hosts["h0001"].controller.conditions,
        types::READY
    ));
    // It keeps its id.
    assert_eq!(o.pool.status.host_ids.len(), 2);
}

#[test]
fn host_that_left_the_pool_is_disconnected_and_loses_its_id() {
    let mut o = steady(2, 1, t0());
    o.hosts.get_mut("h0001").expect("h").spec.pool = Some("other".into());
    let p = plan(&o, t0());
    assert_eq!(disconnects(&p), vec!["h0001"]);
    assert!(
        !report(&o, &p, &[], t0()).hosts.contains_key("h0001"),
        "not this pool's to write"
    );
    step(&mut o, t0());
    step(&mut o, t0());
    assert_eq!(o.pool.status.host_ids.len(), 1);
}

#[test]
fn member_connected_to_another_pool_is_disconnected_from_it_first() {
    let mut o = world(1, 1, t0());
    report_of(&mut o, "h0000").pool = Some(PoolConnection {
        uuid: "other-uuid".into(),
        host_id: 9,
        ..Default::default()
    });
    let p = plan(&o, t0());
    assert_eq!(
        p.calls,
        vec![HostCall::Disconnect {
            host: "h0000".into(),
            endpoint: "http://h0000:54321/jsonrpc".into(),
            params: DisconnectParams {
                pool_uuid: "other-uuid".into(),
                host_id: 9
            },
        }]
    );
    converge(&mut o, t0(), 5);
    assert_eq!(host_phase(&o, "h0000"), Some(HostPhase::Up));
}

#[test]
fn non_responsive_host_gets_no_calls_and_is_non_responsive() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0000").pool = None;
    expire_lease(&mut o, "h0000");
    let p = plan(&o, t0());
    assert!(p.calls.is_empty());
    let r = report(&o, &p, &[], t0());
    assert_eq!(r.hosts["h0000"].phase, Some(HostPhase::NonResponsive));
    assert_eq!(
        cond(&r.hosts["h0000"].conditions, types::RESPONSIVE).reason,
        reasons::LEASE_EXPIRED
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::HOST_NOT_RESPONDING)
    );
    assert_eq!(r.pool.counts.unresponsive, 1);
}

#[test]
fn host_without_lease_is_never_heard_from() {
    let mut o = world(1, 1, t0());
    o.hosts.get_mut("h0000").expect("h").lease = None;
    let p = plan(&o, t0());
    assert!(p.calls.is_empty());
    let r = report(&o, &p, &[], t0());
    assert_eq!(
        cond(&r.hosts["h0000"].conditions, types::RESPONSIVE).reason,
        reasons::NO_LEASE
    );
}

#[test]
fn backing_off_host_is_skipped_and_requeued_at_backoff_end() {
    let mut o = world(1, 1, t0());
    let h = o.hosts.get_mut("h0000").expect("h");
    h.backoff = HostBackoff {
        not_before: Some(later(t0(), 8)),
        last_error: Some("error 379: boom".into()),
    };
    // Lease far in the future so the backoff is the earliest deadline.
    h.lease = Some(LeaseView {
        renew_time: Some(t0()),
        lease_duration_seconds: Some(3600),
    });
    let p = plan(&o, t0());
    assert!(p.calls.is_empty());
    assert!(p.hosts["h0000"].call_pending);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(8)));
}

#[test]
fn calls_are_capped_by_max_concurrent_connects_and_the_rest_deferred() {
    let mut o = world(10, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 3;
    let p = plan(&o, t0());
    assert_eq!(p.calls.len(), 3);
    assert_eq!(p.deferred_calls, 7);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
    assert_eq!(p.hosts.values().filter(|v| v.call_pending).count(), 7);
}

#[test]
fn disconnects_go_before_connects_under_the_cap() {
    let mut o = steady(3, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 1;
    report_of(&mut o, "h0000").pool = None;
    o.hosts.get_mut("h0002").expect("h").spec.maintenance = true;
    assert_eq!(
        plan(&o, t0())
            .calls
            .iter()
            .map(HostCall::host)
            .collect::<Vec<_>>(),
        vec!["h0002"]
    );
}

#[test]
fn failed_connect_marks_host_out_of_sync_and_pool_failing() {
    let mut o = world(2, 1, t0());
    let (_, r) = step_with(&mut o, t0(), &[failed("h0001", 379, "domain unreadable")]);
    let h = &r.hosts["h0001"];
    let c = cond(&h.conditions, types::IN_SYNC);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::CONNECT_FAILED)
    );
    assert!(c.message.contains("error 379: domain unreadable"));
    assert_eq!(h.phase, Some(HostPhase::Connecting));
    assert_eq!(r.pool.counts.failing, 1);
    assert_eq!(r.pool.lagging_hosts[0].host, "h0001");
    assert!(
        r.pool.lagging_hosts[0]
            .reason
            .starts_with("connect failing")
    );
    assert_eq!(
        cond(&r.pool.conditions, types::READY).reason,
        reasons::SYNC_FAILING
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::CONNECT_FAILED && e.object == ObjectRef::host("h0001"))
    );
    // The shell's backoff remembers the error; a later success clears it.
    o.hosts.get_mut("h0001").expect("h").backoff.last_error =
        Some("error 379: domain unreadable".into());
    let p = plan(&o, t0());
    assert_eq!(
        p.hosts["h0001"].failure,
        Some(SyncFailure::ConnectFailed(
            "error 379: domain unreadable".into()
        ))
    );
    let (_, r) = step_with(&mut o, t0(), &[]);
    assert_eq!(r.hosts["h0001"].phase, Some(HostPhase::Connecting));
    o.hosts.get_mut("h0001").expect("h").backoff = HostBackoff::default();
    converge(&mut o, t0(), 5);
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::Up));
    assert!(is_true(&o.pool.status.conditions, types::READY));
}

#[test]
fn catching_up_host_is_not_blamed_before_the_rollout_deadline() {
    let mut o = steady(4, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 2;
    o.pool.spec.sync.connect_timeout_seconds = 10;
    o.domains.insert("d001".into(), domain("d001", Some(POOL)));
    // Rollout starts; the hosts accept the connect but never report (their reports lag).
    let p = plan(&o, t0());
    assert!(p.persist_first.is_some());
    let r = report(&o, &p, &[], t0());
    write_back(&mut o, &p, &r);
    // Deadline: 10 s × (⌈4 / 2⌉ + 1) = 30 s.
    renew_all(&mut o, later(t0(), 29));
    let p = plan(&o, later(t0(), 29));
    assert!(p.hosts.values().all(|v| v.failure.is_none()));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
    let r = report(&o, &p, &[], later(t0(), 29));
    assert!(
        r.hosts
            .iter()
            .all(|(n, s)| !needs_write(Some(&o.hosts[n].controller), s))
    );
    let p = plan(&o, later(t0(), 30));
    assert!(
        p.hosts
            .values()
            .all(|v| v.failure == Some(SyncFailure::NotConfirmed))
    );
    let r = report(&o, &p, &[], later(t0(), 30));
    assert_eq!(
        cond(&r.hosts["h0000"].conditions, types::IN_SYNC).reason,
        reasons::NOT_CONFIRMED
    );
}

// ---------------------------------------------------------------------------------------------
// Rule 4: host ids
// ---------------------------------------------------------------------------------------------

#[test]
fn new_host_gets_lowest_free_id_and_others_keep_theirs() {
    let mut o = steady(3, 1, t0());
    o.hosts.remove("h0001");
    o.hosts
        .insert("a-new".into(), host("a-new", Some(POOL), t0()));
    let p = plan(&o, t0());
    assert_eq!(
        p.desired.host_ids,
        [
            ("a-new".to_string(), 2),
            ("h0000".to_string(), 1),
            ("h0002".to_string(), 3)
        ]
        .into()
    );
    assert_eq!(
        p.desired.map_version, o.pool.status.map_version,
        "ids do not change the map"
    );
}

#[test]
fn host_ids_are_rebuilt_from_reports_when_status_is_lost() {
    let mut o = steady(3, 1, t0());
    let before = o.pool.status.host_ids.clone();
    o.pool.status = StoragePoolStatus::default();
    // Make the reported ids unusual so "lowest free" would give different answers.
    for (name, id) in [("h0000", 7), ("h0001", 3), ("h0002", 5)] {
        report_of(&mut o, name).pool.as_mut().expect("pool").host_id = id;
    }
    let p = plan(&o, t0());
    assert_eq!(
        p.desired.host_ids,
        [
            ("h0000".into(), 7),
            ("h0001".into(), 3),
            ("h0002".into(), 5)
        ]
        .into()
    );
    assert_ne!(before.len(), 0);
}

#[test]
fn id_is_never_reassigned_under_a_connected_host() {
    let mut o = steady(2, 1, t0());
    // The status says h0000 has 1, but h0001 is connected with id 1 (e.g. after a lost status).
    report_of(&mut o, "h0001")
        .pool
        .as_mut()
        .expect("pool")
        .host_id = 1;
    report_of(&mut o, "h0000").pool = None;
    let p = plan(&o, t0());
    assert_eq!(p.desired.host_ids["h0001"], 1);
    assert_eq!(p.desired.host_ids["h0000"], 2);
}

#[test]
fn hosts_beyond_max_hosts_are_refused_with_a_condition() {
    let mut o = world(3, 1, t0());
    o.pool.spec.sync.max_hosts = 2;
    let (p, r) = step(&mut o, t0());
    assert_eq!(p.hosts["h0002"].role, HostRole::Refused);
    assert!(!connects(&p).contains(&"h0002"));
    let h = &r.hosts["h0002"];
    assert_eq!(
        cond(&h.conditions, types::READY).reason,
        reasons::TOO_MANY_HOSTS
    );
    let stalled = cond(&r.pool.conditions, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reasons::TOO_MANY_HOSTS)
    );
    assert!(stalled.message.contains("h0002"));
    assert!(r.events.iter().any(|e| e.reason == reasons::TOO_MANY_HOSTS));
}

// ---------------------------------------------------------------------------------------------
// Rules 5, 6: maintenance and activation
// ---------------------------------------------------------------------------------------------

#[test]
fn domain_moves_to_maintenance_then_maintenance_once_no_host_reports_it() {
    let mut o = steady(3, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::MovingToMaintenance);
    let r = report(&o, &p, &[], t0());
    let s = &r.domains["d001"];
    assert_eq!(s.blocking_hosts.len(), 3);
    assert!(s.blocking_hosts.iter().all(|b| b.reason == "not told yet"));
    let c = cond(&s.conditions, types::MOVING_TO_MAINTENANCE);
    assert_eq!(c.status, "True");
    assert!(c.message.contains("h0000 (not told yet)"));
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    let s = &o.domains["d001"].status;
    assert!(is_true(&s.conditions, types::READY));
    assert_eq!(
        cond(&s.conditions, types::MOVING_TO_MAINTENANCE).status,
        "False"
    );
    assert!(s.blocking_hosts.is_empty());
}

#[test]
fn domain_stays_moving_while_unresponsive_host_reports_it() {
    let mut o = steady(3, 2, t0());
    expire_lease(&mut o, "h0002");
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::MovingToMaintenance));
    let s = &o.domains["d001"].status;
    assert_eq!(s.blocking_hosts, vec![lagging("h0002", "not responding")]);
    let stalled = cond(&s.conditions, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reasons::HOSTS_NOT_RESPONDING)
    );
    assert!(stalled.message.contains("h0002"));
    // No timeout: still there an hour later.
    let mut o2 = o.clone();
    renew_all(&mut o2, later(t0(), 3600));
    expire_lease(&mut o2, "h0002");
    converge(&mut o2, later(t0(), 3600), 3);
    assert_eq!(phase(&o2, "d001"), Some(DomainPhase::MovingToMaintenance));
    // Putting the host in maintenance releases the domain.
    o.hosts.get_mut("h0002").expect("h").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert_eq!(host_phase(&o, "h0002"), Some(HostPhase::Maintenance));
}

/// A `LaggingHost` with less typing.
fn lagging(host: &str, reason: &str) -> crate::api::LaggingHost {
    crate::api::LaggingHost {
        host: host.into(),
        reason: reason.into(),
    }
}

#[test]
fn moving_domain_names_host_whose_connect_fails_with_its_error() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let (_, r) = step_with(
        &mut o,
        t0(),
        &[failed("h0001", 323, "connected to another pool")],
    );
    let s = &r.domains["d001"];
    assert_eq!(s.phase, Some(DomainPhase::MovingToMaintenance));
    assert_eq!(
        s.blocking_hosts,
        vec![
            lagging(
                "h0001",
                "connect failing: error 323: connected to another pool"
            ),
            lagging("h0000", "waiting for its report"),
        ]
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::HOSTS_STILL_REPORTING
                && e.type_ == EventType::Warning
                && e.note.contains("h0001"))
    );
}

#[test]
fn preparing_for_maintenance_host_still_blocks_until_it_stops_reporting() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    o.hosts.get_mut("h0001").expect("h").spec.maintenance = true;
    // The disconnect to h0001 fails: it keeps reporting d001.
    let fail = CallOutcome {
        host: "h0001".into(),
        kind: CallKind::Disconnect,
        result: Err(CallFailure {
            code: None,
            message: "timed out".into(),
        }),
    };
    let (_, r) = step_with(&mut o, t0(), &[fail]);
    assert_eq!(
        r.hosts["h0001"].phase,
        Some(HostPhase::PreparingForMaintenance)
    );
    assert_eq!(
        r.domains["d001"].phase,
        Some(DomainPhase::MovingToMaintenance)
    );
    assert!(
        r.domains["d001"]
            .blocking_hosts
            .iter()
            .any(|b| b.host == "h0001")
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::DISCONNECT_FAILED)
    );
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
}

#[test]
fn domain_is_activating_until_every_up_host_reports_it_valid_and_actual() {
    let mut o = steady(3, 1, t0());
    o.domains.insert("d001".into(), domain("d001", Some(POOL)));
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::Activating);
    // Every host took the map; h0002's monitor has not completed its first check.
    set_vitals(&mut o, "h0002", "d001", |v| v.actual = false);
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::Activating);
    assert!(
        p.domains["d001"].problem_hosts.is_empty(),
        "not actual is no problem"
    );
    set_vitals(&mut o, "h0002", "d001", |v| v.actual = true);
    step(&mut o, t0());
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Active));
    assert!(is_true(&o.domains["d001"].status.conditions, types::READY));
}

#[test]
fn maintenance_domain_reactivated_goes_back_through_activating() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    o.domains.get_mut("d001").expect("d").spec.maintenance = false;
    let p = plan(&o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::Activating);
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Active));
}

// ---------------------------------------------------------------------------------------------
// Rule 7: detach, finalizers, pool deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn detached_active_domain_moves_to_maintenance_then_detaches_then_is_unattached() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.pool = None;
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::MovingToMaintenance);
    assert_eq!(
        p.desired.domain_map.get(&uuid_of("d001")),
        Some(&MapStatus::Attached)
    );
    // Hosts stopped monitoring it: now it leaves the map.
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::Detaching);
    assert!(!p.desired.domain_map.contains_key(&uuid_of("d001")));
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Unattached));
    assert_eq!(o.domains["d001"].status.pool, None);
    assert!(is_true(&o.domains["d001"].status.conditions, types::READY));
}

#[test]
fn deleted_domain_keeps_its_finalizer_until_detached() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").deleting = true;
    let (p, _) = step(&mut o, t0());
    assert!(p.finalizers.is_empty(), "{:?}", p.finalizers);
    let (p, _) = step(&mut o, t0());
    assert!(p.finalizers.is_empty());
    let (p, _) = step(&mut o, t0());
    assert_eq!(
        p.finalizers,
        vec![FinalizerChange {
            object: ObjectRef::domain("d001"),
            finalizer: DOMAIN_FINALIZER,
            action: FinalizerAction::Remove,
        }]
    );
    assert!(
        !o.domains.contains_key("d001"),
        "gone once the finalizer is removed"
    );
}

#[test]
fn member_domain_and_pool_get_their_finalizers() {
    let mut o = world(1, 1, t0());
    o.domains.get_mut("d000").expect("d").has_finalizer = false;
    o.pool.has_finalizer = false;
    let p = plan(&o, t0());
    assert_eq!(
        p.finalizers,
        vec![
            FinalizerChange {
                object: ObjectRef::domain("d000"),
                finalizer: DOMAIN_FINALIZER,
                action: FinalizerAction::Add
            },
            FinalizerChange {
                object: ObjectRef::pool(POOL),
                finalizer: POOL_FINALIZER,
                action: FinalizerAction::Add
            },
        ]
    );
}

#[test]
fn deleting_pool_with_attached_domains_is_held_and_says_why() {
    let mut o = steady(1, 2, t0());
    o.pool.deleting = true;
    let (p, r) = step(&mut o, t0());
    assert!(!p.finalizers.iter().any(|f| f.finalizer == POOL_FINALIZER));
    let stalled = cond(&r.pool.conditions, types::STALLED);
    assert_eq!(stalled.reason, reasons::DOMAINS_ATTACHED);
    assert!(stalled.message.contains("d000") && stalled.message.contains("d001"));
}

#[test]
fn deleting_pool_without_domains_disconnects_hosts_then_drops_its_finalizer() {
    let mut o = steady(2, 1, t0());
    o.pool.deleting = true;
    o.domains.get_mut("d000").expect("d").spec.pool = None;
    converge(&mut o, t0(), 8);
    assert!(!o.pool.has_finalizer);
    assert!(
        o.hosts
            .values()
            .all(|h| h.report.parsed().is_some_and(|r| r.pool.is_none()))
    );
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Unattached));
}

#[test]
fn domain_moving_between_pools_waits_until_the_old_pool_lets_go() {
    let mut o = world(1, 1, t0());
    let mut d = domain("moved", Some(POOL));
    d.leaving_other_pool = true;
    d.status.pool = Some("old".into());
    d.status.phase = Some(DomainPhase::MovingToMaintenance);
    o.domains.insert("moved".into(), d);
    let p = plan(&o, t0());
    assert!(!p.desired.domain_map.contains_key(&uuid_of("moved")));
    assert!(!p.domains["moved"].owned);
    assert!(!report(&o, &p, &[], t0()).domains.contains_key("moved"));
}

// ---------------------------------------------------------------------------------------------
// Rule 8: problems, grace, blame, recovery
// ---------------------------------------------------------------------------------------------

fn with_grace(mut o: Observed, secs: i32) -> Observed {
    o.pool.spec.sync.problem_grace_seconds = secs;
    o
}

#[test]
fn problem_starts_grace_period_in_the_domain_condition() {
    let mut o = with_grace(steady(3, 2, t0()), 60);
    set_vitals(&mut o, "h0000", "d001", |v| {
        v.valid = false;
        v.code = 379;
    });
    let (p, r) = step(&mut o, later(t0(), 5));
    assert_eq!(p.domains["d001"].grace_ends, Some(later(t0(), 65)));
    let c = cond(&r.domains["d001"].conditions, types::PROBLEM);
    assert_eq!(
        (c.status.as_str(), c.last_transition_time.0),
        ("True", later(t0(), 5))
    );
    assert!(c.message.contains("h0000"));
    assert_eq!(r.domains["d001"].phase, Some(DomainPhase::Active));
    assert!(r.events.iter().any(|e| e.reason == reasons::DOMAIN_PROBLEM));
}

#[test]
fn grace_survives_controller_restart_because_it_lives_in_the_condition() {
    let mut o = with_grace(steady(3, 2, t0()), 60);
    set_vitals(&mut o, "h0000", "d001", |v| v.valid = false);
    step(&mut o, later(t0(), 5));
    // A "restarted" controller has only the objects; at 64 s the grace runs on, at 65 s it ends.
    renew_all(&mut o, later(t0(), 60));
    let p = plan(&o, later(t0(), 64));
    assert_eq!(p.hosts["h0000"].phase, HostPhase::Up);
    let p = plan(&o, later(t0(), 65));
    assert_eq!(p.hosts["h0000"].phase, HostPhase::NonOperational);
}

#[test]
fn host_that_alone_cannot_reach_a_domain_becomes_non_operational_after_grace() {
    let mut o = with_grace(steady(3, 2, t0()), 60);
    drop_domain_report(&mut o, "h0001", "d000");
    step(&mut o, t0());
    renew_all(&mut o, later(t0(), 60));
    let (_, r) = step(&mut o, later(t0(), 60));
    let h = &r.hosts["h0001"];
    assert_eq!(h.phase, Some(HostPhase::NonOperational));
    let c = cond(&h.conditions, types::OPERATIONAL);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::STORAGE_DOMAIN_UNREACHABLE)
    );
    assert!(c.message.contains("d000"));
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::STORAGE_DOMAIN_UNREACHABLE)
    );
    assert_eq!(r.domains["d000"].phase, Some(DomainPhase::Active));
    // Next round the domain's problem is gone (the host is no longer Up) and stays NonOperational.
    let (_, r) = step(&mut o, later(t0(), 61));
    assert_eq!(
        cond(&r.domains["d000"].conditions, types::PROBLEM).status,
        "False"
    );
    assert_eq!(r.hosts["h0001"].phase, Some(HostPhase::NonOperational));
}

#[test]
fn non_operational_host_with_clean_reports_returns_up() {
    let mut o = with_grace(steady(3, 2, t0()), 60);
    set_vitals(&mut o, "h0001", "d000", |v| v.last_check_seconds = 45.0);
    step(&mut o, t0());
    renew_all(&mut o, later(t0(), 60));
    step(&mut o, later(t0(), 60));
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::NonOperational));
    set_vitals(&mut o, "h0001", "d000", |v| v.last_check_seconds = 3.0);
    let (_, r) = step(&mut o, later(t0(), 70));
    assert_eq!(r.hosts["h0001"].phase, Some(HostPhase::Up));
    assert!(is_true(&r.hosts["h0001"].conditions, types::OPERATIONAL));
    assert!(r.events.iter().any(|e| e.reason == reasons::HOST_RECOVERED));
}

#[test]
fn domain_every_up_host_fails_becomes_inactive_then_recovers() {
    let mut o = with_grace(steady(2, 2, t0()), 60);
    for h in ["h0000", "h0001"] {
        set_vitals(&mut o, h, "d001", |v| {
            v.valid = false;
            v.code = 358;
        });
    }
    step(&mut o, t0());
    renew_all(&mut o, later(t0(), 60));
    let (p, r) = step(&mut o, later(t0(), 60));
    assert_eq!(r.domains["d001"].phase, Some(DomainPhase::Inactive));
    assert!(
        p.hosts.values().all(|v| v.phase == HostPhase::Up),
        "the domain is blamed, not hosts"
    );
    assert_eq!(p.desired.domain_map[&uuid_of("d001")], MapStatus::Active);
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::DOMAIN_INACTIVE && e.type_ == EventType::Warning)
    );
    // Stays Inactive while it fails.
    let (_, r) = step(&mut o, later(t0(), 61));
    assert_eq!(r.domains["d001"].phase, Some(DomainPhase::Inactive));
    // One Up host sees it valid and actual again: Active.
    set_vitals(&mut o, "h0000", "d001", |v| {
        v.valid = true;
        v.code = 0;
    });
    let (_, r) = step(&mut o, later(t0(), 70));
    assert_eq!(r.domains["d001"].phase, Some(DomainPhase::Active));
}

#[test]
fn iso_domain_problem_on_one_host_does_not_blame_the_host() {
    let mut o = with_grace(steady(2, 1, t0()), 60);
    let mut iso = domain("iso", Some(POOL));
    iso.spec.type_ = DomainType::Iso;
    o.domains.insert("iso".into(), iso);
    converge(&mut o, t0(), 5);
    drop_domain_report(&mut o, "h0000", "iso");
    step(&mut o, t0());
    renew_all(&mut o, later(t0(), 60));
    let (_, r) = step(&mut o, later(t0(), 60));
    assert_eq!(r.hosts["h0000"].phase, Some(HostPhase::Up));
}

#[test]
fn host_catching_up_is_no_problem_for_a_domain_it_was_not_told() {
    let mut o = steady(2, 1, t0());
    o.domains.insert("d001".into(), domain("d001", Some(POOL)));
    let p = plan(&o, t0());
    assert!(p.domains["d001"].problem_hosts.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rule 10: bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_uuids_are_both_flagged_and_neither_in_the_map() {
    let mut o = world(1, 1, t0());
    let mut twin = domain("twin", Some(POOL));
    twin.spec.uuid = uuid_of("d000");
    o.domains.insert("twin".into(), twin);
    let (p, r) = step(&mut o, t0());
    assert!(p.desired.domain_map.is_empty());
    for d in ["d000", "twin"] {
        assert!(matches!(
            p.domains[d].flag,
            Some(DomainFlag::DuplicateUuid(_))
        ));
        assert_eq!(
            cond(&r.domains[d].conditions, types::STALLED).reason,
            reasons::DUPLICATE_DOMAIN_UUID
        );
    }
    assert_eq!(
        cond(&r.pool.conditions, types::STALLED).reason,
        reasons::DUPLICATE_DOMAIN_UUID
    );
}

#[test]
fn uuid_used_by_a_domain_elsewhere_is_flagged() {
    let mut o = world(1, 2, t0());
    o.uuids_elsewhere
        .insert(uuid_of("d001"), BTreeSet::from(["far-away".to_string()]));
    let p = plan(&o, t0());
    assert_eq!(
        p.domains["d001"].flag,
        Some(DomainFlag::DuplicateUuid(BTreeSet::from([
            "far-away".to_string()
        ])))
    );
    assert_eq!(p.desired.domain_map.len(), 1);
}

#[test]
fn more_than_100_domains_are_flagged_beyond_the_limit() {
    let o = world(1, 102, t0());
    let p = plan(&o, t0());
    assert_eq!(p.desired.domain_map.len(), 100);
    assert_eq!(p.domains["d100"].flag, Some(DomainFlag::TooManyDomains));
    assert_eq!(p.domains["d101"].flag, Some(DomainFlag::TooManyDomains));
    let r = report(&o, &p, &[], t0());
    assert_eq!(
        cond(&r.pool.conditions, types::STALLED).reason,
        reasons::TOO_MANY_DOMAINS
    );
}

#[test]
fn unparsable_report_is_ignored_with_an_event_and_no_calls() {
    let mut o = steady(2, 1, t0());
    o.hosts.get_mut("h0001").expect("h").report =
        ReportView::Invalid("invalid type: string".into());
    let p = plan(&o, t0());
    assert!(p.calls.is_empty());
    let r = report(&o, &p, &[], t0());
    assert_eq!(
        cond(&r.hosts["h0001"].conditions, types::IN_SYNC).reason,
        reasons::REPORT_UNPARSABLE
    );
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == reasons::REPORT_UNPARSABLE)
    );
    write_back(&mut o, &p, &r);
    let r = report(&o, &plan(&o, t0()), &[], t0());
    assert!(
        !r.events
            .iter()
            .any(|e| e.reason == reasons::REPORT_UNPARSABLE),
        "event only on the transition"
    );
}

#[test]
fn pool_with_no_hosts_is_ready_with_a_message_and_domains_unknown() {
    let mut o = world(0, 2, t0());
    converge(&mut o, t0(), 4);
    let ready = cond(&o.pool.status.conditions, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::NO_HOSTS)
    );
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Unknown));
    assert_eq!(
        cond(&o.domains["d000"].status.conditions, types::READY).status,
        "Unknown"
    );
}

#[test]
fn orphan_domain_naming_a_missing_pool_says_pool_not_found() {
    let d = domain("lost", Some("nowhere"));
    let s = orphan_domain(d.generation, &d.spec, &d.status, t0());
    assert_eq!(s.phase, Some(DomainPhase::Unattached));
    let c = cond(&s.conditions, types::STALLED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::POOL_NOT_FOUND)
    );
    assert!(c.message.contains("nowhere"));
    let free = domain("free", None);
    let s = orphan_domain(free.generation, &free.spec, &free.status, t0());
    assert!(is_true(&s.conditions, types::READY));
    assert!(!needs_write(
        Some(&s),
        &orphan_domain(free.generation, &free.spec, &s, later(t0(), 9))
    ));
}

// ---------------------------------------------------------------------------------------------
// Master, legacy
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Rule 12: write budget
// ---------------------------------------------------------------------------------------------

/// Counts the controller's writes over a rollout where agents answer one wave per reconcile.
fn rollout_writes(hosts: usize) -> (usize, usize, usize) {
    let mut o = steady(hosts, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let (mut pool_writes, mut domain_writes, mut host_writes) = (0, 0, 0);
    for round in 0..(hosts / 32 + 10) {
        let now = later(t0(), i64::try_from(round).unwrap_or(0));
        let before = o.clone();
        let p = plan(&o, now);
        pool_writes += usize::from(p.persist_first.is_some());
        let persisted = p
            .persist_first
            .clone()
            .unwrap_or_else(|| o.pool.status.clone());
        for call in &p.calls {
            obey(o.hosts.get_mut(call.host()).expect("h"), call);
        }
        let outcomes: Vec<CallOutcome> = p
            .calls
            .iter()
            .map(|c| CallOutcome {
                host: c.host().into(),
                kind: c.kind(),
                result: Ok(()),
            })
            .collect();
        let r = report(&o, &p, &outcomes, now);
        pool_writes += usize::from(needs_write(Some(&persisted), &r.pool));
        domain_writes += r
            .domains
            .iter()
            .filter(|(n, s)| needs_write(Some(&before.domains[*n].status), s))
            .count();
        host_writes += r
            .hosts
            .iter()
            .filter(|(n, s)| needs_write(Some(&before.hosts[*n].controller), s))
            .count();
        write_back(&mut o, &p, &r);
    }
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert!(
        is_true(&o.pool.status.conditions, types::READY),
        "{:?}",
        o.pool.status
    );
    (pool_writes, domain_writes, host_writes)
}

#[test]
fn healthy_rollout_costs_constant_controller_writes_whatever_the_pool_size() {
    let small = rollout_writes(64);
    let large = rollout_writes(640);
    assert_eq!(small.2, 0, "no host status changes while hosts catch up");
    assert_eq!(large.2, 0, "no host status changes while hosts catch up");
    assert!(large.0 <= 14, "pool writes {large:?}");
    assert!(large.1 <= 14, "domain writes {large:?}");
    assert!(
        large.0 <= small.0 + 12 && large.1 <= small.1 + 12,
        "{small:?} vs {large:?}"
    );
    eprintln!("writes (pool, domains, hosts): 64 hosts {small:?}, 640 hosts {large:?}");
}

#[test]
fn idle_pool_writes_nothing_as_time_passes() {
    let mut o = steady(20, 3, t0());
    for secs in [5, 30, 600] {
        let now = later(t0(), secs);
        renew_all(&mut o, now);
        let before = o.clone();
        let (p, r) = step(&mut o, now);
        assert!(p.calls.is_empty() && p.persist_first.is_none());
        assert_eq!(o, before_with_leases(&before, &o));
        assert!(r.events.is_empty());
    }
}

fn before_with_leases(before: &Observed, after: &Observed) -> Observed {
    let mut b = before.clone();
    for (n, h) in &mut b.hosts {
        h.lease = after.hosts[n].lease;
    }
    b
}

#[test]
fn bucket_moves_in_tenths_with_exact_ends() {
    use super::status::bucket;
    assert_eq!(bucket(0, 2000), 0);
    assert_eq!(bucket(2000, 2000), 11);
    assert_eq!(bucket(1, 2000), bucket(199, 2000));
    assert_ne!(bucket(199, 2000), bucket(200, 2000));
    assert_eq!(bucket(1, 1), 11);
}

#[test]
fn pool_fixture_has_its_uuid() {
    assert_eq!(super::map::pool_uuid(&pool()), POOL_UUID);
}
