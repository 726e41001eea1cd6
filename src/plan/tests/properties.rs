//! Properties of the planner over arbitrary observed pools (proptest): random pools, domains, hosts,
//! maintenance flags, reports, Leases, departed hosts, stored statuses, problem grace periods and
//! earlier calls (in flight, accepted, refused or lapsed in the call ledger), built from the
//! [`super::super::fixtures`]; then random agents (obeying, lagging, failing, restarting), operators
//! and a moving clock over several reconciles. Safety must hold in every state and every step:
//!
//! - a domain some host holding the pool still monitors (or may, its report being unreadable)
//!   never reaches `Maintenance`, `Detaching` or `Unattached`, and stays in the map; a `Detaching`
//!   domain is not released while a host's map still holds it;
//! - host ids are unique, within `1..=maxHosts`, and never moved under a host that reports one or
//!   a departed host whose Lease is current;
//! - every connect carries exactly what the pool status holds once `persist_first` is written;
//! - no call to an unresponsive host or one whose report is unreadable, no connect to a host in
//!   maintenance or outside the pool, no disconnect of a serving member while the pool has a
//!   master, no connect that stops an active domain a host monitors;
//! - a host is blamed for a domain only if it reports it or holds a map that asks it to monitor
//!   it; every status fits its schema's bounds, whatever the hosts answered;
//! - `plan` and `report` are deterministic and never panic.
//!
//! Case counts are fixed and small so `cargo test` stays fast (see [`crate::properties`]); run
//! longer with `PROPTEST_CASES=100000 cargo test --lib plan::tests::properties`.

use proptest::prelude::*;
use proptest::{collection, option, sample};

use super::super::hosts::lease_current;
use super::super::ledger::LedgerOp;
use super::*;
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{DomainVitals, HostIdEntry, HostReport};
use crate::plan::DisconnectParams;
use crate::properties::config;

/// Domain objects `d0..`, hosts `h0..` and departed hosts `gone0..` a generated pool may hold.
const DOMAINS: usize = 5;
const HOSTS: usize = 5;
const DEPARTED: [&str; 2] = ["gone0", "gone1"];
/// Another pool, for hosts and domains that belong elsewhere.
const OTHER_POOL: &str = "pool2";
const OTHER_POOL_UUID: &str = "0e2f1c7a-1111-4222-8333-444455556666";

fn now() -> Timestamp {
    at(100_000)
}

fn domain_name(i: usize) -> String {
    format!("d{i}")
}

fn host_name(i: usize) -> String {
    format!("h{i}")
}

/// Every uuid a report or status may name: the domains' and one no object has.
fn uuids() -> Vec<String> {
    (0..DOMAINS)
        .map(|i| uuid_of(&domain_name(i)))
        .chain([uuid_of("stray")])
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn pool_ref() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some(POOL.to_owned())),
        1 => Just(Some(OTHER_POOL.to_owned())),
        1 => Just(None),
    ]
}

fn domain_phase() -> impl Strategy<Value = DomainPhase> {
    sample::select(vec![
        DomainPhase::Unattached,
        DomainPhase::Activating,
        DomainPhase::Active,
        DomainPhase::Inactive,
        DomainPhase::MovingToMaintenance,
        DomainPhase::Maintenance,
        DomainPhase::Detaching,
        DomainPhase::Unknown,
    ])
}

fn host_phase() -> impl Strategy<Value = HostPhase> {
    sample::select(vec![
        HostPhase::Up,
        HostPhase::Connecting,
        HostPhase::NonOperational,
        HostPhase::NonResponsive,
        HostPhase::PreparingForMaintenance,
        HostPhase::Maintenance,
    ])
}

fn map_status() -> impl Strategy<Value = MapStatus> {
    prop_oneof![3 => Just(MapStatus::Active), 1 => Just(MapStatus::Attached)]
}

/// A map over the known uuids.
fn domain_map() -> impl Strategy<Value = DomainMap> {
    collection::vec(option::weighted(0.5, map_status()), DOMAINS + 1).prop_map(|entries| {
        uuids()
            .into_iter()
            .zip(entries)
            .filter_map(|(u, s)| s.map(|s| (u, s)))
            .collect()
    })
}

/// A version as stored: small, or at the very top of the range.
fn version() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..4, 1 => (0i64..2).prop_map(|d| i64::MAX - d)]
}

fn seconds_ago(secs: i64) -> Timestamp {
    later(now(), -secs)
}

