//! [`report`]: the statuses to write and the events to emit, from the plan and the outcome of the
//! calls. Also the rollout clock and the requeue time. Pure.
//!
//! Counts and host lists are snapshots refreshed in steps (see the write budget in [`super`]):
//! [`bucket`] says which tenth of the pool a number falls in; a snapshot is rewritten only when a
//! bucket, a failure, or anything other than healthy progress changes.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::domains::{attached_domains, flag_reason};
use super::hosts::{lease_expiry, rollout_deadline, until};
use super::{
    CallKind, CallOutcome, DomainVerdict, EventType, Halt, HostControllerStatus, HostRole,
    HostVerdict, MAX_LISTED_HOSTS, ObjectRef, Observed, Plan, PlannedEvent, Report, SyncFailure,
};
use crate::api::condition::{ConditionStatus, reasons, set_condition, types};
use crate::api::domain::DomainHostCounts;
use crate::api::{
    DomainPhase, HostCounts, HostPhase, LaggingHost, StorageDomainStatus, StoragePoolStatus,
};

use ConditionStatus::{False, True, Unknown};

/// Which step of progress `n` out of `total` is in: 0 for none, 11 for all, 1..=10 for each tenth
/// between. A monotone rollout passes through at most 12 buckets, whatever the pool's size.
pub fn bucket(n: i32, total: i32) -> i32 {
    if n <= 0 {
        0
    } else if n >= total {
        11
    } else {
        1 + i32::try_from(i64::from(n) * 10 / i64::from(total.max(1))).unwrap_or(10)
    }
}

fn count<T>(items: impl IntoIterator<Item = T>) -> i32 {
    i32::try_from(items.into_iter().count()).unwrap_or(i32::MAX)
}

/// Sets `Reconciling=True` (reason `RollingOut`) with `lastTransitionTime = now` even if it was
/// already true: that time is the start of the current rollout, from which the confirmation
/// deadline is measured.
pub(super) fn start_rollout(
    conditions: &mut Vec<Condition>,
    map_version: i64,
    generation: Option<i64>,
    now: Timestamp,
) {
    let msg = super::map::rollout_message(map_version);
    set_condition(
        conditions,
        types::RECONCILING,
        True,
        reasons::ROLLING_OUT,
        msg,
        generation,
        now,
    );
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == types::RECONCILING)
    {
        c.last_transition_time = Time(now);
    }
}

/// When the current rollout started: now if this plan starts one, else the pool's `Reconciling`
/// `lastTransitionTime` while it is true, else now (a host falling behind starts a new period).
pub(super) fn rollout_start(
    observed: &Observed,
    persist_first: Option<&StoragePoolStatus>,
    now: Timestamp,
) -> Timestamp {
    let current = &observed.pool.status;
    if persist_first.is_some_and(|p| p.map_version != current.map_version) {
        return now;
    }
    crate::api::condition::find(&current.conditions, types::RECONCILING)
        .filter(|c| c.status == True.as_str())
        .map_or(now, |c| c.last_transition_time.0)
}

/// When to look again without a watch event: the earliest of a deferred call, a backoff ending, a
/// Lease expiring, a grace period ending, and the rollout deadline.
pub(super) fn requeue_after(
    observed: &Observed,
    hosts: &BTreeMap<String, HostVerdict>,
    domains: &BTreeMap<String, DomainVerdict>,
    deferred: usize,
    rollout_start: Timestamp,
    now: Timestamp,
) -> Option<Duration> {
    let mut next: Option<Timestamp> = None;
    let mut consider = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
    if deferred > 0 {
        consider(now);
    }
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
    for v in domains.values() {
        if let Some(t) = v.grace_ends {
            consider(t);
        }
    }
    if waiting {
        consider(rollout_deadline(observed, rollout_start));
    }
    next.map(|t| until(t, now))
}

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
        let pool = halted_pool_status(observed, halt, now, &mut events);
        return Report {
            pool,
            domains: BTreeMap::new(),
            hosts: BTreeMap::new(),
            events,
        };
    }
    let hosts = apply_outcomes(observed, plan, outcomes, &mut events);
    let host_statuses = host_statuses(observed, &hosts, now, &mut events);
    let domains = domain_statuses(observed, plan, &hosts, now, &mut events);
    let pool = pool_status(observed, plan, &hosts, now, &mut events);
    Report {
        pool,
        domains,
        hosts: host_statuses,
        events,
    }
}

