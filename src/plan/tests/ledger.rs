//! The call ledger's rules: a host is not called again while its report of an accepted call is on
//! its way, is called again when the call changed or it restarted, backs off after failures and
//! after a call it never confirmed, stays failing while a retry is in flight, and is forgotten once
//! in sync. Entries are built through the ledger's own transitions, as the shell builds them.

use jiff::SignedDuration;

use super::*;
use crate::plan::ledger::{LedgerOp, backoff_delay};

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).expect("duration"))
        .expect("instant")
}

#[test]
fn host_that_accepted_the_same_call_is_not_called_again_while_its_report_is_on_its_way() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    let p = plan(&o, later(t0(), 5));
    assert!(p.calls.is_empty());
    let v = &p.hosts["h0000"];
    assert!(v.told_now && !v.call_pending);
    // Looked at again when the confirmation window (connectTimeoutSeconds, 30 s) closes.
    assert_eq!(v.retry_at, Some(later(t0(), 30)));
    assert!(p.requeue_after <= Some(Duration::from_secs(25)));
    // The host is shown as waiting for its report, not as failing.
    let r = report(&o, &p, &[], later(t0(), 5));
    assert_eq!(r.pool.counts.failing, 0);
}

#[test]
fn the_calls_of_a_rollout_are_recorded_with_the_pools_map_not_a_copy_each() {
    // Every reconcile copies the ledger's entries of its pool's hosts: at 2,000 hosts × 20
    // domains, a set of uuids per entry was megabytes per reconcile.
    let mut o = world(3, 2, t0());
    long_lease(&mut o);
    let p = plan(&o, t0());
    assert_eq!(p.calls.len(), 3);
    for call in &p.calls {
        start(&mut o, call, t0());
    }
    let recorded: Vec<_> = o.ledger.values().map(|e| &e.last.map).collect();
    assert!(recorded.iter().all(|m| m.shares(recorded[0])));
    assert!(recorded[0].active().count() > 0);
    let HostCall::Connect { params, .. } = &p.calls[0] else {
        panic!("a connect: {:?}", p.calls[0]);
    };
    assert!(recorded[0].shares(&params.domain_map));
}

#[test]
fn disconnect_awaiting_its_report_is_not_repeated() {
    let mut o = steady(1, 1, t0());
    long_lease(&mut o);
    o.hosts.get_mut("h0000").expect("h").spec.maintenance = true;
    // The pool manager gives its role up first (spmStop); then it is disconnected.
    step(&mut o, t0());
    let call = call_to(&o, "h0000", t0());
    assert_eq!(call.kind(), CallKind::Disconnect);
    accept(&mut o, &call, t0());
    assert!(plan(&o, later(t0(), 5)).calls.is_empty());
}

#[test]
fn host_that_restarted_after_accepting_a_call_is_called_again_at_once() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    report_of(&mut o, "h0000").boot_id = "h0000-boot-2".into();
    assert_eq!(connects(&plan(&o, later(t0(), 5))), vec!["h0000"]);
}

#[test]
fn changed_map_is_sent_even_to_a_host_awaiting_an_older_one() {
    let mut o = world(1, 2, t0());
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    assert_eq!(connects(&plan(&o, later(t0(), 5))), vec!["h0000"]);
}

#[test]
fn host_that_accepted_but_never_confirmed_lapses_backs_off_and_shows_it() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    let now = later(t0(), 31);
    let p = plan(&o, now);
    assert!(p.calls.is_empty());
    assert_eq!(
        p.ledger,
        vec![LedgerOp::Lapsed {
            host: "h0000".into(),
            sent_at: t0(),
            at: now,
        }]
    );
    assert!(p.hosts["h0000"].call_pending);
    // The first failure waits 1 s, stretched by up to 20 %; the plan looks again right then.
    let until = plus(now, backoff_delay(1, "h0000"));
    assert_eq!(p.hosts["h0000"].retry_at, Some(until));
    assert!(until >= later(now, 1) && until <= later(now, 2));
    apply_ledger(&mut o, &p);
    // From now on the host is not confirming the map, even while the next call is on its way.
    let before = until
        .checked_sub(SignedDuration::from_millis(1))
        .expect("before");
    let p = plan(&o, before);
    assert!(p.calls.is_empty());
    assert_eq!(p.hosts["h0000"].failure, Some(SyncFailure::NotConfirmed));
    let p = plan(&o, until);
    assert_eq!(connects(&p), vec!["h0000"]);
    let sent = start(&mut o, &call, until);
    assert_eq!(
        plan(&o, until).hosts["h0000"].failure,
        Some(SyncFailure::NotConfirmed)
    );
    // Accepting again does not end the lapse: only confirming does.
    answer(&mut o, "h0000", sent, &Ok(()), until);
    assert_eq!(
        plan(&o, until).hosts["h0000"].failure,
        Some(SyncFailure::NotConfirmed)
    );
}

