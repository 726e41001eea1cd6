//! The rollout clock: when the current rollout of the map started (the `lastTransitionTime` of the
//! pool's `Reconciling` condition, forced to `now` when the map or master changes) and by when
//! hosts that merely wait their turn must have confirmed it. Pure; it reads and stamps conditions,
//! it decides nothing about hosts or domains.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Observed;
use crate::api::StoragePoolStatus;
use crate::api::condition::{self, ConditionStatus, reasons, set_condition, types};

/// The message of the pool's `Reconciling` condition while a map version rolls out.
pub fn message(map_version: i64) -> String {
    format!("rolling out map version {map_version} to the pool's hosts")
}

/// Sets `Reconciling=True` (reason `RollingOut`) with `lastTransitionTime = now` even if it was
/// already true: that time is the start of the current rollout, from which the confirmation
/// deadline is measured. A `Ready=True` becomes `Ready=False` with the same reason: the status
/// that persists a new map is written before any host is told, and stays the pool's word until
/// the calls' report, so it must not still say that every host holds the map (`kubectl wait
/// --for=condition=Ready` would return at once).
pub fn start(
    conditions: &mut Vec<Condition>,
    map_version: i64,
    generation: Option<i64>,
    now: Timestamp,
) {
    set_condition(
        conditions,
        types::RECONCILING,
        ConditionStatus::True,
        reasons::ROLLING_OUT,
        message(map_version),
        generation,
        now,
    );
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == types::RECONCILING)
    {
        c.last_transition_time = Time(now);
    }
    if condition::is_true(conditions, types::READY) {
        set_condition(
            conditions,
            types::READY,
            ConditionStatus::False,
            reasons::ROLLING_OUT,
            message(map_version),
            generation,
            now,
        );
    }
}

/// When the current rollout started: now if this plan starts one, else the pool's `Reconciling`
/// `lastTransitionTime` while it is true, else now (a host falling behind starts a new period).
pub fn started(
    observed: &Observed,
    persist_first: Option<&StoragePoolStatus>,
    now: Timestamp,
) -> Timestamp {
    let current = &observed.pool.status;
    if persist_first.is_some_and(|p| p.map_version != current.map_version) {
        return now;
    }
    condition::find(&current.conditions, types::RECONCILING)
        .filter(|c| c.status == ConditionStatus::True.as_str())
        .map_or(now, |c| c.last_transition_time.0)
}

/// Until when a host that accepted this rollout's map may take to report it: the recorded rollout
/// start (`Reconciling=True` since then) plus one `connectTimeoutSeconds` per wave of
/// `maxConcurrentConnects` hosts. The calls of a wave all go out at once, but the hosts' reports
/// then reach the API server one after the other; with 2,000 hosts that takes longer than one
/// timeout, and calling those hosts lapsed (and calling them again) would double the writes when
/// the API server is busiest. `None` when no rollout start is recorded.
pub fn confirm_by(observed: &Observed) -> Option<Timestamp> {
    let sync = &observed.pool.spec.sync;
    let start = condition::find(&observed.pool.status.conditions, types::RECONCILING)
        .filter(|c| c.status == ConditionStatus::True.as_str())?
        .last_transition_time
        .0;
    let cap = i64::from(sync.max_concurrent_connects.max(1));
    let hosts = i64::try_from(observed.hosts.len()).unwrap_or(i64::MAX);
    let waves = hosts.div_euclid(cap) + i64::from(hosts.rem_euclid(cap) != 0);
    let secs = i64::from(sync.connect_timeout_seconds.max(1)).saturating_mul(waves.max(1));
    start.checked_add(SignedDuration::from_secs(secs)).ok()
}

/// When hosts that merely wait their turn must have confirmed the map: the rollout start plus one
/// `connectTimeoutSeconds` per wave of `maxConcurrentConnects` hosts, plus one.
pub fn deadline(observed: &Observed, rollout_start: Timestamp) -> Timestamp {
    let sync = &observed.pool.spec.sync;
    let cap = i64::from(sync.max_concurrent_connects.max(1));
    let hosts = i64::try_from(observed.hosts.len()).unwrap_or(i64::MAX);
    let waves = hosts.div_euclid(cap) + i64::from(hosts.rem_euclid(cap) != 0) + 1;
    let secs = i64::from(sync.connect_timeout_seconds.max(1)).saturating_mul(waves);
    rollout_start
        .checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(rollout_start)
}
