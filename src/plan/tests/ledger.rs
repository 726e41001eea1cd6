//! The call ledger's rules: a host is not called again while its report of an accepted call is on
//! its way, is called again when the call changed or it restarted, backs off after failures and
//! after a call it never confirmed, and is forgotten once in sync.

use jiff::SignedDuration;

use super::*;
use crate::plan::ledger::{CallState, LedgerOp, backoff_delay};

#[test]
fn host_that_accepted_the_same_call_is_not_called_again_while_its_report_is_on_its_way() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    record(&mut o, &call, 0, t0(), CallState::Accepted { at: t0() });
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
fn host_that_restarted_after_accepting_a_call_is_called_again_at_once() {
    let mut o = world(1, 1, t0());
    let call = call_to(&o, "h0000", t0());
    record(&mut o, &call, 0, t0(), CallState::Accepted { at: t0() });
    report_of(&mut o, "h0000").boot_id = "h0000-boot-2".into();
    assert_eq!(connects(&plan(&o, later(t0(), 5))), vec!["h0000"]);
}

#[test]
fn changed_map_is_sent_even_to_a_host_awaiting_an_older_one() {
    let mut o = world(1, 2, t0());
    let call = call_to(&o, "h0000", t0());
    record(&mut o, &call, 0, t0(), CallState::Accepted { at: t0() });
    o.domains.get_mut("d001").expect("d").spec.maintenance = true;
    assert_eq!(connects(&plan(&o, later(t0(), 5))), vec!["h0000"]);
}

#[test]
fn host_that_accepted_but_never_confirmed_lapses_and_backs_off() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    record(&mut o, &call, 0, t0(), CallState::Accepted { at: t0() });
    let now = later(t0(), 31);
    let p = plan(&o, now);
    assert!(p.calls.is_empty());
    assert_eq!(
        p.ledger,
        vec![LedgerOp::Lapsed {
            host: "h0000".into()
        }]
    );
    assert!(p.hosts["h0000"].call_pending);
    // The first failure waits 1 s (plus up to 20 % jitter).
    let retry = p.hosts["h0000"].retry_at.expect("retry");
    let until = now
        .checked_add(SignedDuration::try_from(backoff_delay(1, "h0000")).expect("delay"))
        .expect("until");
    assert_eq!(retry, until);
    assert!(until >= later(now, 1) && until <= later(now, 2));
    // Once the shell recorded the lapse, the host is called again when the backoff ends.
    record(&mut o, &call, 1, t0(), CallState::Lapsed { at: now });
    let before = until
        .checked_sub(SignedDuration::from_millis(1))
        .expect("before");
    assert!(plan(&o, before).calls.is_empty());
    assert_eq!(connects(&plan(&o, until)), vec!["h0000"]);
}

#[test]
fn failed_call_backs_off_doubling_and_is_retried_after() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    // The third failure in a row waits 4 s (plus up to 20 %).
    record(&mut o, &call, 3, t0(), connect_failed(t0(), 379, "boom"));
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
fn call_in_flight_is_not_repeated_and_counts_against_the_cap() {
    let mut o = world(3, 1, t0());
    o.pool.spec.sync.max_concurrent_connects = 2;
    let call = call_to(&o, "h0000", t0());
    assert_eq!(call.host(), "h0000");
    record(&mut o, &call, 0, t0(), CallState::InFlight);
    let p = plan(&o, later(t0(), 1));
    assert_eq!(connects(&p), vec!["h0001"]);
    assert_eq!(p.deferred_calls, 1);
    assert!(p.hosts["h0000"].call_pending && p.hosts["h0002"].call_pending);
}

#[test]
fn stale_in_flight_marker_does_not_block_a_host_forever() {
    let mut o = world(1, 1, t0());
    long_lease(&mut o);
    let call = call_to(&o, "h0000", t0());
    record(&mut o, &call, 0, t0(), CallState::InFlight);
    // Twice connectTimeoutSeconds (30 s) later the call has certainly ended.
    assert!(plan(&o, later(t0(), 59)).calls.is_empty());
    assert_eq!(connects(&plan(&o, later(t0(), 61))), vec!["h0000"]);
}

#[test]
fn host_seen_in_sync_is_confirmed_and_its_failures_forgotten() {
    let mut o = steady(2, 1, t0());
    let call = HostCall::Disconnect {
        host: "h0001".into(),
        endpoint: String::new(),
        params: DisconnectParams {
            pool_uuid: POOL_UUID.into(),
            host_id: 2,
        },
    };
    record(&mut o, &call, 2, t0(), CallState::Accepted { at: t0() });
    let p = plan(&o, later(t0(), 1));
    assert!(p.calls.is_empty());
    assert_eq!(
        p.ledger,
        vec![LedgerOp::Confirmed {
            host: "h0001".into()
        }]
    );
}
