//! Builders for planner tests and benchmarks: a small world (one pool, its domains and hosts) and a
//! simulated shell and agents that apply a plan, so tests can run several reconciles in a row.
//! Not part of the API (hidden from the docs) and not in the shipped binary: compiled for unit tests
//! and with the `fixtures` feature, which benches and integration tests get through the crate's
//! dev-dependency on itself (they cannot see `cfg(test)` code, hence `pub`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::manager::{ManagerCall, ManagerVerb};
use super::{
    CallKind, CallOutcome, DOMAIN_FINALIZER, DomainView, FinalizerAction, HostCall, HostView,
    LeaseView, ObjectKind, Observation, Observed, POOL_FINALIZER, Plan, PoolView, Report,
    ReportView, SharedReport,
};
use crate::api::{
    DomainType, DomainVitals, HostReport, HostSpec, MapStatus, PoolBackend, PoolConnection,
    PoolOnStorage, StorageDomainSpec, StorageDomainStatus, StorageKind, StoragePoolSpec,
    StoragePoolStatus, StorageSpec, SyncSpec,
};

/// The pool uuid every fixture pool uses.
pub const POOL_UUID: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
/// The name of the fixture pool.
pub const POOL: &str = "pool1";

/// A fixed instant plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A deterministic uuid for a domain name.
pub fn uuid_of(name: &str) -> String {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 52) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// A pool named [`POOL`] with uuid [`POOL_UUID`], compatibility 3.5, default sync knobs.
pub fn pool() -> PoolView {
    PoolView {
        name: POOL.into(),
        uid: "0b7e5d1e-0000-4000-8000-000000000000".into(),
        generation: Some(1),
        deleting: false,
        has_finalizer: true,
        spec: StoragePoolSpec {
            uuid: Some(POOL_UUID.into()),
            compatibility_version: "3.5".into(),
            master_domain: None,
            sync: SyncSpec::default(),
        },
        status: StoragePoolStatus::default(),
    }
}

/// A data domain in `pool` (or none), with the finalizer already on.
pub fn domain(name: &str, pool: Option<&str>) -> DomainView {
    DomainView {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: Some(1),
        created: None,
        deleting: false,
        has_finalizer: pool.is_some(),
        leaving_other_pool: false,
        spec: StorageDomainSpec {
            uuid: uuid_of(name),
            type_: DomainType::Data,
            storage: StorageSpec {
                kind: StorageKind::File,
                path: format!("/srv/{name}"),
            },
            pool: pool.map(str::to_owned),
            maintenance: false,
        },
        status: StorageDomainStatus::default(),
    }
}

/// A host in `pool` (or none) whose Lease was renewed at `renewed`, with no report yet.
pub fn host(name: &str, pool: Option<&str>, renewed: Timestamp) -> HostView {
    HostView {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: Some(1),
        spec: HostSpec {
            pool: pool.map(str::to_owned),
            endpoint: None,
            maintenance: false,
        },
        status_endpoint: Some(format!("{name}:54321")),
        report: ReportView::Parsed(SharedReport::new(HostReport {
            agent_version: "0.1.0".into(),
            boot_id: format!("{name}-boot-1"),
            ..HostReport::default()
        })),
        controller: Arc::default(),
        lease: Some(LeaseView {
            renew_time: Some(renewed),
            lease_duration_seconds: Some(40),
            observed: Observation::Renewed(renewed),
        }),
    }
}

/// Healthy vitals for a domain.
pub fn vitals(uuid: &str) -> DomainVitals {
    DomainVitals {
        uuid: uuid.into(),
        valid: true,
        code: 0,
        delay_seconds: 0.001,
        last_check_seconds: 2.0,
        acquired: true,
        actual: true,
        version: 5,
    }
}

/// A world of one pool with `domains` data domains `d000..` and `hosts` hosts `h0000..` (and room
/// for them all in `maxHosts`), nothing reconciled yet; the pool exists on storage with those
/// domains attached (as after `StoragePool.create`).
pub fn world(hosts: usize, domains: usize, now: Timestamp) -> Observed {
    let mut o = new_pool(hosts, domains, now);
    o.pool.status.storage = Some(PoolOnStorage {
        created: true,
        attached: o.domains.values().map(|d| d.spec.uuid.clone()).collect(),
        ..PoolOnStorage::default()
    });
    o
}

/// Adds `d` to the world as attached to the pool on storage (as after the pool manager's
/// `StorageDomain.attach`), for tests about what follows.
pub fn add_attached(o: &mut Observed, d: DomainView) {
    if let Some(s) = o.pool.status.storage.as_mut() {
        s.attached.insert(d.spec.uuid.clone());
    }
    o.domains.insert(d.name.clone(), d);
}

