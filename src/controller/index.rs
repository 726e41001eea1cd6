//! Pool membership, decided in one place: which domains and hosts belong to a pool (observe), and
//! which pools a changed domain or host belongs to (the watch mappers, the domain controller).
//!
//! - A domain belongs to the pool its `spec.pool` names now **and** to the one its `status.pool`
//!   recorded (it is still leaving that one).
//! - A host belongs to the pool its `spec.pool` names, to the pool whose uuid its report says it is
//!   connected to, and to every pool that still lists it in `status.hostIds`.
//!
//! These rules are the pure predicates below ([`domain_pools`], [`Members::has_domain`],
//! [`Members::has_host`]); they are the only source of truth. [`PoolIndex`] caches their answers
//! so a pool reconcile costs O(members of the pool) instead of O(all domains and hosts), and a
//! host event O(pools the host names) instead of O(all pools).
//!
//! # The index contract
//! - **Fed by the watch events, in one place.** `watch::start` hands every pool, domain and host
//!   watch event to [`PoolIndex::pool_event`], [`PoolIndex::domain_event`] or
//!   [`PoolIndex::host_event`] right after the reflector applied it to its store and before any
//!   mapper sees the object, so a reconcile woken by a change finds it indexed. Deletes come as
//!   watch events, not as "missing from the store": during a (re)list the listed objects are not
//!   in the store yet either.
//! - **It mirrors the stores.** A relist is buffered and swapped in when it completes, as the
//!   reflector does with its store, so a delete a watch gap dropped is gone after the next relist.
//! - **What is kept per object is what the predicates read** (a domain's pools and `spec.uuid`, a
//!   host's `spec.pool` and reported pool uuid, a pool's uuid and `status.hostIds`), with reverse
//!   maps from those keys to names. Memberships are joined from them when asked, so a pool whose
//!   uuid or `hostIds` change re-indexes every host that depends on it without touching the hosts,
//!   and a host indexed before its pool was seen is found once the pool is. A new value of an
//!   object replaces the keys it was last indexed under.
//! - **It is a hint, never the answer.** It may name objects that are gone: every name is looked up
//!   in the store; a missing one is skipped and pruned, and (for domains and a pool's hosts) the
//!   predicate is checked again on the stored object; a host's pools are named by the host itself,
//!   so the store only confirms they exist. It must never miss a member: until a kind's first list has completed, the
//!   answers come from a full scan of the store instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::api::{Host, StorageDomain, StoragePool};

/// The pool uuid in use: `spec.uuid`, else the one recorded in status, else `metadata.uid`.
pub fn pool_uuid(pool: &StoragePool) -> String {
    crate::api::pool::effective_uuid(
        pool.spec.uuid.as_deref(),
        pool.status.as_ref().and_then(|s| s.uuid.as_deref()),
        pool.uid().as_deref(),
    )
}

/// The pool names a domain belongs to: `spec.pool`, then `status.pool` when it differs.
pub fn domain_pools(domain: &StorageDomain) -> Vec<&str> {
    let spec = domain.spec.pool.as_deref().filter(|p| !p.is_empty());
    let status = domain
        .status
        .as_ref()
        .and_then(|s| s.pool.as_deref())
        .filter(|p| !p.is_empty() && Some(*p) != spec);
    spec.into_iter().chain(status).collect()
}

/// The pool uuid a host reports it is connected to.
pub fn reported_pool_uuid(host: &Host) -> Option<&str> {
    host.status
        .as_ref()
        .and_then(|s| s.report.as_ref())
        .and_then(|r| r.pool.as_ref())
        .map(|p| p.uuid.as_str())
}

/// One pool's membership test.
#[derive(Debug)]
pub struct Members<'a> {
    name: &'a str,
    uuid: String,
    with_id: BTreeSet<&'a str>,
}

impl<'a> Members<'a> {
    /// The membership test of `pool`.
    pub fn of(pool: &'a StoragePool) -> Self {
        Self {
            name: pool.metadata.name.as_deref().unwrap_or_default(),
            uuid: pool_uuid(pool),
            with_id: pool
                .status
                .iter()
                .flat_map(|s| s.host_ids.iter().map(|h| h.host.as_str()))
                .collect(),
        }
    }

