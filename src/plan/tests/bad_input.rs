//! Bad input: duplicate domain uuids, more than 100 domains, unparsable host reports, a pool with
//! no hosts, and a domain naming a pool that does not exist.

use super::*;

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
