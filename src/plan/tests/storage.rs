//! The pool on storage: created before any host is connected to it, a domain attached by the
//! pool manager before it enters the map, and the record of both persisted from the accepted
//! call (VDSM refuses a connect whose master does not name the pool, and a domain is in a pool
//! only once its metadata lists it).

use super::*;
use crate::plan::CallFailure;
use crate::plan::fixtures::new_pool;
use crate::plan::manager::{ManagerCalls, ManagerVerb};

fn attached(o: &Observed) -> Option<Vec<String>> {
    o.pool
        .status
        .storage
        .as_ref()
        .map(|s| s.attached.iter().cloned().collect())
}

#[test]
fn a_new_pool_is_created_on_storage_before_any_host_is_connected() {
    let mut o = new_pool(3, 2, t0());
    let p = plan(&o, t0());
    assert_eq!(p.desired.master_domain, Some(uuid_of("d000")));
    assert!(p.manager.hold_connects);
    assert!(connects(&p).is_empty(), "{:?}", p.calls);
    let create = p.manager.call.clone().expect("create");
    assert_eq!(
        (create.host.as_str(), create.verb),
        ("h0000", ManagerVerb::Create)
    );
    let op = create.storage.expect("its parameters");
    assert_eq!(
        (op.name.as_str(), op.master.as_str(), op.master_version),
        (POOL, uuid_of("d000").as_str(), p.desired.master_version)
    );
    let mut both = vec![uuid_of("d000"), uuid_of("d001")];
    both.sort();
    assert_eq!(op.domains, both);

    step(&mut o, t0());
    assert_eq!(attached(&o), Some(both));
    let p = plan(&o, t0());
    assert_eq!(connects(&p).len(), 3, "connected once created");
    converge(&mut o, t0(), 10);
    assert!(is_true(&o.pool.status.conditions, types::READY));
    assert_eq!(
        o.pool.status.pool_manager.as_ref().map(|m| m.host.as_str()),
        Some("h0000")
    );
}

#[test]
fn a_refused_create_is_retried_with_the_master_alone() {
    // One domain is attached to another pool (380): the pool must still come to exist; the
    // other domains are attached one by one afterwards.
    let mut o = new_pool(2, 2, t0());
    let call = plan(&o, t0()).manager.call.expect("create");
    let mut entry = ManagerCalls::started(None, &call, "h0000-boot-1", t0());
    let failure = CallFailure {
        code: Some(380),
        message: "domain already attached to another pool".into(),
    };
    entry.finished(t0(), &Err(failure), t0());
    o.manager = Some(entry);
    renew_all(&mut o, later(t0(), 60));
    let p = plan(&o, later(t0(), 60));
    let retry = p.manager.call.expect("retried after the backoff");
    assert_eq!(retry.verb, ManagerVerb::Create);
    assert_eq!(
        retry.storage.map(|s| s.domains),
        Some(vec![uuid_of("d000")])
    );
}

#[test]
fn a_domain_added_later_is_attached_by_the_manager_before_it_enters_the_map() {
    let mut o = steady(2, 1, t0());
    o.domains.insert("d001".into(), domain("d001", Some(POOL)));
    let p = plan(&o, t0());
    assert!(!p.desired.domain_map.contains_key(&uuid_of("d001")));
    assert!(p.domains["d001"].attaching);
    assert_eq!(p.domains["d001"].phase, DomainPhase::Unattached);
    assert!(connects(&p).is_empty(), "nothing to tell the hosts yet");
    let attach = p.manager.call.clone().expect("attach");
    assert_eq!(
        (attach.host.as_str(), attach.verb),
        ("h0000", ManagerVerb::Attach)
    );
    assert_eq!(
        attach.storage.as_ref().map(|s| s.domains.clone()),
        Some(vec![uuid_of("d001")])
    );

    // The accepted call is recorded (persisted first), then the domain enters the map.
    let boot = report_of(&mut o, "h0000").boot_id.clone();
    let mut entry = ManagerCalls::started(None, &attach, &boot, t0());
    entry.finished(t0(), &Ok(()), t0());
    o.manager = Some(entry);
    let p = plan(&o, t0());
    let persisted = p
        .persist_first
        .clone()
        .expect("the record is persisted first");
    assert!(
        persisted
            .storage
            .as_ref()
            .is_some_and(|s| s.attached.contains(&uuid_of("d001")))
    );
    assert!(!p.manager.confirmed, "not recorded yet");
    o.pool.status = persisted;
    let p = plan(&o, t0());
    assert!(p.manager.confirmed);
    assert_eq!(
        p.desired.domain_map.get(&uuid_of("d001")),
        Some(&MapStatus::Active)
    );
    assert_eq!(connects(&p).len(), 2);
}