    /// Whether `domain` belongs to the pool.
    pub fn has_domain(&self, domain: &StorageDomain) -> bool {
        domain_pools(domain).contains(&self.name)
    }

    /// Whether `host` belongs to the pool.
    pub fn has_host(&self, host: &Host) -> bool {
        host.spec.pool.as_deref() == Some(self.name)
            || reported_pool_uuid(host) == Some(self.uuid.as_str())
            || host
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| self.with_id.contains(n))
    }
}

/// Pool membership, kept up to date by the watch events (see the module doc for the contract).
#[derive(Debug, Default)]
pub struct PoolIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pools: Part<PoolKeys>,
    domains: Part<DomainKeys>,
    hosts: Part<HostKeys>,
}

impl PoolIndex {
    /// Indexes a pool watch event (after the reflector applied it to the pool store).
    pub fn pool_event(&self, event: &watcher::Event<StoragePool>) {
        self.write().pools.apply(event);
    }

    /// Indexes a domain watch event (after the reflector applied it to the domain store).
    pub fn domain_event(&self, event: &watcher::Event<StorageDomain>) {
        self.write().domains.apply(event);
    }

    /// Indexes a host watch event (after the reflector applied it to the host store).
    pub fn host_event(&self, event: &watcher::Event<Host>) {
        self.write().hosts.apply(event);
    }

    /// The domains of the cache that belong to the pool of `members`.
    pub fn domains(
        &self,
        store: &Store<StorageDomain>,
        members: &Members<'_>,
    ) -> Vec<Arc<StorageDomain>> {
        let names = {
            let inner = self.read();
            inner
                .domains
                .listed
                .then(|| names(&inner.domains.by.pool, members.name).collect::<Vec<_>>())
        };
        let found = match names {
            Some(names) => self.lookup::<DomainKeys>(store, names),
            None => store.state(),
        };
        found
            .into_iter()
            .filter(|d| members.has_domain(d))
            .collect()
    }

    /// The domains of the cache whose `spec.uuid` is one of `uuids`.
    pub fn domains_with_uuid(
        &self,
        store: &Store<StorageDomain>,
        uuids: &BTreeSet<&str>,
    ) -> Vec<Arc<StorageDomain>> {
        let names = {
            let inner = self.read();
            inner.domains.listed.then(|| {
                uuids
                    .iter()
                    .flat_map(|u| names(&inner.domains.by.uuid, u))
                    .collect::<BTreeSet<_>>()
            })
        };
        let found = match names {
            Some(names) => self.lookup::<DomainKeys>(store, names),
            None => store.state(),
        };
        found
            .into_iter()
            .filter(|d| uuids.contains(d.spec.uuid.as_str()))
            .collect()
    }

    /// The hosts of the cache that belong to the pool of `members`.
    pub fn hosts(&self, store: &Store<Host>, members: &Members<'_>) -> Vec<Arc<Host>> {
        let names = {
            let inner = self.read();
            inner.hosts.listed.then(|| {
                // The pool's own hostIds come from the pool object being reconciled, not the index.
                names(&inner.hosts.by.spec_pool, members.name)
                    .chain(names(&inner.hosts.by.uuid, &members.uuid))
                    .chain(members.with_id.iter().map(|h| (*h).to_owned()))
                    .collect::<BTreeSet<_>>()
            })
        };
        let found = match names {
            Some(names) => self.lookup::<HostKeys>(store, names),
            None => store.state(),
        };
        found.into_iter().filter(|h| members.has_host(h)).collect()
    }