fn halted_pool_status(
    observed: &Observed,
    halt: &Halt,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> StoragePoolStatus {
    let p = &observed.pool;
    let g = p.generation;
    let (reason, msg) = match halt {
        Halt::Legacy { version } => (
            reasons::LEGACY_POOL_UNSUPPORTED,
            format!(
                "compatibilityVersion {version} uses the legacy master-domain flows, which this controller does not support yet; no host is contacted. Pools of 3.5 and later are managed"
            ),
        ),
        Halt::InvalidVersion { version } => (
            reasons::INVALID_COMPATIBILITY_VERSION,
            format!("compatibilityVersion {version:?} is not major.minor; no host is contacted"),
        ),
    };
    let mut s = p.status.clone();
    s.observed_generation = g;
    stall_event(&s.conditions, reason, &msg, &p.name, events);
    let c = &mut s.conditions;
    set_condition(c, types::STALLED, True, reason, msg.clone(), g, now);
    set_condition(c, types::READY, False, reason, msg, g, now);
    set_condition(c, types::RECONCILING, False, reasons::IDLE, "", g, now);
    s
}

fn stall_event(
    current: &[Condition],
    reason: &'static str,
    msg: &str,
    pool: &str,
    events: &mut Vec<PlannedEvent>,
) {
    let was = crate::api::condition::find(current, types::STALLED);
    if !was.is_some_and(|c| c.status == True.as_str() && c.reason == reason) {
        events.push(PlannedEvent {
            object: ObjectRef::pool(pool),
            type_: EventType::Warning,
            reason,
            note: msg.to_owned(),
        });
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

// ---------------------------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------------------------

fn host_statuses(
    observed: &Observed,
    hosts: &BTreeMap<String, HostVerdict>,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> BTreeMap<String, HostControllerStatus> {
    let max_hosts = observed.pool.spec.sync.max_hosts;
    let mut out = BTreeMap::new();
    for (name, v) in hosts {
        if v.role == HostRole::Leaving {
            continue;
        }
        let Some(h) = observed.hosts.get(name) else {
            continue;
        };
        let g = h.generation;
        let mut s = h.controller.clone();
        s.observed_generation = g;
        s.phase = Some(v.phase);
        let c = &mut s.conditions;

        match (v.responsive, &h.lease) {
            (true, _) => set_condition(
                c,
                types::RESPONSIVE,
                True,
                reasons::LEASE_CURRENT,
                "the agent renews its Lease",
                g,
                now,
            ),
            (false, None) => set_condition(
                c,
                types::RESPONSIVE,
                False,
                reasons::NO_LEASE,
                "the host has no Lease yet: its agent never started",
                g,
                now,
            ),
            (false, Some(_)) => set_condition(
                c,
                types::RESPONSIVE,
                False,
                reasons::LEASE_EXPIRED,
                "the host's Lease expired: its agent does not answer; no calls are sent until it renews",
                g,
                now,
            ),
        }

        let invalid_msg = match &h.report {
            super::ReportView::Invalid(e) => Some(format!(
                "the agent's report does not parse ({e}); it is ignored"
            )),
            _ => None,
        };
        let refused_msg = format!(
            "every host id up to spec.sync.maxHosts={max_hosts} is taken; the host is refused"
        );
        if let Some(msg) = &invalid_msg {
            set_condition(
                c,
                types::IN_SYNC,
                Unknown,
                reasons::REPORT_UNPARSABLE,
                msg.clone(),
                g,
                now,
            );
        } else if v.role == HostRole::Refused {
            set_condition(
                c,
                types::IN_SYNC,
                False,
                reasons::TOO_MANY_HOSTS,
                refused_msg.clone(),
                g,
                now,
            );
        } else if v.role == HostRole::Maintenance {
            if v.in_sync {
                set_condition(
                    c,
                    types::IN_SYNC,
                    True,
                    reasons::HOST_MAINTENANCE,
                    "disconnected from the pool for maintenance",
                    g,
                    now,
                );
            } else {
                set_condition(
                    c,
                    types::IN_SYNC,
                    False,
                    reasons::PREPARING_FOR_MAINTENANCE,
                    "being disconnected from the pool for maintenance",
                    g,
                    now,
                );
            }
        } else if !v.responsive {
            set_condition(
                c,
                types::IN_SYNC,
                Unknown,
                reasons::LEASE_EXPIRED,
                "the host does not respond",
                g,
                now,
            );
        } else if let Some(f) = &v.failure {
            match f {
                SyncFailure::ConnectFailed(e) => set_condition(
                    c,
                    types::IN_SYNC,
                    False,
                    reasons::CONNECT_FAILED,
                    format!("StoragePool.connect failed: {e}"),
                    g,
                    now,
                ),
                SyncFailure::NotConfirmed => set_condition(
                    c,
                    types::IN_SYNC,
                    False,
                    reasons::NOT_CONFIRMED,
                    "the host did not report the pool's current map by the rollout deadline",
                    g,
                    now,
                ),
            }
        } else if v.in_sync {
            set_condition(
                c,
                types::IN_SYNC,
                True,
                reasons::IN_SYNC,
                "the host holds the pool's current map",
                g,
                now,
            );
        } else if crate::api::condition::find(c, types::IN_SYNC).is_none() {
            // Catching up keeps whatever InSync said (the write budget); a new host says Connecting.
            set_condition(
                c,
                types::IN_SYNC,
                False,
                reasons::CONNECTING,
                "the host is being given the pool's map",
                g,
                now,
            );
        }

        if v.role == HostRole::Refused {
            set_condition(
                c,
                types::OPERATIONAL,
                False,
                reasons::TOO_MANY_HOSTS,
                refused_msg.clone(),
                g,
                now,
            );
        } else if v.phase == HostPhase::NonOperational {
            if !v.unreachable.is_empty() {
                let msg = format!(
                    "the host cannot reach {} although other hosts can",
                    v.unreachable.iter().cloned().collect::<Vec<_>>().join(", ")
                );
                set_condition(
                    c,
                    types::OPERATIONAL,
                    False,
                    reasons::STORAGE_DOMAIN_UNREACHABLE,
                    msg,
                    g,
                    now,
                );
            }
        } else {
            set_condition(
                c,
                types::OPERATIONAL,
                True,
                reasons::DOMAINS_REACHABLE,
                "",
                g,
                now,
            );
        }

        let in_sync_true = crate::api::condition::is_true(c, types::IN_SYNC);
        let (status, reason, msg): (ConditionStatus, &str, String) = match v.phase {
            _ if invalid_msg.is_some() => (
                False,
                reasons::REPORT_UNPARSABLE,
                invalid_msg.clone().unwrap_or_default(),
            ),
            _ if v.role == HostRole::Refused => (False, reasons::TOO_MANY_HOSTS, refused_msg),
            HostPhase::Maintenance => (
                True,
                reasons::HOST_MAINTENANCE,
                "in maintenance, as requested".into(),
            ),
            HostPhase::PreparingForMaintenance => (
                False,
                reasons::PREPARING_FOR_MAINTENANCE,
                "being disconnected for maintenance".into(),
            ),
            HostPhase::NonResponsive => (
                False,
                reasons::LEASE_EXPIRED,
                "the host does not respond".into(),
            ),
            HostPhase::NonOperational => (
                False,
                reasons::STORAGE_DOMAIN_UNREACHABLE,
                "the host cannot reach a domain other hosts reach".into(),
            ),
            HostPhase::Up if in_sync_true => (True, reasons::HOST_UP, "".into()),
            HostPhase::Up | HostPhase::Connecting => match &v.failure {
                Some(SyncFailure::ConnectFailed(_)) => (
                    False,
                    reasons::CONNECT_FAILED,
                    "the host failed to take the pool's map".into(),
                ),
                Some(SyncFailure::NotConfirmed) => (
                    False,
                    reasons::NOT_CONFIRMED,
                    "the host did not confirm the pool's map".into(),
                ),
                None => (
                    False,
                    reasons::CONNECTING,
                    "the host is being given the pool's map".into(),
                ),
            },
        };
        set_condition(c, types::READY, status, reason, msg, g, now);

        host_events(name, h, v, invalid_msg.as_deref(), events);
        out.insert(name.clone(), s);
    }
    out
}

fn host_events(
    name: &str,
    h: &super::HostView,
    v: &HostVerdict,
    invalid: Option<&str>,
    events: &mut Vec<PlannedEvent>,
) {
    let previous = h.controller.phase;
    let mut push = |type_, reason, note: String| {
        events.push(PlannedEvent {
            object: ObjectRef::host(name),
            type_,
            reason,
            note,
        });
    };
    if previous != Some(v.phase) {
        match v.phase {
            HostPhase::NonOperational if v.role != HostRole::Refused => push(
                EventType::Warning,
                reasons::STORAGE_DOMAIN_UNREACHABLE,
                format!(
                    "host is NonOperational: it cannot reach {} although other hosts can",
                    v.unreachable.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            HostPhase::NonResponsive => push(
                EventType::Warning,
                reasons::HOST_NOT_RESPONDING,
                "host's Lease expired; no calls are sent until it renews".into(),
            ),
            HostPhase::Up if previous == Some(HostPhase::NonOperational) => push(
                EventType::Normal,
                reasons::HOST_RECOVERED,
                "host reports every active domain clean again; it is Up".into(),
            ),
            _ => {}
        }
    }
    let was = |reason: &str| h.controller.conditions.iter().any(|c| c.reason == reason);
    if let Some(msg) = invalid
        && !was(reasons::REPORT_UNPARSABLE)
    {
        push(
            EventType::Warning,
            reasons::REPORT_UNPARSABLE,
            msg.to_owned(),
        );
    }
    if v.role == HostRole::Refused && !was(reasons::TOO_MANY_HOSTS) {
        push(
            EventType::Warning,
            reasons::TOO_MANY_HOSTS,
            "host refused: the pool has no free host id".into(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------------------------

/// Why a host blocks a domain's transition, and whether that is a problem (rather than progress).
fn blocking_reason(v: Option<&HostVerdict>) -> (String, bool) {
    let Some(v) = v else {
        return ("unknown host".into(), true);
    };
    if !v.responsive {
        ("not responding".into(), true)
    } else if let Some(SyncFailure::ConnectFailed(e)) = &v.failure {
        (format!("connect failing: {e}"), true)
    } else if v.failure == Some(SyncFailure::NotConfirmed) {
        ("not confirming the map".into(), true)
    } else if v.report_invalid {
        ("report does not parse".into(), true)
    } else if matches!(v.role, HostRole::Maintenance | HostRole::Leaving) {
        ("being disconnected".into(), false)
    } else if !v.in_sync && !v.told_now {
        ("not told yet".into(), false)
    } else {
        ("waiting for its report".into(), false)
    }
}

const PROBLEM_PREFIXES: [&str; 4] = [
    "not responding",
    "connect failing",
    "not confirming",
    "report does not parse",
];

fn is_problem(entry: &LaggingHost) -> bool {
    PROBLEM_PREFIXES.iter().any(|p| entry.reason.starts_with(p))
}

/// Problem entries first, then by name, at most [`MAX_LISTED_HOSTS`].
fn listed(mut entries: Vec<(bool, LaggingHost)>) -> Vec<LaggingHost> {
    entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.host.cmp(&b.1.host)));
    entries.truncate(MAX_LISTED_HOSTS);
    entries.into_iter().map(|(_, e)| e).collect()
}

fn problems(list: &[LaggingHost]) -> Vec<&LaggingHost> {
    list.iter().filter(|e| is_problem(e)).collect()
}

fn names(list: &[LaggingHost], total: i32) -> String {
    let mut s = list
        .iter()
        .map(|e| format!("{} ({})", e.host, e.reason))
        .collect::<Vec<_>>()
        .join(", ");
    let more = total - count(list);
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

fn domain_statuses(
    observed: &Observed,
    plan: &Plan,
    hosts: &BTreeMap<String, HostVerdict>,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> BTreeMap<String, StorageDomainStatus> {
    let total = count(&observed.hosts);
    let mut out = BTreeMap::new();
    for (name, v) in &plan.domains {
        if !v.owned {
            continue;
        }
        let Some(d) = observed.domains.get(name) else {
            continue;
        };
        let current = &d.status;
        let g = d.generation;
        let transitioning = matches!(
            v.phase,
            DomainPhase::MovingToMaintenance | DomainPhase::Detaching
        );

        let fresh_counts = DomainHostCounts {
            reporting: v.reporting,
            valid: v.valid,
            problem: count(&v.problem_hosts),
            still_active: if transitioning { count(&v.blocking) } else { 0 },
        };
        let fresh_list = if transitioning {
            listed(
                v.blocking
                    .iter()
                    .map(|h| {
                        let (reason, problem) = blocking_reason(hosts.get(h));
                        (
                            problem,
                            LaggingHost {
                                host: h.clone(),
                                reason,
                            },
                        )
                    })
                    .collect(),
            )
        } else {
            Vec::new()
        };
        let c0 = &current.hosts;
        let keep = current.phase == Some(v.phase)
            && c0.problem == fresh_counts.problem
            && bucket(c0.reporting, total) == bucket(fresh_counts.reporting, total)
            && bucket(c0.valid, total) == bucket(fresh_counts.valid, total)
            && bucket(c0.still_active, total) == bucket(fresh_counts.still_active, total)
            && problems(&current.blocking_hosts) == problems(&fresh_list)
            && current.blocking_hosts.is_empty() == fresh_list.is_empty();
        let (counts, list) = if keep {
            (current.hosts.clone(), current.blocking_hosts.clone())
        } else {
            (fresh_counts, fresh_list)
        };

        let mut s = current.clone();
        s.observed_generation = g;
        s.phase = Some(v.phase);
        s.pool = v.status_pool.clone();
        s.hosts = counts;
        s.blocking_hosts = list;
        domain_conditions(&mut s, d, v, hosts, now);

        domain_events(name, current, &s, v, events);
        out.insert(name.clone(), s);
    }
    out
}

fn domain_conditions(
    s: &mut StorageDomainStatus,
    d: &super::DomainView,
    v: &DomainVerdict,
    hosts: &BTreeMap<String, HostVerdict>,
    now: Timestamp,
) {
    let g = d.generation;
    let blockers = names(&s.blocking_hosts, s.hosts.still_active);
    let c = &mut s.conditions;
    let flag = v.flag.as_ref().map(flag_reason);
    let (ready, ready_reason, ready_msg): (ConditionStatus, &str, String) = match (&flag, v.phase) {
        (Some((reason, msg)), _) => (False, reason, msg.clone()),
        (None, DomainPhase::Active) => (True, reasons::ACTIVE, "every Up host sees the domain".into()),
        (None, DomainPhase::Maintenance) => (True, reasons::MAINTENANCE, "in maintenance, as requested; no host monitors it".into()),
        (None, DomainPhase::Unattached) => (True, reasons::UNATTACHED, "the domain is in no pool".into()),
        (None, DomainPhase::Activating) => (False, reasons::ACTIVATING, "waiting for every Up host to report the domain valid".into()),
        (None, DomainPhase::MovingToMaintenance) => (False, reasons::HOSTS_STILL_REPORTING, format!("still monitored by: {blockers}")),
        (None, DomainPhase::Detaching) => (False, reasons::DETACHING, format!("still in the map of: {blockers}")),
        (None, DomainPhase::Inactive) => (False, reasons::DOMAIN_INACTIVE, "every Up host reported the domain failing for longer than the grace period; hosts keep probing it".into()),
        (None, DomainPhase::Unknown) => (Unknown, reasons::NO_REPORTING_HOSTS, "no Up host of the pool can report the domain".into()),
    };
    set_condition(
        c,
        types::READY,
        ready,
        ready_reason,
        ready_msg.clone(),
        g,
        now,
    );

    match v.phase {
        DomainPhase::Activating | DomainPhase::MovingToMaintenance | DomainPhase::Detaching
            if flag.is_none() =>
        {
            set_condition(c, types::RECONCILING, True, ready_reason, ready_msg, g, now);
        }
        _ => set_condition(c, types::RECONCILING, False, reasons::IDLE, "", g, now),
    }

    let stuck: Vec<&str> = v
        .blocking
        .iter()
        .filter(|h| hosts.get(*h).is_none_or(|hv| !hv.responsive))
        .map(String::as_str)
        .collect();
    if let Some((reason, msg)) = &flag {
        set_condition(c, types::STALLED, True, reason, msg.clone(), g, now);
    } else if !v.blocking.is_empty() && stuck.len() == v.blocking.len() {
        let mut shown: Vec<&str> = stuck.iter().take(MAX_LISTED_HOSTS).copied().collect();
        if stuck.len() > MAX_LISTED_HOSTS {
            shown.push("...");
        }
        let msg = format!(
            "waiting for hosts that do not respond: {}; put them in maintenance (Host.spec.maintenance) to release the domain",
            shown.join(", ")
        );
        set_condition(
            c,
            types::STALLED,
            True,
            reasons::HOSTS_NOT_RESPONDING,
            msg,
            g,
            now,
        );
    } else {
        set_condition(c, types::STALLED, False, reasons::PROGRESSING, "", g, now);
    }

    if v.phase == DomainPhase::MovingToMaintenance {
        let msg = format!(
            "still monitored by: {blockers}; putting a host in maintenance (Host.spec.maintenance) releases it"
        );
        set_condition(
            c,
            types::MOVING_TO_MAINTENANCE,
            True,
            reasons::HOSTS_STILL_REPORTING,
            msg,
            g,
            now,
        );
    } else {
        set_condition(
            c,
            types::MOVING_TO_MAINTENANCE,
            False,
            reasons::NO_HOST_REPORTS,
            "",
            g,
            now,
        );
    }

    if v.problem_hosts.is_empty() {
        set_condition(c, types::PROBLEM, False, reasons::NO_PROBLEM, "", g, now);
    } else {
        let mut shown: Vec<&str> = v
            .problem_hosts
            .iter()
            .take(MAX_LISTED_HOSTS)
            .map(String::as_str)
            .collect();
        if v.problem_hosts.len() > MAX_LISTED_HOSTS {
            shown.push("...");
        }
        let msg = format!(
            "Up hosts report the domain failing: {}; when the grace period ends they become NonOperational, or the domain Inactive if every Up host reports it",
            shown.join(", ")
        );
        set_condition(
            c,
            types::PROBLEM,
            True,
            reasons::DOMAIN_PROBLEM,
            msg,
            g,
            now,
        );
    }
}

fn phase_reason(p: DomainPhase) -> &'static str {
    match p {
        DomainPhase::Unattached => reasons::UNATTACHED,
        DomainPhase::Activating => reasons::ACTIVATING,
        DomainPhase::Active => reasons::ACTIVE,
        DomainPhase::Inactive => reasons::DOMAIN_INACTIVE,
        DomainPhase::MovingToMaintenance => reasons::HOSTS_STILL_REPORTING,
        DomainPhase::Maintenance => reasons::MAINTENANCE,
        DomainPhase::Detaching => reasons::DETACHING,
        DomainPhase::Unknown => reasons::NO_REPORTING_HOSTS,
    }
}

fn domain_events(
    name: &str,
    current: &StorageDomainStatus,
    next: &StorageDomainStatus,
    v: &DomainVerdict,
    events: &mut Vec<PlannedEvent>,
) {
    let mut push = |type_, reason, note: String| {
        events.push(PlannedEvent {
            object: ObjectRef::domain(name),
            type_,
            reason,
            note,
        });
    };
    if current.phase != Some(v.phase) {
        let from = current.phase.map_or("none", |p| p.as_str());
        let type_ = if matches!(v.phase, DomainPhase::Inactive | DomainPhase::Unknown) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        push(
            type_,
            phase_reason(v.phase),
            format!("phase {from} -> {}", v.phase.as_str()),
        );
    }
    if v.phase == DomainPhase::MovingToMaintenance
        && !next.blocking_hosts.is_empty()
        && next.blocking_hosts != current.blocking_hosts
    {
        let type_ = if problems(&next.blocking_hosts).is_empty() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        push(
            type_,
            reasons::HOSTS_STILL_REPORTING,
            format!(
                "still monitored by: {}",
                names(&next.blocking_hosts, next.hosts.still_active)
            ),
        );
    }
    let was_problem = crate::api::condition::is_true(&current.conditions, types::PROBLEM);
    if !was_problem && !v.problem_hosts.is_empty() {
        push(
            EventType::Warning,
            reasons::DOMAIN_PROBLEM,
            format!(
                "Up hosts report the domain failing: {}; the grace period starts",
                v.problem_hosts
                    .iter()
                    .take(MAX_LISTED_HOSTS)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------------

fn lagging_reason(v: &HostVerdict) -> (String, bool) {
    if !v.responsive {
        ("not responding".into(), true)
    } else if v.report_invalid {
        ("report does not parse".into(), true)
    } else {
        match &v.failure {
            Some(SyncFailure::ConnectFailed(e)) => (format!("connect failing: {e}"), true),
            Some(SyncFailure::NotConfirmed) => ("not confirming the map".into(), true),
            None if v.call_pending => ("waiting its turn".into(), false),
            None => ("connecting".into(), false),
        }
    }
}

fn pool_status(
    observed: &Observed,
    plan: &Plan,
    hosts: &BTreeMap<String, HostVerdict>,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> StoragePoolStatus {
    let p = &observed.pool;
    let g = p.generation;
    let current = &p.status;
    let mut s = plan
        .persist_first
        .clone()
        .unwrap_or_else(|| current.clone());
    s.observed_generation = g;

    let members = || hosts.values().filter(|v| v.role == HostRole::Member);
    let fresh = HostCounts {
        domains: count(&plan.desired.domain_map),
        hosts: count(hosts.values().filter(|v| v.role != HostRole::Leaving)),
        in_sync: count(members().filter(|v| v.in_sync)),
        connecting: count(
            members()
                .filter(|v| v.responsive && !v.in_sync && v.failure.is_none() && !v.report_invalid),
        ),
        failing: count(members().filter(|v| v.responsive && v.failure.is_some())),
        unresponsive: count(members().filter(|v| !v.responsive)),
    };
    let fresh_lagging = listed(
        hosts
            .iter()
            .filter(|(_, v)| v.role == HostRole::Member && !v.in_sync)
            .map(|(name, v)| {
                let (reason, problem) = lagging_reason(v);
                (
                    problem,
                    LaggingHost {
                        host: name.clone(),
                        reason,
                    },
                )
            })
            .collect(),
    );
    let c0 = &current.counts;
    let total = fresh.hosts;
    let keep = c0.domains == fresh.domains
        && c0.hosts == fresh.hosts
        && c0.failing == fresh.failing
        && c0.unresponsive == fresh.unresponsive
        && bucket(c0.in_sync, total) == bucket(fresh.in_sync, total)
        && (c0.connecting == 0) == (fresh.connecting == 0)
        && problems(&current.lagging_hosts) == problems(&fresh_lagging)
        && current.lagging_hosts.is_empty() == fresh_lagging.is_empty();
    if keep {
        s.counts = current.counts.clone();
        s.lagging_hosts = current.lagging_hosts.clone();
    } else {
        s.counts = fresh.clone();
        s.lagging_hosts = fresh_lagging;
    }

    // Stalled: what only a person can fix.
    let mut stalls: Vec<(&'static str, String)> = Vec::new();
    let refused: Vec<&str> = hosts
        .iter()
        .filter(|(_, v)| v.role == HostRole::Refused)
        .map(|(n, _)| n.as_str())
        .collect();
    if !refused.is_empty() {
        stalls.push((
            reasons::TOO_MANY_HOSTS,
            format!(
                "{} hosts name the pool beyond spec.sync.maxHosts={}: {}",
                refused.len(),
                p.spec.sync.max_hosts,
                short_list(&refused)
            ),
        ));
    }
    for (reason, what) in [
        (
            reasons::DUPLICATE_DOMAIN_UUID,
            "domains share a uuid with another StorageDomain and are left out of the map",
        ),
        (
            reasons::TOO_MANY_DOMAINS,
            "domains are beyond VDSM's limit of 100 per pool and are left out of the map",
        ),
    ] {
        let flagged: Vec<&str> = plan
            .domains
            .iter()
            .filter(|(_, v)| v.flag.as_ref().is_some_and(|f| flag_reason(f).0 == reason))
            .map(|(n, _)| n.as_str())
            .collect();
        if !flagged.is_empty() {
            stalls.push((reason, format!("{what}: {}", short_list(&flagged))));
        }
    }
    if p.deleting {
        let attached = attached_domains(observed, &plan.domains);
        if !attached.is_empty() {
            let names: Vec<&str> = attached.iter().map(String::as_str).collect();
            stalls.push((
                reasons::DOMAINS_ATTACHED,
                format!(
                    "the pool is being deleted but domains are still attached; detach them (clear spec.pool) first: {}",
                    short_list(&names)
                ),
            ));
        }
    }

    let transitioning: Vec<String> = plan
        .domains
        .iter()
        .filter(|(_, v)| {
            v.owned
                && matches!(
                    v.phase,
                    DomainPhase::Activating
                        | DomainPhase::MovingToMaintenance
                        | DomainPhase::Detaching
                )
        })
        .map(|(n, v)| format!("{n} ({})", v.phase.as_str()))
        .collect();
    let map_changed = plan.desired.map_version != current.map_version;
    let rolling = map_changed || fresh.connecting > 0;

    let c = &mut s.conditions;
    match stalls.first() {
        Some((reason, _)) => {
            let msg = stalls
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            stall_event(&current.conditions, reason, &msg, &p.name, events);
            set_condition(c, types::STALLED, True, reason, msg, g, now);
        }
        None => set_condition(c, types::STALLED, False, reasons::PROGRESSING, "", g, now),
    }
    let reconciling: Option<(&'static str, String)> = if rolling {
        Some((
            reasons::ROLLING_OUT,
            super::map::rollout_message(plan.desired.map_version),
        ))
    } else if !transitioning.is_empty() {
        let shown: Vec<&str> = transitioning.iter().map(String::as_str).collect();
        Some((
            reasons::DOMAINS_TRANSITIONING,
            format!("domains changing phase: {}", short_list(&shown)),
        ))
    } else if p.deleting {
        Some((
            reasons::DELETING,
            "the pool is being deleted; its hosts are being disconnected".into(),
        ))
    } else {
        None
    };
    match &reconciling {
        Some((reason, msg)) => {
            set_condition(c, types::RECONCILING, True, reason, msg.clone(), g, now)
        }
        None => set_condition(c, types::RECONCILING, False, reasons::IDLE, "", g, now),
    }
    let failing = problems(&s.lagging_hosts)
        .iter()
        .map(|e| format!("{} ({})", e.host, e.reason))
        .collect::<Vec<_>>()
        .join(", ");
    let (ready, reason, msg): (ConditionStatus, &str, String) = if let Some((reason, _)) =
        stalls.first()
    {
        (
            False,
            reason,
            "progress needs a person: see the Stalled condition".into(),
        )
    } else if fresh.failing > 0 {
        (
            False,
            reasons::SYNC_FAILING,
            format!("hosts fail to take the pool's map: {failing}"),
        )
    } else if let Some((reason, msg)) = reconciling {
        (False, reason, msg)
    } else if fresh.hosts == 0 {
        (
            True,
            reasons::NO_HOSTS,
            "the pool has no hosts; its domains are Unknown until a host reports them".into(),
        )
    } else if plan.desired.master_domain.is_none() {
        (
            True,
            reasons::NO_ACTIVE_DATA_DOMAIN,
            "the pool has no active data domain, so no master: its hosts are disconnected".into(),
        )
    } else {
        (
            True,
            reasons::IN_SYNC,
            format!("every host holds map version {}", plan.desired.map_version),
        )
    };
    set_condition(c, types::READY, ready, reason, msg, g, now);

    if plan.desired.master_domain != current.master_domain {
        let name = |m: &Option<String>| m.clone().unwrap_or_else(|| "none".into());
        events.push(PlannedEvent {
            object: ObjectRef::pool(&p.name),
            type_: EventType::Normal,
            reason: reasons::MASTER_CHANGED,
            note: format!(
                "master domain {} -> {} (masterVersion {})",
                name(&current.master_domain),
                name(&plan.desired.master_domain),
                plan.desired.master_version
            ),
        });
    }
    s
}

fn short_list(items: &[&str]) -> String {
    let mut s = items
        .iter()
        .take(MAX_LISTED_HOSTS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_LISTED_HOSTS {
        s.push_str(&format!(" and {} more", items.len() - MAX_LISTED_HOSTS));
    }
    s
}
