//! Write what [`crate::plan::report`] built: each status only when it differs from the cached one
//! (through the [`super::write::Writer`]), publish the planned events, and export the pool gauges.

use std::time::Duration;

use futures::{StreamExt, stream::FuturesUnordered};

use kube::runtime::reflector::{ObjectRef as StoreRef, Store};
use tracing::{debug, warn};

use super::{
    Context, Error,
    act::Acted,
    watch::Stores,
    write::{WriteError, object_ref},
};
use crate::{
    api::{DomainPhase, Host, StorageDomain, StoragePool},
    metrics::{BlockingLabels, PoolPhaseLabels, PoolStateLabels},
    plan::{self, HostControllerStatus, ObjectKind, Observed, PlannedEvent, Report, needs_write},
};

/// Writes every changed status of the report and publishes the events of each object right after
/// its status changed (`acted.pool_version`: the pool's resourceVersion after act, which may have
/// written the pool status already). Transitions always change a status, and an event goes out
/// only with its status write. A change of progress alone (the report's `progress_only`) waits
/// until [`PROGRESS_EVERY`] has passed since the object's last write ([`Pacer`]); the returned
/// duration says when to look again for it. One failed write does not stop the others; an object
/// deleted meanwhile (404) needs no status. Before it returns, it waits (briefly) until the caches
/// show its own writes, so the next reconcile of the pool does not plan from statuses older than
/// the ones just written (which would repeat writes and their events).
///
/// # Errors
/// The first status write that failed (the reconcile is retried).
pub async fn write(
    ctx: &Context,
    observed: &Observed,
    report: &Report,
    acted: &Acted,
    persisted: bool,
) -> Result<Option<Duration>, Error> {
    let pool = &observed.pool.name;
    let mut first_error = None;
    let mut written = Written::default();
    let mut pool_written = persisted;
    let mut held = None;
    let mut pace = |object: plan::ObjectRef| {
        if !report.progress_only.contains(&object) {
            return true;
        }
        let wait = ctx.pacer.wait(&object);
        if let Some(wait) = wait {
            held = Some(held.map_or(wait, |h: Duration| h.min(wait)));
        }
        wait.is_none()
    };
    if let Some(version) = acted.pool_version.as_deref().filter(|_| persisted) {
        written.pools.push((pool.clone(), version.to_owned()));
        ctx.pacer.wrote(plan::ObjectRef::pool(pool));
    }
    if needs_write(Some(&observed.pool.status), &report.pool) && pace(plan::ObjectRef::pool(pool)) {
        // Based on the version of the pool the plan was made from, as act found it (or act's map
        // write): the pool status carries the map and host ids, which neither a stale reconcile
        // nor the last reconcile of a pool deleted and created again under its name may overwrite.
        let result = ctx
            .writer
            .status::<StoragePool>(pool, &report.pool, acted.pool_version.as_deref())
            .await;
        if let Some(version) = settle("StoragePool", pool, result, &mut first_error) {
            written.pools.extend(version.map(|v| (pool.clone(), v)));
            ctx.pacer.wrote(plan::ObjectRef::pool(pool));
            pool_written = true;
            debug!(pool = %pool, "pool status written");
        }
    }
    if pool_written {
        publish_for(ctx, report, &plan::ObjectRef::pool(pool)).await;
    }
    for (name, status) in &report.domains {
        let current = observed.domains.get(name).map(|d| &d.status);
        if !needs_write(current, status) || !pace(plan::ObjectRef::domain(name)) {
            continue;
        }
        if !still_observed(
            &ctx.stores.domains,
            name,
            observed.domains.get(name).map(|d| &d.uid),
        ) {
            continue;
        }
        let result = ctx.writer.status::<StorageDomain>(name, status, None).await;
        if let Some(version) = settle("StorageDomain", name, result, &mut first_error) {
            written.domains.extend(version.map(|v| (name.clone(), v)));
            ctx.pacer.wrote(plan::ObjectRef::domain(name));
            publish_for(ctx, report, &plan::ObjectRef::domain(name)).await;
        }
    }
    // Hosts are many (a new pool of 2,000 writes 2,000 first phases): their writes go out side by
    // side, each followed by its own events.
    let mut due = Vec::new();
    for (name, status) in &report.hosts {
        let host = observed.hosts.get(name);
        if needs_write(host.map(|h| &*h.controller), status)
            && still_observed(&ctx.stores.hosts, name, host.map(|h| &h.uid))
        {
            due.push((name, status));
        }
    }
    let mut due = due.into_iter();
    let mut running = FuturesUnordered::new();
    let mut results = Vec::new();
    loop {
        while running.len() < HOST_WRITES_IN_FLIGHT {
            let Some((name, status)) = due.next() else {
                break;
            };
            running.push(write_host(ctx, report, name, status));
        }
        let Some(done) = running.next().await else {
            break;
        };
        results.push(done);
    }
    for (name, result) in results {
        if let Some(version) = settle("Host", name, result, &mut first_error) {
            written.hosts.extend(version.map(|v| (name.clone(), v)));
        }
    }
    export_gauges(ctx, pool, report);
    // Part of `report`, also measured alone: how long the caches take to show this reconcile's
    // own writes (at most CATCH_UP_WAIT).
    let waiting = std::time::Instant::now();
    written.caught_up(&ctx.stores).await;
    ctx.metrics.step("catch_up", waiting);
    first_error.map_or(Ok(held), Err)
}

