//! Host statuses: the controller's part of `Host.status` (the phase, `Responsive`, `InSync`,
//! `Operational` and `Ready`) and the host events. Pure; it writes what the verdicts say and judges
//! nothing itself (sync, phases and blame come from [`crate::plan::hosts`] and
//! [`crate::plan::domains`]).

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::conditions::Cond;
use crate::api::HostPhase;
use crate::api::bounds::{self, LISTED_MAX};
use crate::api::condition::{ConditionStatus, find, is_true, reasons, types};
use crate::plan::{
    EventType, HostControllerStatus, HostRole, HostVerdict, HostView, ObjectRef, Observed,
    PlannedEvent, ReportView, SyncFailure,
};

use ConditionStatus::{False, True, Unknown};

/// Why a host without an endpoint gets no calls, and what fixes it.
const NO_ENDPOINT: &str = "the host cannot be called: neither spec.endpoint nor status.endpoint is set; its agent publishes status.endpoint when it reports (an agent that predates it does not), or an operator sets spec.endpoint";

/// The controller's part of the status of every host whose `spec.pool` is this pool, and the
/// events for their transitions.
pub(super) fn statuses(
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
        if joining(h, v) {
            continue;
        }
        let g = h.generation;
        let mut s = HostControllerStatus::clone(&h.controller);
        s.observed_generation = g;
        s.phase = Some(v.phase);
        let invalid = match &h.report {
            ReportView::Invalid(e) => Some(format!(
                "the agent's report does not parse ({}); it is ignored",
                bounds::outside(e)
            )),
            ReportView::Missing | ReportView::Parsed(_) => None,
        };
        let refused = format!(
            "every host id up to spec.sync.maxHosts={max_hosts} is taken; the host is refused"
        );
        let c = &mut s.conditions;
        responsive(v, h).set(c, types::RESPONSIVE, g, now);
        let had_in_sync = find(c, types::IN_SYNC).is_some();
        if let Some(cond) = in_sync(v, invalid.as_deref(), &refused, had_in_sync) {
            cond.set(c, types::IN_SYNC, g, now);
        }
        if let Some(cond) = operational(v, &refused) {
            cond.set(c, types::OPERATIONAL, g, now);
        }
        let in_sync_true = is_true(c, types::IN_SYNC);
        ready(v, invalid.as_deref(), &refused, in_sync_true).set(c, types::READY, g, now);

        host_events(name, h, v, invalid.as_deref(), events);
        out.insert(name.clone(), s);
    }
    out
}

/// A host this controller has never given a phase, on its way into the pool with nothing wrong
/// (it responds, its report parses, no call failed, no deadline passed). Its first status is the
/// one that shows where it arrived (`Up`) or why it did not: a `Connecting` written now would be
/// overwritten a second later, and with 2,000 hosts joining a new pool those writes double the
/// controller's share of the API server's work. The pool's `laggingHosts` and counts show it in
/// the meantime.
fn joining(h: &HostView, v: &HostVerdict) -> bool {
    h.controller.phase.is_none()
        && v.role == HostRole::Member
        && v.phase == HostPhase::Connecting
        && v.responsive
        && !v.report_invalid
        && v.failure.is_none()
}

fn responsive(v: &HostVerdict, h: &HostView) -> Cond {
    match (v.responsive, &h.lease) {
        (true, _) => Cond::new(True, reasons::LEASE_CURRENT, "the agent renews its Lease"),
        (false, None) => Cond::new(
            False,
            reasons::NO_LEASE,
            "the host has no Lease yet: its agent never started",
        ),
        (false, Some(_)) => Cond::new(
            False,
            reasons::LEASE_EXPIRED,
            "the host's Lease expired: its agent does not answer; no calls are sent until it renews",
        ),
    }
}

/// `InSync`; `None` keeps what it said while a host merely catches up (the write budget).
fn in_sync(
    v: &HostVerdict,
    invalid: Option<&str>,
    refused: &str,
    had_in_sync: bool,
) -> Option<Cond> {
    let cond = if let Some(msg) = invalid {
        Cond::new(Unknown, reasons::REPORT_UNPARSABLE, msg)
    } else if v.role == HostRole::Refused {
        Cond::new(False, reasons::TOO_MANY_HOSTS, refused)
    } else if v.role == HostRole::Maintenance {
        if v.in_sync {
            Cond::new(
                True,
                reasons::HOST_MAINTENANCE,
                "disconnected from the pool for maintenance",
            )
        } else {
            Cond::new(
                False,
                reasons::PREPARING_FOR_MAINTENANCE,
                "being disconnected from the pool for maintenance",
            )
        }
    } else if !v.responsive {
        Cond::new(Unknown, reasons::LEASE_EXPIRED, "the host does not respond")
    } else if let Some(f) = &v.failure {
        match f {
            SyncFailure::ConnectFailed(e) => Cond::new(
                False,
                reasons::CONNECT_FAILED,
                format!("StoragePool.connect failed: {e}"),
            ),
            SyncFailure::NotConfirmed => Cond::new(
                False,
                reasons::NOT_CONFIRMED,
                "the host did not report the pool's current map by the rollout deadline",
            ),
            SyncFailure::NoEndpoint => Cond::new(False, reasons::NO_ENDPOINT, NO_ENDPOINT),
        }
    } else if v.in_sync {
        Cond::new(
            True,
            reasons::IN_SYNC,
            "the host holds the pool's current map",
        )
    } else if !had_in_sync {
        // Catching up keeps whatever InSync said (the write budget); a new host says Connecting.
        Cond::new(
            False,
            reasons::CONNECTING,
            "the host is being given the pool's map",
        )
    } else {
        return None;
    };
    Some(cond)
}