    /// The pools `host` belongs to: the one its `spec.pool` names (whether or not it exists), then
    /// the pools of the cache whose uuid it reports or that list it in `status.hostIds`. Works on
    /// a deleted host's last state too.
    pub fn host_pools(
        &self,
        pools: &Store<StoragePool>,
        host: &Host,
    ) -> Vec<ObjectRef<StoragePool>> {
        let mut out: Vec<ObjectRef<StoragePool>> = host
            .spec
            .pool
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| ObjectRef::new(p))
            .collect();
        let names = {
            let inner = self.read();
            inner.pools.listed.then(|| {
                let reported = reported_pool_uuid(host).map(|u| names(&inner.pools.by.uuid, u));
                reported
                    .into_iter()
                    .flatten()
                    .chain(names(&inner.pools.by.listing, &host.name_any()))
                    .collect::<BTreeSet<_>>()
            })
        };
        let candidates = match names {
            // Indexed: these pools name the host by construction; the store confirms they exist.
            Some(names) => self.lookup::<PoolKeys>(pools, names),
            None => pools
                .state()
                .into_iter()
                .filter(|p| Members::of(p).has_host(host))
                .collect(),
        };
        for pool in candidates {
            let r = ObjectRef::from_obj(pool.as_ref());
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// The domains of the cache that belong to the pool named `pool` (for the domain controller:
    /// a pool created or deleted changes who owns them).
    pub fn pool_domains(
        &self,
        store: &Store<StorageDomain>,
        pool: &str,
    ) -> Vec<ObjectRef<StorageDomain>> {
        let names = {
            let inner = self.read();
            inner
                .domains
                .listed
                .then(|| names(&inner.domains.by.pool, pool).collect::<Vec<_>>())
        };
        let found = match names {
            Some(names) => self.lookup::<DomainKeys>(store, names),
            None => store.state(),
        };
        found
            .iter()
            .filter(|d| domain_pools(d).contains(&pool))
            .map(|d| ObjectRef::new(&d.name_any()))
            .collect()
    }

    /// The objects of `store` named `names`; names the store no longer holds are skipped and
    /// dropped from the index.
    fn lookup<K: Keys>(
        &self,
        store: &Store<K::Object>,
        names: impl IntoIterator<Item = String>,
    ) -> Vec<Arc<K::Object>> {
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for name in names {
            match store.get(&ObjectRef::new(&name)) {
                Some(obj) => found.push(obj),
                None => gone.push(name),
            }
        }
        if !gone.is_empty() {
            let mut inner = self.write();
            let part = K::part(&mut inner);
            for name in gone {
                // Checked again under the lock: an object is stored before it is indexed, so one
                // stored since the first look is either seen here or re-indexed after this prune.
                if store.get(&ObjectRef::new(&name)).is_none() && part.forget(&name) {
                    tracing::debug!(
                        kind = K::KIND,
                        object = %name,
                        "index named an object the cache no longer holds; pruned"
                    );
                }
            }
        }
        found
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Names under `key` in a reverse map.
type Reverse = BTreeMap<String, BTreeSet<String>>;

fn names<'a>(map: &'a Reverse, key: &str) -> impl Iterator<Item = String> + use<'a> {
    map.get(key).into_iter().flatten().cloned()
}

fn link(map: &mut Reverse, key: &str, name: &str) {
    map.entry(key.to_owned())
        .or_default()
        .insert(name.to_owned());
}

fn unlink(map: &mut Reverse, key: &str, name: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(name);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// What the predicates read of one object, and how it enters the reverse maps.
trait Keys: Sized + std::fmt::Debug {
    type Object: Resource<DynamicType = ()> + Clone + 'static;
    type By: Default + std::fmt::Debug;
    const KIND: &'static str;
    fn of(obj: &Self::Object) -> Self;
    fn link(&self, name: &str, by: &mut Self::By);
    fn unlink(&self, name: &str, by: &mut Self::By);
    fn part(inner: &mut Inner) -> &mut Part<Self>;
}

/// One kind's share of the index.
#[derive(Debug)]
struct Part<K: Keys> {
    /// The keys each object was last indexed under.
    last: BTreeMap<String, K>,
    /// The reverse maps of `last`.
    by: K::By,
    /// A relist in progress: swapped in when it completes, as the reflector does.
    relist: Option<BTreeMap<String, K>>,
    /// Whether a first list completed (before that, queries scan the store).
    listed: bool,
}

impl<K: Keys> Default for Part<K> {
    fn default() -> Self {
        Self {
            last: BTreeMap::new(),
            by: K::By::default(),
            relist: None,
            listed: false,
        }
    }
}

impl<K: Keys> Part<K> {
    fn apply(&mut self, event: &watcher::Event<K::Object>) {
        match event {
            watcher::Event::Apply(obj) => self.set(obj.name_any(), K::of(obj)),
            watcher::Event::Delete(obj) => {
                self.forget(&obj.name_any());
            }
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                self.relist
                    .get_or_insert_default()
                    .insert(obj.name_any(), K::of(obj));
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.last = BTreeMap::new();
                self.by = K::By::default();
                for (name, keys) in listed {
                    self.set(name, keys);
                }
                self.listed = true;
            }
        }
    }

    fn set(&mut self, name: String, keys: K) {
        self.forget(&name);
        keys.link(&name, &mut self.by);
        self.last.insert(name, keys);
    }

    /// Drops `name`; whether it was indexed.
    fn forget(&mut self, name: &str) -> bool {
        match self.last.remove(name) {
            Some(old) => {
                old.unlink(name, &mut self.by);
                true
            }
            None => false,
        }
    }
}

/// A domain's pools ([`domain_pools`]) and `spec.uuid`.
#[derive(Debug)]
struct DomainKeys {
    pools: Vec<String>,
    uuid: String,
}

#[derive(Debug, Default)]
struct DomainsBy {
    pool: Reverse,
    uuid: Reverse,
}

impl Keys for DomainKeys {
    type Object = StorageDomain;
    type By = DomainsBy;
    const KIND: &'static str = "StorageDomain";