fn lease() -> impl Strategy<Value = Option<LeaseView>> {
    option::weighted(0.85, (0i64..120, any::<bool>(), 0i64..100)).prop_map(|l| {
        l.map(|(age, found, skew)| LeaseView {
            // The agent's clock may disagree with the controller's.
            renew_time: Some(seconds_ago(age + skew - 50)),
            lease_duration_seconds: Some(40),
            observed: if found {
                Observation::Found(seconds_ago(age))
            } else {
                Observation::Renewed(seconds_ago(age))
            },
        })
    })
}

fn vitals_of(uuid: String) -> impl Strategy<Value = DomainVitals> {
    (
        prop::bool::weighted(0.8),
        prop_oneof![4 => Just(0), 1 => Just(358), 1 => Just(379)],
        0.0f64..60.0,
        prop::bool::weighted(0.9),
        any::<bool>(),
    )
        .prop_map(
            move |(valid, code, last_check, actual, acquired)| DomainVitals {
                uuid: uuid.clone(),
                valid,
                code,
                delay_seconds: 0.001,
                last_check_seconds: last_check,
                acquired,
                actual,
                version: 5,
            },
        )
}

/// A report as [`crate::controller::observe::validate_report`] lets through: uuids well formed,
/// each domain once, a host id in `1..=2000`.
fn parsed_report(name: String) -> impl Strategy<Value = HostReport> {
    let connection = (
        prop_oneof![5 => Just(POOL_UUID), 1 => Just(OTHER_POOL_UUID)],
        1i32..=10,
        option::of(sample::select(uuids())),
        version(),
        domain_map(),
    )
        .prop_map(
            |(uuid, host_id, master, master_version, map)| PoolConnection {
                uuid: uuid.to_owned(),
                host_id,
                master_domain: master,
                master_version,
                domain_map: map,
                spm_lver: None,
                backend: None,
            },
        );
    let monitored: Vec<_> = uuids()
        .into_iter()
        .map(|u| option::weighted(0.4, vitals_of(u)))
        .collect();
    (option::weighted(0.8, connection), monitored, 1u8..4).prop_map(
        move |(pool, monitored, boot)| {
            let domains: Vec<DomainVitals> = monitored.into_iter().flatten().collect();
            HostReport {
                agent_version: "0.1.0".into(),
                boot_id: format!("{name}-boot-{boot}"),
                pool,
                domain_count: i32::try_from(domains.len()).unwrap_or(0),
                domains,
            }
        },
    )
}

fn report_view(name: String) -> impl Strategy<Value = ReportView> {
    prop_oneof![
        1 => Just(ReportView::Missing),
        1 => Just(ReportView::Invalid("domain \"x\" is malformed or reported twice".into())),
        8 => parsed_report(name).prop_map(|r| ReportView::Parsed(SharedReport::new(r))),
    ]
}

fn host_view(i: usize) -> impl Strategy<Value = HostView> {
    let name = host_name(i);
    (
        pool_ref(),
        prop::bool::weighted(0.2),
        report_view(name.clone()),
        option::of(host_phase()),
        option::of(any::<bool>()),
        lease(),
    )
        .prop_map(
            move |(pool, maintenance, report, phase, responsive_condition, lease)| {
                let mut h = host(&name, pool.as_deref(), now());
                h.spec.maintenance = maintenance;
                h.report = report;
                h.lease = lease;
                let mut controller = HostControllerStatus {
                    phase,
                    ..HostControllerStatus::default()
                };
                if let Some(responsive) = responsive_condition {
                    let status = if responsive {
                        ConditionStatus::True
                    } else {
                        ConditionStatus::False
                    };
                    set_condition(
                        &mut controller.conditions,
                        types::RESPONSIVE,
                        status,
                        "Generated",
                        "",
                        Some(1),
                        seconds_ago(500),
                    );
                }
                h.controller = Arc::new(controller);
                h
            },
        )
}

fn domain_view(i: usize) -> impl Strategy<Value = DomainView> {
    let name = domain_name(i);
    (
        (
            prop_oneof![
                4 => Just(DomainType::Data),
                1 => Just(DomainType::Iso),
                1 => Just(DomainType::Export),
            ],
            pool_ref(),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.1),
        ),
        (
            option::weighted(0.8, domain_phase()),
            pool_ref(),
            prop::bool::weighted(0.3),
            option::of(0i64..100),
            option::weighted(0.2, 0i64..600),
        ),
    )
        .prop_map(
            move |(
                (type_, pool, maintenance, deleting, has_finalizer, copy_of_d0),
                (phase, status_pool, leaving_other, created, problem_since),
            )| {
                let mut d = domain(&name, pool.as_deref());
                d.spec.type_ = type_;
                d.spec.maintenance = maintenance;
                if copy_of_d0 {
                    d.spec.uuid = uuid_of(&domain_name(0));
                }
                // The API server removes a deleted object without finalizers at once.
                d.deleting = deleting;
                d.has_finalizer = has_finalizer || deleting;
                d.status.phase = phase;
                d.status.pool = status_pool;
                d.leaving_other_pool = leaving_other
                    && d.spec.pool.as_deref() == Some(POOL)
                    && d.status.pool.as_deref() == Some(OTHER_POOL);
                d.created = created.map(at);
                // A problem grace period running since then.
                if let Some(secs) = problem_since {
                    set_condition(
                        &mut d.status.conditions,
                        types::PROBLEM,
                        ConditionStatus::True,
                        reasons::DOMAIN_PROBLEM,
                        "",
                        Some(1),
                        seconds_ago(secs),
                    );
                }
                d
            },
        )
}

