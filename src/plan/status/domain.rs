//! Domain statuses: the phase, the host counts and blocking-host snapshot, the conditions
//! (`Ready`/`Reconciling`/`Stalled`, `MovingToMaintenance`, `Problem`) and the domain events; also
//! the status of a domain no pool owns (`Unattached` or `PoolNotFound`, decided here). Pure; for a
//! pool's domains, phases, blame and the blocking hosts come from [`crate::plan::domains`], this
//! only writes them down.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::conditions::{Cond, Progress, Why};
use super::snapshot::{bucket, count, entry, listed, names, problems, short_list};
use crate::api::condition::{ConditionStatus, is_true, reasons, types};
use crate::api::domain::DomainHostCounts;
use crate::api::{
    DomainPhase, LagReason, LaggingHost, MapStatus, StorageDomainSpec, StorageDomainStatus,
};
use crate::plan::{
    DomainFlag, DomainVerdict, DomainView, EventType, HostRole, HostVerdict, HostView,
    MAX_LISTED_HOSTS, ObjectRef, Observed, Plan, PlannedEvent, SyncFailure,
};

use ConditionStatus::{False, True, Unknown};

/// The status of every domain this pool owns, and the events for their transitions.
pub(super) fn statuses(
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
                    .map(|h| blocking_entry(h, hosts.get(h), observed.hosts.get(h)))
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
        let in_maintenance = plan.desired.master_domain.is_none();
        conditions(&mut s, d, v, hosts, in_maintenance, now);

        domain_events(name, current, &s, v, events);
        out.insert(name.clone(), s);
    }
    out
}

/// Why a host blocks a domain's transition. A blocking host always has a verdict (the blocking
/// sets are built from the verdicts); one without could not answer either.
fn blocking_entry(host: &str, v: Option<&HostVerdict>, h: Option<&HostView>) -> LaggingHost {
    let Some(v) = v else {
        return entry(host, LagReason::NotResponding, None);
    };
    if !v.responsive {
        entry(host, LagReason::NotResponding, None)
    } else if let Some(why) = h.and_then(|h| h.report.unreadable()) {
        entry(host, LagReason::ReportUnparsable, Some(why))
    } else if let Some(SyncFailure::ConnectFailed(e)) = &v.failure {
        entry(host, LagReason::ConnectFailing, Some(e))
    } else if v.failure == Some(SyncFailure::NotConfirmed) {
        entry(host, LagReason::NotConfirming, None)
    } else if v.failure == Some(SyncFailure::NoEndpoint) {
        entry(host, LagReason::NoEndpoint, None)
    } else if matches!(v.role, HostRole::Maintenance | HostRole::Leaving) {
        entry(host, LagReason::BeingDisconnected, None)
    } else if !v.in_sync && !v.told_now {
        entry(host, LagReason::NotToldYet, None)
    } else {
        entry(host, LagReason::WaitingForReport, None)
    }
}

