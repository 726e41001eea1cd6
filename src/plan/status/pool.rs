//! The pool status: the counts and lagging-host snapshot, `Ready`/`Reconciling`/`Stalled` (what
//! is rolling out, what only a person can fix), the pool's events, and the status of a halted pool.
//! Pure; the map, master and versions come from [`crate::plan::map`] and are only copied here.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::conditions::{Cond, Progress, Why};
use super::domain::flag_reason;
use super::snapshot::{bucket, count, entry, listed, problems, short_list};
use crate::api::bounds;
use crate::api::condition::{ConditionStatus, find, reasons, types};
use crate::api::{DomainPhase, HostCounts, LagReason, LaggingHost, MapStatus, StoragePoolStatus};
use crate::plan::domains::attached_domains;
use crate::plan::manager::ManagerState;
use crate::plan::{
    EventType, Halt, HostRole, HostVerdict, ObjectRef, Observed, Plan, PlannedEvent, SyncFailure,
    rollout,
};

use ConditionStatus::{False, True};

/// Why a member host does not hold the current map.
fn lagging_entry(host: &str, v: &HostVerdict) -> LaggingHost {
    if !v.responsive {
        entry(host, LagReason::NotResponding, None)
    } else if v.report_invalid {
        entry(host, LagReason::ReportUnparsable, None)
    } else {
        match &v.failure {
            Some(SyncFailure::ConnectFailed(e)) => entry(host, LagReason::ConnectFailing, Some(e)),
            Some(SyncFailure::NotConfirmed) => entry(host, LagReason::NotConfirming, None),
            Some(SyncFailure::NoEndpoint) => entry(host, LagReason::NoEndpoint, None),
            None if v.call_pending => entry(host, LagReason::WaitingTurn, None),
            None => entry(host, LagReason::Connecting, None),
        }
    }
}

