//! Maintenance and activation: a domain moves to maintenance while any connected host still
//! reports it (naming each blocking host and why), and activates once every Up host reports it valid.

use super::*;
use crate::api::LagReason;

#[test]
fn domain_moves_to_maintenance_then_maintenance_once_no_host_reports_it() {
    let mut o = steady(3, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::MovingToMaintenance);
    let r = report(&o, &p, &[], t0());
    let s = &r.domains["d001"];
    assert_eq!(s.blocking_hosts.len(), 3);
    assert!(s.blocking_hosts.iter().all(|b| b.message == "not told yet"));
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
    assert_eq!(
        s.blocking_hosts,
        vec![lagging("h0002", LagReason::NotResponding, "not responding")]
    );
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
fn lagging(host: &str, reason: LagReason, message: &str) -> crate::api::LaggingHost {
    crate::api::LaggingHost {
        host: host.into(),
        reason,
        message: message.into(),
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
                LagReason::ConnectFailing,
                "connect failing: error 323: connected to another pool"
            ),
            lagging(
                "h0000",
                LagReason::WaitingForReport,
                "waiting for its report"
            ),
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
    add_attached(&mut o, domain("d001", Some(POOL)));
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

#[test]
fn host_with_unparsable_report_blocks_maintenance_until_it_reports_again() {
    let mut o = steady(2, 2, t0());
    let good = o.hosts["h0001"].report.clone();
    o.hosts.get_mut("h0001").expect("h").report = ReportView::Invalid("invalid type: map".into());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::MovingToMaintenance));
    assert_eq!(
        o.domains["d001"].status.blocking_hosts,
        vec![lagging(
            "h0001",
            LagReason::ReportUnparsable,
            "report unreadable: invalid type: map"
        )]
    );
    let moving = cond(
        &o.domains["d001"].status.conditions,
        types::MOVING_TO_MAINTENANCE,
    );
    assert!(
        moving
            .message
            .contains("h0001 (report unreadable: invalid type: map)"),
        "{}",
        moving.message
    );
    // A domain already in maintenance is not pulled back.
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));
    // Readable again: it gets the map, stops monitoring d001, and d001 finishes.
    o.hosts.get_mut("h0001").expect("h").report = good;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
}

#[test]
fn host_whose_report_vanished_after_a_connect_blocks_maintenance() {
    let mut o = world(2, 2, t0());
    // Both hosts are told the map; h0001's report is then lost before it shows the map.
    let (p, _) = step(&mut o, t0());
    assert_eq!(connects(&p), vec!["h0000", "h0001"]);
    o.hosts.get_mut("h0001").expect("h").report = ReportView::Missing;
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::MovingToMaintenance));
    assert_eq!(
        o.domains["d001"].status.blocking_hosts,
        vec![lagging(
            "h0001",
            LagReason::ReportUnparsable,
            "report unreadable: missing"
        )]
    );
}

#[test]
fn host_with_unparsable_report_blocks_detaching_until_it_is_released() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    // The report breaks: no call reaches the host, so it keeps the map that holds d001.
    o.hosts.get_mut("h0001").expect("h").report = ReportView::Invalid("bad uuid".into());
    assert_eq!(
        plan(&o, t0()).domains["d001"].phase,
        DomainPhase::Maintenance,
        "a domain already in maintenance stays there"
    );
    o.domains.get_mut("d001").expect("d").spec.pool = None;
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Detaching));
    assert_eq!(
        o.domains["d001"].status.blocking_hosts,
        vec![lagging(
            "h0001",
            LagReason::ReportUnparsable,
            "report unreadable: bad uuid"
        )]
    );
    // Put in maintenance and silent, the host is released.
    o.hosts.get_mut("h0001").expect("h").spec.maintenance = true;
    expire_lease(&mut o, "h0001");
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Unattached));
}

#[test]
fn domain_stays_moving_while_a_host_holds_it_active_without_listing_it() {
    let mut o = steady(2, 2, t0());
    // h0000 was told to monitor d001 (the map it holds says so) but its report does not list it
    // yet: it may be starting the monitor, so it has not let go.
    drop_domain_report(&mut o, "h0000", "d001");
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let p = plan(&o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::MovingToMaintenance);
    assert!(p.domains["d001"].blocking.contains("h0000"));
    // Once it holds the map that asks it to stop, the domain reaches Maintenance.
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
}

/// One reconcile at `now` in which every call is accepted, but the hosts in `silent` never report
/// what they took (their report writer is stuck); the others obey at once. Leases are renewed.
fn round_with_silent_hosts(o: &mut Observed, now: Timestamp, silent: &[&str]) -> Plan {
    renew_all(o, now);
    let p = plan(o, now);
    apply_ledger(o, &p);
    let mut outcomes = Vec::new();
    for call in &p.calls {
        let sent = start(o, call, now);
        answer(o, call.host(), sent, &Ok(()), now);
        if !silent.contains(&call.host()) {
            super::super::fixtures::obey(o.hosts.get_mut(call.host()).expect("host"), call);
        }
        outcomes.push(CallOutcome {
            host: call.host().into(),
            kind: call.kind(),
            result: Ok(()),
        });
    }
    let r = report(o, &p, &outcomes, now);
    write_back(o, &p, &r);
    p
}

#[test]
fn domain_a_host_was_told_and_never_confirmed_stays_moving_until_it_reports() {
    let mut o = steady(2, 2, t0());
    add_attached(&mut o, domain("d002", Some(POOL)));
    // Both hosts take the map with d002 active; h0000 never reports it (its report is stale, and
    // shows neither d002 nor its new map).
    for s in 1..=3 {
        round_with_silent_hosts(&mut o, later(t0(), s), &["h0000"]);
    }
    assert!(
        !report_of(&mut o, "h0000")
            .domains
            .iter()
            .any(|v| v.uuid == uuid_of("d002"))
    );
    o.domains.get_mut("d002").expect("d").spec.maintenance = true;
    for s in 4..=100 {
        round_with_silent_hosts(&mut o, later(t0(), s), &["h0000"]);
        assert_eq!(
            phase(&o, "d002"),
            Some(DomainPhase::MovingToMaintenance),
            "at {s} s: h0000 may still monitor d002"
        );
    }
    let s = &o.domains["d002"].status;
    assert_eq!(
        s.blocking_hosts
            .iter()
            .map(|b| (b.host.as_str(), b.reason))
            .collect::<Vec<_>>(),
        vec![("h0000", LagReason::NotConfirming)]
    );

    // Its report arrives: the deactivation completes.
    for s in 101..=200 {
        round_with_silent_hosts(&mut o, later(t0(), s), &[]);
    }
    assert_eq!(phase(&o, "d002"), Some(DomainPhase::Maintenance));
}

#[test]
fn host_that_refused_or_restarted_holds_no_domain_it_was_told() {
    let mut o = steady(2, 2, t0());
    add_attached(&mut o, domain("d002", Some(POOL)));
    let now = later(t0(), 1);
    let to_h0 = call_to(&o, "h0000", now);
    let to_h1 = call_to(&o, "h0001", now);
    // h0000 refuses with a VDSM error (it took nothing); h0001 takes it and restarts before it
    // reports (it lost what it was told: its report says so with a new bootId).
    refuse(&mut o, &to_h0, 1, now, 325, "connected under another id");
    accept(&mut o, &to_h1, now);
    report_of(&mut o, "h0001").boot_id = "h0001-boot-2".into();
    o.domains.get_mut("d002").expect("d").spec.maintenance = true;
    let p = plan(&o, later(t0(), 2));
    assert_eq!(p.domains["d002"].phase, DomainPhase::Maintenance);
}
