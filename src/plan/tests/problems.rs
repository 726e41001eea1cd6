//! Domain problems: the grace period (kept in the `Problem` condition), blame of the hosts that
//! alone cannot reach a domain, a domain every Up host fails becoming Inactive, and recovery.

use super::*;

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
