//! Hosts: responsiveness from when the controller observed the Lease renewed, stable host ids
//! (reserved for departed hosts whose Lease is current), the sync judgement (by content: pool, id,
//! master, master version, exact map), the phase before domain problems, and the RPCs to send. Pure.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::ledger::{self, CallKey, Gate, LedgerOp};
use super::{
    CallKind, DEFAULT_LEASE_DURATION_SECONDS, Desired, DisconnectParams, Halt, HostCall, HostRole,
    HostVerdict, HostView, LeaseView, Observation, Observed, SyncFailure, rollout,
};
use crate::api::condition::{self, ConditionStatus, reasons, types};
use crate::api::{DomainMap, HostPhase, PoolBackend, PoolConnection};

/// Whether the host responds at `now`: its Lease renewal was observed less than a Lease duration
/// ago. A Lease only found at the controller's start or after it regained the API server keeps a
/// host it judged unresponsive unresponsive until a renewal is seen (the node-lifecycle
/// controller's grace never marks a node Ready either).
pub fn responsive(h: &HostView, now: Timestamp) -> bool {
    let judged_unresponsive = || {
        condition::find(&h.controller.conditions, types::RESPONSIVE)
            .is_some_and(|c| c.status == ConditionStatus::False.as_str())
    };
    match h.lease {
        Some(LeaseView {
            observed: Observation::Found(_),
            ..
        }) if judged_unresponsive() => false,
        lease => lease_current(lease.as_ref(), now),
    }
}

/// Whether the Lease's observed renewal is less than a Lease duration old at `now`.
pub fn lease_current(lease: Option<&LeaseView>, now: Timestamp) -> bool {
    lease_expiry(lease).is_some_and(|expiry| now < expiry)
}

