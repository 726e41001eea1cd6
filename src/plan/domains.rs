//! Domains: phases from the hosts' reports, the problem grace period kept in the `Problem`
//! condition's `lastTransitionTime`, blame (hosts NonOperational, or the domain Inactive),
//! recovery, the hosts that block MovingToMaintenance and Detaching, and finalizers. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};

use super::hosts::{blamed_before, holds_pool};
use super::map::{DomainClass, Eligibility, leaving_is_moving};
use super::{
    DOMAIN_FINALIZER, Desired, DomainVerdict, DomainView, FinalizerAction, FinalizerChange,
    HostRole, HostVerdict, MAX_LAST_CHECK_SECONDS, ObjectRef, Observed, POOL_FINALIZER, ReportView,
};
use crate::api::condition::{self, ConditionStatus, types};
use crate::api::{DomainPhase, DomainType, DomainVitals, HostPhase, HostReport, MapStatus};
use ConditionStatus::True;

/// How one host's report of one active domain reads (oVirt's `analyzeDomainReport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// Valid, actual, checked recently.
    Fine,
    /// The monitor has not completed its first check yet: neither fine nor a problem.
    NotActual,
    /// Invalid, an error code, or a check older than 30 s.
    Problem,
}

fn read(v: &DomainVitals) -> Reading {
    if !v.actual {
        Reading::NotActual
    } else if !v.valid || v.code != 0 || v.last_check_seconds >= MAX_LAST_CHECK_SECONDS {
        Reading::Problem
    } else {
        Reading::Fine
    }
}

/// The leaving domains that are still moving to maintenance (some host connected to the pool still
/// monitors them), as opposed to detaching. They stay in the map as `attached`.
pub fn leaving_still_reported(
    observed: &Observed,
    classes: &Eligibility,
    hosts: &BTreeMap<String, HostVerdict>,
) -> BTreeSet<String> {
    // By uuid; several leaving domains may name one uuid, and a report of it holds them all.
    let mut leaving: HashMap<&str, Vec<&DomainView>> = HashMap::new();
    for d in classes
        .iter()
        .filter(|(_, c)| **c == DomainClass::Leaving)
        .filter_map(|(n, _)| observed.domains.get(n))
    {
        leaving.entry(d.spec.uuid.as_str()).or_default().push(d);
    }
    if leaving.is_empty() {
        return BTreeSet::new();
    }
    let mut reported = BTreeSet::new();
    if !unreadable_holders(observed, hosts).is_empty() {
        reported.extend(leaving.values().flatten().map(|d| d.name.clone()));
    }
    for (_, told) in told_holders(observed, hosts) {
        reported.extend(
            told.filter_map(|u| leaving.get(u))
                .flatten()
                .map(|d| d.name.clone()),
        );
    }
    for (name, v) in hosts {
        if !holds_pool(v) {
            continue;
        }
        let Some(report) = observed.hosts.get(name).and_then(|h| h.report.parsed()) else {
            continue;
        };
        for d in monitored(report)
            .filter_map(|uuid| leaving.get(uuid))
            .flatten()
        {
            reported.insert(d.name.clone());
        }
    }
    reported.retain(|n| {
        let phase = observed.domains.get(n).and_then(|d| d.status.phase);
        leaving_is_moving(phase, true)
    });
    reported
}

/// The uuids a host may be using: those it reports monitoring, and those the map it holds asks it
/// to monitor (`active`). Until it holds a map that no longer asks, a host that does not list a
/// domain may still be starting its monitor (a report need not be taken at one instant), so it
/// has not let go of it yet.
fn monitored(report: &HostReport) -> impl Iterator<Item = &str> {
    let told = report.pool.iter().flat_map(|c| c.domain_map.active());
    report.domains.iter().map(|v| v.uuid.as_str()).chain(told)
}