#[test]
fn failed_call_backs_off_doubling_and_is_retried_after() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    // The third failure in a row waits 4 s (plus up to 20 %).
    refuse(&mut o, &call, 3, t0(), 379, "boom");
    let p = plan(&o, later(t0(), 3));
    assert!(p.calls.is_empty());
    assert!(p.hosts["h0000"].call_pending);
    assert_eq!(
        p.hosts["h0000"].failure,
        Some(SyncFailure::ConnectFailed("error 379: boom".into()))
    );
    assert_eq!(connects(&plan(&o, later(t0(), 5))), vec!["h0000"]);
}

#[test]
fn failing_host_stays_failing_while_its_retry_is_in_flight() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    refuse(&mut o, &call, 1, t0(), 323, "connected to another pool");
    let failing = Some(SyncFailure::ConnectFailed(
        "error 323: connected to another pool".into(),
    ));
    let retry = later(t0(), 5);
    let sent = start(&mut o, &call, retry);
    let p = plan(&o, later(t0(), 6));
    assert!(p.calls.is_empty(), "one call at a time");
    assert_eq!(p.hosts["h0000"].failure, failing);
    let r = report(&o, &p, &[], later(t0(), 6));
    assert_eq!(r.pool.counts.failing, 1);
    // The retry is accepted: the refusal is over.
    answer(&mut o, "h0000", sent, &Ok(()), later(t0(), 6));
    assert_eq!(plan(&o, later(t0(), 6)).hosts["h0000"].failure, None);
}

#[test]
fn answer_to_an_older_call_is_ignored() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    let first = start(&mut o, &call, t0());
    let second = start(&mut o, &call, later(t0(), 61));
    answer(
        &mut o,
        "h0000",
        first,
        &Err(CallFailure {
            code: None,
            message: "timed out".into(),
        }),
        later(t0(), 62),
    );
    let entry = &o.ledger["h0000"];
    assert_eq!(entry.last.sent_at, second);
    assert_eq!((entry.failures, entry.failure.is_none()), (0, true));
}

#[test]
fn backoff_doubles_per_failure_with_a_stable_jitter_and_a_cap() {
    assert_eq!(backoff_delay(0, "h"), Duration::ZERO);
    for (failures, base) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
        let d = backoff_delay(failures, "h0001");
        let base = Duration::from_secs(base);
        assert!(d >= base && d <= base.mul_f64(1.2), "{failures}: {d:?}");
        assert_eq!(
            d,
            backoff_delay(failures, "h0001"),
            "same input, same delay"
        );
    }
    let spread: BTreeSet<Duration> = (0..50)
        .map(|i| backoff_delay(5, &format!("h{i:04}")))
        .collect();
    assert!(spread.len() > 10, "hosts failing together retry apart");
}

#[test]
fn call_in_flight_is_not_repeated() {
    let mut o = world(3, 1, t0());
    let call = call_to(&o, "h0000", t0());
    start(&mut o, &call, t0());
    let p = plan(&o, later(t0(), 1));
    assert_eq!(connects(&p), vec!["h0001", "h0002"]);
    assert!(p.hosts["h0000"].call_pending);
}

#[test]
fn calls_in_flight_are_waited_for_not_the_clock() {
    let mut o = world(2, 1, t0());
    long_lease(&mut o);
    for host in ["h0000", "h0001"] {
        let call = call_to(&o, host, t0());
        start(&mut o, &call, t0());
    }
    let p = plan(&o, later(t0(), 1));
    assert!(p.calls.is_empty());
    // No reconcile every second: a finished call asks for one; the clock only guards against a
    // call that never reports back (twice connectTimeoutSeconds).
    assert_eq!(p.requeue_after, Some(Duration::from_secs(59)));
}