fn pool_view() -> impl Strategy<Value = PoolView> {
    let names: Vec<String> = (0..HOSTS)
        .map(host_name)
        .chain(DEPARTED.iter().map(|s| (*s).to_owned()))
        .collect();
    (
        (
            prop_oneof![1 => 1i32..5, 4 => 5i32..=8],
            1i32..=5,
            prop::bool::weighted(0.05),
            prop_oneof![
                20 => Just("3.5".to_owned()),
                1 => Just("3.4".to_owned()),
                1 => "[0-9.]{0,12}|\\PC{0,8}",
            ],
            prop_oneof![20 => Just(Some(POOL_UUID)), 1 => Just(None), 1 => Just(Some(OTHER_POOL_UUID))],
        ),
        (
            prop_oneof![8 => Just(Some(POOL_UUID)), 1 => Just(None)],
            domain_map(),
            version(),
            option::of(sample::select(uuids())),
            version(),
            collection::btree_map(sample::select(names), 0i32..=10, 0..=6),
        ),
    )
        .prop_map(
            |(
                (max_hosts, max_concurrent, deleting, compat, spec_uuid),
                (status_uuid, map, map_version, master, master_version, ids),
            )| {
                let mut p = pool();
                p.spec.sync.max_hosts = max_hosts;
                p.spec.sync.max_concurrent_connects = max_concurrent;
                p.spec.compatibility_version = compat;
                p.spec.uuid = spec_uuid.map(str::to_owned);
                p.deleting = deleting;
                p.status.uuid = status_uuid.map(str::to_owned);
                p.status.domain_map = map;
                p.status.map_version = map_version;
                p.status.master_domain = master;
                p.status.master_version = master_version;
                p.status.host_ids = ids
                    .into_iter()
                    .map(|(host, id)| HostIdEntry { host, id })
                    .collect();
                p
            },
        )
}

fn observed() -> impl Strategy<Value = Observed> {
    let domains: Vec<_> = (0..DOMAINS)
        .map(|i| option::weighted(0.8, domain_view(i)))
        .collect();
    let hosts: Vec<_> = (0..HOSTS)
        .map(|i| option::weighted(0.85, host_view(i)))
        .collect();
    let departed: Vec<_> = DEPARTED
        .iter()
        .map(|_| option::weighted(0.3, lease()))
        .collect();
    let copy = option::weighted(
        0.15,
        (pool_ref(), prop::bool::weighted(0.5), option::of(0i64..100)),
    );
    let calls: Vec<_> = (0..HOSTS)
        .map(|_| option::weighted(0.3, sent_call()))
        .collect();
    (pool_view(), domains, hosts, departed, copy, calls).prop_map(
        |(pool, domains, hosts, departed, copy, calls)| {
            let mut o = Observed {
                pool,
                domains: domains
                    .into_iter()
                    .flatten()
                    .map(|d| (d.name.clone(), d))
                    .collect(),
                // A StorageDomain of another pool (or none) with d0's uuid.
                uuids_elsewhere: copy
                    .map(|(placed_in, placed, created)| {
                        let claim = UuidClaim {
                            placed_in: placed_in.filter(|_| placed),
                            created: created.map(at),
                        };
                        let copies = [("copy-of-d0".to_owned(), claim)].into_iter().collect();
                        (uuid_of(&domain_name(0)), copies)
                    })
                    .into_iter()
                    .collect(),
                hosts: hosts
                    .into_iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h))
                    .collect(),
                ledger: BTreeMap::new(),
                manager: None,
                departed: DEPARTED
                    .iter()
                    .zip(departed)
                    .filter_map(|(name, lease)| lease.map(|l| ((*name).to_owned(), l)))
                    .collect(),
            };
            for (i, call) in calls.into_iter().enumerate() {
                if let Some(call) = call {
                    record(&mut o, &host_name(i), &call);
                }
            }
            o
        },
    )
}