/// Hosts without a readable report (missing or unparsable) that may still hold the pool: the
/// controller gave them an id here (`status.hostIds` is persisted before any call, so a host told
/// anything is in it) and, for a missing report, it heard from them (they have a Lease). What such
/// a host monitors is unknown, so it holds every domain on its way to maintenance or out of the
/// pool, as if it still reported what it was last told. A host in maintenance that does not
/// respond is released, as by [`holds_pool`].
fn unreadable_holders<'a>(
    observed: &'a Observed,
    hosts: &BTreeMap<String, HostVerdict>,
) -> Vec<&'a str> {
    let persisted = &observed.pool.status.host_ids;
    observed
        .hosts
        .iter()
        .filter(|(name, h)| {
            let heard_from = match h.report {
                ReportView::Missing => h.lease.is_some(),
                ReportView::Invalid(_) => true,
                ReportView::Parsed(_) => false,
            };
            let Some(v) = hosts.get(*name).filter(|_| heard_from) else {
                return false;
            };
            let has_id = v.host_id.is_some() || persisted.iter().any(|e| e.host == **name);
            let released = v.role == HostRole::Maintenance && !v.responsive;
            has_id && !released
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Hosts that may monitor domains their report does not show: they were sent a connect since they
/// were last seen in sync (and are not in sync now), and it may have been taken (in flight, accepted, or without an answer)
/// while no report since confirms a map. With each, the domains those calls asked it to monitor
/// ([`super::ledger::HostCalls::may_monitor`]). A host that restarted since (another bootId) holds
/// none of them; a host in maintenance that does not respond is released, as by [`holds_pool`].
/// Without this, a host whose report never arrives (a stuck report writer, an API server that
/// refuses its writes) would let a domain it was told to monitor reach Maintenance.
fn told_holders<'a>(
    observed: &'a Observed,
    hosts: &'a BTreeMap<String, HostVerdict>,
) -> impl Iterator<Item = (&'a str, impl Iterator<Item = &'a str>)> {
    observed.ledger.iter().filter_map(move |(name, entry)| {
        let v = hosts.get(name)?;
        let report = observed.hosts.get(name)?.report.parsed()?;
        let released = v.role == HostRole::Maintenance && !v.responsive;
        // A host in sync confirms the map it holds (the plan forgets its entry).
        let confirmed = v.in_sync;
        let current = entry.pool == observed.pool.name && report.boot_id == entry.last.boot_id;
        (current && !confirmed && !released).then(|| (name.as_str(), entry.may_monitor()))
    })
}

/// What the hosts' reports say about one domain. Host names are pushed in name order (hosts are
/// walked in order), so the lists turn into sets in linear time.
#[derive(Default)]
struct Tally {
    reporting: i32,
    valid_up: i32,
    any_fine_up: bool,
    problem: Vec<String>,
    reporters: Vec<String>,
    holders: Vec<String>,
}

/// Judges every domain's phase from the reports, runs the problem grace period, and blames hosts
/// (NonOperational) or the domain (Inactive) when it ends. Updates host verdicts for blame and
/// recovery.
pub fn judge(
    observed: &Observed,
    classes: &Eligibility,
    moving: &BTreeSet<String>,
    desired: &Desired,
    hosts: &mut BTreeMap<String, HostVerdict>,
    now: Timestamp,
) -> BTreeMap<String, DomainVerdict> {
    let pool = observed.pool.name.as_str();
    // Index the domains the reports can talk about: members and leaving ones.
    let tracked: Vec<&DomainView> = classes
        .iter()
        .filter(|(_, c)| {
            matches!(
                c,
                DomainClass::Member
                    | DomainClass::Leaving
                    | DomainClass::Kept(_)
                    | DomainClass::HandingOver
            )
        })
        .filter_map(|(n, _)| observed.domains.get(n))
        .collect();
    // Several leaving domains may name one uuid (duplicates are only refused among members): a
    // report of the uuid counts for each of them, so none is released while a host uses it.
    let mut index: HashMap<&str, Vec<usize>> = HashMap::with_capacity(tracked.len());
    for (i, d) in tracked.iter().enumerate() {
        index.entry(d.spec.uuid.as_str()).or_default().push(i);
    }
    let at = |uuid: &str| index.get(uuid).map_or(&[][..], Vec::as_slice);
    // Active domains whose absence from an in-sync Up host's report is a problem. A domain already
    // Inactive is left out of a NonOperational host's recovery check, as every host fails it.
    let active: Vec<bool> = tracked
        .iter()
        .map(|d| desired.domain_map.get(&d.spec.uuid) == Some(&MapStatus::Active))
        .collect();
    let leaving: Vec<bool> = tracked
        .iter()
        .map(|d| classes.get(&d.name) == Some(&DomainClass::Leaving))
        .collect();
    let any_leaving = leaving.iter().any(|l| *l);
    let mut tallies: Vec<Tally> = tracked.iter().map(|_| Tally::default()).collect();
    let mut recovering: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut up_hosts = 0;
    let mut seen = vec![false; tracked.len()];
    for (name, v) in hosts.iter() {
        let Some(h) = observed.hosts.get(name) else {
            continue;
        };
        let Some(report) = h.report.parsed() else {
            continue;
        };
        let up = v.role == HostRole::Member && v.phase == HostPhase::Up;
        up_hosts += i32::from(up);
        let judged_for_recovery =
            v.role == HostRole::Member && v.phase == HostPhase::NonOperational && blamed_before(h);
        let connected = holds_pool(v);
        seen.iter_mut().for_each(|s| *s = false);
        for (vit, &i) in report
            .domains
            .iter()
            .flat_map(|vit| at(&vit.uuid).iter().map(move |i| (vit, i)))
        {
            seen[i] = true;
            let t = &mut tallies[i];
            if connected {
                t.reporting += 1;
                if !active[i] {
                    t.reporters.push(name.clone());
                }
            }
            if !active[i] {
                continue;
            }
            let reading = read(vit);
            if up && reading == Reading::Fine {
                t.valid_up += 1;
                t.any_fine_up = true;
            }
            if reading == Reading::Problem && v.in_sync {
                if up {
                    t.problem.push(name.clone());
                } else if judged_for_recovery
                    && tracked[i].status.phase != Some(DomainPhase::Inactive)
                {
                    recovering
                        .entry(name.clone())
                        .or_default()
                        .insert(tracked[i].name.clone());
                }
            }
        }
        if connected && let Some(c) = &report.pool {
            // Told to monitor it, though not listing it: not let go of yet ([`monitored`]).
            for &i in c.domain_map.active().flat_map(at) {
                if !active[i] && !seen[i] {
                    tallies[i].reporters.push(name.clone());
                }
            }
        }
        if v.in_sync && (up || judged_for_recovery) {
            // A host is blamed only for a domain the map it holds asks it to monitor (a host the
            // pool disconnected holds none).
            let held = report.pool.as_ref().filter(|_| v.connected_here);
            let asked = |d: &DomainView| {
                held.is_some_and(|c| c.domain_map.get(&d.spec.uuid) == Some(&MapStatus::Active))
            };
            for (i, was_seen) in seen.iter().enumerate() {
                if *was_seen || !active[i] || !asked(tracked[i]) {
                    continue;
                }
                if up {
                    push_once(&mut tallies[i].problem, name);
                } else if tracked[i].status.phase != Some(DomainPhase::Inactive) {
                    recovering
                        .entry(name.clone())
                        .or_default()
                        .insert(tracked[i].name.clone());
                }
            }
        }
        if connected
            && any_leaving
            && let Some(c) = &report.pool
        {
            for &i in c.domain_map.keys().flat_map(|uuid| at(uuid)) {
                if leaving[i] {
                    tallies[i].holders.push(name.clone());
                }
            }
        }
        if judged_for_recovery && v.in_sync {
            recovering.entry(name.clone()).or_default();
        }
    }
    // A domain on its way out (not yet in Maintenance, or not yet detached) that a silent host
    // may still hold: the list it goes in (holders while detaching, else reporters), or `None`.
    let on_the_way_out = |i: usize| {
        let d = tracked[i];
        let done = match d.status.phase {
            Some(DomainPhase::Maintenance) => !leaving[i],
            Some(DomainPhase::Unattached) => true,
            _ => false,
        };
        (!active[i] && !done).then(|| leaving[i] && !moving.contains(&d.name))
    };
    let mut hold = |i: usize, host: &str| {
        if let Some(detaching) = on_the_way_out(i) {
            let t = &mut tallies[i];
            let list = if detaching {
                &mut t.holders
            } else {
                &mut t.reporters
            };
            list.push(host.to_owned());
        }
    };
    // Hosts whose report cannot be read hold every such domain, as the last map they were told
    // may hold it.
    for host in unreadable_holders(observed, hosts) {
        for i in 0..tracked.len() {
            hold(i, host);
        }
    }
    // Hosts that may monitor a domain their report does not show hold it the same way.
    for (name, told) in told_holders(observed, hosts) {
        for &i in told.flat_map(&at) {
            hold(i, name);
        }
    }
    // NonOperational hosts: clean reports bring them back Up; otherwise name what they cannot reach.
    for (name, unreachable) in recovering {
        if let Some(v) = hosts.get_mut(&name) {
            if unreachable.is_empty() {
                v.phase = HostPhase::Up;
            }
            v.unreachable = unreachable;
        }
    }

    let grace = SignedDuration::from_secs(i64::from(
        observed.pool.spec.sync.problem_grace_seconds.max(1),
    ));
    // A pool without a master has no manager: a leaving domain still attached on storage is
    // detached forcibly by any responsive member, if there is one (else it just leaves).
    let on_storage = super::map::attached(&observed.pool.status);
    let can_force = desired.master_domain.is_none() && hosts.values().any(HostVerdict::can_serve);
    let awaits_forced =
        |uuid: &str| can_force && on_storage.as_ref().is_some_and(|a| a.contains(uuid));
    let mut verdicts = BTreeMap::new();
    for (d, tally) in tracked.iter().zip(tallies) {
        let class = classes.get(&d.name).cloned().unwrap_or(DomainClass::Member);
        let verdict = match class {
            DomainClass::Kept(others) => DomainVerdict {
                last_data_domain: Some(others),
                ..active_verdict(d, tally, up_hosts, desired, grace, hosts, now, pool)
            },
            DomainClass::HandingOver => DomainVerdict {
                master_handover: true,
                ..active_verdict(d, tally, up_hosts, desired, grace, hosts, now, pool)
            },
            DomainClass::Leaving if moving.contains(&d.name) => {
                moving_verdict(tally, DomainPhase::MovingToMaintenance, Some(pool))
            }
            DomainClass::Leaving
                if tally.holders.is_empty()
                    && (desired.domain_map.contains_key(&d.spec.uuid)
                        || awaits_forced(&d.spec.uuid)) =>
            {
                // No host holds it; the pool manager detaches it next (it stays in the map as
                // `attached` until then), or, with no master, any host detaches it forcibly.
                DomainVerdict {
                    map: desired.domain_map.get(&d.spec.uuid).copied(),
                    ..base(DomainPhase::Detaching, Some(pool))
                }
            }
            DomainClass::Leaving if tally.holders.is_empty() => {
                let mut v = moving_verdict(tally, DomainPhase::Unattached, None);
                v.blocking.clear();
                v
            }
            DomainClass::Leaving => {
                let Tally {
                    holders, reporting, ..
                } = tally;
                DomainVerdict {
                    blocking: holders.into_iter().collect(),
                    reporting,
                    ..base(DomainPhase::Detaching, Some(pool))
                }
            }
            _ if d.spec.maintenance => {
                let phase = if tally.reporters.is_empty() {
                    DomainPhase::Maintenance
                } else {
                    DomainPhase::MovingToMaintenance
                };
                moving_verdict(tally, phase, Some(pool))
            }
            _ => active_verdict(d, tally, up_hosts, desired, grace, hosts, now, pool),
        };
        verdicts.insert(d.name.clone(), verdict);
    }
    for (name, class) in classes {
        let Some(d) = observed.domains.get(name) else {
            continue;
        };
        match class {
            DomainClass::Flagged(flag) => {
                let mut v = base(DomainPhase::Unattached, d.status.pool.as_deref());
                v.flag = Some(flag.clone());
                verdicts.insert(name.clone(), v);
            }
            DomainClass::Attaching => {
                let mut v = base(DomainPhase::Unattached, None);
                v.attaching = true;
                verdicts.insert(name.clone(), v);
            }
            DomainClass::Waiting => {
                let phase = d.status.phase.unwrap_or(DomainPhase::Unattached);
                let mut v = base(phase, d.status.pool.as_deref());
                v.owned = false;
                verdicts.insert(name.clone(), v);
            }
            DomainClass::Member
            | DomainClass::Leaving
            | DomainClass::Kept(_)
            | DomainClass::HandingOver => {}
        }
    }
    verdicts
}

/// Pushes `name` unless it is already the last entry (a host both reports a domain with a problem
/// and is then checked for the domains it does not report; it is listed once).
fn push_once(list: &mut Vec<String>, name: &str) {
    if list.last().map(String::as_str) != Some(name) {
        list.push(name.to_owned());
    }
}

fn base(phase: DomainPhase, pool: Option<&str>) -> DomainVerdict {
    DomainVerdict {
        phase,
        map: None,
        flag: None,
        status_pool: pool.map(str::to_owned),
        owned: true,
        blocking: BTreeSet::new(),
        problem_hosts: BTreeSet::new(),
        reporting: 0,
        valid: 0,
        up_hosts: 0,
        grace_ends: None,
        last_data_domain: None,
        master_handover: false,
        attaching: false,
    }
}

fn moving_verdict(t: Tally, phase: DomainPhase, pool: Option<&str>) -> DomainVerdict {
    let map = (phase != DomainPhase::Unattached).then_some(crate::api::MapStatus::Attached);
    DomainVerdict {
        map,
        blocking: t.reporters.into_iter().collect(),
        reporting: t.reporting,
        ..base(phase, pool)
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the inputs are the planner's state"
)]
fn active_verdict(
    d: &DomainView,
    mut t: Tally,
    up_hosts: i32,
    desired: &Desired,
    grace: SignedDuration,
    hosts: &mut BTreeMap<String, HostVerdict>,
    now: Timestamp,
    pool: &str,
) -> DomainVerdict {
    let current = d.status.phase;
    let mut problem_hosts: BTreeSet<String> = std::mem::take(&mut t.problem).into_iter().collect();
    let mut phase = None;
    let mut grace_ends = None;
    if !problem_hosts.is_empty() {
        let since = condition::find(&d.status.conditions, types::PROBLEM)
            .filter(|c| c.status == True.as_str())
            .map_or(now, |c| c.last_transition_time.0);
        let ends = since.checked_add(grace).unwrap_or(since);
        let problem = i32::try_from(problem_hosts.len()).unwrap_or(i32::MAX);
        if now < ends {
            grace_ends = Some(ends);
        } else if problem < up_hosts {
            // Some Up host sees it fine or did not complain: blame the reporting hosts (data
            // domains only; oVirt only warns for ISO and export domains).
            if d.spec.type_ == DomainType::Data {
                for h in std::mem::take(&mut problem_hosts) {
                    if let Some(v) = hosts.get_mut(&h) {
                        v.phase = HostPhase::NonOperational;
                        v.unreachable.insert(d.name.clone());
                    }
                }
            }
        } else {
            phase = Some(DomainPhase::Inactive);
        }
    }
    let phase = phase.unwrap_or_else(|| {
        if desired.master_domain.is_none() || up_hosts == 0 {
            DomainPhase::Unknown
        } else if current == Some(DomainPhase::Inactive) {
            if t.any_fine_up {
                DomainPhase::Active
            } else {
                DomainPhase::Inactive
            }
        } else if current == Some(DomainPhase::Active) || t.valid_up >= up_hosts {
            DomainPhase::Active
        } else {
            DomainPhase::Activating
        }
    });
    DomainVerdict {
        map: Some(crate::api::MapStatus::Active),
        problem_hosts,
        reporting: t.reporting,
        valid: t.valid_up,
        up_hosts,
        grace_ends,
        ..base(phase, Some(pool))
    }
}

/// Finalizers: every member domain carries [`DOMAIN_FINALIZER`]; a deleted domain loses it once it
/// is detached. The pool carries [`POOL_FINALIZER`]; a deleted pool loses it once no domain is
/// attached and no responsive host is still connected. Returns the domains' additions (the
/// guards, applied before any call attaches a domain) apart from the rest (applied last).
pub fn finalizers(
    observed: &Observed,
    hosts: &BTreeMap<String, HostVerdict>,
    verdicts: &BTreeMap<String, DomainVerdict>,
) -> (Vec<FinalizerChange>, Vec<FinalizerChange>) {
    let pool = observed.pool.name.as_str();
    let mut guards = Vec::new();
    let mut out = Vec::new();
    for (name, d) in &observed.domains {
        let Some(v) = verdicts.get(name).filter(|v| v.owned) else {
            continue;
        };
        if !d.deleting && !d.has_finalizer && d.spec.pool.as_deref() == Some(pool) {
            guards.push(FinalizerChange {
                object: ObjectRef::domain(name),
                finalizer: DOMAIN_FINALIZER,
                action: FinalizerAction::Add,
            });
        }
        if d.deleting && d.has_finalizer && v.phase == DomainPhase::Unattached {
            out.push(FinalizerChange {
                object: ObjectRef::domain(name),
                finalizer: DOMAIN_FINALIZER,
                action: FinalizerAction::Remove,
            });
        }
    }
    let p = &observed.pool;
    if !p.deleting && !p.has_finalizer {
        out.push(FinalizerChange {
            object: ObjectRef::pool(pool),
            finalizer: POOL_FINALIZER,
            action: FinalizerAction::Add,
        });
    }
    if p.deleting && p.has_finalizer && attached_domains(observed, verdicts).is_empty() {
        let connected = hosts.values().any(|v| v.connected_here && v.responsive);
        if !connected {
            out.push(FinalizerChange {
                object: ObjectRef::pool(pool),
                finalizer: POOL_FINALIZER,
                action: FinalizerAction::Remove,
            });
        }
    }
    (guards, out)
}

/// The domains still attached to the pool: named by `spec.pool` (and not deleted), or not yet
/// detached.
pub fn attached_domains(
    observed: &Observed,
    verdicts: &BTreeMap<String, DomainVerdict>,
) -> Vec<String> {
    let pool = observed.pool.name.as_str();
    observed
        .domains
        .iter()
        .filter(|(name, d)| {
            let named =
                d.spec.pool.as_deref() == Some(pool) && !d.deleting && !d.leaving_other_pool;
            let held = verdicts
                .get(*name)
                .is_some_and(|v| v.owned && v.status_pool.as_deref() == Some(pool));
            named || held
        })
        .map(|(name, _)| name.clone())
        .collect()
}