/// `pool_in_maintenance`: the pool has no active data domain (no master, hosts disconnected).
fn conditions(
    s: &mut StorageDomainStatus,
    d: &DomainView,
    v: &DomainVerdict,
    hosts: &BTreeMap<String, HostVerdict>,
    pool_in_maintenance: bool,
    now: Timestamp,
) {
    let g = d.generation;
    let blockers = names(&s.blocking_hosts, s.hosts.still_active);
    let c = &mut s.conditions;
    // What only a person can change: bad input, or a request the pool refuses.
    let flag = v
        .flag
        .as_ref()
        .map(|f| Why::new(flag_reason(f), flag_message(f)))
        .or_else(|| v.last_data_domain.as_ref().map(last_data_domain_why))
        .or_else(|| {
            let unmonitored = v.map == Some(MapStatus::Active) && v.phase == DomainPhase::Unknown;
            (pool_in_maintenance && (unmonitored || v.attaching)).then(|| {
                Why::new(
                    reasons::NO_ACTIVE_DATA_DOMAIN,
                    "the pool is in maintenance: it has no active data domain (no master), so no host is connected to it and none monitors this domain; activate a data domain of the pool",
                )
            })
        });
    let ready = match (&flag, v.phase) {
        (Some(why), _) => Cond::of(False, why.clone()),
        (None, DomainPhase::Active) => {
            Cond::new(True, reasons::ACTIVE, "every Up host sees the domain")
        }
        (None, DomainPhase::Maintenance) => Cond::new(
            True,
            reasons::MAINTENANCE,
            "in maintenance, as requested; no host monitors it",
        ),
        (None, DomainPhase::Unattached) if v.attaching => Cond::new(
            False,
            reasons::ATTACHING,
            "waiting for the pool manager to attach the domain to the pool on storage (StorageDomain.attach); it enters the map then",
        ),
        (None, DomainPhase::Unattached) => {
            Cond::new(True, reasons::UNATTACHED, "the domain is in no pool")
        }
        (None, DomainPhase::Activating) => Cond::new(
            False,
            reasons::ACTIVATING,
            "waiting for every Up host to report the domain valid",
        ),
        (None, DomainPhase::MovingToMaintenance) => Cond::new(
            False,
            reasons::HOSTS_STILL_REPORTING,
            format!("still monitored by: {blockers}"),
        ),
        (None, DomainPhase::Detaching) if v.blocking.is_empty() => Cond::new(
            False,
            reasons::DETACHING,
            "no host holds the domain; waiting for the pool manager to detach it from the pool on storage (StorageDomain.detach)",
        ),
        (None, DomainPhase::Detaching) => Cond::new(
            False,
            reasons::DETACHING,
            format!("still in the map of: {blockers}"),
        ),
        (None, DomainPhase::Inactive) => Cond::new(
            False,
            reasons::DOMAIN_INACTIVE,
            "every Up host reported the domain failing for longer than the grace period; hosts keep probing it",
        ),
        (None, DomainPhase::Unknown) => Cond::new(
            Unknown,
            reasons::NO_REPORTING_HOSTS,
            "no Up host of the pool can report the domain",
        ),
    };

    let reconciling = match v.phase {
        DomainPhase::Activating | DomainPhase::MovingToMaintenance | DomainPhase::Detaching
            if flag.is_none() =>
        {
            Some(ready.why.clone())
        }
        DomainPhase::Unattached if v.attaching => Some(ready.why.clone()),
        _ => None,
    };

    let stuck: Vec<&str> = v
        .blocking
        .iter()
        .filter(|h| hosts.get(*h).is_none_or(|hv| !hv.responsive))
        .map(String::as_str)
        .collect();
    let stalled = if flag.is_some() {
        flag
    } else if !v.blocking.is_empty() && stuck.len() == v.blocking.len() {
        let mut shown: Vec<&str> = stuck.iter().take(MAX_LISTED_HOSTS).copied().collect();
        if stuck.len() > MAX_LISTED_HOSTS {
            shown.push("...");
        }
        Some(Why::new(
            reasons::HOSTS_NOT_RESPONDING,
            format!(
                "waiting for hosts that do not respond: {}; put them in maintenance (Host.spec.maintenance) to release the domain",
                shown.join(", ")
            ),
        ))
    } else {
        None
    };
    Progress {
        ready,
        reconciling,
        stalled,
    }
    .set(c, g, now);

    let moving = if v.phase == DomainPhase::MovingToMaintenance {
        Cond::new(
            True,
            reasons::HOSTS_STILL_REPORTING,
            format!(
                "still monitored by: {blockers}; putting a host in maintenance (Host.spec.maintenance) releases it"
            ),
        )
    } else {
        Cond::new(False, not_moving_reason(v), "")
    };
    moving.set(c, types::MOVING_TO_MAINTENANCE, g, now);

    let problem = if v.problem_hosts.is_empty() {
        Cond::new(False, reasons::NO_PROBLEM, "")
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
        Cond::new(
            True,
            reasons::DOMAIN_PROBLEM,
            format!(
                "Up hosts report the domain failing: {}; when the grace period ends they become NonOperational, or the domain Inactive if every Up host reports it",
                shown.join(", ")
            ),
        )
    };
    problem.set(c, types::PROBLEM, g, now);
}

