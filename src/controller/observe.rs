//! Narrows the caches and the call ledger into the planner's [`Observed`] value for one pool. After
//! this, no decision reads a raw object: a host report that makes no sense is turned into
//! [`ReportView::Invalid`] here. Which objects belong to the pool is [`super::index`]'s to say;
//! its index makes this O(members of the pool), not O(all domains and hosts).
//!
//! A host's report is checked and narrowed once per version of the Host ([`HostViews`]), not once
//! per reconcile: a pool of 2,000 hosts reconciled because one host reported shares the other
//! 1,999 views with the previous reconcile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::{Context, index::Members, liveness::renew_time};
use crate::{
    api::{Host, HostReport, PoolConnection, StorageDomain, StoragePool, bounds},
    plan::{
        DOMAIN_FINALIZER, DomainView, HostControllerStatus, HostView, LeaseView, Observed,
        POOL_FINALIZER, PoolView, ReportView, SharedReport, UuidClaim,
    },
};

/// Everything the planner needs about `pool`, from the caches, at `now` (the clock the planner is
/// given too).
pub fn pool(ctx: &Context, pool: &StoragePool, now: Timestamp) -> Observed {
    let name = pool.name_any();
    let pool_view = PoolView {
        name: name.clone(),
        uid: pool.uid().unwrap_or_default(),
        generation: pool.metadata.generation,
        deleting: pool.metadata.deletion_timestamp.is_some(),
        has_finalizer: pool.finalizers().iter().any(|f| f == POOL_FINALIZER),
        spec: pool.spec.clone(),
        status: pool.status.clone().unwrap_or_default(),
    };
    let members = Members::of(pool);
    let index = &ctx.stores.index;

    let mut domains = BTreeMap::new();
    for d in index.domains(&ctx.stores.domains, &members) {
        let spec_pool = d.spec.pool.as_deref();
        let status_pool = d.status.as_ref().and_then(|s| s.pool.as_deref());
        let leaving_other_pool = spec_pool == Some(name.as_str())
            && status_pool
                .is_some_and(|p| p != name && ctx.stores.pools.get(&ObjectRef::new(p)).is_some());
        domains.insert(d.name_any(), domain_view(&d, leaving_other_pool));
    }
    let ours: BTreeSet<&str> = domains.values().map(|d| d.spec.uuid.as_str()).collect();
    let mut uuids_elsewhere: BTreeMap<String, BTreeMap<String, UuidClaim>> = BTreeMap::new();
    for d in index.domains_with_uuid(&ctx.stores.domains, &ours) {
        if !domains.contains_key(&d.name_any()) {
            let claim = UuidClaim::of(created(&d), &d.status.clone().unwrap_or_default());
            uuids_elsewhere
                .entry(d.spec.uuid.clone())
                .or_default()
                .insert(d.name_any(), claim);
        }
    }

    let mut hosts = BTreeMap::new();
    for h in index.hosts(&ctx.stores.hosts, &members) {
        let host_name = h.name_any();
        let (report, controller) = ctx.stores.views.of(&h);
        let lease = lease_view(ctx, &host_name, now);
        hosts.insert(
            host_name.clone(),
            HostView {
                name: host_name,
                uid: h.uid().unwrap_or_default(),
                generation: h.metadata.generation,
                spec: h.spec.clone(),
                status_endpoint: h.status.as_ref().and_then(|s| s.endpoint.clone()),
                report,
                controller,
                lease,
            },
        );
    }
    let departed = pool_view
        .status
        .host_ids
        .iter()
        .filter(|e| !hosts.contains_key(&e.host))
        .map(|e| (e.host.clone(), lease_view(ctx, &e.host, now)))
        .collect();
    let ledger = ctx.ledger.snapshot(hosts.keys().map(String::as_str));
    let manager = ctx.managers.get(&pool_view.uid);
    Observed {
        pool: pool_view,
        domains,
        uuids_elsewhere,
        hosts,
        ledger,
        manager,
        departed,
    }
}

/// The cached object `name` if it is still the object `uid` a reconcile observed: not deleted
/// since, nor replaced by a new object created under its name.
pub fn current<K>(store: &Store<K>, name: &str, uid: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .get(&ObjectRef::new(name))
        .filter(|o| o.meta().uid.as_deref() == Some(uid))
}

fn domain_view(d: &StorageDomain, leaving_other_pool: bool) -> DomainView {
    DomainView {
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        generation: d.metadata.generation,
        created: created(d),
        deleting: d.metadata.deletion_timestamp.is_some(),
        has_finalizer: d.finalizers().iter().any(|f| f == DOMAIN_FINALIZER),
        leaving_other_pool,
        spec: d.spec.clone(),
        status: d.status.clone().unwrap_or_default(),
    }
}