#[test]
fn a_pool_recorded_before_the_storage_record_is_taken_as_created_with_its_map() {
    let mut o = steady(2, 2, t0());
    o.pool.status.storage = None;
    let p = plan(&o, t0());
    assert!(!p.manager.hold_connects);
    assert_eq!(p.manager.call, None, "nothing to create or attach");
    assert!(p.domains.values().all(|v| !v.attaching));
}

#[test]
fn a_refused_attach_is_named_in_the_pool_manager_condition_and_retried() {
    let mut o = steady(2, 1, t0());
    o.domains.insert("d001".into(), domain("d001", Some(POOL)));
    let attach = plan(&o, t0()).manager.call.expect("attach");
    let boot = report_of(&mut o, "h0000").boot_id.clone();
    let mut entry = ManagerCalls::started(None, &attach, &boot, t0());
    let refused = CallFailure {
        code: Some(380),
        message: "domain already attached to another pool".into(),
    };
    entry.finished(t0(), &Err(refused), t0());
    o.manager = Some(entry);
    let p = plan(&o, t0());
    assert_eq!(p.manager.call, None, "backing off");
    let r = report(&o, &p, &[], t0());
    let c = cond(&r.pool.conditions, types::POOL_MANAGER);
    assert!(
        c.message.contains("attach of") && c.message.contains("another pool"),
        "{}",
        c.message
    );
    assert!(p.domains["d001"].attaching);
    renew_all(&mut o, later(t0(), 30));
    let p = plan(&o, later(t0(), 30));
    assert_eq!(
        p.manager.call.map(|c| c.verb),
        Some(ManagerVerb::Attach),
        "retried after the backoff"
    );
}

#[test]
fn a_domain_leaving_a_pool_without_master_is_detached_forcibly_before_it_goes() {
    // The pool is in maintenance (its only data domain is): no master, so no manager.
    let mut o = steady(2, 1, t0());
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 10);
    assert_eq!(o.pool.status.master_domain, None);
    assert!(
        o.pool
            .status
            .storage
            .as_ref()
            .is_some_and(|s| s.attached.contains(&uuid_of("d000")))
    );
    // It leaves the pool (for another one): any responsive host frees it on storage first.
    o.domains.get_mut("d000").expect("d").spec.pool = None;
    let p = plan(&o, t0());
    assert_eq!(p.domains["d000"].phase, DomainPhase::Detaching);
    let call = p.manager.call.clone().expect("forced detach");
    assert_eq!(
        (call.host.as_str(), call.verb),
        ("h0000", ManagerVerb::ForcedDetach)
    );
    assert_eq!(call.storage.map(|s| s.domains), Some(vec![uuid_of("d000")]));
    converge(&mut o, t0(), 10);
    assert_eq!(phase(&o, "d000"), Some(DomainPhase::Unattached));
    assert!(
        o.pool
            .status
            .storage
            .as_ref()
            .is_some_and(|s| s.attached.is_empty())
    );
}

#[test]
fn without_a_responsive_host_a_leaving_domain_just_leaves() {
    let mut o = steady(1, 1, t0());
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    converge(&mut o, t0(), 10);
    o.domains.get_mut("d000").expect("d").spec.pool = None;
    let much_later = later(t0(), 3600);
    let p = plan(&o, much_later);
    assert_eq!(p.manager.call, None, "nobody to send it to");
    assert_eq!(p.domains["d000"].phase, DomainPhase::Unattached);
}

#[test]
fn a_member_that_entered_the_map_unattached_is_attached() {
    // It joined while the create was in flight (every member goes into the first map) but was
    // not in the create's domain list: the record says the pool on storage lacks it.
    let mut o = steady(2, 2, t0());
    let d001 = uuid_of("d001");
    assert!(o.pool.status.domain_map.contains_key(&d001));
    if let Some(s) = o.pool.status.storage.as_mut() {
        s.attached.remove(&d001);
    }
    let p = plan(&o, t0());
    assert_eq!(
        p.desired.domain_map.get(&d001),
        Some(&MapStatus::Active),
        "it stays in the map: the hosts already hold it"
    );
    let attach = p.manager.call.expect("attached by the manager");
    assert_eq!(attach.verb, ManagerVerb::Attach);
    assert_eq!(attach.storage.map(|s| s.domains), Some(vec![d001]));
}