/// Why a domain is not moving to maintenance, in the words of the state it is in: it got there
/// (`NoHostReports`, in maintenance or detaching), it is in no pool (`Unattached`), it was asked
/// but is kept active as the last data domain (`LastDataDomain`) or until the master moved to
/// another domain (`MasterHandover`), or it is to be active (`MaintenanceNotRequested`).
fn not_moving_reason(v: &DomainVerdict) -> &'static str {
    match v.phase {
        DomainPhase::Maintenance | DomainPhase::Detaching => reasons::NO_HOST_REPORTS,
        DomainPhase::Unattached => reasons::UNATTACHED,
        DomainPhase::Active
        | DomainPhase::Activating
        | DomainPhase::Inactive
        | DomainPhase::Unknown
        | DomainPhase::MovingToMaintenance => {
            if v.last_data_domain.is_some() {
                reasons::LAST_DATA_DOMAIN
            } else if v.master_handover {
                reasons::MASTER_HANDOVER
            } else {
                reasons::MAINTENANCE_NOT_REQUESTED
            }
        }
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
    let was_problem = is_true(&current.conditions, types::PROBLEM);
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

/// The status of a domain that no existing pool owns: `spec.pool` unset or naming a pool that does
/// not exist, and `status.pool` unset or naming a pool that does not exist. The shell calls it
/// instead of [`crate::plan::plan`] (and removes [`crate::plan::DOMAIN_FINALIZER`] from such a
/// domain if it is deleted). A missing pool gives `Stalled=True` and `Ready=False`, reason
/// `PoolNotFound`.
pub fn orphan_domain(
    generation: Option<i64>,
    spec: &StorageDomainSpec,
    current: &StorageDomainStatus,
    now: Timestamp,
) -> StorageDomainStatus {
    let g = generation;
    let mut status = current.clone();
    status.observed_generation = g;
    status.phase = Some(DomainPhase::Unattached);
    status.pool = None;
    status.hosts = Default::default();
    status.blocking_hosts.clear();
    let c = &mut status.conditions;
    let progress = match spec.pool.as_deref() {
        Some(pool) => Progress::stalled(Why::new(
            reasons::POOL_NOT_FOUND,
            format!("StoragePool {pool} does not exist; create it or change spec.pool"),
        )),
        None => Progress {
            ready: Cond::new(True, reasons::UNATTACHED, "the domain is in no pool"),
            reconciling: None,
            stalled: None,
        },
    };
    progress.set(c, g, now);
    Cond::new(False, reasons::UNATTACHED, "").set(c, types::MOVING_TO_MAINTENANCE, g, now);
    Cond::new(False, reasons::NO_PROBLEM, "").set(c, types::PROBLEM, g, now);
    status
}

/// Why the pool's last active data domain stays active: the domains to put in maintenance first.
fn last_data_domain_why(others: &BTreeSet<String>) -> Why {
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    Why::new(
        reasons::LAST_DATA_DOMAIN,
        format!(
            "the last active data domain of the pool cannot leave while other domains are active (no other data domain could be master); it stays active and master: put these in maintenance first: {}",
            short_list(&others)
        ),
    )
}

/// The condition reason for bad input on a domain.
pub(super) fn flag_reason(flag: &DomainFlag) -> &'static str {
    match flag {
        DomainFlag::DuplicateUuid { .. } => reasons::DUPLICATE_DOMAIN_UUID,
        DomainFlag::TooManyDomains => reasons::TOO_MANY_DOMAINS,
    }
}

/// The condition message for bad input on a domain.
fn flag_message(flag: &DomainFlag) -> String {
    match flag {
        DomainFlag::DuplicateUuid { holder, placed_in } => {
            let place = placed_in
                .as_deref()
                .map_or_else(String::new, |p| format!(" (in pool {p})"));
            format!(
                "StorageDomain {holder}{place} already has this uuid, and the uuid names one domain on storage: this one is left out of the map and {holder} keeps its place; give this one its own uuid or delete it"
            )
        }
        DomainFlag::TooManyDomains => format!(
            "the pool already has {} domains (VDSM's limit); this one is left out of the map",
            crate::api::pool::MAX_DOMAINS_PER_POOL
        ),
    }
}