    fn of(domain: &StorageDomain) -> Self {
        Self {
            pools: domain_pools(domain)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            uuid: domain.spec.uuid.clone(),
        }
    }

    fn link(&self, name: &str, by: &mut DomainsBy) {
        for pool in &self.pools {
            link(&mut by.pool, pool, name);
        }
        link(&mut by.uuid, &self.uuid, name);
    }

    fn unlink(&self, name: &str, by: &mut DomainsBy) {
        for pool in &self.pools {
            unlink(&mut by.pool, pool, name);
        }
        unlink(&mut by.uuid, &self.uuid, name);
    }

    fn part(inner: &mut Inner) -> &mut Part<Self> {
        &mut inner.domains
    }
}

/// A host's `spec.pool` and reported pool uuid ([`reported_pool_uuid`]).
#[derive(Debug)]
struct HostKeys {
    spec_pool: Option<String>,
    uuid: Option<String>,
}

#[derive(Debug, Default)]
struct HostsBy {
    spec_pool: Reverse,
    uuid: Reverse,
}

impl Keys for HostKeys {
    type Object = Host;
    type By = HostsBy;
    const KIND: &'static str = "Host";

    fn of(host: &Host) -> Self {
        Self {
            spec_pool: host.spec.pool.clone(),
            uuid: reported_pool_uuid(host).map(str::to_owned),
        }
    }

    fn link(&self, name: &str, by: &mut HostsBy) {
        if let Some(pool) = &self.spec_pool {
            link(&mut by.spec_pool, pool, name);
        }
        if let Some(uuid) = &self.uuid {
            link(&mut by.uuid, uuid, name);
        }
    }

    fn unlink(&self, name: &str, by: &mut HostsBy) {
        if let Some(pool) = &self.spec_pool {
            unlink(&mut by.spec_pool, pool, name);
        }
        if let Some(uuid) = &self.uuid {
            unlink(&mut by.uuid, uuid, name);
        }
    }

    fn part(inner: &mut Inner) -> &mut Part<Self> {
        &mut inner.hosts
    }
}

/// A pool's uuid ([`pool_uuid`]) and the hosts its `status.hostIds` lists.
#[derive(Debug)]
struct PoolKeys {
    uuid: String,
    listed: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct PoolsBy {
    /// Pool uuid → pool names (uuids are user-set, so two pools may share one).
    uuid: Reverse,
    /// Host name → the pools listing it in `status.hostIds`.
    listing: Reverse,
}

impl Keys for PoolKeys {
    type Object = StoragePool;
    type By = PoolsBy;
    const KIND: &'static str = "StoragePool";

    fn of(pool: &StoragePool) -> Self {
        let members = Members::of(pool);
        Self {
            listed: members.with_id.iter().map(|h| (*h).to_owned()).collect(),
            uuid: members.uuid,
        }
    }

    fn link(&self, name: &str, by: &mut PoolsBy) {
        link(&mut by.uuid, &self.uuid, name);
        for host in &self.listed {
            link(&mut by.listing, host, name);
        }
    }

