//! Detach, finalizers and pool deletion: a leaving domain goes through maintenance and detaching,
//! finalizers hold deleted objects until hosts let go, and a domain moving between pools waits
//! for the old one.

use super::*;
use crate::plan::manager::ManagerVerb;

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
    // Hosts stopped monitoring it: the pool manager detaches it on storage while it is still in
    // the map (VDSM detaches only a domain of the manager's map), then it leaves the map.
    let (p, _) = step(&mut o, t0());
    assert_eq!(p.domains["d001"].phase, DomainPhase::Detaching);
    assert_eq!(
        p.desired.domain_map.get(&uuid_of("d001")),
        Some(&MapStatus::Attached)
    );
    let detach = p.manager.call.clone().expect("detach");
    assert_eq!(
        (detach.host.as_str(), detach.verb),
        ("h0000", ManagerVerb::Detach)
    );
    assert_eq!(
        detach.storage.map(|s| s.domains),
        Some(vec![uuid_of("d001")])
    );
    let (p, _) = step(&mut o, t0());
    assert!(!p.desired.domain_map.contains_key(&uuid_of("d001")));
    assert!(
        o.pool
            .status
            .storage
            .as_ref()
            .is_some_and(|s| !s.attached.contains(&uuid_of("d001"))),
        "the record says it is detached"
    );
    converge(&mut o, t0(), 5);
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Unattached));
    assert_eq!(o.domains["d001"].status.pool, None);
    assert!(is_true(&o.domains["d001"].status.conditions, types::READY));
}

#[test]
fn deleted_domain_keeps_its_finalizer_until_detached() {
    let mut o = steady(2, 2, t0());
    o.domains.get_mut("d001").expect("d").deleting = true;
    // Hosts stop monitoring it, then the pool manager detaches it on storage: only then is the
    // finalizer removed.
    let mut detached = false;
    for _ in 0..5 {
        let (p, _) = step(&mut o, t0());
        if !p.finalizers.is_empty() {
            assert!(detached, "detached on storage before the finalizer goes");
            assert_eq!(
                p.finalizers,
                vec![FinalizerChange {
                    object: ObjectRef::domain("d001"),
                    finalizer: DOMAIN_FINALIZER,
                    action: FinalizerAction::Remove,
                }]
            );
            break;
        }
        detached |= p.manager.call.as_ref().map(|c| c.verb) == Some(ManagerVerb::Detach);
    }
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
    // The domain's before anything is sent (it guards the attach), the pool's last.
    assert_eq!(
        p.guards,
        vec![FinalizerChange {
            object: ObjectRef::domain("d000"),
            finalizer: DOMAIN_FINALIZER,
            action: FinalizerAction::Add
        }]
    );
    assert_eq!(
        p.finalizers,
        vec![FinalizerChange {
            object: ObjectRef::pool(POOL),
            finalizer: POOL_FINALIZER,
            action: FinalizerAction::Add
        }]
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

#[test]
fn two_leaving_domains_with_one_uuid_are_both_held_while_a_host_reports_it() {
    let mut o = steady(2, 2, t0());
    // A copy of d001 that this pool's status also records (a status restored from a backup, or
    // written before duplicates were refused); both leave the pool.
    let mut copy = o.domains["d001"].clone();
    copy.name = "d999".into();
    o.domains.insert(copy.name.clone(), copy);
    for name in ["d001", "d999"] {
        o.domains.get_mut(name).expect("d").spec.pool = None;
    }
    let p = plan(&o, t0());
    for name in ["d001", "d999"] {
        assert_eq!(
            p.domains[name].phase,
            DomainPhase::MovingToMaintenance,
            "{name}"
        );
    }
    assert_eq!(
        p.desired.domain_map.get(&uuid_of("d001")),
        Some(&MapStatus::Attached)
    );
}
