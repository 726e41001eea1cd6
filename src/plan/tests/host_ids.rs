//! Host ids: the lowest free id for a new host, stable ids, ids rebuilt from the hosts' reports
//! when the status is lost, never reassigned under a connected host, and hosts beyond `maxHosts`
//! refused.

use super::*;

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

#[test]
fn departed_host_keeps_its_id_while_its_lease_is_current() {
    let mut o = steady(3, 1, t0());
    // h0001's Host was deleted; its agent still renews its Lease and holds the pool as id 2.
    let gone = o.hosts.remove("h0001").expect("h0001");
    o.departed.insert("h0001".into(), gone.lease);
    o.hosts
        .insert("a-new".into(), host("a-new", Some(POOL), t0()));
    let p = plan(&o, t0());
    assert_eq!(p.desired.host_ids.get("h0001"), Some(&2), "still reserved");
    assert_eq!(p.desired.host_ids["a-new"], 4, "not the departed host's id");
    assert!(
        p.requeue_after
            .is_some_and(|d| d <= Duration::from_secs(40)),
        "looks again when the departed host's Lease lapses: {:?}",
        p.requeue_after
    );

    // Its Lease lapsed (no agent, or one that cannot reach the API server): the id is released.
    let p = plan(&o, later(t0(), 41));
    assert_eq!(p.desired.host_ids.get("h0001"), None);
    assert_eq!(p.desired.host_ids["a-new"], 2);
}