/// As [`world`], but the pool does not exist on storage yet: the first plan creates it.
pub fn new_pool(hosts: usize, domains: usize, now: Timestamp) -> Observed {
    let mut o = Observed {
        pool: pool(),
        domains: BTreeMap::new(),
        uuids_elsewhere: BTreeMap::new(),
        hosts: BTreeMap::new(),
        ledger: BTreeMap::new(),
        manager: None,
        departed: BTreeMap::new(),
    };
    // Room for every host (the API allows up to 2000).
    o.pool.spec.sync.max_hosts = o
        .pool
        .spec
        .sync
        .max_hosts
        .max(i32::try_from(hosts).unwrap_or(2000));
    for i in 0..domains {
        let d = domain(&format!("d{i:03}"), Some(POOL));
        o.domains.insert(d.name.clone(), d);
    }
    for i in 0..hosts {
        let h = host(&format!("h{i:04}"), Some(POOL), now);
        o.hosts.insert(h.name.clone(), h);
    }
    o
}

/// The agent side of a call: the host's report as the agent would write it after the call.
pub fn obey(h: &mut HostView, call: &HostCall) {
    let ReportView::Parsed(report) = &mut h.report else {
        return;
    };
    let report = report.make_mut();
    match call {
        HostCall::Connect { params, .. } | HostCall::Refresh { params, .. } => {
            // A connect to the same pool keeps the pool manager's role, as on the agent.
            let spm_lver = report
                .pool
                .as_ref()
                .filter(|p| p.uuid == params.uuid)
                .and_then(|p| p.spm_lver);
            report.pool = Some(PoolConnection {
                spm_lver,
                backend: Some(params.backend.unwrap_or(PoolBackend::Memory)),
                ..params.clone()
            });
            // Keep the vitals of monitors that keep running (a fault injected by a test stays).
            let old: BTreeMap<String, DomainVitals> = report
                .domains
                .drain(..)
                .map(|v| (v.uuid.clone(), v))
                .collect();
            report.domains = params
                .domain_map
                .active()
                .map(|uuid| old.get(uuid).cloned().unwrap_or_else(|| vitals(uuid)))
                .collect();
        }
        HostCall::Disconnect { .. } => {
            report.pool = None;
            report.domains.clear();
        }
    }
    report.domain_count = i32::try_from(report.domains.len()).unwrap_or(0);
}

/// The agent side of a pool-manager call: the role taken (with the next lease version) or given
/// up, in the host's report.
pub fn obey_manager(h: &mut HostView, call: &ManagerCall) {
    let ReportView::Parsed(report) = &mut h.report else {
        return;
    };
    if let Some(pool) = report.make_mut().pool.as_mut() {
        match (call.verb, &call.switch) {
            (ManagerVerb::Start, _) => pool.spm_lver = Some(call.prev_lver.max(0) + 1),
            (ManagerVerb::Stop, _) => pool.spm_lver = None,
            (ManagerVerb::SwitchMaster, Some(s)) => {
                pool.master_domain = Some(s.new.clone());
                pool.master_version = s.version;
            }
            (ManagerVerb::SwitchMaster, None) => {}
            // VDSM's attach and detach change the manager's own map (memory backend).
            (ManagerVerb::Attach, _) => {
                for sd in call.storage.iter().flat_map(|s| &s.domains) {
                    pool.domain_map.insert(sd.clone(), MapStatus::Attached);
                }
            }
            (ManagerVerb::Detach, _) => {
                for sd in call.storage.iter().flat_map(|s| &s.domains) {
                    pool.domain_map.remove(sd);
                }
            }
            // 3.4 and lower: the map on the master, which the manager's connection holds; a
            // master deactivated with its successor named moves first.
            (ManagerVerb::Activate, _) => {
                for sd in call.storage.iter().flat_map(|s| &s.domains) {
                    pool.domain_map.insert(sd.clone(), MapStatus::Active);
                }
            }
            (ManagerVerb::Deactivate, _) => {
                if let Some(op) = &call.storage {
                    for sd in &op.domains {
                        if pool.master_domain.as_ref() == Some(sd)
                            && !op.master.is_empty()
                            && op.master != *sd
                        {
                            pool.master_domain = Some(op.master.clone());
                            pool.master_version = op.master_version;
                        }
                        pool.domain_map.insert(sd.clone(), MapStatus::Attached);
                    }
                }
            }
            (ManagerVerb::Create | ManagerVerb::ForcedDetach | ManagerVerb::Reconstruct, _) => {}
        }
    }
    // The manager monitors what its own map makes active.
    if matches!(call.verb, ManagerVerb::Activate | ManagerVerb::Deactivate) {
        let report = report.make_mut();
        let active: BTreeSet<String> = report
            .pool
            .iter()
            .flat_map(|p| p.domain_map.active())
            .map(str::to_owned)
            .collect();
        report.domains.retain(|v| active.contains(&v.uuid));
        for sd in &active {
            if !report.domains.iter().any(|v| v.uuid == *sd) {
                report.domains.push(vitals(sd));
            }
        }
        report.domain_count = i32::try_from(report.domains.len()).unwrap_or(0);
    }
}

