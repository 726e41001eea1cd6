//! [`report`]: the statuses to write and the events to emit, from the plan and the outcome of the
//! calls. Pure: it applies the outcomes to the verdicts, then hands each kind to its room
//! (`host`, `domain`, `pool`); it sends nothing. The only phase it changes is a host's whose connect
//! failed this round (`Connecting`); every other phase comes from the plan's verdicts.
//!
//! Counts and host lists are snapshots refreshed in steps (see the write budget in [`super`]):
//! [`bucket`] says which tenth of the pool a number falls in; a snapshot is rewritten only when a
//! bucket, a problem entry (by its typed reason), or anything other than healthy progress changes.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{
    CallKind, CallOutcome, EventType, HostVerdict, ObjectRef, Observed, Plan, PlannedEvent, Report,
    SyncFailure, needs_write,
};
use crate::api::condition::reasons;
use crate::api::{HostPhase, StorageDomainStatus, StoragePoolStatus};

mod conditions;
mod domain;
mod host;
mod pool;
mod snapshot;

pub use domain::orphan_domain;
pub use snapshot::bucket;

/// The statuses to write and the events to emit, from the plan and what the calls did. Statuses
/// equal to the current ones (the usual case) need no write ([`super::needs_write`]).
pub fn report(
    observed: &Observed,
    plan: &Plan,
    outcomes: &[CallOutcome],
    now: Timestamp,
) -> Report {
    let mut events = Vec::new();
    if let Some(halt) = &plan.halted {
        let pool = pool::halted_status(observed, halt, now, &mut events);
        return Report {
            pool,
            domains: BTreeMap::new(),
            hosts: BTreeMap::new(),
            events,
            progress_only: BTreeSet::new(),
        };
    }
    let hosts = apply_outcomes(observed, plan, outcomes, &mut events);
    let host_statuses = host::statuses(observed, &hosts, now, &mut events);
    let domains = domain::statuses(observed, plan, &hosts, now, &mut events);
    let pool = pool::status(observed, plan, &hosts, now, &mut events);
    let progress_only = progress_only(observed, &pool, &domains);
    Report {
        pool,
        domains,
        hosts: host_statuses,
        events,
        progress_only,
    }
}

/// The pool and domains whose new status differs from the current one in its progress snapshot
/// alone: with the current counts, host lists and condition messages put back, nothing would be
/// written (the phase and every condition's status and reason stay), and the new counts are not
/// where a rollout arrives (each at none or all of the hosts). Their events, if any, are
/// progress notes (the blockers now), not transitions: a held write drops them, and the write
/// that goes out later carries the blockers of its own time.
fn progress_only(
    observed: &Observed,
    pool: &StoragePoolStatus,
    domains: &BTreeMap<String, StorageDomainStatus>,
) -> BTreeSet<ObjectRef> {
    let mut out = BTreeSet::new();
    let hosts = i32::try_from(observed.hosts.len()).unwrap_or(i32::MAX);
    let current = &observed.pool.status;
    let pool_ref = ObjectRef::pool(&observed.pool.name);
    let c = &pool.counts;
    let pool_arrived = at_ends(
        &[c.in_sync, c.connecting, c.failing, c.unresponsive],
        c.hosts,
    );
    if needs_write(Some(current), pool) && !pool_arrived {
        let mut probe = pool.clone();
        probe.counts.clone_from(&current.counts);
        probe.lagging_hosts.clone_from(&current.lagging_hosts);
        same_messages(&mut probe.conditions, &current.conditions);
        if !needs_write(Some(current), &probe) {
            out.insert(pool_ref);
        }
    }
    for (name, status) in domains {
        let Some(current) = observed.domains.get(name).map(|d| &d.status) else {
            continue;
        };
        let domain_ref = ObjectRef::domain(name);
        let h = &status.hosts;
        let arrived = at_ends(&[h.reporting, h.valid, h.problem, h.still_active], hosts);
        if needs_write(Some(current), status) && !arrived {
            let mut probe = status.clone();
            probe.hosts.clone_from(&current.hosts);
            probe.blocking_hosts.clone_from(&current.blocking_hosts);
            same_messages(&mut probe.conditions, &current.conditions);
            if !needs_write(Some(current), &probe) {
                out.insert(domain_ref);
            }
        }
    }
    out
}

/// Whether every count is at one of its ends (none, or all of `total`): the snapshot a rollout
/// arrives at, which is written at once rather than paced.
fn at_ends(counts: &[i32], total: i32) -> bool {
    counts.iter().all(|&n| n == 0 || n == total)
}

/// Puts back the current message of each condition whose status and reason did not change.
fn same_messages(conditions: &mut [Condition], current: &[Condition]) {
    for c in conditions {
        if let Some(was) = current
            .iter()
            .find(|w| w.type_ == c.type_ && w.status == c.status && w.reason == c.reason)
        {
            c.message.clone_from(&was.message);
        }
    }
}

/// The host verdicts with this round's outcomes applied: a failed connect is a failure now, a
/// successful one clears the previous connect failure.
fn apply_outcomes(
    observed: &Observed,
    plan: &Plan,
    outcomes: &[CallOutcome],
    events: &mut Vec<PlannedEvent>,
) -> BTreeMap<String, HostVerdict> {
    let mut hosts = plan.hosts.clone();
    for o in outcomes {
        let Some(v) = hosts.get_mut(&o.host) else {
            continue;
        };
        match (&o.kind, &o.result) {
            (CallKind::Connect | CallKind::Refresh, Ok(())) => {
                v.told_now = true;
                if matches!(v.failure, Some(SyncFailure::ConnectFailed(_))) {
                    v.failure = None;
                }
            }
            (kind @ (CallKind::Connect | CallKind::Refresh), Err(e)) => {
                v.failure = Some(SyncFailure::ConnectFailed(e.to_string()));
                if matches!(v.phase, HostPhase::Up | HostPhase::Connecting) {
                    v.phase = HostPhase::Connecting;
                }
                events.push(PlannedEvent {
                    object: ObjectRef::host(&o.host),
                    type_: EventType::Warning,
                    reason: reasons::CONNECT_FAILED,
                    note: format!(
                        "StoragePool.{} of pool {} failed: {e}",
                        if *kind == CallKind::Refresh {
                            "refresh"
                        } else {
                            "connect"
                        },
                        observed.pool.name
                    ),
                });
            }
            (CallKind::Disconnect, Ok(())) => {}
            (CallKind::Disconnect, Err(e)) => events.push(PlannedEvent {
                object: ObjectRef::host(&o.host),
                type_: EventType::Warning,
                reason: reasons::DISCONNECT_FAILED,
                note: format!(
                    "StoragePool.disconnect from pool {} failed: {e}",
                    observed.pool.name
                ),
            }),
        }
    }
    hosts
}