/// A call an earlier reconcile sent, and what became of it.
#[derive(Clone, Debug)]
struct SentCall {
    connect: bool,
    host_id: i32,
    /// Seconds before [`now`] it was sent.
    age: i64,
    /// 0 in flight, 1 accepted, 2 failed (`failures` times), 3 accepted then lapsed.
    fate: u8,
    failures: u32,
}

fn sent_call() -> impl Strategy<Value = SentCall> {
    (any::<bool>(), 1i32..=6, 0i64..400, 0u8..4, 1u32..12).prop_map(
        |(connect, host_id, age, fate, failures)| SentCall {
            connect,
            host_id,
            age,
            fate,
            failures,
        },
    )
}

/// Puts `call` in the ledger of `host` (a host the pool has), as the shell would have.
fn record(o: &mut Observed, host: &str, call: &SentCall) {
    let Some(h) = o.hosts.get(host) else {
        return;
    };
    let status = &o.pool.status;
    let rpc = if call.connect {
        HostCall::Connect {
            host: host.to_owned(),
            endpoint: h.endpoint().unwrap_or_default().to_owned(),
            params: PoolConnection {
                uuid: POOL_UUID.into(),
                host_id: call.host_id,
                master_domain: status.master_domain.clone(),
                master_version: status.master_version,
                domain_map: status.domain_map.clone(),
                spm_lver: None,
                backend: None,
            },
        }
    } else {
        HostCall::Disconnect {
            host: host.to_owned(),
            endpoint: h.endpoint().unwrap_or_default().to_owned(),
            params: DisconnectParams {
                pool_uuid: POOL_UUID.into(),
                host_id: call.host_id,
            },
        }
    };
    let sent_at = seconds_ago(call.age);
    let answered = later(sent_at, 1);
    match call.fate {
        0 => {
            start(o, &rpc, sent_at);
        }
        1 => accept(o, &rpc, sent_at),
        2 => refuse(
            o,
            &rpc,
            call.failures,
            sent_at,
            325,
            "hostId=1, newHostId=2",
        ),
        _ => {
            accept(o, &rpc, sent_at);
            let op = LedgerOp::Lapsed {
                host: host.to_owned(),
                sent_at,
                at: answered,
            };
            if let Some(entry) = o.ledger.remove(host)
                && let Some(kept) = entry.apply(&op)
            {
                o.ledger.insert(host.to_owned(), kept);
            }
        }
    }
}

/// What happens to a call: the host accepts it and reports it, accepts it and its report lags,
/// or the call fails.
#[derive(Clone, Copy, Debug)]
enum Agent {
    Obeys,
    Lags,
    Fails,
}

/// What an operator or the world does between two reconciles.
#[derive(Clone, Debug)]
enum Event {
    Nothing,
    DomainMaintenance(usize, bool),
    DomainPool(usize, Option<String>),
    HostMaintenance(usize, bool),
    HostPool(usize, Option<String>),
    /// The agent restarts: memory lost, new bootId.
    HostRestart(usize),
    /// A domain turns unreadable (or readable again) for a host.
    DomainValid(usize, usize, bool),
}

/// One reconcile of a random run.
#[derive(Clone, Debug)]
struct Round {
    advance_secs: i64,
    renewed: Vec<bool>,
    agents: Vec<Agent>,
    event: Event,
}

fn agent() -> impl Strategy<Value = Agent> {
    prop_oneof![6 => Just(Agent::Obeys), 2 => Just(Agent::Lags), 2 => Just(Agent::Fails)]
}

fn event() -> impl Strategy<Value = Event> {
    let d = 0..DOMAINS;
    let h = 0..HOSTS;
    prop_oneof![
        6 => Just(Event::Nothing),
        2 => (d.clone(), any::<bool>()).prop_map(|(i, on)| Event::DomainMaintenance(i, on)),
        1 => (d.clone(), pool_ref()).prop_map(|(i, p)| Event::DomainPool(i, p)),
        1 => (h.clone(), any::<bool>()).prop_map(|(i, on)| Event::HostMaintenance(i, on)),
        1 => (h.clone(), pool_ref()).prop_map(|(i, p)| Event::HostPool(i, p)),
        1 => h.clone().prop_map(Event::HostRestart),
        1 => (h, d, any::<bool>()).prop_map(|(i, j, ok)| Event::DomainValid(i, j, ok)),
    ]
}

fn round() -> impl Strategy<Value = Round> {
    (
        0i64..60,
        collection::vec(prop::bool::weighted(0.8), HOSTS),
        collection::vec(agent(), HOSTS),
        event(),
    )
        .prop_map(|(advance_secs, renewed, agents, event)| Round {
            advance_secs,
            renewed,
            agents,
            event,
        })
}

// ---------------------------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------------------------