/// The shell side after acting: writes the report's statuses and the plan's finalizers back.
pub fn write_back(o: &mut Observed, plan: &Plan, report: &Report) {
    o.pool.status = report.pool.clone();
    for (name, s) in &report.domains {
        if let Some(d) = o.domains.get_mut(name) {
            d.status = s.clone();
        }
    }
    for (name, s) in &report.hosts {
        if let Some(h) = o.hosts.get_mut(name) {
            h.controller = Arc::new(s.clone());
        }
    }
    for f in plan.guards.iter().chain(&plan.finalizers) {
        let on = f.action == FinalizerAction::Add;
        match f.object.kind {
            ObjectKind::StoragePool if f.finalizer == POOL_FINALIZER => o.pool.has_finalizer = on,
            ObjectKind::StorageDomain if f.finalizer == DOMAIN_FINALIZER => {
                if let Some(d) = o.domains.get_mut(&f.object.name) {
                    d.has_finalizer = on;
                }
            }
            _ => {}
        }
    }
    // A deleted domain without finalizers is gone.
    o.domains.retain(|_, d| !d.deleting || d.has_finalizer);
}

/// One reconcile in which every call succeeds and every agent obeys at once (the pool manager's
/// call too).
pub fn step(o: &mut Observed, now: Timestamp) -> (Plan, Report) {
    step_with(o, now, &[])
}

/// One reconcile with the given outcomes replacing success for the named hosts; agents obey only
/// the calls that succeeded.
pub fn step_with(o: &mut Observed, now: Timestamp, failures: &[CallOutcome]) -> (Plan, Report) {
    let plan = super::plan(o, now);
    let mut outcomes = Vec::new();
    for call in &plan.calls {
        if let Some(f) = failures.iter().find(|f| f.host == call.host()) {
            outcomes.push(f.clone());
            continue;
        }
        if let Some(h) = o.hosts.get_mut(call.host()) {
            obey(h, call);
        }
        outcomes.push(CallOutcome {
            host: call.host().into(),
            kind: call.kind(),
            result: Ok(()),
        });
    }
    if let Some(call) = &plan.manager.call
        && let Some(h) = o.hosts.get_mut(&call.host)
    {
        obey_manager(h, call);
    }
    let report = super::report(o, &plan, &outcomes, now);
    write_back(o, &plan, &report);
    if let Some(call) = &plan.manager.call {
        record_storage(o, call);
    }
    (plan, report)
}

/// What the next reconcile records after an accepted storage call (`create`, `attach`,
/// `detach`, a master move): the pool's record of what is on storage.
pub fn record_storage(o: &mut Observed, call: &ManagerCall) {
    let master =
        super::manager::ManagerCalls::started(None, call, "", Timestamp::UNIX_EPOCH).master;
    let domains = call.storage.iter().flat_map(|s| &s.domains);
    let mut attached: Option<BTreeSet<String>> =
        super::map::attached(&o.pool.status).map(|a| a.into_iter().map(str::to_owned).collect());
    match call.verb {
        ManagerVerb::Create => attached = Some(domains.cloned().collect()),
        ManagerVerb::Attach => attached.get_or_insert_default().extend(domains.cloned()),
        ManagerVerb::Detach | ManagerVerb::ForcedDetach => {
            let gone: Vec<&String> = domains.collect();
            if let Some(a) = attached.as_mut() {
                a.retain(|d| !gone.contains(&d));
            }
        }
        _ if master.is_some() => {}
        _ => return,
    }
    let Some(attached) = attached else {
        return;
    };
    let mut next = o.pool.status.storage.clone().unwrap_or_default();
    next.created = true;
    next.attached = attached;
    if let Some((m, v)) = master {
        next.master = Some(m);
        next.master_version = Some(v);
    }
    o.pool.status.storage = Some(next);
}

/// Reconciles until nothing changes (at most `max` rounds); returns the rounds taken.
pub fn converge(o: &mut Observed, now: Timestamp, max: usize) -> usize {
    for round in 1..=max {
        let before = o.clone();
        let (plan, _) = step(o, now);
        if plan.calls.is_empty() && *o == before {
            return round;
        }
    }
    max
}

/// Renews every host's Lease at `now`.
pub fn renew_all(o: &mut Observed, now: Timestamp) {
    for h in o.hosts.values_mut() {
        h.lease = Some(LeaseView {
            renew_time: Some(now),
            lease_duration_seconds: Some(40),
            observed: Observation::Renewed(now),
        });
    }
}

/// A converged world: every host holds the map and reports every domain valid; statuses written.
pub fn steady(hosts: usize, domains: usize, now: Timestamp) -> Observed {
    let mut o = world(hosts, domains, now);
    let cap = o.pool.spec.sync.max_concurrent_connects;
    o.pool.spec.sync.max_concurrent_connects = i32::try_from(hosts.max(1)).unwrap_or(i32::MAX);
    converge(&mut o, now, 10);
    o.pool.spec.sync.max_concurrent_connects = cap;
    o
}

/// `now` plus `secs` seconds.
pub fn later(now: Timestamp, secs: i64) -> Timestamp {
    now.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(now)
}

/// The outcome of a failed connect.
pub fn failed(host: &str, code: i64, message: &str) -> CallOutcome {
    CallOutcome {
        host: host.into(),
        kind: CallKind::Connect,
        result: Err(super::CallFailure {
            code: Some(code),
            message: message.into(),
        }),
    }
}