/// The pool's status after acting, and the pool's events.
pub(super) fn status(
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
        domains: count(plan.desired.domain_map.iter()),
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
            .map(|(name, v)| lagging_entry(name, v))
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

    let stalls = stalls(observed, plan, hosts);
    let stalled = stalls.first().map(|first| {
        let msg = stalls
            .iter()
            .map(|w| w.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        stall_event(&current.conditions, first.reason, &msg, &p.name, events);
        Why::new(first.reason, msg)
    });
    let reconciling = reconciling(observed, plan, fresh.connecting > 0);
    let failing = problems(&s.lagging_hosts)
        .iter()
        .map(|e| format!("{} ({})", e.host, e.message))
        .collect::<Vec<_>>()
        .join(", ");
    let ready = if let Some(first) = &stalled {
        Cond::new(
            False,
            first.reason,
            "progress needs a person: see the Stalled condition",
        )
    } else if fresh.failing > 0 {
        Cond::new(
            False,
            reasons::SYNC_FAILING,
            format!("hosts fail to take the pool's map: {failing}"),
        )
    } else if let Some(why) = &reconciling {
        Cond::of(False, why.clone())
    } else if fresh.hosts == 0 {
        Cond::new(
            True,
            reasons::NO_HOSTS,
            "the pool has no hosts; its domains are Unknown until a host reports them",
        )
    } else if plan.desired.master_domain.is_none() {
        Cond::new(
            True,
            reasons::NO_ACTIVE_DATA_DOMAIN,
            "the pool is in maintenance: it has no active data domain, so no master, and its hosts are disconnected; activate a data domain to bring it up",
        )
    } else {
        Cond::new(
            True,
            reasons::IN_SYNC,
            format!("every host holds map version {}", plan.desired.map_version),
        )
    };
    Progress {
        ready,
        reconciling,
        stalled,
    }
    .set(&mut s.conditions, g, now);
    s.pool_manager.clone_from(&plan.manager.record);
    let mut manager = manager_condition(&plan.manager.state);
    if let Some(failure) = &plan.manager.storage_failure {
        // The pool on storage waits for the manager: say what it refused.
        manager.why.message = format!("{}; {failure}", manager.why.message);
    }
    manager.set(&mut s.conditions, types::POOL_MANAGER, g, now);
    manager_events(observed, plan, events);

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

/// The `PoolManager` condition: `True` while the recorded host reports the role.
fn manager_condition(state: &ManagerState) -> Cond {
    let failed = |f: &Option<String>| {
        f.as_ref()
            .map(|e| format!("; the last attempt failed: {e}"))
            .unwrap_or_default()
    };
    match state {
        ManagerState::Running {
            host,
            host_id,
            lver,
        } => Cond::new(
            True,
            reasons::MANAGER_RUNNING,
            format!("{host} (host id {host_id}) is the pool manager, lease version {lver}"),
        ),
        ManagerState::Starting { host, failure } => Cond::new(
            False,
            reasons::MANAGER_STARTING,
            format!("starting the pool manager on {host}{}", failed(failure)),
        ),
        ManagerState::Stopping { host, failure } => Cond::new(
            False,
            reasons::MANAGER_STOPPING,
            format!(
                "stopping the pool manager on {host}, which may not keep the role (maintenance, left the pool, NonOperational, or a second manager){}",
                failed(failure)
            ),
        ),
        ManagerState::Reconstructing { host, old, failure } => Cond::new(
            False,
            reasons::RECONSTRUCTING_MASTER,
            format!(
                "no host can read the master domain {old}: {host} rebuilds the pool's metadata on the new master (reconstructMaster), then every host connects to it{}",
                failed(failure)
            ),
        ),
        ManagerState::NoCandidate { last } => Cond::new(
            False,
            reasons::NO_MANAGER_CANDIDATE,
            match last {
                Some(h) => format!(
                    "{h} cannot hold the pool manager's role and no other responsive, in-sync Up host can take it"
                ),
                None => "no responsive, in-sync Up host can be the pool manager yet".to_owned(),
            },
        ),
        ManagerState::NotNeeded => Cond::new(
            False,
            reasons::NO_ACTIVE_DATA_DOMAIN,
            "the pool has no master domain, so no pool manager",
        ),
    }
}

/// Events on the pool manager's transitions: another host chosen, the role taken.
fn manager_events(observed: &Observed, plan: &Plan, events: &mut Vec<PlannedEvent>) {
    let p = &observed.pool;
    let before = p.status.pool_manager.as_ref().map(|m| m.host.as_str());
    let after = plan.manager.record.as_ref();
    if let Some(m) = after.filter(|m| before != Some(m.host.as_str())) {
        events.push(PlannedEvent {
            object: ObjectRef::pool(&p.name),
            type_: EventType::Normal,
            reason: reasons::MANAGER_CHOSEN,
            note: format!(
                "pool manager {} -> {} (host id {})",
                before.unwrap_or("none"),
                m.host,
                m.host_id
            ),
        });
    }
    // The pool on storage: created, a domain attached or detached (recorded from the accepted
    // call).
    if let Some(after) = &plan.manager.storage {
        let before = crate::plan::map::attached(&p.status);
        let mut note = |reason, what: String| {
            events.push(PlannedEvent {
                object: ObjectRef::pool(&p.name),
                type_: EventType::Normal,
                reason,
                note: what,
            });
        };
        match before {
            None => note(
                reasons::POOL_CREATED,
                format!(
                    "created on storage with {} domain(s): {}",
                    after.attached.len(),
                    short_list(
                        &after
                            .attached
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                    )
                ),
            ),
            Some(before) => {
                for sd in after
                    .attached
                    .iter()
                    .filter(|d| !before.contains(d.as_str()))
                {
                    note(
                        reasons::DOMAIN_ATTACHED,
                        format!("{sd} attached on storage"),
                    );
                }
                for sd in before.iter().filter(|d| !after.attached.contains(**d)) {
                    note(
                        reasons::DOMAIN_DETACHED,
                        format!("{sd} detached on storage"),
                    );
                }
            }
        }
    }
    let was_running =
        find(&p.status.conditions, types::POOL_MANAGER).is_some_and(|c| c.status == True.as_str());
    if let ManagerState::Running { host, lver, .. } = &plan.manager.state
        && !was_running
    {
        events.push(PlannedEvent {
            object: ObjectRef::pool(&p.name),
            type_: EventType::Normal,
            reason: reasons::MANAGER_STARTED,
            note: format!("{host} holds the pool manager's role (lease version {lver})"),
        });
    }
    let was_rebuilding = find(&p.status.conditions, types::POOL_MANAGER)
        .is_some_and(|c| c.reason == reasons::RECONSTRUCTING_MASTER);
    if let ManagerState::Reconstructing { host, old, .. } = &plan.manager.state
        && !was_rebuilding
    {
        events.push(PlannedEvent {
            object: ObjectRef::pool(&p.name),
            type_: EventType::Warning,
            reason: reasons::RECONSTRUCTING_MASTER,
            note: format!(
                "no host can read the master domain {old}; {host} rebuilds the pool's metadata on {}",
                plan.desired.master_domain.as_deref().unwrap_or("none")
            ),
        });
    }
}

/// What only a person can fix: refused hosts, flagged domains, a last data domain asked to leave
/// while other domains are active, domains to be active in a pool in maintenance, a deleted pool
/// that still has domains. The first one names the `Stalled` reason.
fn stalls(observed: &Observed, plan: &Plan, hosts: &BTreeMap<String, HostVerdict>) -> Vec<Why> {
    let p = &observed.pool;
    let mut stalls = Vec::new();
    let refused: Vec<&str> = hosts
        .iter()
        .filter(|(_, v)| v.role == HostRole::Refused)
        .map(|(n, _)| n.as_str())
        .collect();
    if !refused.is_empty() {
        stalls.push(Why::new(
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
            .filter(|(_, v)| v.flag.as_ref().is_some_and(|f| flag_reason(f) == reason))
            .map(|(n, _)| n.as_str())
            .collect();
        if !flagged.is_empty() {
            stalls.push(Why::new(
                reason,
                format!("{what}: {}", short_list(&flagged)),
            ));
        }
    }
    let kept: Vec<&str> = plan
        .domains
        .iter()
        .filter(|(_, v)| v.last_data_domain.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    if !kept.is_empty() {
        stalls.push(Why::new(
            reasons::LAST_DATA_DOMAIN,
            format!(
                "the last active data domain cannot leave while other domains are active; put those in maintenance first: {}",
                short_list(&kept)
            ),
        ));
    }
    if plan.desired.master_domain.is_none() {
        let waiting: Vec<&str> = plan
            .domains
            .iter()
            .filter(|(_, v)| v.owned && (v.map == Some(MapStatus::Active) || v.attaching))
            .map(|(n, _)| n.as_str())
            .collect();
        if !waiting.is_empty() {
            stalls.push(Why::new(
                reasons::NO_ACTIVE_DATA_DOMAIN,
                format!(
                    "the pool is in maintenance (no active data domain, so no master, hosts disconnected), but these domains are to be active; activate a data domain: {}",
                    short_list(&waiting)
                ),
            ));
        }
    }
    if p.deleting {
        let attached = attached_domains(observed, &plan.domains);
        if !attached.is_empty() {
            let names: Vec<&str> = attached.iter().map(String::as_str).collect();
            stalls.push(Why::new(
                reasons::DOMAINS_ATTACHED,
                format!(
                    "the pool is being deleted but domains are still attached; detach them (clear spec.pool) first: {}",
                    short_list(&names)
                ),
            ));
        }
    }
    stalls
}

/// Why the pool is in transition, if it is: a map rolling out, domains changing phase, or the pool
/// being deleted.
fn reconciling(observed: &Observed, plan: &Plan, connecting: bool) -> Option<Why> {
    let map_changed = plan.desired.map_version != observed.pool.status.map_version;
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
    if map_changed || connecting {
        Some(Why::new(
            reasons::ROLLING_OUT,
            rollout::message(plan.desired.map_version),
        ))
    } else if !transitioning.is_empty() {
        let shown: Vec<&str> = transitioning.iter().map(String::as_str).collect();
        Some(Why::new(
            reasons::DOMAINS_TRANSITIONING,
            format!("domains changing phase: {}", short_list(&shown)),
        ))
    } else if observed.pool.deleting {
        Some(Why::new(
            reasons::DELETING,
            "the pool is being deleted; its hosts are being disconnected",
        ))
    } else {
        None
    }
}

/// The status of a pool the planner will not touch (an invalid compatibility version, a spec
/// edit that would change connected hosts' identity or ids).
pub(super) fn halted_status(
    observed: &Observed,
    halt: &Halt,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> StoragePoolStatus {
    let p = &observed.pool;
    let g = p.generation;
    let why = match halt {
        Halt::InvalidVersion { version } => Why::new(
            reasons::INVALID_COMPATIBILITY_VERSION,
            format!("compatibilityVersion {version:?} is not major.minor; no host is contacted"),
        ),
        Halt::UuidChanged { spec, status } => Why::new(
            reasons::UUID_CHANGED,
            format!(
                "spec.uuid {spec} differs from {status}, the uuid the pool's hosts were given; set spec.uuid back to {status} (or remove it). No host is contacted until then"
            ),
        ),
        Halt::MaxHostsTooLow { max_hosts, hosts } => {
            let needed = hosts.values().max().copied().unwrap_or(*max_hosts);
            Why::new(
                reasons::MAX_HOSTS_TOO_LOW,
                format!(
                    "spec.sync.maxHosts={max_hosts} is below the ids these hosts hold: {}; raise spec.sync.maxHosts to at least {needed}. No host is connected, disconnected or renumbered until then",
                    bounds::listed(
                        hosts.iter().map(|(h, id)| format!("{h} (id {id})")),
                        bounds::LISTED_MAX
                    )
                ),
            )
        }
    };
    let mut s = p.status.clone();
    s.observed_generation = g;
    stall_event(&s.conditions, why.reason, &why.message, &p.name, events);
    Progress::stalled(why).set(&mut s.conditions, g, now);
    s
}

/// A Warning event when the pool becomes stalled, or stalled for another reason.
fn stall_event(
    current: &[Condition],
    reason: &'static str,
    msg: &str,
    pool: &str,
    events: &mut Vec<PlannedEvent>,
) {
    let was = find(current, types::STALLED);
    if !was.is_some_and(|c| c.status == True.as_str() && c.reason == reason) {
        events.push(PlannedEvent {
            object: ObjectRef::pool(pool),
            type_: EventType::Warning,
            reason,
            note: msg.to_owned(),
        });
    }
}
