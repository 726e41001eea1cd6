//! Risky spec edits the schema cannot refuse: `maxHosts` lowered under hosts that hold higher ids,
//! and `spec.uuid` that no longer matches the uuid the hosts were given. The planner halts: no host
//! is connected, disconnected or renumbered, and the pool says what to fix.

use super::*;

#[test]
fn max_hosts_lowered_under_connected_hosts_touches_no_host() {
    let mut o = steady(5, 1, t0());
    let ids_before = o.pool.status.host_ids.clone();
    o.pool.spec.sync.max_hosts = 3;
    o.pool.generation = Some(2);
    let (p, r) = step(&mut o, t0());
    assert_eq!(p.calls, vec![], "no host is connected or disconnected");
    assert_eq!(p.persist_first, None, "no host is renumbered");
    assert_eq!(o.pool.status.host_ids, ids_before);
    assert!(r.hosts.is_empty(), "no host status is written");
    let stalled = cond(&r.pool.conditions, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reasons::MAX_HOSTS_TOO_LOW)
    );
    for fragment in [
        "spec.sync.maxHosts=3",
        "h0003 (id 4), h0004 (id 5)",
        "at least 5",
    ] {
        assert!(stalled.message.contains(fragment), "{}", stalled.message);
    }
    assert!(!stalled.message.contains("h0002"), "{}", stalled.message);
    assert_eq!(
        cond(&r.pool.conditions, types::READY).reason,
        reasons::MAX_HOSTS_TOO_LOW
    );

    // Fixed: the pool is steady again, with the same ids.
    o.pool.spec.sync.max_hosts = 5;
    let (p, r) = step(&mut o, t0());
    assert_eq!(p.calls, vec![]);
    assert_eq!(o.pool.status.host_ids, ids_before);
    assert!(!is_true(&r.pool.conditions, types::STALLED));
}

#[test]
fn max_hosts_lowered_over_free_ids_only_is_fine() {
    let mut o = steady(3, 1, t0());
    o.pool.spec.sync.max_hosts = 3;
    let (p, r) = step(&mut o, t0());
    assert_eq!(p.halted, None);
    assert!(!is_true(&r.pool.conditions, types::STALLED));
}

#[test]
fn max_hosts_lowered_under_a_host_whose_report_is_unreadable_halts_too() {
    let mut o = steady(4, 1, t0());
    o.hosts.get_mut("h0003").expect("host").report = ReportView::Invalid("garbage".into());
    o.pool.spec.sync.max_hosts = 3;
    let p = plan(&o, t0());
    assert_eq!(
        p.halted,
        Some(Halt::MaxHostsTooLow {
            max_hosts: 3,
            hosts: [("h0003".to_owned(), 4)].into(),
        })
    );
}

#[test]
fn spec_uuid_unlike_the_uuid_hosts_were_given_touches_no_host() {
    let mut o = steady(2, 1, t0());
    let given = o.pool.status.uuid.clone().expect("uuid recorded");
    let other = uuid_of("another-pool");
    o.pool.spec.uuid = Some(other.clone());
    let (p, r) = step(&mut o, t0());
    assert_eq!(p.calls, vec![]);
    assert_eq!(p.persist_first, None);
    assert_eq!(o.pool.status.uuid.as_deref(), Some(given.as_str()));
    let stalled = cond(&r.pool.conditions, types::STALLED);
    assert_eq!(stalled.reason, reasons::UUID_CHANGED);
    assert!(
        stalled.message.contains(&other) && stalled.message.contains(&given),
        "{}",
        stalled.message
    );
}
