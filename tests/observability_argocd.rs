//! The Argo CD health checks shipped in `deploy/observability/argocd-cm.yaml`, run as they are
//! (read from that file) by a real Lua 5.1 interpreter (Argo CD's gopher-lua speaks 5.1) against
//! objects of every phase. The objects are built by the controller's own planner from its
//! fixtures, so a condition or reason that changes in `src/plan/status` changes what the Lua sees
//! here: the checks cannot drift from the conditions.

use mlua::{Lua, LuaSerdeExt, SerializeOptions};
use poolkeeper::api::{
    DomainPhase, HostPhase, HostStatus, StorageDomainSpec, StorageDomainStatus, StoragePoolStatus,
};
use poolkeeper::plan::fixtures::{
    POOL, add_attached, at, converge, domain, failed, host, later, renew_all, steady, step,
    step_with, uuid_of, vitals, world, write_back,
};
use poolkeeper::plan::{
    self, CallOutcome, LeaseView, Observation, Observed, ReportView, orphan_domain,
};
use serde_json::{Value, json};

const CONFIG: &str = include_str!("../deploy/observability/argocd-cm.yaml");

fn t0() -> jiff::Timestamp {
    at(0)
}

/// The Lua of the health check for `kind`, from the shipped ConfigMap.
fn script(kind: &str) -> String {
    let cm: Value = serde_saphyr::from_str(CONFIG).expect("argocd-cm.yaml parses");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let key = format!("resource.customizations.health.poolkeeper.io_{kind}");
    cm["data"][&key]
        .as_str()
        .unwrap_or_else(|| panic!("argocd-cm.yaml has no {key}"))
        .to_owned()
}

/// Argo CD's verdict on `obj`: `(status, message)`.
fn health(obj: &Value) -> (String, String) {
    let kind = obj["kind"].as_str().expect("kind");
    let lua = Lua::new();
    // Argo CD hands the object over as decoded JSON: absent fields are nil, never a null value.
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("object to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: mlua::Table = lua
        .load(script(kind))
        .set_name(kind)
        .eval()
        .unwrap_or_else(|e| panic!("the {kind} health check fails on {obj:#}: {e}"));
    let status: String = hs.get("status").expect("hs.status");
    let message: String = hs.get("message").expect("hs.message");
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&status.as_str()),
        "{kind}: unexpected health {status}"
    );
    assert!(!message.is_empty(), "{kind}: a health without a message");
    (status, message)
}

fn pool_obj(o: &Observed) -> Value {
    pool_with(o, &o.pool.status)
}

fn pool_with(o: &Observed, status: &StoragePoolStatus) -> Value {
    json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool",
        "metadata": {"name": o.pool.name, "generation": o.pool.generation},
        "spec": o.pool.spec, "status": status,
    })
}

fn domain_obj(o: &Observed, name: &str) -> Value {
    let d = &o.domains[name];
    domain_with(name, d.generation, &d.spec, &d.status)
}

fn domain_with(
    name: &str,
    generation: Option<i64>,
    spec: &StorageDomainSpec,
    status: &StorageDomainStatus,
) -> Value {
    json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StorageDomain",
        "metadata": {"name": name, "generation": generation},
        "spec": spec, "status": status,
    })
}

fn host_obj(o: &Observed, name: &str) -> Value {
    let h = &o.hosts[name];
    let status = HostStatus {
        endpoint: h.status_endpoint.clone(),
        report: h.report.parsed().cloned(),
        phase: h.controller.phase,
        observed_generation: h.controller.observed_generation,
        conditions: h.controller.conditions.clone(),
    };
    json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host",
        "metadata": {"name": name, "generation": h.generation},
        "spec": h.spec, "status": status,
    })
}

fn expect(obj: &Value, status: &str, says: &str) {
    let (got, message) = health(obj);
    assert_eq!(
        got, status,
        "{} {}: {message}",
        obj["kind"], obj["metadata"]["name"]
    );
    assert!(
        message.contains(says),
        "{} {}: {message:?} does not say {says:?}",
        obj["kind"],
        obj["metadata"]["name"]
    );
}

fn expire_lease(o: &mut Observed, name: &str) {
    o.hosts.get_mut(name).expect("host").lease = Some(LeaseView {
        renew_time: Some(at(-1000)),
        lease_duration_seconds: Some(40),
        observed: Observation::Renewed(at(-1000)),
    });
}