#[test]
fn stale_in_flight_marker_does_not_block_a_host_forever() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    start(&mut o, &call, t0());
    // Twice connectTimeoutSeconds (30 s) later the call has certainly ended.
    assert!(plan(&o, later(t0(), 59)).calls.is_empty());
    assert_eq!(connects(&plan(&o, later(t0(), 61))), vec!["h0000"]);
}

#[test]
fn host_seen_in_sync_is_confirmed_and_its_failures_forgotten() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    refuse(&mut o, &call, 2, later(t0(), -10), 379, "boom");
    accept(&mut o, &call, t0());
    obey(o.hosts.get_mut("h0000").expect("h"), &call);
    let p = plan(&o, later(t0(), 1));
    assert!(p.calls.is_empty());
    assert_eq!(
        p.ledger,
        vec![LedgerOp::Confirmed {
            host: "h0000".into(),
            sent_at: t0(),
        }]
    );
    apply_ledger(&mut o, &p);
    assert!(o.ledger.is_empty());
}

#[test]
fn confirmation_does_not_drop_a_call_started_since() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    obey(o.hosts.get_mut("h0000").expect("h"), &call);
    let p = plan(&o, later(t0(), 1));
    // Meanwhile (another pool's reconcile, say) a new call to the host started.
    let newer = start(&mut o, &call, later(t0(), 2));
    apply_ledger(&mut o, &p);
    assert_eq!(o.ledger["h0000"].last.sent_at, newer);
}

#[test]
fn only_the_pool_that_sent_a_call_confirms_it() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    obey(o.hosts.get_mut("h0000").expect("h"), &call);
    // The entry records another pool's call (the host moved here meanwhile).
    o.ledger.get_mut("h0000").expect("entry").pool = "other-pool".into();
    assert!(plan(&o, later(t0(), 1)).ledger.is_empty());
}

#[test]
fn call_that_failed_in_the_background_gets_its_event_once() {
    let mut o = steady(1, 1, t0());
    long_lease(&mut o);
    o.domains.get_mut("d000").expect("d").spec.maintenance = true;
    // The pool manager gives its role up first (spmStop); then it is disconnected.
    step(&mut o, t0());
    let call = call_to(&o, "h0000", t0());
    // The call outlived its reconcile's report and failed afterwards: no outcome this round, only
    // the ledger knows.
    refuse(&mut o, &call, 1, t0(), 379, "domain unreadable");
    let (p, r) = step(&mut o, later(t0(), 1));
    assert!(p.calls.is_empty(), "backing off");
    let failed: Vec<_> = r
        .events
        .iter()
        .filter(|e| e.reason == reasons::CONNECT_FAILED)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", r.events);
    assert!(failed[0].note.contains("error 379: domain unreadable"));
    // Still failing a moment later: the status says so already, no second event.
    let (_, r) = step(&mut o, later(t0(), 1));
    assert!(r.events.iter().all(|e| e.reason != reasons::CONNECT_FAILED));
}

#[test]
fn a_wave_of_hosts_gets_the_rollout_waves_to_confirm_not_one_timeout() {
    // 100 hosts, 32 calls at once: the rollout needs 4 waves of connectTimeoutSeconds (30 s), and
    // a host told at the start whose report still queues 31 s later has not lapsed.
    let mut o = world(100, 1, t0());
    long_lease(&mut o);
    crate::plan::rollout::start(&mut o.pool.status.conditions, 1, Some(1), t0());
    let call = call_to(&o, "h0000", t0());
    accept(&mut o, &call, t0());
    let p = plan(&o, later(t0(), 31));
    assert!(
        p.ledger
            .iter()
            .all(|op| !matches!(op, LedgerOp::Lapsed { .. }))
    );
    assert!(p.hosts["h0000"].told_now);
    assert_eq!(p.hosts["h0000"].retry_at, Some(later(t0(), 120)));
    let p = plan(&o, later(t0(), 120));
    assert!(
        p.ledger
            .iter()
            .any(|op| matches!(op, LedgerOp::Lapsed { .. }))
    );
}
