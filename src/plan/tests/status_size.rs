//! Status size: text from outside (a host's error message, why its report does not parse) and
//! lists of names are cut, so a huge error never makes a status too big for its schema.

use super::*;
use crate::api::bounds::{CONDITION_MESSAGE_MAX, CUT_MARKER, OUTSIDE_TEXT_MAX};

/// The most characters any condition message of `conditions` has.
fn longest(conditions: &[Condition]) -> usize {
    conditions
        .iter()
        .map(|c| c.message.chars().count())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_huge_agent_error_yields_bounded_statuses() {
    let mut o = world(3, 1, t0());
    // An agent's error up to the RPC body limit.
    let huge = "é".repeat(4 << 20);
    let (_, r) = step_with(&mut o, t0(), &[failed("h0001", 323, &huge)]);
    let host = &r.hosts["h0001"];
    let in_sync = cond(&host.conditions, types::IN_SYNC);
    assert_eq!(in_sync.reason, reasons::CONNECT_FAILED);
    assert!(in_sync.message.contains(CUT_MARKER), "the error is cut");
    let bound = OUTSIDE_TEXT_MAX + 100;
    assert!(longest(&host.conditions) <= bound);
    assert!(longest(&r.pool.conditions) <= bound * 10);
    for lagging in &r.pool.lagging_hosts {
        assert!(lagging.message.chars().count() <= crate::api::LaggingHost::MAX_MESSAGE_CHARS);
    }
    for ev in &r.events {
        assert!(ev.note.chars().count() <= bound, "{}", ev.reason);
    }
    let json = serde_json::to_string(&r.pool).expect("json");
    assert!(json.len() < 64 << 10, "pool status is {} bytes", json.len());
}

#[test]
fn a_huge_report_parse_error_yields_a_bounded_host_status() {
    let mut o = steady(2, 1, t0());
    o.hosts.get_mut("h0001").expect("host").report =
        ReportView::Invalid(format!("unknown variant `{}`", "x".repeat(1 << 20)));
    let (_, r) = step(&mut o, t0());
    let host = &r.hosts["h0001"];
    assert_eq!(
        cond(&host.conditions, types::READY).reason,
        reasons::REPORT_UNPARSABLE
    );
    assert!(longest(&host.conditions) <= OUTSIDE_TEXT_MAX + 100);
    assert!(longest(&host.conditions) <= CONDITION_MESSAGE_MAX);
}

#[test]
fn five_hundred_copies_of_a_uuid_give_a_short_message() {
    let mut o = steady(1, 1, t0());
    // A newcomer whose uuid 500 other StorageDomains also have (copies in a GitOps repo): its
    // message names the one that keeps the uuid, not all of them.
    let newcomer = domain("dnew", Some(POOL));
    let copies: BTreeMap<String, UuidClaim> = (0..500)
        .map(|i| {
            let claim = UuidClaim {
                placed_in: None,
                created: Some(later(t0(), -1000 + i)),
            };
            (format!("copy-{i:03}"), claim)
        })
        .collect();
    o.uuids_elsewhere.insert(newcomer.spec.uuid.clone(), copies);
    o.domains.insert("dnew".into(), newcomer);
    let (_, r) = step(&mut o, t0());
    let stalled = cond(&r.domains["dnew"].conditions, types::STALLED);
    assert!(stalled.message.contains("copy-000"), "{}", stalled.message);
    assert!(longest(&r.domains["dnew"].conditions) < 2000);
}
