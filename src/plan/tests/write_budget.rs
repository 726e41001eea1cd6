//! The write budget: a healthy rollout costs a constant number of controller writes whatever
//! the pool size, an idle pool writes nothing as time passes, and counts move in tenths.

use super::*;

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
        for call in &p.calls {
            obey(o.hosts.get_mut(call.host()).expect("h"), call);
        }
        let outcomes: Vec<CallOutcome> = p
            .calls
            .iter()
            .map(|c| CallOutcome {
                host: c.host().into(),
                kind: c.kind(),
                result: Ok(()),
            })
            .collect();
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
