//! Liveness: judged from when the controller observed a Lease renewal (its own clock), as the
//! node-lifecycle controller does, with a grace of one Lease duration after the controller starts
//! or regains the API server; never from the agent's `renewTime` against the controller's clock.

use super::*;

/// Every host's Lease as the controller finds it when it starts or regains the API server at
/// `found`: last renewed at `renewed` (before the outage).
fn found_all(o: &mut Observed, renewed: Timestamp, found: Timestamp) {
    for h in o.hosts.values_mut() {
        h.lease = Some(LeaseView {
            renew_time: Some(renewed),
            lease_duration_seconds: Some(40),
            observed: Observation::Found(found),
        });
    }
}

#[test]
fn renewal_observed_recently_counts_whatever_the_renew_time_says() {
    let mut o = steady(2, 1, t0());
    // The agent's clock is ten minutes behind the controller's.
    o.hosts.get_mut("h0000").expect("h").lease = Some(LeaseView {
        renew_time: Some(at(-600)),
        lease_duration_seconds: Some(40),
        observed: Observation::Renewed(at(-5)),
    });
    let (p, r) = step(&mut o, t0());
    assert!(p.hosts["h0000"].responsive);
    assert_eq!(r.hosts["h0000"].phase, Some(HostPhase::Up));
    assert!(r.events.is_empty(), "{:?}", r.events);
}

#[test]
fn an_api_server_outage_longer_than_the_lease_flips_no_host() {
    let mut o = steady(3, 1, t0());
    let before = o.clone();
    // The API server was down for five minutes: no renewal could be written or seen. The
    // controller regained it at t0 and finds every Lease as it was before the outage.
    found_all(&mut o, at(-300), t0());
    for now in [t0(), later(t0(), 10), later(t0(), 39)] {
        let (p, r) = step(&mut o, now);
        assert!(p.hosts.values().all(|v| v.responsive), "at {now}");
        assert!(p.calls.is_empty(), "at {now}: {:?}", p.calls);
        assert!(r.events.is_empty(), "at {now}: {:?}", r.events);
        assert_eq!(
            r.hosts,
            report(&before, &plan(&before, t0()), &[], t0()).hosts
        );
    }
    // The grace ends a Lease duration after the regain: the planner looks again then.
    let p = plan(&o, later(t0(), 10));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
    // The agents renewed meanwhile (seen): still Up.
    renew_all(&mut o, later(t0(), 12));
    let (p, _) = step(&mut o, later(t0(), 45));
    assert!(p.hosts.values().all(|v| v.responsive));
}

#[test]
fn host_silent_through_the_grace_becomes_non_responsive() {
    let mut o = steady(2, 1, t0());
    found_all(&mut o, at(-300), t0());
    renew_all(&mut o, later(t0(), 5));
    // h0001 never renews after the regain.
    o.hosts.get_mut("h0001").expect("h").lease = Some(LeaseView {
        renew_time: Some(at(-300)),
        lease_duration_seconds: Some(40),
        observed: Observation::Found(t0()),
    });
    let (p, r) = step(&mut o, later(t0(), 40));
    assert!(p.hosts["h0000"].responsive);
    assert!(!p.hosts["h0001"].responsive);
    assert_eq!(r.hosts["h0001"].phase, Some(HostPhase::NonResponsive));
}

#[test]
fn host_judged_unresponsive_gets_no_grace_until_a_renewal_is_seen() {
    let mut o = steady(2, 1, t0());
    expire_lease(&mut o, "h0000");
    let (p, _) = step(&mut o, t0());
    assert!(!p.hosts["h0000"].responsive);
    assert_eq!(host_phase(&o, "h0000"), Some(HostPhase::NonResponsive));
    // The pool manager's role moved off h0000 (chosen, then started on h0001).
    step(&mut o, t0());
    // The controller restarts (or regains the API server) at t0 + 60 and finds the old Lease.
    found_all(&mut o, at(-1000), later(t0(), 60));
    let (p, r) = step(&mut o, later(t0(), 61));
    assert!(!p.hosts["h0000"].responsive, "no flip back to responsive");
    assert!(
        p.hosts["h0001"].responsive,
        "a responsive host keeps its verdict"
    );
    assert!(r.events.is_empty(), "{:?}", r.events);
    // Its agent renews (seen): it is back.
    o.hosts.get_mut("h0000").expect("h").lease = Some(LeaseView {
        renew_time: Some(later(t0(), 62)),
        lease_duration_seconds: Some(40),
        observed: Observation::Renewed(later(t0(), 63)),
    });
    let (p, _) = step(&mut o, later(t0(), 64));
    assert!(p.hosts["h0000"].responsive);
}
