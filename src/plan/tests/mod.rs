//! Behaviour tests of the planner: each rule as small synchronous scenarios built from
//! [`super::fixtures`], one file per rule; this module holds the helpers they share.

use std::collections::BTreeSet;
use std::time::Duration;

use super::fixtures::{
    POOL, POOL_UUID, add_attached, at, converge, domain, failed, host, later, obey, pool,
    renew_all, steady, step, step_with, uuid_of, vitals, world, write_back,
};
use super::*;
use crate::api::condition::{find, is_true, reasons, types};
use crate::api::{DomainPhase, DomainType, HostPhase, MapStatus, PoolConnection};

mod bad_input;
mod condition_reasons;
mod detach;
mod host_ids;
mod ledger;
mod legacy;
mod liveness;
mod maintenance;
mod manager;
mod map;
mod master;
mod problems;
mod properties;
mod spec_edits;
mod status_size;
mod storage;
mod sync;
mod write_budget;

fn t0() -> Timestamp {
    at(0)
}

fn cond<'a>(c: &'a [Condition], type_: &str) -> &'a Condition {
    find(c, type_).unwrap_or_else(|| panic!("no {type_} condition in {c:?}"))
}

fn connects(plan: &Plan) -> Vec<&str> {
    plan.calls
        .iter()
        .filter(|c| c.kind() == CallKind::Connect)
        .map(HostCall::host)
        .collect()
}

fn disconnects(plan: &Plan) -> Vec<&str> {
    plan.calls
        .iter()
        .filter(|c| c.kind() == CallKind::Disconnect)
        .map(HostCall::host)
        .collect()
}

fn report_of<'a>(o: &'a mut Observed, name: &str) -> &'a mut crate::api::HostReport {
    match &mut o.hosts.get_mut(name).expect("host").report {
        ReportView::Parsed(r) => r.make_mut(),
        other => panic!("no parsed report: {other:?}"),
    }
}

fn set_vitals(
    o: &mut Observed,
    host: &str,
    domain: &str,
    f: impl Fn(&mut crate::api::DomainVitals),
) {
    let uuid = uuid_of(domain);
    let r = report_of(o, host);
    match r.domains.iter_mut().find(|v| v.uuid == uuid) {
        Some(v) => f(v),
        None => {
            let mut v = vitals(&uuid);
            f(&mut v);
            r.domains.push(v);
        }
    }
}

fn drop_domain_report(o: &mut Observed, host: &str, domain: &str) {
    let uuid = uuid_of(domain);
    report_of(o, host).domains.retain(|v| v.uuid != uuid);
}

fn expire_lease(o: &mut Observed, host: &str) {
    o.hosts.get_mut(host).expect("host").lease = Some(LeaseView {
        renew_time: Some(at(-1000)),
        lease_duration_seconds: Some(40),
        observed: Observation::Renewed(at(-1000)),
    });
}

fn phase(o: &Observed, d: &str) -> Option<DomainPhase> {
    o.domains[d].status.phase
}

fn host_phase(o: &Observed, h: &str) -> Option<HostPhase> {
    o.hosts[h].controller.phase
}

/// The shell records that `call` started at `at` (as the real shell does, through the ledger's
/// own transitions); returns the instant that identifies the call.
fn start(o: &mut Observed, call: &HostCall, at: Timestamp) -> Timestamp {
    let boot_id = o.hosts[call.host()]
        .report
        .parsed()
        .map(|r| r.boot_id.clone())
        .unwrap_or_default();
    let previous = o.ledger.remove(call.host());
    let entry = super::ledger::HostCalls::started(previous, POOL, call, &boot_id, at);
    o.ledger.insert(call.host().to_owned(), entry);
    at
}

/// The shell records the host's answer, at `at`, to the call it started at `sent_at`.
fn answer(
    o: &mut Observed,
    host: &str,
    sent_at: Timestamp,
    result: &Result<(), CallFailure>,
    at: Timestamp,
) {
    if let Some(entry) = o.ledger.get_mut(host) {
        entry.finished(sent_at, result, at);
    }
}

/// `call` accepted at `at`.
fn accept(o: &mut Observed, call: &HostCall, at: Timestamp) {
    let sent = start(o, call, at);
    answer(o, call.host(), sent, &Ok(()), at);
}

/// `n` calls like `call` in a row refused at `at` with VDSM's `code`.
fn refuse(o: &mut Observed, call: &HostCall, n: u32, at: Timestamp, code: i64, message: &str) {
    let failure = CallFailure {
        code: Some(code),
        message: message.into(),
    };
    for _ in 0..n {
        let sent = start(o, call, at);
        answer(o, call.host(), sent, &Err(failure.clone()), at);
    }
}

/// The shell applies what the plan decided about the ledger.
fn apply_ledger(o: &mut Observed, plan: &Plan) {
    for op in &plan.ledger {
        let host = match op {
            super::ledger::LedgerOp::Confirmed { host, .. }
            | super::ledger::LedgerOp::Lapsed { host, .. } => host,
        };
        if let Some(entry) = o.ledger.remove(host)
            && let Some(kept) = entry.apply(op)
        {
            o.ledger.insert(host.clone(), kept);
        }
    }
}

/// The call the plan at `now` sends to `host`.
fn call_to(o: &Observed, host: &str, now: Timestamp) -> HostCall {
    plan(o, now)
        .calls
        .into_iter()
        .find(|c| c.host() == host)
        .unwrap_or_else(|| panic!("no call to {host}"))
}

/// A Lease that outlives every deadline in a test, so requeue times are the ledger's.
fn long_lease(o: &mut Observed) {
    for h in o.hosts.values_mut() {
        h.lease = Some(LeaseView {
            renew_time: Some(t0()),
            lease_duration_seconds: Some(3600),
            observed: Observation::Renewed(t0()),
        });
    }
}