    fn unlink(&self, name: &str, by: &mut PoolsBy) {
        unlink(&mut by.uuid, &self.uuid, name);
        for host in &self.listed {
            unlink(&mut by.listing, host, name);
        }
    }

    fn part(inner: &mut Inner) -> &mut Part<Self> {
        &mut inner.pools
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher::Event};

    use super::*;
    use crate::api::{
        HostIdEntry, HostReport, HostSpec, HostStatus, PoolConnection, StorageDomainSpec,
        StorageDomainStatus, StoragePoolSpec, StoragePoolStatus, StorageSpec,
    };

    /// Stores and an index fed as `watch::reflect` feeds them: the store first, then the index.
    struct World {
        index: PoolIndex,
        pools: Store<StoragePool>,
        domains: Store<StorageDomain>,
        hosts: Store<Host>,
        pool_writer: reflector::store::Writer<StoragePool>,
        domain_writer: reflector::store::Writer<StorageDomain>,
        host_writer: reflector::store::Writer<Host>,
    }

    impl World {
        /// Every kind listed (empty), as after the controller's first lists.
        fn listed() -> Self {
            let mut w = Self::unlisted();
            w.pool(&Event::Init);
            w.pool(&Event::InitDone);
            w.domain(&Event::Init);
            w.domain(&Event::InitDone);
            w.host(&Event::Init);
            w.host(&Event::InitDone);
            w
        }

        /// No list completed yet.
        fn unlisted() -> Self {
            let (pools, pool_writer) = reflector::store();
            let (domains, domain_writer) = reflector::store();
            let (hosts, host_writer) = reflector::store();
            Self {
                index: PoolIndex::default(),
                pools,
                domains,
                hosts,
                pool_writer,
                domain_writer,
                host_writer,
            }
        }

        fn pool(&mut self, e: &Event<StoragePool>) {
            self.pool_writer.apply_watcher_event(e);
            self.index.pool_event(e);
        }

        fn domain(&mut self, e: &Event<StorageDomain>) {
            self.domain_writer.apply_watcher_event(e);
            self.index.domain_event(e);
        }

        fn host(&mut self, e: &Event<Host>) {
            self.host_writer.apply_watcher_event(e);
            self.index.host_event(e);
        }

        fn hosts_of(&self, pool: &StoragePool) -> Vec<String> {
            let mut out: Vec<String> = self
                .index
                .hosts(&self.hosts, &Members::of(pool))
                .iter()
                .map(|h| h.name_any())
                .collect();
            out.sort();
            out
        }

        fn domains_of(&self, pool: &StoragePool) -> Vec<String> {
            let mut out: Vec<String> = self
                .index
                .domains(&self.domains, &Members::of(pool))
                .iter()
                .map(|d| d.name_any())
                .collect();
            out.sort();
            out
        }

        fn pools_of(&self, host: &Host) -> Vec<String> {
            let mut out: Vec<String> = self
                .index
                .host_pools(&self.pools, host)
                .into_iter()
                .map(|r| r.name)
                .collect();
            out.sort();
            out
        }

        fn domain_refs(&self, pool: &str) -> Vec<String> {
            let mut out: Vec<String> = self
                .index
                .pool_domains(&self.domains, pool)
                .into_iter()
                .map(|r| r.name)
                .collect();
            out.sort();
            out
        }

        fn indexed_hosts(&self) -> Vec<String> {
            self.index.read().hosts.last.keys().cloned().collect()
        }

        fn indexed_domains(&self) -> Vec<String> {
            self.index.read().domains.last.keys().cloned().collect()
        }
    }

    fn pool(name: &str, uuid: Option<&str>, host_ids: &[&str]) -> StoragePool {
        let mut p = StoragePool::new(
            name,
            StoragePoolSpec {
                uuid: uuid.map(str::to_owned),
                compatibility_version: "4.8".into(),
                master_domain: None,
                sync: crate::api::SyncSpec::default(),
            },
        );
        p.metadata.uid = Some(format!("uid-{name}"));
        p.status = Some(StoragePoolStatus {
            host_ids: (1..)
                .zip(host_ids)
                .map(|(id, h)| HostIdEntry {
                    host: (*h).to_owned(),
                    id,
                })
                .collect(),
            ..StoragePoolStatus::default()
        });
        p
    }