/// Sets the vitals `host` reports for `domain` to invalid (VDSM's 2001).
fn fail_domain(o: &mut Observed, host: &str, domain: &str) {
    let uuid = uuid_of(domain);
    let ReportView::Parsed(r) = &mut o.hosts.get_mut(host).expect("host").report else {
        panic!("no report");
    };
    let r = r.make_mut();
    r.domains.retain(|v| v.uuid != uuid);
    r.domains.push(poolkeeper::api::DomainVitals {
        valid: false,
        code: 2001,
        ..vitals(&uuid)
    });
}

/// One reconcile whose calls all succeed but whose hosts have not reported yet.
fn step_unconfirmed(o: &mut Observed, now: jiff::Timestamp) {
    let p = plan::plan(o, now);
    let outcomes: Vec<CallOutcome> = p
        .calls
        .iter()
        .map(|c| CallOutcome {
            host: c.host().to_owned(),
            kind: c.kind(),
            result: Ok(()),
        })
        .collect();
    let r = plan::report(o, &p, &outcomes, now);
    write_back(o, &p, &r);
}

fn with_grace(mut o: Observed, secs: i32) -> Observed {
    o.pool.spec.sync.problem_grace_seconds = secs;
    o
}

#[test]
fn every_check_is_in_the_shipped_configmap_and_returns_a_health() {
    for kind in ["StoragePool", "StorageDomain", "Host"] {
        assert!(script(kind).contains("return hs"));
    }
    // An object the controller has not seen yet: no status at all.
    let fresh = json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool",
        "metadata": {"name": "p", "generation": 1}, "spec": {}});
    expect(&fresh, "Progressing", "observe");
}

#[test]
fn pool_health_follows_its_conditions() {
    let mut o = steady(3, 2, t0());
    expect(&pool_obj(&o), "Healthy", "InSync");

    // A spec the controller has not observed yet.
    let mut newer = o.clone();
    newer.pool.generation = Some(2);
    expect(&pool_obj(&newer), "Progressing", "latest spec");

    // A new domain rolls out.
    let mut rolling = o.clone();
    let d = domain("d009", Some(POOL));
    add_attached(&mut rolling, d);
    let (_, r) = step_with(&mut rolling, t0(), &[failed("h0002", 2001, "slow")]);
    let mut one_failing = rolling.clone();
    one_failing.pool.status = r.pool;
    expect(&pool_obj(&one_failing), "Degraded", "SyncFailing");

    let mut rolling = o.clone();
    let d = domain("d009", Some(POOL));
    add_attached(&mut rolling, d);
    step_unconfirmed(&mut rolling, t0());
    expect(&pool_obj(&rolling), "Progressing", "RollingOut");

    // Too many hosts for maxHosts: only a person can fix it.
    o.pool.spec.sync.max_hosts = 3;
    let h = host("h0009", Some(POOL), t0());
    o.hosts.insert(h.name.clone(), h);
    step(&mut o, t0());
    expect(&pool_obj(&o), "Degraded", "TooManyHosts");

    // A compatibility version that does not parse (written past the schema) halts the pool.
    let mut invalid = steady(1, 1, t0());
    invalid.pool.spec.compatibility_version = "three".into();
    step(&mut invalid, t0());
    expect(
        &pool_obj(&invalid),
        "Degraded",
        "InvalidCompatibilityVersion",
    );

    // No hosts yet is fine.
    let mut empty = world(0, 1, t0());
    converge(&mut empty, t0(), 5);
    expect(&pool_obj(&empty), "Healthy", "NoHosts");
}