/// `Operational`; `None` keeps the blame a NonOperational host had until its reports are clean.
fn operational(v: &HostVerdict, refused: &str) -> Option<Cond> {
    if v.role == HostRole::Refused {
        Some(Cond::new(False, reasons::TOO_MANY_HOSTS, refused))
    } else if v.phase == HostPhase::NonOperational {
        (!v.unreachable.is_empty()).then(|| {
            Cond::new(
                False,
                reasons::STORAGE_DOMAIN_UNREACHABLE,
                format!(
                    "the host cannot reach {} although other hosts can",
                    bounds::listed(&v.unreachable, LISTED_MAX)
                ),
            )
        })
    } else {
        // Only an Up host's reports are judged; the others say the state they are in, not a
        // verdict on domains no one asked them to reach.
        Some(match v.phase {
            HostPhase::NonResponsive => Cond::new(
                Unknown,
                reasons::LEASE_EXPIRED,
                "the host does not respond; whether it reaches its domains is not known",
            ),
            HostPhase::Maintenance => Cond::new(True, reasons::HOST_MAINTENANCE, ""),
            HostPhase::PreparingForMaintenance => {
                Cond::new(True, reasons::PREPARING_FOR_MAINTENANCE, "")
            }
            HostPhase::Connecting => Cond::new(True, reasons::CONNECTING, ""),
            HostPhase::Up | HostPhase::NonOperational => {
                Cond::new(True, reasons::DOMAINS_REACHABLE, "")
            }
        })
    }
}

fn ready(v: &HostVerdict, invalid: Option<&str>, refused: &str, in_sync_true: bool) -> Cond {
    if let Some(msg) = invalid {
        return Cond::new(False, reasons::REPORT_UNPARSABLE, msg);
    }
    if v.role == HostRole::Refused {
        return Cond::new(False, reasons::TOO_MANY_HOSTS, refused);
    }
    match v.phase {
        HostPhase::Maintenance => Cond::new(
            True,
            reasons::HOST_MAINTENANCE,
            "in maintenance, as requested",
        ),
        HostPhase::PreparingForMaintenance => Cond::new(
            False,
            reasons::PREPARING_FOR_MAINTENANCE,
            "being disconnected for maintenance",
        ),
        HostPhase::NonResponsive => {
            Cond::new(False, reasons::LEASE_EXPIRED, "the host does not respond")
        }
        HostPhase::NonOperational => Cond::new(
            False,
            reasons::STORAGE_DOMAIN_UNREACHABLE,
            "the host cannot reach a domain other hosts reach",
        ),
        HostPhase::Up if in_sync_true => Cond::new(True, reasons::HOST_UP, ""),
        HostPhase::Up | HostPhase::Connecting => match &v.failure {
            Some(SyncFailure::ConnectFailed(_)) => Cond::new(
                False,
                reasons::CONNECT_FAILED,
                "the host failed to take the pool's map",
            ),
            Some(SyncFailure::NotConfirmed) => Cond::new(
                False,
                reasons::NOT_CONFIRMED,
                "the host did not confirm the pool's map",
            ),
            Some(SyncFailure::NoEndpoint) => Cond::new(False, reasons::NO_ENDPOINT, NO_ENDPOINT),
            None => Cond::new(
                False,
                reasons::CONNECTING,
                "the host is being given the pool's map",
            ),
        },
    }
}

fn host_events(
    name: &str,
    h: &HostView,
    v: &HostVerdict,
    invalid: Option<&str>,
    events: &mut Vec<PlannedEvent>,
) {
    let previous = h.controller.phase;
    let host = ObjectRef::host(name);
    // A call that failed after its reconcile had reported (it ran in the background) shows up
    // through the ledger: its event goes out with the status that first shows the failure.
    let reported_now = events
        .iter()
        .any(|ev| ev.object == host && ev.reason == reasons::CONNECT_FAILED);
    let background_failure = match &v.failure {
        Some(SyncFailure::ConnectFailed(e)) if !reported_now => {
            Some(format!("StoragePool.connect failed: {e}"))
        }
        _ => None,
    };
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
                    bounds::listed(&v.unreachable, LISTED_MAX)
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
    if let Some(note) = background_failure
        && !was(reasons::CONNECT_FAILED)
    {
        push(EventType::Warning, reasons::CONNECT_FAILED, note);
    }
    if v.role == HostRole::Refused && !was(reasons::TOO_MANY_HOSTS) {
        push(
            EventType::Warning,
            reasons::TOO_MANY_HOSTS,
            "host refused: the pool has no free host id".into(),
        );
    }
}
