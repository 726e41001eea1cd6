//! The write budget: a healthy rollout costs a constant number of controller writes whatever
//! the pool size, an idle pool writes nothing as time passes, and counts move in tenths.

use super::*;

/// Every host called by `p` obeys it, and each call is reported as accepted.
fn obey_all(o: &mut Observed, p: &Plan) -> Vec<CallOutcome> {
    for call in &p.calls {
        obey(o.hosts.get_mut(call.host()).expect("h"), call);
    }
    p.calls
        .iter()
        .map(|c| CallOutcome {
            host: c.host().into(),
            kind: c.kind(),
            result: Ok(()),
        })
        .collect()
}

/// Counts the controller's writes over a rollout where agents answer one wave per reconcile.
fn rollout_writes(hosts: usize) -> (usize, usize, usize) {
    let mut o = steady(hosts, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let (mut pool_writes, mut domain_writes, mut host_writes) = (0, 0, 0);
    for round in 0..(hosts / 32 + 10) {
        let now = later(t0(), i64::try_from(round).unwrap_or(0));
        let before = o.clone();
        let p = plan(&o, now);
        pool_writes += usize::from(p.persist_first.is_some());
        let persisted = p
            .persist_first
            .clone()
            .unwrap_or_else(|| o.pool.status.clone());
        let outcomes = obey_all(&mut o, &p);
        let r = report(&o, &p, &outcomes, now);
        pool_writes += usize::from(needs_write(Some(&persisted), &r.pool));
        domain_writes += r
            .domains
            .iter()
            .filter(|(n, s)| needs_write(Some(&before.domains[*n].status), s))
            .count();
        host_writes += r
            .hosts
            .iter()
            .filter(|(n, s)| needs_write(Some(&*before.hosts[*n].controller), s))
            .count();
        write_back(&mut o, &p, &r);
    }
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert!(
        is_true(&o.pool.status.conditions, types::READY),
        "{:?}",
        o.pool.status
    );
    (pool_writes, domain_writes, host_writes)
}

#[test]
fn healthy_rollout_costs_constant_controller_writes_whatever_the_pool_size() {
    let small = rollout_writes(64);
    let large = rollout_writes(640);
    assert_eq!(small.2, 0, "no host status changes while hosts catch up");
    assert_eq!(large.2, 0, "no host status changes while hosts catch up");
    assert!(large.0 <= 14, "pool writes {large:?}");
    assert!(large.1 <= 14, "domain writes {large:?}");
    assert!(
        large.0 <= small.0 + 12 && large.1 <= small.1 + 12,
        "{small:?} vs {large:?}"
    );
    eprintln!("writes (pool, domains, hosts): 64 hosts {small:?}, 640 hosts {large:?}");
}

#[test]
fn a_new_pools_hosts_get_one_status_write_each_when_they_arrive() {
    let mut o = world(100, 2, t0());
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..20 {
        let now = later(t0(), round);
        let before = o.clone();
        let p = plan(&o, now);
        let outcomes = obey_all(&mut o, &p);
        let r = report(&before, &p, &outcomes, now);
        for (name, status) in &r.hosts {
            if needs_write(Some(&*before.hosts[name].controller), status) {
                assert_eq!(status.phase, Some(HostPhase::Up), "{name}: {status:?}");
                *writes.entry(name.clone()).or_default() += 1;
            }
        }
        write_back(&mut o, &p, &r);
    }
    assert!(is_true(&o.pool.status.conditions, types::READY));
    assert_eq!(writes.len(), 100, "every host shows where it arrived");
    assert!(writes.values().all(|n| *n == 1), "{writes:?}");
}

#[test]
fn progress_alone_is_marked_and_transitions_never_are() {
    let mut o = steady(320, 2, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    let (mut progress, mut transitions) = (0, 0);
    for round in 0..40 {
        let now = later(t0(), round);
        let before = o.clone();
        let p = plan(&o, now);
        // Hosts answer 32 calls per round, so the rollout moves in steps.
        for call in p.calls.iter().take(32) {
            obey(o.hosts.get_mut(call.host()).expect("h"), call);
        }
        let r = report(&before, &p, &[], now);
        let domain = ObjectRef::domain("d001");
        let changed = needs_write(Some(&before.domains["d001"].status), &r.domains["d001"]);
        let phase_moved = before.domains["d001"].status.phase != r.domains["d001"].phase;
        if phase_moved {
            transitions += 1;
            assert!(
                !r.progress_only.contains(&domain),
                "a phase change is never paced"
            );
        } else if changed && r.progress_only.contains(&domain) {
            progress += 1;
            let mut probe = r.domains["d001"].clone();
            probe.hosts = before.domains["d001"].status.hosts.clone();
            probe.blocking_hosts = before.domains["d001"].status.blocking_hosts.clone();
            for (c, was) in probe
                .conditions
                .iter_mut()
                .zip(&before.domains["d001"].status.conditions)
            {
                assert_eq!(
                    (&c.type_, &c.status, &c.reason),
                    (&was.type_, &was.status, &was.reason)
                );
                c.message.clone_from(&was.message);
            }
            assert_eq!(probe, before.domains["d001"].status);
        }
        write_back(&mut o, &p, &r);
    }
    assert_eq!(phase(&o, "d001"), Some(DomainPhase::Maintenance));
    assert!(
        transitions >= 2,
        "Active -> MovingToMaintenance -> Maintenance"
    );
    assert!(
        progress >= 3,
        "the blocking count moved in steps: {progress}"
    );
}

#[test]
fn counts_arriving_at_all_hosts_are_written_at_once() {
    let mut o = steady(20, 2, t0());
    let d = o.domains.get_mut("d001").expect("d");
    d.status.hosts.valid = 15;
    let r = report(&o, &plan(&o, t0()), &[], t0());
    assert_eq!(r.domains["d001"].hosts.valid, 20);
    assert!(
        !r.progress_only.contains(&ObjectRef::domain("d001")),
        "every host checked the domain: the end of the progress, not a step of it"
    );
    let d = o.domains.get_mut("d001").expect("d");
    d.status.hosts.valid = 15;
    o.hosts.get_mut("h0000").expect("h").lease = None;
    let r = report(&o, &plan(&o, t0()), &[], t0());
    if r.domains["d001"].hosts.valid != 15 && r.domains["d001"].hosts.valid != 20 {
        assert!(r.progress_only.contains(&ObjectRef::domain("d001")));
    }
}

#[test]
fn idle_pool_writes_nothing_as_time_passes() {
    let mut o = steady(20, 3, t0());
    for secs in [5, 30, 600] {
        let now = later(t0(), secs);
        renew_all(&mut o, now);
        let before = o.clone();
        let (p, r) = step(&mut o, now);
        assert!(p.calls.is_empty() && p.persist_first.is_none());
        assert_eq!(o, before_with_leases(&before, &o));
        assert!(r.events.is_empty());
    }
}

fn before_with_leases(before: &Observed, after: &Observed) -> Observed {
    let mut b = before.clone();
    for (n, h) in &mut b.hosts {
        h.lease = after.hosts[n].lease;
    }
    b
}

#[test]
fn bucket_moves_in_tenths_with_exact_ends() {
    use crate::plan::status::bucket;
    assert_eq!(bucket(0, 2000), 0);
    assert_eq!(bucket(2000, 2000), 11);
    assert_eq!(bucket(1, 2000), bucket(199, 2000));
    assert_ne!(bucket(199, 2000), bucket(200, 2000));
    assert_eq!(bucket(1, 1), 11);
}