/// When the Lease expires: a Lease duration after its renewal was observed (`None` without a
/// Lease or a renew time).
pub fn lease_expiry(lease: Option<&LeaseView>) -> Option<Timestamp> {
    let lease = lease?;
    lease.renew_time?;
    let secs = lease
        .lease_duration_seconds
        .unwrap_or(DEFAULT_LEASE_DURATION_SECONDS);
    let (Observation::Renewed(at) | Observation::Found(at)) = lease.observed;
    at.checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// The connection a host reports, if its report parsed and names a pool.
fn connection(h: &HostView) -> Option<&PoolConnection> {
    h.report.parsed()?.pool.as_ref()
}

/// Whether the host's `spec.pool` names this pool.
fn names_pool(h: &HostView, pool: &str) -> bool {
    h.spec.pool.as_deref() == Some(pool)
}

/// Halts when `spec.sync.maxHosts` was lowered below the id of a host that may hold it: one
/// connected to the pool with it (by its report), or one recorded with it whose report cannot be
/// read. [`assign_ids`] would renumber or refuse (disconnect) such a host, so nothing is done until
/// maxHosts is raised again; the schema cannot refuse the edit, as it does not know the hosts.
pub fn max_hosts_too_low(observed: &Observed, pool_uuid: &str) -> Option<Halt> {
    let max_hosts = observed.pool.spec.sync.max_hosts;
    let mut hosts = BTreeMap::new();
    for (name, h) in &observed.hosts {
        if let Some(c) = connection(h).filter(|c| c.uuid == pool_uuid && c.host_id > max_hosts) {
            hosts.insert(name.clone(), c.host_id);
        }
    }
    for entry in &observed.pool.status.host_ids {
        let unreadable = observed
            .hosts
            .get(&entry.host)
            .is_some_and(|h| h.report.parsed().is_none());
        if entry.id > max_hosts && unreadable {
            hosts.entry(entry.host.clone()).or_insert(entry.id);
        }
    }
    (!hosts.is_empty()).then_some(Halt::MaxHostsTooLow { max_hosts, hosts })
}

/// Host ids: ids that connected hosts report are kept (never reassigned under a connected host,
/// which also rebuilds them if the status was lost); then the ids in status for hosts that still
/// need one, and for departed hosts (Host deleted) whose Lease is current, as their agent may
/// still hold the pool under that id and registers its Host again; then the lowest free id for
/// each new member, up to `maxHosts`. Hosts beyond the limit get none (they are refused).
pub fn assign_ids(observed: &Observed, pool_uuid: &str, now: Timestamp) -> BTreeMap<String, i32> {
    let max = observed.pool.spec.sync.max_hosts.max(1);
    let pool = observed.pool.name.as_str();
    let slots = usize::try_from(max).unwrap_or(0) + 1;
    // taken[id] and a name → id map with borrowed keys: no allocation per host until the end.
    let mut taken = vec![false; slots];
    let mut ids: std::collections::HashMap<&str, i32> =
        std::collections::HashMap::with_capacity(observed.hosts.len());
    let slot = |id: i32| usize::try_from(id).ok().filter(|_| (1..=max).contains(&id));
    for (name, h) in &observed.hosts {
        if let Some(c) = connection(h).filter(|c| c.uuid == pool_uuid)
            && let Some(i) = slot(c.host_id)
            && !taken[i]
        {
            taken[i] = true;
            ids.insert(name, c.host_id);
        }
    }
    for entry in &observed.pool.status.host_ids {
        let (name, needs_id) = match observed.hosts.get_key_value(&entry.host) {
            Some((name, h)) => (
                name,
                names_pool(h, pool) || connection(h).is_some_and(|c| c.uuid == pool_uuid),
            ),
            None => match observed.departed.get_key_value(&entry.host) {
                Some((name, lease)) => (name, lease_current(lease.as_ref(), now)),
                None => continue,
            },
        };
        if needs_id
            && let Some(i) = slot(entry.id)
            && !taken[i]
            && !ids.contains_key(name.as_str())
        {
            taken[i] = true;
            ids.insert(name, entry.id);
        }
    }
    let mut next = 1;
    for (name, h) in &observed.hosts {
        if !names_pool(h, pool) || ids.contains_key(name.as_str()) {
            continue;
        }
        while next < slots && taken[next] {
            next += 1;
        }
        if next >= slots {
            break;
        }
        taken[next] = true;
        ids.insert(name, i32::try_from(next).unwrap_or(max));
    }
    let mut sorted: Vec<(&str, i32)> = ids.into_iter().collect();
    sorted.sort_unstable();
    sorted
        .into_iter()
        .map(|(n, id)| (n.to_owned(), id))
        .collect()
}

/// The first verdict per host: role, responsiveness, connection. Sync and phase come later.
pub fn classify(
    observed: &Observed,
    pool_uuid: &str,
    ids: &BTreeMap<String, i32>,
    now: Timestamp,
) -> BTreeMap<String, HostVerdict> {
    let pool = observed.pool.name.as_str();
    observed
        .hosts
        .iter()
        .map(|(name, h)| {
            let host_id = ids.get(name).copied();
            let role = if !names_pool(h, pool) {
                HostRole::Leaving
            } else if h.spec.maintenance {
                HostRole::Maintenance
            } else if host_id.is_some() {
                HostRole::Member
            } else {
                HostRole::Refused
            };
            let verdict = HostVerdict {
                role,
                responsive: responsive(h, now),
                connected_here: connection(h).is_some_and(|c| c.uuid == pool_uuid),
                in_sync: false,
                report_invalid: matches!(h.report, super::ReportView::Invalid(_)),
                callable: h.endpoint().is_some(),
                host_id,
                phase: HostPhase::Connecting,
                failure: None,
                unreachable: Default::default(),
                call_pending: false,
                retry_at: None,
                told_now: false,
            };
            (name.clone(), verdict)
        })
        .collect()
}

/// Whether the host counts as connected to the pool for MovingToMaintenance and Detaching
/// (oVirt's ConnectedToPool: Up, NonOperational, NonResponsive, PreparingForMaintenance). A host
/// an operator put in maintenance while it does not respond is released: that is the way out.
pub fn holds_pool(v: &HostVerdict) -> bool {
    v.connected_here && (v.responsive || v.role != HostRole::Maintenance)
}

/// Where the pool's hosts take the map from: `Disk` (the master) for a legacy pool, else from
/// the connect (`None` on the wire: the map is sent).
fn backend(observed: &Observed) -> Option<PoolBackend> {
    super::map::legacy(&observed.pool.spec).then_some(PoolBackend::Disk)
}

/// Where `h` is to take the map from: the pool's way, but a legacy pool's host already on the
/// memory backend keeps receiving the map (VDSM refuses to go back, 325).
fn backend_for(h: &HostView, pool: Option<PoolBackend>) -> Option<PoolBackend> {
    pool.filter(|_| connection(h).is_none_or(|c| c.backend != Some(PoolBackend::Memory)))
}

/// Whether the host should be connected with the map.
fn wants_connection(v: &HostVerdict, desired: &Desired) -> bool {
    v.role == HostRole::Member && desired.master_domain.is_some()
}

/// Judges sync by content and sets each host's phase before domain problems are weighed.
///
/// A member that was `Up` stays `Up` while it merely catches up (the write budget); it turns
/// `Connecting` only on a failure. A host blamed before (`Operational=False`, reason
/// `StorageDomainUnreachable`) stays NonOperational until [`super::domains`] finds it clean.
pub fn judge_sync(
    observed: &Observed,
    pool_uuid: &str,
    desired: &Desired,
    rollout_start: Timestamp,
    now: Timestamp,
    verdicts: &mut BTreeMap<String, HostVerdict>,
) {
    let deadline = rollout::deadline(observed, rollout_start);
    let backend = backend(observed);
    for (name, v) in verdicts.iter_mut() {
        let Some(h) = observed.hosts.get(name) else {
            continue;
        };
        let conn = connection(h);
        v.in_sync = if v.report_invalid {
            false
        } else if wants_connection(v, desired) {
            v.responsive
                && conn.is_some_and(|c| {
                    c.uuid == pool_uuid
                        && Some(c.host_id) == v.host_id
                        && c.master_domain == desired.master_domain
                        && c.master_version == desired.master_version
                        && c.domain_map == desired.domain_map
                        // A 3.5 pool's host still reading its map from the master is upgraded
                        // by a connect with the map; a legacy pool's host on the memory backend
                        // cannot go back (VDSM: 325), so either backend serves it.
                        && (backend == Some(PoolBackend::Disk) || c.backend != Some(PoolBackend::Disk))
                })
        } else {
            !v.connected_here
        };
        if v.role == HostRole::Member && v.responsive && !v.in_sync && !v.report_invalid {
            v.failure = match ledger::failure(observed.ledger.get(name)) {
                _ if h.endpoint().is_none() => Some(SyncFailure::NoEndpoint),
                Some(ledger::Failure::Refused(e)) => {
                    Some(SyncFailure::ConnectFailed(e.to_string()))
                }
                Some(ledger::Failure::Unconfirmed) => Some(SyncFailure::NotConfirmed),
                None if now >= deadline => Some(SyncFailure::NotConfirmed),
                None => None,
            };
        }
        v.phase = base_phase(h, v);
    }
}

fn base_phase(h: &HostView, v: &HostVerdict) -> HostPhase {
    let reports_domains = h.report.parsed().is_some_and(|r| !r.domains.is_empty());
    let previous = h.controller.phase;
    match v.role {
        HostRole::Maintenance | HostRole::Leaving => {
            if v.responsive && (v.connected_here || reports_domains) {
                HostPhase::PreparingForMaintenance
            } else {
                HostPhase::Maintenance
            }
        }
        HostRole::Refused => HostPhase::NonOperational,
        HostRole::Member if !v.responsive => HostPhase::NonResponsive,
        HostRole::Member if v.report_invalid => previous.unwrap_or(HostPhase::Connecting),
        HostRole::Member if blamed_before(h) => HostPhase::NonOperational,
        HostRole::Member if v.failure.is_some() => HostPhase::Connecting,
        HostRole::Member if v.in_sync || previous == Some(HostPhase::Up) => HostPhase::Up,
        HostRole::Member => HostPhase::Connecting,
    }
}

/// Whether the controller made the host NonOperational for a domain before (kept in its status).
pub fn blamed_before(h: &HostView) -> bool {
    condition::find(&h.controller.conditions, types::OPERATIONAL).is_some_and(|c| {
        c.status == ConditionStatus::False.as_str()
            && c.reason == reasons::STORAGE_DOMAIN_UNREACHABLE
    })
}

/// The RPCs due now, in the order they are to be sent: disconnects first, then connects, each in
/// host-name order. The shell sends them in that order with at most `maxConcurrentConnects` in
/// flight for the pool, so a rollout moves at the pace of the calls, not of reconciles.
/// Skips hosts that do not respond or whose report did not parse; asks the call ledger
/// ([`ledger::gate`]) whether a host that needs a call gets it now, is still being called, waits
/// for the report of a call it accepted (`told_now`), or backs off. Marks a host whose call is
/// due but not sent (in flight or backing off) as `call_pending`, and sets `retry_at` when the
/// clock alone will change that. Returns the calls and what the ledger must record: hosts in sync
/// are confirmed (their failures forgotten; only by the pool whose call the entry records), hosts
/// that let a confirmation window pass have lapsed.
pub fn calls(
    observed: &Observed,
    pool_uuid: &str,
    desired: &Desired,
    verdicts: &mut BTreeMap<String, HostVerdict>,
    now: Timestamp,
) -> (Vec<HostCall>, Vec<LedgerOp>) {
    let timeout = ledger::connect_timeout(&observed.pool.spec.sync);
    let confirm_by = rollout::confirm_by(observed);
    let digest = ledger::map_digest(&desired.domain_map);
    let backend = backend(observed);
    let mut ops = Vec::new();
    // Decide who is due first; build the calls (which clone the map) only for those sent now.
    let mut due: Vec<(CallKind, &HostView)> = Vec::new();
    for (name, v) in verdicts.iter_mut() {
        let Some(h) = observed.hosts.get(name) else {
            continue;
        };
        let entry = observed.ledger.get(name);
        if v.in_sync
            && let Some(e) = entry.filter(|e| e.pool == observed.pool.name)
        {
            ops.push(LedgerOp::Confirmed {
                host: name.clone(),
                sent_at: e.last.sent_at,
            });
        }
        let gate_now = |key: &CallKey, boot_id: &str| {
            ledger::gate(entry, name, key, boot_id, timeout, confirm_by, now)
        };
        let Some(kind) = due_kind(h, v, pool_uuid, desired, backend.is_some()) else {
            continue;
        };
        // Without an endpoint nothing can be sent (the verdict says why: `NoEndpoint`).
        if !v.responsive || v.report_invalid || !v.callable {
            continue;
        }
        let Some(key) = call_key(
            kind,
            h,
            v,
            pool_uuid,
            desired,
            backend_for(h, backend),
            digest,
        ) else {
            continue;
        };
        let boot_id = h.report.parsed().map_or("", |r| r.boot_id.as_str());
        if admit(gate_now(&key, boot_id), name, v, &mut ops, now) {
            due.push((kind, h));
        }
    }
    // Disconnects first (stable: host-name order within each kind).
    due.sort_by_key(|(kind, _)| *kind == CallKind::Connect);
    let calls = due
        .into_iter()
        .filter_map(|(kind, h)| {
            let v = verdicts.get(&h.name)?;
            build_call(kind, h, v, pool_uuid, desired, backend_for(h, backend))
        })
        .collect();
    (calls, ops)
}

/// Whether the ledger's `gate` lets the host's call go now; otherwise marks the verdict (told,
/// or a call pending until `retry_at`) and records a lapsed confirmation.
fn admit(
    gate: Gate,
    name: &str,
    v: &mut HostVerdict,
    ops: &mut Vec<LedgerOp>,
    now: Timestamp,
) -> bool {
    match gate {
        Gate::Send => return true,
        Gate::Awaiting { until } => {
            v.told_now = true;
            v.retry_at = Some(until);
        }
        Gate::InFlight { until } | Gate::BackingOff { until } => {
            v.call_pending = true;
            v.retry_at = Some(until);
        }
        Gate::Lapsed { sent_at, until } => {
            ops.push(LedgerOp::Lapsed {
                host: name.to_owned(),
                sent_at,
                at: now,
            });
            v.call_pending = true;
            v.retry_at = Some(until);
        }
    }
    false
}

/// The disconnect of a member that must let go of the pool first, as the ledger allows it now
/// (the pool manager rebuilds a lost master only on a disconnected host, VDSM 325): `None`
/// while it waits, with the verdict marked as [`calls`] marks it.
pub fn disconnect_first(
    observed: &Observed,
    name: &str,
    verdicts: &mut BTreeMap<String, HostVerdict>,
    ops: &mut Vec<LedgerOp>,
    now: Timestamp,
) -> Option<HostCall> {
    let h = observed.hosts.get(name)?;
    let v = verdicts.get_mut(name)?;
    let c = connection(h).filter(|_| v.responsive && !v.report_invalid)?;
    let endpoint = h.endpoint()?.to_owned();
    let key = CallKey {
        kind: CallKind::Disconnect,
        pool_uuid: c.uuid.clone(),
        host_id: c.host_id,
        master: None,
        map_digest: 0,
        backend: None,
    };
    let boot_id = h.report.parsed().map_or("", |r| r.boot_id.as_str());
    let timeout = ledger::connect_timeout(&observed.pool.spec.sync);
    let confirm_by = rollout::confirm_by(observed);
    let gate = ledger::gate(
        observed.ledger.get(name),
        name,
        &key,
        boot_id,
        timeout,
        confirm_by,
        now,
    );
    admit(gate, name, v, ops, now).then(|| HostCall::Disconnect {
        host: h.name.clone(),
        endpoint,
        params: DisconnectParams {
            pool_uuid: c.uuid.clone(),
            host_id: c.host_id,
        },
    })
}

/// The ledger key of the call the host needs (without building the call).
fn call_key(
    kind: CallKind,
    h: &HostView,
    v: &HostVerdict,
    pool_uuid: &str,
    desired: &Desired,
    backend: Option<PoolBackend>,
    digest: u64,
) -> Option<CallKey> {
    match kind {
        CallKind::Disconnect => {
            let c = connection(h)?;
            Some(CallKey {
                kind,
                pool_uuid: c.uuid.clone(),
                host_id: c.host_id,
                master: None,
                map_digest: 0,
                backend: None,
            })
        }
        CallKind::Connect | CallKind::Refresh => Some(CallKey::holding(
            kind,
            &holding(v, pool_uuid, desired, backend, DomainMap::new())?,
            digest,
        )),
    }
}

/// The connection a connect or refresh gives the host, with `domain_map` (the desired map, or an
/// empty one where only the key is needed).
fn holding(
    v: &HostVerdict,
    pool_uuid: &str,
    desired: &Desired,
    backend: Option<PoolBackend>,
    domain_map: DomainMap,
) -> Option<PoolConnection> {
    Some(PoolConnection {
        uuid: pool_uuid.to_owned(),
        host_id: v.host_id?,
        master_domain: Some(desired.master_domain.clone()?),
        master_version: desired.master_version,
        domain_map,
        spm_lver: None,
        backend,
    })
}

/// Which call the host needs, if any.
fn due_kind(
    h: &HostView,
    v: &HostVerdict,
    pool_uuid: &str,
    desired: &Desired,
    legacy: bool,
) -> Option<CallKind> {
    let conn = connection(h);
    if !wants_connection(v, desired) {
        // Maintenance, refused, leaving, or no master: let go of this pool.
        return conn
            .filter(|c| c.uuid == pool_uuid)
            .map(|_| CallKind::Disconnect);
    }
    if v.in_sync {
        return None;
    }
    match conn {
        // Connected elsewhere (fails 323) or under another id (fails 325): disconnect first.
        Some(c) if c.uuid != pool_uuid || Some(c.host_id) != v.host_id => {
            Some(CallKind::Disconnect)
        }
        // A legacy pool's connected host re-reads the map the pool manager changed (a disk
        // backend connection; one on the memory backend is connected again with the map).
        Some(c) if legacy && c.backend == Some(PoolBackend::Disk) => Some(CallKind::Refresh),
        _ => Some(CallKind::Connect),
    }
}

fn build_call(
    kind: CallKind,
    h: &HostView,
    v: &HostVerdict,
    pool_uuid: &str,
    desired: &Desired,
    backend: Option<PoolBackend>,
) -> Option<HostCall> {
    let endpoint = h.endpoint()?.to_owned();
    match kind {
        CallKind::Disconnect => {
            let c = connection(h)?;
            Some(HostCall::Disconnect {
                host: h.name.clone(),
                endpoint,
                params: DisconnectParams {
                    pool_uuid: c.uuid.clone(),
                    host_id: c.host_id,
                },
            })
        }
        CallKind::Connect => Some(HostCall::Connect {
            host: h.name.clone(),
            endpoint,
            params: holding(v, pool_uuid, desired, backend, desired.domain_map.clone())?,
        }),
        CallKind::Refresh => Some(HostCall::Refresh {
            host: h.name.clone(),
            endpoint,
            params: holding(v, pool_uuid, desired, backend, desired.domain_map.clone())?,
        }),
    }
}