fn created(d: &StorageDomain) -> Option<jiff::Timestamp> {
    d.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The Lease of host `name`, with when its renewal was observed ([`super::liveness`]).
fn lease_view(ctx: &Context, name: &str, now: Timestamp) -> Option<LeaseView> {
    let lease = ctx
        .stores
        .leases
        .get(&ObjectRef::new(name).within(&ctx.settings.lease_namespace))?;
    let renew_time = renew_time(&lease);
    Some(LeaseView {
        renew_time,
        lease_duration_seconds: lease.spec.as_ref().and_then(|s| s.lease_duration_seconds),
        observed: ctx.stores.lease_clock.observation(name, renew_time, now),
    })
}

/// The host's report, checked for sense beyond what the schema enforces (shared with the cache).
pub fn report_view(host: &Arc<Host>) -> ReportView {
    match host.status.as_ref().and_then(|s| s.report.as_ref()) {
        None => ReportView::Missing,
        Some(report) => match validate_report(report) {
            Ok(()) => {
                SharedReport::of(host.clone()).map_or(ReportView::Missing, ReportView::Parsed)
            }
            Err(reason) => ReportView::Invalid(reason),
        },
    }
}

/// The narrowed parts of each Host (its checked report and the controller's part of its status),
/// kept per Host version: rebuilt only when the Host's `resourceVersion` (or uid) changes. A memo
/// of the caches, never a source of truth: losing it costs one rebuild.
#[derive(Debug, Default)]
pub struct HostViews {
    by_name: Mutex<HashMap<String, CachedView>>,
}

#[derive(Debug)]
struct CachedView {
    uid: Option<String>,
    version: Option<String>,
    report: ReportView,
    controller: Arc<HostControllerStatus>,
}

impl HostViews {
    /// The report and controller status of `host`, from the memo when this version was seen.
    pub fn of(&self, host: &Arc<Host>) -> (ReportView, Arc<HostControllerStatus>) {
        let name = host.name_any();
        let mut views = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let current = |c: &CachedView| {
            c.version.is_some()
                && c.version == host.metadata.resource_version
                && c.uid == host.metadata.uid
        };
        if let Some(c) = views.get(&name).filter(|c| current(c)) {
            return (c.report.clone(), c.controller.clone());
        }
        let cached = CachedView {
            uid: host.metadata.uid.clone(),
            version: host.metadata.resource_version.clone(),
            report: report_view(host),
            controller: Arc::new(
                host.status
                    .as_ref()
                    .map(HostControllerStatus::from)
                    .unwrap_or_default(),
            ),
        };
        let out = (cached.report.clone(), cached.controller.clone());
        views.insert(name, cached);
        out
    }

    /// Forgets the view of a Host that changed or went (a watch event, after the store applied
    /// it): the memo would otherwise hold the replaced version, a whole Host, until the next
    /// reconcile of its pool rebuilt the view, which during a rollout of 2,000 hosts doubled the
    /// host cache. A relist starts over.
    pub fn host_event(&self, event: &watcher::Event<Host>) {
        let mut views = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(host) | watcher::Event::Delete(host) => {
                views.remove(&host.name_any());
            }
            watcher::Event::InitDone => views.clear(),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// Why a report cannot be trusted, if it cannot: more than the schema allows (a report written
/// under an older CRD), malformed uuids, a host id out of range, or a domain reported twice. The
/// reason quotes the report's text cut short ([`bounds::quote`]), as it goes into statuses.
pub fn validate_report(report: &HostReport) -> Result<(), String> {
    if report.domains.len() > HostReport::MAX_DOMAINS {
        return Err(format!(
            "{} domains reported, more than {}",
            report.domains.len(),
            HostReport::MAX_DOMAINS
        ));
    }
    for (field, text) in [
        ("agentVersion", &report.agent_version),
        ("bootId", &report.boot_id),
    ] {
        if text.chars().count() > HostReport::MAX_TEXT_CHARS {
            return Err(format!(
                "{field} is longer than {} characters",
                HostReport::MAX_TEXT_CHARS
            ));
        }
    }
    if let Some(pool) = &report.pool {
        if pool.domain_map.len() > PoolConnection::MAX_MAP_ENTRIES {
            return Err(format!(
                "the pool's domain map has {} entries, more than {}",
                pool.domain_map.len(),
                PoolConnection::MAX_MAP_ENTRIES
            ));
        }
        if !is_uuid(&pool.uuid) {
            return Err(format!(
                "pool uuid {} is not a uuid",
                bounds::quote(&pool.uuid)
            ));
        }
        if !(1..=2000).contains(&pool.host_id) {
            return Err(format!("host id {} is out of range 1..2000", pool.host_id));
        }
        if let Some(m) = &pool.master_domain
            && !m.is_empty()
            && !is_uuid(m)
        {
            return Err(format!("master domain {} is not a uuid", bounds::quote(m)));
        }
        // Repeated entries are refused by the schema (the map is keyed by uuid).
        if let Some((uuid, _)) = pool.domain_map.iter().find(|(uuid, _)| !is_uuid(uuid)) {
            return Err(format!(
                "domain map entry {} is not a uuid",
                bounds::quote(uuid)
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for d in &report.domains {
        if !is_uuid(&d.uuid) || !seen.insert(d.uuid.as_str()) {
            return Err(format!(
                "domain {} is malformed or reported twice",
                bounds::quote(&d.uuid)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DomainVitals;

    fn vitals(uuid: String) -> DomainVitals {
        DomainVitals {
            uuid,
            valid: true,
            ..DomainVitals::default()
        }
    }

    #[test]
    fn an_object_created_again_under_its_name_is_not_the_one_observed() {
        let pool = |uid: &str| -> StoragePool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool",
                "metadata": {"name": "dc1", "uid": uid}, "spec": {},
            }))
            .expect("pool")
        };
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(pool("first")));
        assert!(current(&store, "dc1", "first").is_some());
        // Deleted and created again while a reconcile of the first one was under way.
        writer.apply_watcher_event(&watcher::Event::Delete(pool("first")));
        assert!(current(&store, "dc1", "first").is_none(), "deleted");
        writer.apply_watcher_event(&watcher::Event::Apply(pool("second")));
        assert!(current(&store, "dc1", "first").is_none(), "replaced");
        assert!(current(&store, "dc1", "second").is_some());
    }

    #[test]
    fn oversize_report_is_refused_with_a_short_reason() {
        let report = HostReport {
            domains: (0..=HostReport::MAX_DOMAINS)
                .map(|i| vitals(format!("aaaaaaaa-0000-0000-0000-{i:012}")))
                .collect(),
            ..HostReport::default()
        };
        let reason = validate_report(&report).expect_err("too many domains");
        assert!(reason.contains("257 domains reported"), "{reason}");

        let report = HostReport {
            boot_id: "b".repeat(1 << 20),
            ..HostReport::default()
        };
        let reason = validate_report(&report).expect_err("huge bootId");
        assert!(reason.len() < 100, "{reason}");
    }

    #[test]
    fn a_huge_malformed_uuid_is_quoted_cut() {
        let report = HostReport {
            domains: vec![vitals("x".repeat(1 << 20))],
            ..HostReport::default()
        };
        let reason = validate_report(&report).expect_err("malformed uuid");
        assert!(reason.len() < 100, "{reason}");
        assert!(reason.contains(bounds::CUT_MARKER), "{reason}");
    }

    #[test]
    fn a_changed_host_leaves_the_memo_and_with_it_the_replaced_version() {
        use crate::api::{HostSpec, HostStatus};
        let host = |version: &str| {
            let mut h = Host::new(
                "h1",
                HostSpec {
                    pool: Some("p".into()),
                    endpoint: None,
                    maintenance: false,
                },
            );
            h.metadata.uid = Some("u1".into());
            h.metadata.resource_version = Some(version.into());
            h.status = Some(HostStatus {
                report: Some(HostReport {
                    boot_id: "b1".into(),
                    ..HostReport::default()
                }),
                ..HostStatus::default()
            });
            Arc::new(h)
        };
        let views = HostViews::default();
        let first = host("1");
        let _ = views.of(&first);
        assert_eq!(
            Arc::strong_count(&first),
            2,
            "the view shares the cached Host"
        );
        let _ = views.of(&first);
        assert_eq!(
            Arc::strong_count(&first),
            2,
            "an unchanged Host is not narrowed again"
        );

        let second = host("2");
        views.host_event(&watcher::Event::Apply((*second).clone()));
        assert_eq!(
            Arc::strong_count(&first),
            1,
            "the replaced version is released when its successor arrives"
        );
        let _ = views.of(&second);
        views.host_event(&watcher::Event::Delete((*second).clone()));
        assert_eq!(Arc::strong_count(&second), 1, "a deleted Host is forgotten");
    }
}