#[test]
fn domain_health_in_every_phase() {
    let o = steady(3, 3, t0());
    assert_eq!(o.domains["d001"].status.phase, Some(DomainPhase::Active));
    expect(&domain_obj(&o, "d001"), "Healthy", "Active");

    let mut newer = o.clone();
    newer.domains.get_mut("d001").expect("d").generation = Some(2);
    expect(&domain_obj(&newer, "d001"), "Progressing", "latest spec");

    // Attaching: the pool manager has not attached the new domain on storage yet.
    let mut attaching = o.clone();
    let d = domain("d009", Some(POOL));
    attaching.domains.insert(d.name.clone(), d);
    let p = plan::plan(&attaching, t0());
    let r = plan::report(&attaching, &p, &[], t0());
    let d = &attaching.domains["d009"];
    let attaching_obj = domain_with("d009", d.generation, &d.spec, &r.domains["d009"]);
    expect(&attaching_obj, "Progressing", "Attaching");

    // Activating: the hosts have not reported the new domain yet.
    let mut activating = o.clone();
    let d = domain("d009", Some(POOL));
    add_attached(&mut activating, d);
    step(&mut activating, t0());
    assert_eq!(
        activating.domains["d009"].status.phase,
        Some(DomainPhase::Activating)
    );
    expect(
        &domain_obj(&activating, "d009"),
        "Progressing",
        "Activating",
    );

    // MovingToMaintenance while a host is being told, then stuck on a host that does not respond.
    let mut moving = o.clone();
    moving.domains.get_mut("d001").expect("d").spec.maintenance = true;
    step_unconfirmed(&mut moving, t0());
    assert_eq!(
        moving.domains["d001"].status.phase,
        Some(DomainPhase::MovingToMaintenance)
    );
    expect(
        &domain_obj(&moving, "d001"),
        "Progressing",
        "HostsStillReporting",
    );
    let mut stuck = o.clone();
    expire_lease(&mut stuck, "h0002");
    stuck.domains.get_mut("d001").expect("d").spec.maintenance = true;
    converge(&mut stuck, t0(), 5);
    assert_eq!(
        stuck.domains["d001"].status.phase,
        Some(DomainPhase::MovingToMaintenance)
    );
    expect(&domain_obj(&stuck, "d001"), "Degraded", "h0002");

    // Maintenance, as requested.
    let mut maintenance = o.clone();
    maintenance
        .domains
        .get_mut("d001")
        .expect("d")
        .spec
        .maintenance = true;
    converge(&mut maintenance, t0(), 5);
    assert_eq!(
        maintenance.domains["d001"].status.phase,
        Some(DomainPhase::Maintenance)
    );
    expect(
        &domain_obj(&maintenance, "d001"),
        "Suspended",
        "Maintenance",
    );

    // Detaching: a host still holds it in its map.
    let mut detaching = maintenance.clone();
    detaching.domains.get_mut("d001").expect("d").spec.pool = None;
    step_unconfirmed(&mut detaching, t0());
    assert_eq!(
        detaching.domains["d001"].status.phase,
        Some(DomainPhase::Detaching)
    );
    expect(&domain_obj(&detaching, "d001"), "Progressing", "Detaching");

    // Unattached, and a pool that does not exist.
    let lone = domain("lone", None);
    let s = orphan_domain(Some(1), &lone.spec, &lone.status, t0());
    expect(
        &domain_with("lone", Some(1), &lone.spec, &s),
        "Healthy",
        "Unattached",
    );
    let lost = domain("lost", Some("nowhere"));
    let s = orphan_domain(Some(1), &lost.spec, &lost.status, t0());
    expect(
        &domain_with("lost", Some(1), &lost.spec, &s),
        "Degraded",
        "PoolNotFound",
    );

    // A problem in its grace period: still healthy, and it says so.
    let mut problem = with_grace(o.clone(), 60);
    fail_domain(&mut problem, "h0001", "d002");
    step(&mut problem, t0());
    expect(&domain_obj(&problem, "d002"), "Healthy", "DomainProblem");

    // Inactive: every Up host reports it failing past the grace period.
    let mut inactive = with_grace(o.clone(), 60);
    for h in ["h0000", "h0001", "h0002"] {
        fail_domain(&mut inactive, h, "d002");
    }
    step(&mut inactive, t0());
    renew_all(&mut inactive, later(t0(), 61));
    for h in ["h0000", "h0001", "h0002"] {
        fail_domain(&mut inactive, h, "d002");
    }
    step(&mut inactive, later(t0(), 61));
    assert_eq!(
        inactive.domains["d002"].status.phase,
        Some(DomainPhase::Inactive)
    );
    expect(&domain_obj(&inactive, "d002"), "Degraded", "DomainInactive");

    // Unknown: no responsive host reports it.
    let mut unknown = o.clone();
    for h in ["h0000", "h0001", "h0002"] {
        expire_lease(&mut unknown, h);
    }
    step(&mut unknown, t0());
    assert_eq!(
        unknown.domains["d001"].status.phase,
        Some(DomainPhase::Unknown)
    );
    expect(
        &domain_obj(&unknown, "d001"),
        "Degraded",
        "NoReportingHosts",
    );

    // A copy of another domain's uuid is left out of the map: a person must act.
    let mut dup = o.clone();
    let mut copy = domain("zcopy", Some(POOL));
    copy.spec.uuid = uuid_of("d001");
    dup.domains.insert(copy.name.clone(), copy);
    step(&mut dup, t0());
    expect(
        &domain_obj(&dup, "zcopy"),
        "Degraded",
        "DuplicateDomainUuid",
    );
}

