//! When to reconcile again without a watch event: the earliest instant at which the planner's answer
//! could change by the clock alone (a backoff ending, a confirmation window
//! closing, an in-flight marker expiring, a Lease expiring (also a departed host's, which releases
//! its id), a grace period ending, the rollout deadline). Pure; it only reads verdicts the other rules produced.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::hosts::{lease_current, lease_expiry};
use super::{DomainVerdict, HostRole, HostVerdict, Observed, rollout};

/// When to look again without a watch event: the earliest of a host's `retry_at` (backoff end,
/// confirmation window, in-flight marker expiry), a Lease expiring, a grace period ending, and the
/// rollout deadline.
pub fn after(
    observed: &Observed,
    hosts: &BTreeMap<String, HostVerdict>,
    domains: &BTreeMap<String, DomainVerdict>,
    rollout_start: Timestamp,
    now: Timestamp,
) -> Option<Duration> {
    let mut next: Option<Timestamp> = None;
    let mut consider = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
    let mut waiting = false;
    for (name, v) in hosts {
        let Some(h) = observed.hosts.get(name) else {
            continue;
        };
        if let Some(t) = v.retry_at {
            consider(t);
        }
        if v.responsive
            && let Some(t) = lease_expiry(h.lease.as_ref())
        {
            consider(t);
        }
        waiting |= v.role == HostRole::Member && v.responsive && !v.in_sync && v.failure.is_none();
    }
    // A departed host's id is released when its Lease lapses.
    for lease in observed.departed.values() {
        if lease_current(lease.as_ref(), now)
            && let Some(t) = lease_expiry(lease.as_ref())
        {
            consider(t);
        }
    }
    for v in domains.values() {
        if let Some(t) = v.grace_ends {
            consider(t);
        }
    }
    if waiting {
        consider(rollout::deadline(observed, rollout_start));
    }
    next.map(|t| until(t, now))
}

/// How long until `t`, at least one second (a requeue sooner than that only burns CPU).
pub fn until(t: Timestamp, now: Timestamp) -> Duration {
    let d = t.duration_since(now).max(SignedDuration::from_secs(1));
    Duration::try_from(d).unwrap_or(Duration::from_secs(1))
}