/// The least time between two writes of a pool's or domain's status when the second one only
/// moves its progress snapshot on. During a rollout each such write costs a request when the API
/// server is busiest with the hosts' reports, and holds the pool's next reconcile (the one that
/// writes the transition) until the cache shows it; one per second still lets a person watch the
/// counts move.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// When each pool's and domain's status was last written by this process. Lost on restart with no
/// harm: the first progress write after it goes out at once.
#[derive(Debug, Default)]
pub struct Pacer {
    last: std::sync::Mutex<std::collections::HashMap<plan::ObjectRef, std::time::Instant>>,
}

impl Pacer {
    /// Records a write of `object`'s status now (and forgets writes older than the interval).
    pub fn wrote(&self, object: plan::ObjectRef) {
        let now = std::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.retain(|_, at| now.duration_since(*at) < PROGRESS_EVERY);
        last.insert(object, now);
    }

    /// How long a progress-only write of `object` must still wait (`None`: it may go now).
    pub fn wait(&self, object: &plan::ObjectRef) -> Option<Duration> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = last.get(object)?.elapsed();
        PROGRESS_EVERY.checked_sub(since).filter(|d| !d.is_zero())
    }
}

/// Writes one host's status and, once it took effect, publishes the host's events.
async fn write_host<'a>(
    ctx: &Context,
    report: &Report,
    name: &'a String,
    status: &HostControllerStatus,
) -> (&'a String, Result<Option<String>, WriteError>) {
    let result = ctx
        .writer
        .status::<Host>(name, &HostControllerFields::from(status), None)
        .await;
    if result.is_ok() {
        publish_for(ctx, report, &plan::ObjectRef::host(name)).await;
    }
    (name, result)
}

/// Host status writes in flight at once within one reconcile.
const HOST_WRITES_IN_FLIGHT: usize = 32;

/// The objects a reconcile wrote, with the resourceVersion each write produced.
#[derive(Debug, Default)]
pub struct Written {
    pools: Vec<(String, String)>,
    domains: Vec<(String, String)>,
    hosts: Vec<(String, String)>,
}

/// How long a reconcile waits for the caches to show its own writes. The watch delivers them in
/// milliseconds; if it does not, the next reconcile plans from the older statuses and may repeat a
/// write (a no-op for the object) and the events that came with it.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

impl Written {
    /// Records a status write of a domain (the domain controller's writes).
    pub fn domain(&mut self, name: &str, version: Option<String>) {
        self.domains.extend(version.map(|v| (name.to_owned(), v)));
    }

    /// Waits until every cache shows these writes (or something newer), at most 2 s.
    pub async fn caught_up(mut self, stores: &Stores) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            self.pools.retain(|(n, v)| !seen(&stores.pools, n, v));
            self.domains.retain(|(n, v)| !seen(&stores.domains, n, v));
            self.hosts.retain(|(n, v)| !seen(&stores.hosts, n, v));
            let left = self.pools.len() + self.domains.len() + self.hosts.len();
            if left == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                debug!(left, "caches did not show every write in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether the cache still holds the object `name` the reconcile observed (`uid`), rather than
/// none or a new object created under its name since: a status made from the old object must not
/// land on the new one. Hosts and domains are written without a resourceVersion (the agents write
/// Host statuses all the time), so this check is what keeps a recreated one from the old one's
/// status, up to the moment of the write; the pool's map is guarded by its resourceVersion too.
fn still_observed<K>(store: &Store<K>, name: &str, uid: Option<&String>) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    uid.is_some_and(|uid| super::observe::current(store, name, uid).is_some())
}

/// Whether the cache holds `name` at resourceVersion `version` or later (or no longer holds it).
/// Kubernetes calls resourceVersions opaque; with etcd (the only storage kube-apiserver has) they
/// are its revisions, integers that only grow, and that is what this relies on. Should one not
/// parse, the wait is skipped rather than risk waiting for a version that never comes.
fn seen<K>(store: &Store<K>, name: &str, version: &str) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let Some(obj) = store.get(&StoreRef::new(name)) else {
        return true;
    };
    let cached = obj.meta().resource_version.as_deref().unwrap_or_default();
    match (cached.parse::<u64>(), version.parse::<u64>()) {
        (Ok(c), Ok(w)) => c >= w,
        _ => true,
    }
}

