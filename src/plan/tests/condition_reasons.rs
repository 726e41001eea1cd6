//! Condition reasons say the state an object is in: an idle object is not `Progressing`, an
//! active domain is not moving to maintenance because "no host reports it", a host nobody asked
//! to reach its domains is not judged on them.

use super::*;

fn says(c: &[Condition], type_: &str) -> (String, String) {
    let c = cond(c, type_);
    (c.status.clone(), c.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

#[test]
fn an_idle_pool_and_its_active_domains_say_idle_and_maintenance_not_requested() {
    let o = steady(3, 2, t0());
    let d = &o.domains["d000"].status.conditions;
    assert_eq!(says(d, types::STALLED), pair("False", reasons::IDLE));
    assert_eq!(says(d, types::RECONCILING), pair("False", reasons::IDLE));
    assert_eq!(
        says(d, types::MOVING_TO_MAINTENANCE),
        pair("False", reasons::MAINTENANCE_NOT_REQUESTED)
    );
    let p = &o.pool.status.conditions;
    assert_eq!(says(p, types::STALLED), pair("False", reasons::IDLE));
}

#[test]
fn a_transition_in_progress_is_progressing_and_its_end_says_no_host_reports() {
    let mut o = steady(3, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let (_, r) = step_with(&mut o, t0(), &[failed("h0001", 2001, "slow")]);
    let d = &r.domains["d001"].conditions;
    assert_eq!(says(d, types::RECONCILING).0, "True");
    assert_eq!(says(d, types::STALLED), pair("False", reasons::PROGRESSING));
    converge(&mut o, t0(), 5);
    let d = &o.domains["d001"].status.conditions;
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert_eq!(
        says(d, types::MOVING_TO_MAINTENANCE),
        pair("False", reasons::NO_HOST_REPORTS)
    );
    assert_eq!(says(d, types::STALLED), pair("False", reasons::IDLE));
}

#[test]
fn a_domain_in_no_pool_says_unattached_everywhere() {
    let lone = domain("lone", None);
    let s = orphan_domain(Some(1), &lone.spec, &lone.status, t0());
    assert_eq!(
        says(&s.conditions, types::MOVING_TO_MAINTENANCE),
        pair("False", reasons::UNATTACHED)
    );
    assert_eq!(
        says(&s.conditions, types::STALLED),
        pair("False", reasons::IDLE)
    );
}

#[test]
fn the_last_data_domain_kept_active_says_why_it_is_not_moving() {
    let mut o = steady(2, 1, t0());
    let mut iso = domain("iso", Some(POOL));
    iso.spec.type_ = DomainType::Iso;
    o.domains.insert(iso.name.clone(), iso);
    converge(&mut o, t0(), 5);
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    let d = &o.domains["d000"].status.conditions;
    assert_eq!(
        says(d, types::MOVING_TO_MAINTENANCE),
        pair("False", reasons::LAST_DATA_DOMAIN)
    );
}

#[test]
fn hosts_not_judged_on_their_domains_say_the_state_they_are_in() {
    let mut o = steady(3, 2, t0());
    expire_lease(&mut o, "h0002");
    o.hosts.get_mut("h0001").expect("h").spec.maintenance = true;
    converge(&mut o, t0(), 5);
    let silent = &o.hosts["h0002"].controller.conditions;
    assert_eq!(
        says(silent, types::OPERATIONAL),
        pair("Unknown", reasons::LEASE_EXPIRED)
    );
    let resting = &o.hosts["h0001"].controller.conditions;
    assert_eq!(host_phase(&o, "h0001"), Some(HostPhase::Maintenance));
    assert_eq!(
        says(resting, types::OPERATIONAL),
        pair("True", reasons::HOST_MAINTENANCE)
    );
    let up = &o.hosts["h0000"].controller.conditions;
    assert_eq!(
        says(up, types::OPERATIONAL),
        pair("True", reasons::DOMAINS_REACHABLE)
    );
}