/// Phases in which hosts may still use a domain of this pool.
fn in_use(phase: Option<DomainPhase>) -> bool {
    !matches!(
        phase,
        Some(DomainPhase::Maintenance | DomainPhase::Detaching | DomainPhase::Unattached)
    )
}

/// Hosts that hold the pool (connected to it by their report, and responsive or not put in
/// maintenance), with the uuids each monitors or holds in its map.
fn holders<'a>(o: &'a Observed, plan: &Plan) -> Vec<(&'a str, &'a HostReport)> {
    o.hosts
        .iter()
        .filter_map(|(name, h)| {
            let report = h.report.parsed()?;
            let c = report.pool.as_ref()?;
            let v = plan.hosts.get(name)?;
            (c.uuid == plan.pool_uuid && (v.responsive || !h.spec.maintenance))
                .then_some((name.as_str(), report))
        })
        .collect()
}

/// A host without a readable report that may hold the pool: it has an id in the pool's status
/// and was heard from, and is responsive or not in maintenance.
fn unreadable_holder(o: &Observed, plan: &Plan) -> Option<String> {
    o.hosts
        .iter()
        .find(|(name, h)| {
            let heard_from = match h.report {
                ReportView::Missing => h.lease.is_some(),
                ReportView::Invalid(_) => true,
                ReportView::Parsed(_) => false,
            };
            let has_id = o.pool.status.host_ids.iter().any(|e| e.host == **name);
            let holds = plan
                .hosts
                .get(*name)
                .is_some_and(|v| v.responsive || !h.spec.maintenance);
            heard_from && has_id && holds
        })
        .map(|(name, _)| name.clone())
}

fn monitors(report: &HostReport, uuid: &str) -> bool {
    report.domains.iter().any(|v| v.uuid == uuid)
        || report
            .pool
            .as_ref()
            .is_some_and(|c| c.domain_map.get(uuid) == Some(&MapStatus::Active))
}

fn holds_in_map(report: &HostReport, uuid: &str) -> bool {
    report
        .pool
        .as_ref()
        .is_some_and(|c| c.domain_map.contains_key(uuid))
}

/// Domains no host may be made to drop: never placed elsewhere, not refused as a duplicate.
fn unflagged<'a>(o: &'a Observed, plan: &'a Plan) -> impl Iterator<Item = &'a DomainView> {
    o.domains.values().filter(|d| {
        plan.domains
            .get(&d.name)
            .is_some_and(|v| v.flag.is_none() && v.owned)
    })
}

/// Every safety invariant of one plan (and its report) made from `o` at `now`.
fn check(o: &Observed, plan: &Plan, report: &Report, now: Timestamp) -> Result<(), TestCaseError> {
    if plan.halted.is_some() {
        prop_assert!(
            plan.calls.is_empty(),
            "a halted plan sends {:?}",
            plan.calls
        );
        prop_assert!(plan.persist_first.is_none());
        return Ok(());
    }
    check_domains(o, plan, report)?;
    check_blame(o, plan)?;
    check_host_ids(o, plan, now)?;
    check_calls(o, plan)?;
    check_sizes(report)
}

/// A host is blamed for a domain only if it reports a problem with it or holds a map that asks it
/// to monitor it.
fn check_blame(o: &Observed, plan: &Plan) -> Result<(), TestCaseError> {
    for (name, v) in &plan.domains {
        let Some(d) = o.domains.get(name) else {
            continue;
        };
        for host in &v.problem_hosts {
            let report = o.hosts.get(host).and_then(|h| h.report.parsed());
            let asked = report.is_some_and(|r| monitors(r, &d.spec.uuid));
            prop_assert!(
                asked,
                "{host} blamed for {name}, which it was never asked to monitor"
            );
        }
    }
    Ok(())
}

/// Every status fits its schema's bounds, whatever the hosts said.
fn check_sizes(report: &Report) -> Result<(), TestCaseError> {
    use crate::api::bounds::{CONDITION_MESSAGE_MAX, CONDITIONS_MAX, LISTED_MAX};
    let conditions = std::iter::once(&report.pool.conditions)
        .chain(report.domains.values().map(|d| &d.conditions))
        .chain(report.hosts.values().map(|h| &h.conditions));
    for list in conditions {
        prop_assert!(list.len() <= CONDITIONS_MAX);
        for c in list {
            prop_assert!(c.message.chars().count() <= CONDITION_MESSAGE_MAX);
        }
    }
    let lagging = std::iter::once(&report.pool.lagging_hosts)
        .chain(report.domains.values().map(|d| &d.blocking_hosts));
    for list in lagging {
        prop_assert!(list.len() <= LISTED_MAX, "{} hosts listed", list.len());
        for l in list {
            prop_assert!(l.message.chars().count() <= crate::api::LaggingHost::MAX_MESSAGE_CHARS);
        }
    }
    Ok(())
}

