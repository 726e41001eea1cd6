//! Sync by content (pool, id, master, master version, exact map), and the connects and
//! disconnects that follow: who gets a call, in what order, under the concurrency cap and backoff,
//! and when a host that merely catches up is blamed.

use super::*;
use crate::api::LagReason;

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
        Some(&*o.hosts["h0001"].controller),
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
        .insert(uuid_of("stray"), MapStatus::Attached);
    assert_eq!(connects(&plan(&o, t0())), vec!["h0001"]);
}

#[test]
fn map_listed_in_any_order_is_in_sync() {
    let mut o = steady(1, 3, t0());
    let pool = report_of(&mut o, "h0000").pool.as_mut().expect("pool");
    // The agent lists its map as it likes; the list it wrote, read back in reverse order.
    let mut listed = serde_json::to_value(&pool.domain_map).expect("json");
    if let Some(entries) = listed.as_array_mut() {
        entries.reverse();
    }
    pool.domain_map = serde_json::from_value(listed).expect("map");
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
            endpoint: "h0001:54321".into(),
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
            endpoint: "h0000:54321".into(),
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
    // Lease far in the future so the backoff is the earliest deadline.
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    // The fourth failure in a row: 8 s, stretched by the host's jitter.
    refuse(&mut o, &call, 4, t0(), 379, "boom");
    let p = plan(&o, t0());
    assert!(p.calls.is_empty());
    assert!(p.hosts["h0000"].call_pending);
    let delay = super::super::ledger::backoff_delay(4, "h0000");
    assert!(delay >= Duration::from_secs(8) && delay <= Duration::from_millis(9600));
    assert_eq!(p.requeue_after, Some(delay));
}

#[test]
fn every_due_host_is_planned_in_order_whatever_the_cap() {
    // The cap paces the sending (the shell keeps at most maxConcurrentConnects in flight); the
    // plan names every host due now, so no host waits for another reconcile to be named.
    let mut o = world(10, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 3;
    let p = plan(&o, t0());
    let hosts: Vec<&str> = p.calls.iter().map(HostCall::host).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("h{i:04}")).collect();
    assert_eq!(hosts, expected);
    assert!(p.hosts.values().all(|v| !v.call_pending));
}

#[test]
fn disconnects_go_before_connects() {
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
        vec!["h0002", "h0000"]
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
            .message
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
    // The call ledger remembers the error (its backoff over by now); a later success clears it.
    let call = call_to(&o, "h0001", t0());
    refuse(&mut o, &call, 1, later(t0(), -10), 379, "domain unreadable");
    let p = plan(&o, t0());
    assert_eq!(
        p.hosts["h0001"].failure,
        Some(SyncFailure::ConnectFailed(
            "error 379: domain unreadable".into()
        ))
    );
    let (_, r) = step_with(&mut o, t0(), &[]);
    assert_eq!(r.hosts["h0001"].phase, Some(HostPhase::Connecting));
    accept(&mut o, &call, t0());
    converge(&mut o, t0(), 5);
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::Up));
    assert!(is_true(&o.pool.status.conditions, types::READY));
}

#[test]
fn catching_up_host_is_not_blamed_before_the_rollout_deadline() {
    let mut o = steady(4, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 2;
    o.pool.spec.sync.connect_timeout_seconds = 10;
    add_attached(&mut o, domain("d001", Some(POOL)));
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
            .all(|(n, s)| !needs_write(Some(&*o.hosts[n].controller), s))
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

#[test]
fn host_is_called_at_the_operators_endpoint_over_the_published_one() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0001").pool = None;
    let h = o.hosts.get_mut("h0001").expect("host");
    h.spec.endpoint = Some("override:54321".into());
    let p = plan(&o, t0());
    let HostCall::Connect { endpoint, .. } = &p.calls[0] else {
        panic!("connect")
    };
    assert_eq!(endpoint, "override:54321");
}

#[test]
fn host_without_any_endpoint_gets_no_call_and_says_why() {
    let mut o = steady(2, 1, t0());
    report_of(&mut o, "h0001").pool = None;
    o.hosts.get_mut("h0001").expect("host").status_endpoint = None;
    let p = plan(&o, t0());
    assert!(connects(&p).is_empty(), "{:?}", p.calls);
    assert_eq!(p.hosts["h0001"].failure, Some(SyncFailure::NoEndpoint));
    let r = report(&o, &p, &[], t0());
    let c = &r.hosts["h0001"].conditions;
    for type_ in [types::IN_SYNC, types::READY] {
        let c = cond(c, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::NO_ENDPOINT)
        );
        assert!(
            c.message
                .contains("neither spec.endpoint nor status.endpoint"),
            "{}",
            c.message
        );
    }
    let lagging = &r.pool.lagging_hosts;
    assert!(
        lagging
            .iter()
            .any(|l| l.host == "h0001" && l.reason == LagReason::NoEndpoint),
        "{lagging:?}"
    );
    // An empty override counts as none.
    o.hosts.get_mut("h0001").expect("host").spec.endpoint = Some(String::new());
    assert!(connects(&plan(&o, t0())).is_empty());
}
