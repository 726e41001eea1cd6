//! Bad input: duplicate domain uuids (a copy never displaces the domain that holds the uuid), more than 100 domains, unparsable host reports, a pool with
//! no hosts, and a domain naming a pool that does not exist.

use super::*;

/// A copy of `original` (same uuid) named `name` in `pool`, created at `created`.
fn copy_of(original: &str, name: &str, pool: &str, created: Timestamp) -> DomainView {
    let mut copy = domain(name, Some(pool));
    copy.spec.uuid = uuid_of(original);
    copy.created = Some(created);
    copy.has_finalizer = false;
    copy
}

#[test]
fn copy_of_an_active_domain_is_refused_and_the_original_keeps_its_place() {
    let mut o = steady(2, 2, t0());
    let before = o.pool.status.clone();
    // Even a copy with an older creationTimestamp (restored from a backup) does not displace it.
    o.domains
        .insert("copy".into(), copy_of("d000", "copy", POOL, at(-1000)));
    let (p, r) = step(&mut o, t0());
    assert!(
        p.calls.is_empty(),
        "no host is told anything: {:?}",
        p.calls
    );
    assert_eq!(p.desired.domain_map, before.domain_map);
    assert_eq!(p.desired.master_domain, before.master_domain);
    assert_eq!(p.desired.map_version, before.map_version);
    assert_eq!(p.domains["d000"].flag, None);
    assert_eq!(r.domains["d000"].phase, Some(DomainPhase::Active));
    assert!(is_true(&r.domains["d000"].conditions, types::READY));
    assert_eq!(
        p.domains["copy"].flag,
        Some(DomainFlag::DuplicateUuid {
            holder: "d000".into(),
            placed_in: Some(POOL.into()),
        })
    );
    let copy = &r.domains["copy"];
    assert_eq!(copy.phase, Some(DomainPhase::Unattached));
    let stalled = cond(&copy.conditions, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reasons::DUPLICATE_DOMAIN_UUID)
    );
    assert!(stalled.message.contains("d000"), "{}", stalled.message);
    assert_eq!(cond(&copy.conditions, types::READY).status, "False");
    // And it stays that way.
    converge(&mut o, t0(), 4);
    assert_eq!(o.pool.status.domain_map, before.domain_map);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));
    assert_eq!(phase(&o, "copy"), Some(DomainPhase::Unattached));
}

#[test]
fn copy_of_an_active_domain_in_another_pool_is_refused_there_and_ignored_here() {
    // This pool holds d000; a copy, not placed anywhere, names another pool.
    let mut o = steady(2, 2, t0());
    let before = o.pool.status.clone();
    let copy = UuidClaim {
        placed_in: None,
        created: Some(at(100)),
    };
    o.uuids_elsewhere.insert(
        uuid_of("d000"),
        BTreeMap::from([("copy".to_string(), copy)]),
    );
    let (p, _) = step(&mut o, t0());
    assert!(p.calls.is_empty() && p.domains["d000"].flag.is_none());
    assert_eq!(p.desired.domain_map, before.domain_map);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Active));

    // The other pool: its copy is refused, naming the original and its pool.
    let mut other = world(1, 0, t0());
    other
        .domains
        .insert("copy".into(), copy_of("d000", "copy", POOL, at(100)));
    other.uuids_elsewhere.insert(
        uuid_of("d000"),
        BTreeMap::from([("d000".to_string(), o.domains["d000"].claim())]),
    );
    let (p, r) = step(&mut other, t0());
    assert!(p.desired.domain_map.is_empty());
    let stalled = cond(&r.domains["copy"].conditions, types::STALLED);
    assert_eq!(stalled.reason, reasons::DUPLICATE_DOMAIN_UUID);
    assert!(
        stalled.message.contains("d000") && stalled.message.contains(POOL),
        "{}",
        stalled.message
    );
    assert_eq!(
        cond(&r.pool.conditions, types::STALLED).reason,
        reasons::DUPLICATE_DOMAIN_UUID
    );
}

#[test]
fn of_two_new_domains_with_one_uuid_the_older_keeps_it_then_the_first_by_name() {
    let mut o = world(1, 0, t0());
    add_attached(&mut o, copy_of("shared", "b", POOL, at(0)));
    add_attached(&mut o, copy_of("shared", "c", POOL, at(0)));
    add_attached(&mut o, copy_of("shared", "a", POOL, at(5)));
    let p = plan(&o, t0());
    assert_eq!(p.desired.domain_map.len(), 1);
    assert_eq!(p.domains["b"].flag, None);
    for d in ["a", "c"] {
        assert_eq!(
            p.domains[d].flag,
            Some(DomainFlag::DuplicateUuid {
                holder: "b".into(),
                placed_in: None,
            })
        );
    }
}

#[test]
fn uuid_placed_by_a_domain_in_another_pool_is_flagged_here() {
    let mut o = world(1, 2, t0());
    let far = UuidClaim {
        placed_in: Some("pool2".into()),
        created: Some(at(100)),
    };
    o.uuids_elsewhere.insert(
        uuid_of("d001"),
        BTreeMap::from([("far-away".to_string(), far)]),
    );
    let p = plan(&o, t0());
    assert_eq!(
        p.domains["d001"].flag,
        Some(DomainFlag::DuplicateUuid {
            holder: "far-away".into(),
            placed_in: Some("pool2".into()),
        })
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