/// The written resourceVersion when a write took effect (`Some(None)` if the server named none);
/// `None` when it did not. A 404 (the object is gone) needs nothing more; any other error is kept
/// (the first one) for the caller.
fn settle(
    kind: &'static str,
    name: &str,
    result: Result<Option<String>, WriteError>,
    first_error: &mut Option<Error>,
) -> Option<Option<String>> {
    match result {
        Ok(version) => Some(version),
        Err(e) if e.is_not_found() => None,
        Err(source) => {
            let e = Error::WriteStatus {
                kind,
                name: name.to_owned(),
                source,
            };
            warn!(error = %e, "status write failed");
            first_error.get_or_insert(e);
            None
        }
    }
}

async fn publish_for(ctx: &Context, report: &Report, object: &plan::ObjectRef) {
    for event in report.events.iter().filter(|e| e.object == *object) {
        publish(ctx, event).await;
    }
}

/// The controller's part of a Host status, as applied: only its own fields, since the agent owns
/// `status.report` under its own field manager.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HostControllerFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<crate::api::HostPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
}

impl<'a> From<&'a HostControllerStatus> for HostControllerFields<'a> {
    fn from(s: &'a HostControllerStatus) -> Self {
        Self {
            phase: s.phase,
            observed_generation: s.observed_generation,
            conditions: &s.conditions,
        }
    }
}

/// Publishes `event` about its object, if the object is still in the cache.
pub async fn publish(ctx: &Context, event: &PlannedEvent) {
    let name = event.object.name.as_str();
    let reference = match event.object.kind {
        ObjectKind::StoragePool => ctx
            .stores
            .pools
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
        ObjectKind::StorageDomain => ctx
            .stores
            .domains
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
        ObjectKind::Host => ctx
            .stores
            .hosts
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
    };
    if let Some(reference) = reference {
        ctx.writer.event(&reference, event).await;
    }
}

fn export_gauges(ctx: &Context, pool: &str, report: &Report) {
    let c = &report.pool.counts;
    for (state, value) in [
        ("hosts", c.hosts),
        ("in_sync", c.in_sync),
        ("connecting", c.connecting),
        ("failing", c.failing),
        ("unresponsive", c.unresponsive),
    ] {
        ctx.metrics
            .pool_hosts
            .get_or_create(&PoolStateLabels {
                pool: pool.to_owned(),
                state,
            })
            .set(i64::from(value));
    }
    let mut phases = std::collections::BTreeMap::new();
    for status in report.domains.values() {
        if let Some(phase) = status.phase {
            *phases.entry(phase.as_str()).or_insert(0_i64) += 1;
        }
    }
    for phase in crate::api::domain::ALL_PHASES {
        ctx.metrics
            .pool_domains
            .get_or_create(&PoolPhaseLabels {
                pool: pool.to_owned(),
                phase: phase.as_str(),
            })
            .set(phases.get(phase.as_str()).copied().unwrap_or(0));
    }
    let mut host_phases = std::collections::BTreeMap::new();
    for status in report.hosts.values() {
        if let Some(phase) = status.phase {
            *host_phases.entry(phase.as_str()).or_insert(0_i64) += 1;
        }
    }
    for phase in crate::api::host::ALL_PHASES {
        ctx.metrics
            .pool_host_phases
            .get_or_create(&PoolPhaseLabels {
                pool: pool.to_owned(),
                phase: phase.as_str(),
            })
            .set(host_phases.get(phase.as_str()).copied().unwrap_or(0));
    }
    let blocking = report
        .domains
        .iter()
        .filter_map(|(domain, s)| Some((domain, s.phase?, s)))
        .filter(|(_, phase, _)| {
            matches!(
                phase,
                DomainPhase::MovingToMaintenance | DomainPhase::Detaching
            )
        })
        .flat_map(|(domain, phase, s)| {
            s.blocking_hosts.iter().map(move |b| BlockingLabels {
                pool: pool.to_owned(),
                domain: domain.clone(),
                phase: phase.as_str(),
                host: b.host.clone(),
                reason: b.reason.as_str(),
            })
        })
        .collect();
    ctx.metrics.set_blocking(pool, blocking);
}