    fn host(name: &str, pool: Option<&str>, reports: Option<&str>) -> Host {
        let mut h = Host::new(
            name,
            HostSpec {
                pool: pool.map(str::to_owned),
                endpoint: None,
                maintenance: false,
            },
        );
        h.status = Some(HostStatus {
            report: Some(HostReport {
                pool: reports.map(|uuid| PoolConnection {
                    uuid: uuid.to_owned(),
                    host_id: 1,
                    ..PoolConnection::default()
                }),
                ..HostReport::default()
            }),
            ..HostStatus::default()
        });
        h
    }

    fn domain(name: &str, uuid: &str, spec: Option<&str>, status: Option<&str>) -> StorageDomain {
        let mut d = StorageDomain::new(
            name,
            StorageDomainSpec {
                uuid: uuid.to_owned(),
                type_: crate::api::DomainType::default(),
                storage: StorageSpec {
                    kind: crate::api::StorageKind::default(),
                    path: format!("/srv/{name}"),
                },
                pool: spec.map(str::to_owned),
                maintenance: false,
            },
        );
        d.status = Some(StorageDomainStatus {
            pool: status.map(str::to_owned),
            ..StorageDomainStatus::default()
        });
        d
    }

    const U1: &str = "11111111-1111-1111-1111-111111111111";
    const U2: &str = "22222222-2222-2222-2222-222222222222";

    #[test]
    fn domain_moving_pools_belongs_to_both_until_it_left_the_old_one() {
        let mut w = World::listed();
        let (a, b) = (pool("a", None, &[]), pool("b", None, &[]));
        w.pool(&Event::Apply(a.clone()));
        w.pool(&Event::Apply(b.clone()));
        w.domain(&Event::Apply(domain("d", U1, Some("a"), Some("a"))));
        assert_eq!(w.domains_of(&a), ["d"]);
        assert!(w.domains_of(&b).is_empty());

        w.domain(&Event::Apply(domain("d", U1, Some("b"), Some("a"))));
        assert_eq!(w.domains_of(&a), ["d"]);
        assert_eq!(w.domains_of(&b), ["d"]);
        assert_eq!(w.domain_refs("a"), ["d"]);

        w.domain(&Event::Apply(domain("d", U1, Some("b"), Some("b"))));
        assert!(w.domains_of(&a).is_empty());
        assert!(w.domain_refs("a").is_empty());
        assert_eq!(w.domains_of(&b), ["d"]);
    }

    #[test]
    fn domains_sharing_a_uuid_are_found_by_uuid() {
        let mut w = World::listed();
        w.domain(&Event::Apply(domain("d1", U1, Some("a"), None)));
        w.domain(&Event::Apply(domain("d2", U1, Some("b"), None)));
        w.domain(&Event::Apply(domain("d3", U2, Some("a"), None)));
        let found = |uuids: &[&str]| {
            let mut names: Vec<String> = w
                .index
                .domains_with_uuid(&w.domains, &uuids.iter().copied().collect())
                .iter()
                .map(|d| d.name_any())
                .collect();
            names.sort();
            names
        };
        assert_eq!(found(&[U1]), ["d1", "d2"]);
        assert_eq!(found(&[U1, U2]), ["d1", "d2", "d3"]);
        assert!(found(&[]).is_empty());
    }

    #[test]
    fn host_reporting_a_pool_uuid_belongs_to_that_pool_even_when_indexed_first() {
        let mut w = World::listed();
        // The host is indexed before the pool whose uuid it reports exists.
        let h = host("h", None, Some(U1));
        w.host(&Event::Apply(h.clone()));
        assert!(w.pools_of(&h).is_empty());

        let p = pool("p", Some(U1), &[]);
        w.pool(&Event::Apply(p.clone()));
        assert_eq!(w.hosts_of(&p), ["h"]);
        assert_eq!(w.pools_of(&h), ["p"]);

        // A pool without spec.uuid goes by its metadata.uid.
        let q = pool("q", None, &[]);
        w.pool(&Event::Apply(q.clone()));
        let h = host("h", Some("p"), Some("uid-q"));
        w.host(&Event::Apply(h.clone()));
        assert_eq!(w.hosts_of(&q), ["h"]);
        assert_eq!(w.hosts_of(&p), ["h"]);
        assert_eq!(w.pools_of(&h), ["p", "q"]);

        // Disconnected: only spec.pool is left.
        let h = host("h", Some("p"), None);
        w.host(&Event::Apply(h.clone()));
        assert!(w.hosts_of(&q).is_empty());
        assert_eq!(w.pools_of(&h), ["p"]);
    }

