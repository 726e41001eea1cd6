//! [`report`]: the statuses to write and the events to emit, from the plan and the outcome of the
//! calls. Pure: it applies the outcomes to the verdicts, then hands each kind to its room
//! (`host`, `domain`, `pool`); it sends nothing. The only phase it changes is a host's whose connect
//! failed this round (`Connecting`); every other phase comes from the plan's verdicts.
//!
//! Counts and host lists are snapshots refreshed in steps (see the write budget in [`super`]):
//! [`bucket`] says which tenth of the pool a number falls in; a snapshot is rewritten only when a
//! bucket, a problem entry (by its typed reason), or anything other than healthy progress changes.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::{
    CallKind, CallOutcome, EventType, HostVerdict, ObjectRef, Observed, Plan, PlannedEvent, Report,
    SyncFailure,
};
use crate::api::HostPhase;
use crate::api::condition::reasons;

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
        };
    }
    let hosts = apply_outcomes(observed, plan, outcomes, &mut events);
    let host_statuses = host::statuses(observed, &hosts, now, &mut events);
    let domains = domain::statuses(observed, plan, &hosts, now, &mut events);
    let pool = pool::status(observed, plan, &hosts, now, &mut events);
    Report {
        pool,
        domains,
        hosts: host_statuses,
        events,
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
            (CallKind::Connect, Ok(())) => {
                v.told_now = true;
                if matches!(v.failure, Some(SyncFailure::ConnectFailed(_))) {
                    v.failure = None;
                }
            }
            (CallKind::Connect, Err(e)) => {
                v.failure = Some(SyncFailure::ConnectFailed(e.to_string()));
                if matches!(v.phase, HostPhase::Up | HostPhase::Connecting) {
                    v.phase = HostPhase::Connecting;
                }
                events.push(PlannedEvent {
                    object: ObjectRef::host(&o.host),
                    type_: EventType::Warning,
                    reason: reasons::CONNECT_FAILED,
                    note: format!(
                        "StoragePool.connect to pool {} failed: {e}",
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