/// Safety is about a storage domain, its uuid: when several StorageDomains name one uuid, one of
/// them carrying it safely out is enough.
fn check_domains(o: &Observed, plan: &Plan, report: &Report) -> Result<(), TestCaseError> {
    let holders = holders(o, plan);
    let unreadable = unreadable_holder(o, plan);
    let by_uuid = |uuid: &str| -> Vec<&DomainView> {
        unflagged(o, plan)
            .filter(|d| d.spec.uuid == uuid && d.status.pool.as_deref() == Some(POOL))
            .filter(|d| report.domains.contains_key(&d.name))
            .collect()
    };
    let new_phase = |d: &DomainView| report.domains[&d.name].phase;
    let uuids: BTreeSet<&str> = o.domains.values().map(|d| d.spec.uuid.as_str()).collect();
    for uuid in uuids {
        let objects = by_uuid(uuid);
        let monitored_by = holders
            .iter()
            .find(|(_, r)| monitors(r, uuid))
            .map(|(n, _)| (*n).to_owned())
            .or_else(|| unreadable.clone());
        if let Some(host) = &monitored_by
            && objects.iter().any(|d| in_use(d.status.phase))
        {
            let phases: Vec<_> = objects
                .iter()
                .map(|d| (&d.name, d.status.phase, new_phase(d)))
                .collect();
            prop_assert!(
                objects.iter().any(|d| in_use(new_phase(d))),
                "{uuid} no longer in use while {host} may still monitor it: {phases:?}"
            );
            prop_assert!(
                plan.desired.domain_map.contains_key(uuid),
                "{uuid} left the map while {host} may still monitor it: {phases:?}"
            );
        }
        let held_by = holders
            .iter()
            .find(|(_, r)| holds_in_map(r, uuid))
            .map(|(n, _)| (*n).to_owned())
            .or_else(|| unreadable.clone());
        if let Some(host) = held_by
            && objects
                .iter()
                .any(|d| d.status.phase == Some(DomainPhase::Detaching))
        {
            let released = |d: &&DomainView| {
                let new = &report.domains[&d.name];
                new.phase == Some(DomainPhase::Unattached) || new.pool.as_deref() != Some(POOL)
            };
            prop_assert!(
                !objects.iter().all(released),
                "{uuid} released while {host} still holds it"
            );
        }
    }
    Ok(())
}

fn check_host_ids(o: &Observed, plan: &Plan, now: Timestamp) -> Result<(), TestCaseError> {
    let max = o.pool.spec.sync.max_hosts;
    let ids = &plan.desired.host_ids;
    let mut seen = BTreeSet::new();
    for (host, id) in ids {
        prop_assert!((1..=max).contains(id), "{host} got id {id}, max {max}");
        prop_assert!(seen.insert(*id), "id {id} given twice: {ids:?}");
    }
    // Ids hosts report holding here, when no other host reports the same one.
    let reported: Vec<(&str, i32)> = o
        .hosts
        .iter()
        .filter_map(|(name, h)| {
            let c = h.report.parsed()?.pool.as_ref()?;
            (c.uuid == plan.pool_uuid && (1..=max).contains(&c.host_id))
                .then_some((name.as_str(), c.host_id))
        })
        .collect();
    for (name, id) in &reported {
        if reported.iter().filter(|(_, i)| i == id).count() == 1 {
            prop_assert_eq!(ids.get(*name), Some(id), "{} reports id {}", name, id);
        }
    }
    // Ids of departed hosts whose agent may still hold the pool.
    for e in &o.pool.status.host_ids {
        let current = o
            .departed
            .get(&e.host)
            .is_some_and(|l| lease_current(l.as_ref(), now));
        let reported_by_other = reported.iter().any(|(_, i)| *i == e.id);
        if current && !reported_by_other && !o.hosts.contains_key(&e.host) {
            // A departed host's own entry is kept, not given (a restored status may hold one id
            // for two departed hosts); a present host never shares the id.
            let held_before = |host: &str, id: i32| {
                o.departed.contains_key(host)
                    && o.pool
                        .status
                        .host_ids
                        .iter()
                        .any(|x| x.host == host && x.id == id)
            };
            for (host, id) in ids {
                prop_assert!(
                    *id != e.id || *host == e.host || held_before(host, *id),
                    "{host} got id {id} that departed {} may still hold",
                    e.host
                );
            }
        }
    }
    Ok(())
}