    #[test]
    fn pool_listing_a_host_in_host_ids_then_dropping_it() {
        let mut w = World::listed();
        let h = host("h", Some("other"), None);
        w.host(&Event::Apply(h.clone()));
        let p = pool("p", Some(U1), &["h", "gone"]);
        w.pool(&Event::Apply(p.clone()));
        assert_eq!(w.hosts_of(&p), ["h"]);
        assert_eq!(w.pools_of(&h), ["other", "p"]);

        let p = pool("p", Some(U1), &["gone"]);
        w.pool(&Event::Apply(p.clone()));
        assert!(w.hosts_of(&p).is_empty());
        assert_eq!(w.pools_of(&h), ["other"]);
    }

    #[test]
    fn deleted_objects_leave_the_index_and_their_last_state_still_maps() {
        let mut w = World::listed();
        let p = pool("p", Some(U1), &["h"]);
        w.pool(&Event::Apply(p.clone()));
        let h = host("h", Some("p"), Some(U1));
        w.host(&Event::Apply(h.clone()));
        w.domain(&Event::Apply(domain("d", U1, Some("p"), None)));

        w.host(&Event::Delete(h.clone()));
        w.domain(&Event::Delete(domain("d", U1, Some("p"), None)));
        assert!(w.indexed_hosts().is_empty());
        assert!(w.indexed_domains().is_empty());
        assert!(w.hosts_of(&pool("p", Some(U1), &[])).is_empty());
        assert!(w.domains_of(&p).is_empty());
        // The host mapper sees the deleted host: the pools it belonged to still wake.
        assert_eq!(w.pools_of(&h), ["p"]);

        w.pool(&Event::Delete(p));
        assert_eq!(
            w.pools_of(&host("h2", None, Some(U1))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn stale_name_is_skipped_and_pruned() {
        let mut w = World::listed();
        let p = pool("p", Some(U1), &[]);
        w.pool(&Event::Apply(p.clone()));
        let (a, b) = (host("a", Some("p"), None), host("b", Some("p"), None));
        w.host(&Event::Apply(a.clone()));
        w.host(&Event::Apply(b.clone()));
        let d = domain("d", U1, Some("p"), None);
        w.domain(&Event::Apply(d.clone()));
        // A watch gap: the stores lost them, the index never heard.
        w.host_writer.apply_watcher_event(&Event::Delete(b));
        w.domain_writer.apply_watcher_event(&Event::Delete(d));
        assert_eq!(w.indexed_hosts(), ["a", "b"]);

        assert_eq!(w.hosts_of(&p), ["a"]);
        assert_eq!(w.indexed_hosts(), ["a"]);
        assert!(w.domains_of(&p).is_empty());
        assert!(w.indexed_domains().is_empty());
    }

    #[test]
    fn stale_pool_is_not_mapped_and_is_pruned() {
        let mut w = World::listed();
        let p = pool("p", Some(U1), &["h"]);
        w.pool(&Event::Apply(p.clone()));
        w.pool_writer.apply_watcher_event(&Event::Delete(p));
        assert!(w.pools_of(&host("h", None, Some(U1))).is_empty());
        assert!(w.index.read().pools.last.is_empty());
    }

    #[test]
    fn relist_swaps_in_at_its_end_and_drops_what_a_watch_gap_missed() {
        let mut w = World::listed();
        let p = pool("p", Some(U1), &[]);
        w.pool(&Event::Apply(p.clone()));
        w.host(&Event::Apply(host("a", Some("p"), None)));
        w.host(&Event::Apply(host("b", Some("p"), None)));

        w.host(&Event::Init);
        w.host(&Event::InitApply(host("a", Some("p"), None)));
        w.host(&Event::InitApply(host("c", Some("p"), None)));
        // Mid-relist the index still mirrors the store (the old list).
        assert_eq!(w.indexed_hosts(), ["a", "b"]);
        assert_eq!(w.hosts_of(&p), ["a", "b"]);

        w.host(&Event::InitDone);
        assert_eq!(w.indexed_hosts(), ["a", "c"]);
        assert_eq!(w.hosts_of(&p), ["a", "c"]);
    }

    #[test]
    fn before_the_first_list_completes_answers_come_from_a_scan() {
        let mut w = World::unlisted();
        let p = pool("p", Some(U1), &["listed"]);
        let h = host("h", Some("p"), None);
        // In the stores but never indexed.
        w.pool_writer.apply_watcher_event(&Event::Apply(p.clone()));
        w.host_writer
            .apply_watcher_event(&Event::Apply(host("listed", None, None)));
        w.host_writer.apply_watcher_event(&Event::Apply(h.clone()));
        w.host_writer
            .apply_watcher_event(&Event::Apply(host("other", Some("q"), None)));
        w.domain_writer
            .apply_watcher_event(&Event::Apply(domain("d", U1, None, Some("p"))));
        assert_eq!(w.hosts_of(&p), ["h", "listed"]);
        assert_eq!(w.pools_of(&host("x", None, Some(U1))), ["p"]);
        assert_eq!(w.domains_of(&p), ["d"]);
        assert_eq!(w.domain_refs("p"), ["d"]);
    }

    /// The index caches the predicates' answers: on a mixed world it answers exactly what a
    /// full scan with the predicates answers.
    #[test]
    fn index_answers_what_a_full_scan_answers() {
        let mut w = World::listed();
        let pools = [
            pool("p1", Some(U1), &["h3", "h9"]),
            pool("p2", None, &["h1"]),
            pool("p3", Some(U2), &[]),
            // Same uuid as p1 (uuids are user-set).
            pool("p4", Some(U1), &["h2"]),
        ];
        let hosts = [
            host("h1", Some("p1"), None),
            host("h2", Some("p2"), Some(U1)),
            host("h3", None, Some("uid-p2")),
            host("h4", Some("nope"), Some(U2)),
            host("h5", None, None),
            host("h6", Some(""), Some("")),
        ];
        let domains = [
            domain("d1", U1, Some("p1"), None),
            domain("d2", U1, Some("p2"), Some("p1")),
            domain("d3", U2, None, Some("p3")),
            domain("d4", U2, Some(""), Some("")),
            domain("d5", U1, Some("p3"), Some("p3")),
        ];
        for p in &pools {
            w.pool(&Event::Apply(p.clone()));
        }
        for h in &hosts {
            w.host(&Event::Apply(h.clone()));
        }
        for d in &domains {
            w.domain(&Event::Apply(d.clone()));
        }
        let scanned = World::unlisted_copy(&pools, &hosts, &domains);
        for p in &pools {
            assert_eq!(
                w.hosts_of(p),
                scanned.hosts_of(p),
                "hosts of {}",
                p.name_any()
            );
            assert_eq!(
                w.domains_of(p),
                scanned.domains_of(p),
                "domains of {}",
                p.name_any()
            );
            let name = p.name_any();
            assert_eq!(w.domain_refs(&name), scanned.domain_refs(&name));
        }
        for h in &hosts {
            assert_eq!(
                w.pools_of(h),
                scanned.pools_of(h),
                "pools of {}",
                h.name_any()
            );
        }
    }

    impl World {
        /// The same objects in stores only: every answer comes from a full scan.
        fn unlisted_copy(pools: &[StoragePool], hosts: &[Host], domains: &[StorageDomain]) -> Self {
            let mut w = Self::unlisted();
            for p in pools {
                w.pool_writer.apply_watcher_event(&Event::Apply(p.clone()));
            }
            for h in hosts {
                w.host_writer.apply_watcher_event(&Event::Apply(h.clone()));
            }
            for d in domains {
                w.domain_writer
                    .apply_watcher_event(&Event::Apply(d.clone()));
            }
            w
        }
    }
}