#[test]
fn host_health_in_every_phase() {
    let o = steady(3, 2, t0());
    assert_eq!(o.hosts["h0000"].controller.phase, Some(HostPhase::Up));
    expect(&host_obj(&o, "h0000"), "Healthy", "HostUp");

    // Registered by its agent, in no pool: nothing to judge.
    let mut free = o.clone();
    let h = host("h0100", None, t0());
    free.hosts.insert(h.name.clone(), h);
    expect(&host_obj(&free, "h0100"), "Healthy", "no pool");

    // Joining: the controller has not written its status yet.
    let mut joining = o.clone();
    let h = host("h0009", Some(POOL), t0());
    joining.hosts.insert(h.name.clone(), h);
    expect(&host_obj(&joining, "h0009"), "Progressing", "Waiting");

    // A connect that fails, then one that is accepted but not confirmed yet.
    let mut failing = o.clone();
    let d = domain("d009", Some(POOL));
    add_attached(&mut failing, d);
    step_with(&mut failing, t0(), &[failed("h0001", 323, "another pool")]);
    assert_eq!(
        failing.hosts["h0001"].controller.phase,
        Some(HostPhase::Connecting)
    );
    expect(&host_obj(&failing, "h0001"), "Degraded", "ConnectFailed");
    step_unconfirmed(&mut failing, later(t0(), 1));
    expect(&host_obj(&failing, "h0001"), "Progressing", "Connecting");

    // NonOperational: it alone cannot reach a domain, past the grace period.
    let mut nonop = with_grace(o.clone(), 60);
    fail_domain(&mut nonop, "h0001", "d001");
    step(&mut nonop, t0());
    renew_all(&mut nonop, later(t0(), 61));
    step(&mut nonop, later(t0(), 61));
    assert_eq!(
        nonop.hosts["h0001"].controller.phase,
        Some(HostPhase::NonOperational)
    );
    expect(
        &host_obj(&nonop, "h0001"),
        "Degraded",
        "StorageDomainUnreachable",
    );

    // NonResponsive.
    let mut silent = o.clone();
    expire_lease(&mut silent, "h0002");
    step(&mut silent, t0());
    assert_eq!(
        silent.hosts["h0002"].controller.phase,
        Some(HostPhase::NonResponsive)
    );
    expect(&host_obj(&silent, "h0002"), "Degraded", "LeaseExpired");

    // An unreadable report.
    let mut garbled = o.clone();
    garbled.hosts.get_mut("h0000").expect("h").report = ReportView::Invalid("not JSON".into());
    step(&mut garbled, t0());
    expect(&host_obj(&garbled, "h0000"), "Degraded", "ReportUnparsable");

    // Maintenance: being disconnected, then disconnected.
    let mut maintenance = o.clone();
    maintenance
        .hosts
        .get_mut("h0000")
        .expect("h")
        .spec
        .maintenance = true;
    step_unconfirmed(&mut maintenance, t0());
    assert_eq!(
        maintenance.hosts["h0000"].controller.phase,
        Some(HostPhase::PreparingForMaintenance)
    );
    expect(
        &host_obj(&maintenance, "h0000"),
        "Progressing",
        "PreparingForMaintenance",
    );
    converge(&mut maintenance, t0(), 5);
    assert_eq!(
        maintenance.hosts["h0000"].controller.phase,
        Some(HostPhase::Maintenance)
    );
    expect(
        &host_obj(&maintenance, "h0000"),
        "Suspended",
        "HostMaintenance",
    );

    // A spec the controller has not observed yet.
    let mut newer = o.clone();
    newer.hosts.get_mut("h0000").expect("h").generation = Some(2);
    expect(&host_obj(&newer, "h0000"), "Progressing", "Waiting");
}