fn check_calls(o: &Observed, plan: &Plan) -> Result<(), TestCaseError> {
    let persisted = plan
        .persist_first
        .clone()
        .unwrap_or_else(|| o.pool.status.clone());
    if let Some(p) = &plan.persist_first {
        prop_assert_eq!(p.map_version, plan.desired.map_version);
        prop_assert_eq!(&p.domain_map, &plan.desired.domain_map);
    }
    let mut called = BTreeSet::new();
    for call in &plan.calls {
        let name = call.host();
        prop_assert!(called.insert(name), "two calls to {name}");
        let h = &o.hosts[name];
        let v = &plan.hosts[name];
        prop_assert!(v.responsive, "a call to unresponsive {name}: {call:?}");
        prop_assert!(
            !matches!(h.report, ReportView::Invalid(_)),
            "a call to {name}, whose report is unreadable"
        );
        let (HostCall::Connect { params, .. } | HostCall::Refresh { params, .. }) = call else {
            // Connected here under the id it keeps (a host whose id must change is disconnected
            // first: VDSM refuses a connect with another id, 325), unless it is the host that
            // rebuilds a master no host can read (VDSM runs reconstructMaster only on a
            // disconnected host).
            if plan.manager.disconnect_first.as_deref() == Some(name) {
                let lost = o.hosts.values().any(|x| {
                    x.report
                        .parsed()
                        .and_then(|r| r.pool.as_ref())
                        .filter(|c| c.uuid == plan.pool_uuid)
                        .and_then(|c| c.master_domain.as_deref())
                        .is_some_and(|m| crate::plan::map::master_dead(o, m))
                });
                prop_assert!(
                    lost,
                    "{name} disconnected to rebuild a master some host can read"
                );
                continue;
            }
            let connected_here = h
                .report
                .parsed()
                .and_then(|r| r.pool.as_ref())
                .is_some_and(|c| {
                    c.uuid == plan.pool_uuid && plan.desired.host_ids.get(name) == Some(&c.host_id)
                });
            let member =
                h.spec.pool.as_deref() == Some(POOL) && !h.spec.maintenance && connected_here;
            prop_assert!(
                !member || plan.desired.master_domain.is_none() || o.pool.deleting,
                "serving member {name} disconnected from a pool with a master"
            );
            continue;
        };
        prop_assert!(!h.spec.maintenance, "connect to {name} in maintenance");
        prop_assert_eq!(h.spec.pool.as_deref(), Some(POOL), "connect to {}", name);
        // Persisted before the call: the host is told exactly what the status holds.
        prop_assert_eq!(persisted.uuid.as_deref(), Some(params.uuid.as_str()));
        prop_assert_eq!(&persisted.domain_map, &params.domain_map);
        prop_assert_eq!(&persisted.master_domain, &params.master_domain);
        prop_assert_eq!(persisted.master_version, params.master_version);
        prop_assert!(
            persisted
                .host_ids
                .iter()
                .any(|e| e.host == name && e.id == params.host_id),
            "{name} told id {} not persisted: {:?}",
            params.host_id,
            persisted.host_ids
        );
        // No active domain a host monitors is stopped unless it is leaving.
        if let Some(report) = h.report.parsed() {
            for d in unflagged(o, plan) {
                let stays_active = d.spec.pool.as_deref() == Some(POOL)
                    && d.status.pool.as_deref() == Some(POOL)
                    && !d.spec.maintenance
                    && !d.deleting
                    && d.status.phase == Some(DomainPhase::Active);
                if stays_active && report.domains.iter().any(|x| x.uuid == d.spec.uuid) {
                    prop_assert_eq!(
                        params.domain_map.get(&d.spec.uuid),
                        Some(&MapStatus::Active),
                        "{} told to stop active {}",
                        name,
                        d.name
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driving several reconciles
// ---------------------------------------------------------------------------------------------

fn apply_event(o: &mut Observed, event: &Event) {
    match event {
        Event::Nothing => {}
        Event::DomainMaintenance(i, on) => {
            if let Some(d) = o.domains.get_mut(&domain_name(*i)) {
                d.spec.maintenance = *on;
            }
        }
        Event::DomainPool(i, p) => {
            if let Some(d) = o.domains.get_mut(&domain_name(*i)) {
                d.spec.pool.clone_from(p);
            }
        }
        Event::HostMaintenance(i, on) => {
            if let Some(h) = o.hosts.get_mut(&host_name(*i)) {
                h.spec.maintenance = *on;
            }
        }
        Event::HostPool(i, p) => {
            if let Some(h) = o.hosts.get_mut(&host_name(*i)) {
                h.spec.pool.clone_from(p);
            }
        }
        Event::HostRestart(i) => {
            if let Some(h) = o.hosts.get_mut(&host_name(*i))
                && let ReportView::Parsed(r) = &mut h.report
            {
                let r = r.make_mut();
                r.boot_id.push('+');
                r.pool = None;
                r.domains.clear();
                r.domain_count = 0;
            }
        }
        Event::DomainValid(i, j, ok) => {
            let uuid = uuid_of(&domain_name(*j));
            if let Some(h) = o.hosts.get_mut(&host_name(*i))
                && let ReportView::Parsed(r) = &mut h.report
                && let Some(v) = r.make_mut().domains.iter_mut().find(|v| v.uuid == uuid)
            {
                v.valid = *ok;
                v.code = if *ok { 0 } else { 379 };
            }
        }
    }
}

fn renew(o: &mut Observed, renewed: &[bool], now: Timestamp) {
    for (i, on) in renewed.iter().enumerate() {
        if let Some(h) = o.hosts.get_mut(&host_name(i))
            && *on
        {
            h.lease = Some(LeaseView {
                renew_time: Some(now),
                lease_duration_seconds: Some(40),
                observed: Observation::Renewed(now),
            });
        }
    }
}

/// One reconcile as the shell runs it: plan, check it, record the ledger, call (agents as
/// `agents` says), report, check the report, write back.
fn reconcile(o: &mut Observed, agents: &[Agent], now: Timestamp) -> Result<Plan, TestCaseError> {
    let before = o.clone();
    let plan = plan(&before, now);
    prop_assert_eq!(
        &plan,
        &super::plan(&before, now),
        "plan is not deterministic"
    );
    apply_ledger(o, &plan);
    let mut outcomes = Vec::new();
    for call in &plan.calls {
        let name = call.host();
        let agent = name
            .strip_prefix('h')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| agents.get(i))
            .copied()
            .unwrap_or(Agent::Obeys);
        let result = match agent {
            Agent::Obeys | Agent::Lags => Ok(()),
            Agent::Fails => Err(CallFailure {
                code: Some(324),
                message: "x".repeat(2000),
            }),
        };
        let sent = start(o, call, now);
        answer(o, name, sent, &result, now);
        if matches!(agent, Agent::Obeys)
            && let Some(h) = o.hosts.get_mut(name)
        {
            obey(h, call);
        }
        outcomes.push(CallOutcome {
            host: name.to_owned(),
            kind: call.kind(),
            result,
        });
    }
    let report = super::report(&before, &plan, &outcomes, now);
    prop_assert_eq!(
        &report,
        &super::report(&before, &plan, &outcomes, now),
        "report is not deterministic"
    );
    check(&before, &plan, &report, now)?;
    write_back(o, &plan, &report);
    Ok(plan)
}

proptest! {
    #![proptest_config(config(1024))]

    /// One plan from any state: every invariant holds, and every outcome can be reported.
    #[test]
    fn every_plan_is_safe(o in observed(), fail in collection::vec(any::<bool>(), HOSTS)) {
        let now = now();
        let plan = plan(&o, now);
        let outcomes: Vec<CallOutcome> = plan
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| CallOutcome {
                host: c.host().to_owned(),
                kind: c.kind(),
                result: if fail[i % HOSTS] {
                    Err(CallFailure { code: None, message: "timed out".into() })
                } else {
                    Ok(())
                },
            })
            .collect();
        let report = super::report(&o, &plan, &outcomes, now);
        check(&o, &plan, &report, now)?;
        prop_assert_eq!(&plan, &super::plan(&o, now));
        // The ledger ops name hosts of the pool.
        for op in &plan.ledger {
            let (LedgerOp::Confirmed { host, .. } | LedgerOp::Lapsed { host, .. }) = op;
            prop_assert!(o.hosts.contains_key(host));
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Many reconciles from any state, with agents that obey, lag or fail, restarts, operators
    /// flipping flags and a moving clock: every step is safe; once the world calms down (every
    /// agent answers and obeys, every Lease renewed), the calls stop.
    #[test]
    fn random_runs_stay_safe_and_settle(
        o in observed(),
        rounds in collection::vec(round(), 1..12),
    ) {
        let mut o = o;
        let mut now = now();
        for r in &rounds {
            now = later(now, r.advance_secs);
            apply_event(&mut o, &r.event);
            renew(&mut o, &r.renewed, now);
            reconcile(&mut o, &r.agents, now)?;
        }
        let calm = [Agent::Obeys; HOSTS];
        let mut quiet = false;
        for _ in 0..40 {
            now = later(now, 5);
            renew(&mut o, &[true; HOSTS], now);
            let plan = reconcile(&mut o, &calm, now)?;
            if plan.calls.is_empty() {
                quiet = true;
                break;
            }
        }
        prop_assert!(quiet, "calls never stop: {:?}", plan(&o, now).calls);
    }
}
