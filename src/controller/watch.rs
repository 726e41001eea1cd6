//! Reflectors over pools, domains, hosts and host Leases, and the mappers from a changed object to
//! the pools that must look again.
//!
//! Caches keep only what decisions need: managed fields and annotations are dropped before an object
//! enters a store. Lease renewals are the noisiest input (every host, every few seconds); a renewal
//! wakes a pool only when it can change a decision: the controller has marked the host
//! NonResponsive (it is back) or has not judged it yet. Expiry needs no event: the planner asks for
//! a reconcile at the earliest expiry.

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::Settings;
use crate::api::{Host, HostPhase, StorageDomain, StoragePool};

/// The caches the controller reads.
#[derive(Clone)]
pub struct Stores {
    /// StoragePools.
    pub pools: Store<StoragePool>,
    /// StorageDomains.
    pub domains: Store<StorageDomain>,
    /// Hosts.
    pub hosts: Store<Host>,
    /// Host Leases in the lease namespace.
    pub leases: Store<Lease>,
}

impl Stores {
    /// Whether every cache has finished its initial list (an empty cache is not yet ready).
    pub fn ready(&self) -> bool {
        fn done<K>(store: &Store<K>) -> bool
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            store
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        }
        let ready = [
            done(&self.pools),
            done(&self.domains),
            done(&self.hosts),
            done(&self.leases),
        ];
        tracing::trace!(?ready, "cache readiness: pools, domains, hosts, leases");
        ready.iter().all(|r| *r)
    }
}

/// A watch stream of objects, already reflected into its store.
pub type BoxStream<K> = std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The watch streams feeding the controller.
pub struct Streams {
    /// Pool changes.
    pub pools: BoxStream<StoragePool>,
    /// Domain changes (applied and deleted).
    pub domains: BoxStream<StorageDomain>,
    /// Host changes (applied and deleted).
    pub hosts: BoxStream<Host>,
    /// Lease changes.
    pub leases: BoxStream<Lease>,
}

/// Starts the reflectors (lazily: they run as the controller polls the streams).
pub fn start(client: &Client, settings: &Settings) -> (Stores, Streams) {
    let (pools, pools_stream) = reflect(Api::<StoragePool>::all(client.clone()));
    let (domains, domains_stream) = reflect(Api::<StorageDomain>::all(client.clone()));
    let (hosts, hosts_stream) = reflect(Api::<Host>::all(client.clone()));
    let (leases, leases_stream) = reflect(Api::<Lease>::namespaced(
        client.clone(),
        &settings.lease_namespace,
    ));
    (
        Stores {
            pools,
            domains,
            hosts,
            leases,
        },
        Streams {
            pools: pools_stream,
            domains: domains_stream,
            hosts: hosts_stream,
            leases: leases_stream,
        },
    )
}

fn reflect<K>(api: Api<K>) -> (Store<K>, BoxStream<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().streaming_lists())
        .default_backoff()
        .modify(|o: &mut K| {
            o.managed_fields_mut().clear();
            o.annotations_mut().clear();
        })
        .reflect(writer)
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// The pools a domain names now (`spec.pool`) and named before (`status.pool`).
pub fn domain_pools(domain: StorageDomain) -> Vec<ObjectRef<StoragePool>> {
    let mut pools: Vec<_> = domain
        .spec
        .pool
        .iter()
        .chain(domain.status.as_ref().and_then(|s| s.pool.as_ref()))
        .filter(|p| !p.is_empty())
        .map(|p| ObjectRef::new(p))
        .collect();
    pools.dedup();
    pools
}

/// The pools a host names now, is connected to (by the pool uuid it reports), or has an id in.
pub fn host_pools(
    pools: Store<StoragePool>,
) -> impl Fn(Host) -> Vec<ObjectRef<StoragePool>> + Send + Sync + 'static {
    move |host: Host| pools_of_host(&pools, &host)
}

fn pools_of_host(pools: &Store<StoragePool>, host: &Host) -> Vec<ObjectRef<StoragePool>> {
    let name = host.name_any();
    let reported_uuid = host
        .status
        .as_ref()
        .and_then(|s| s.report.as_ref())
        .and_then(|r| r.pool.as_ref())
        .map(|p| p.uuid.as_str());
    let mut out: Vec<ObjectRef<StoragePool>> = host
        .spec
        .pool
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| ObjectRef::new(p))
        .collect();
    for pool in pools.state() {
        let status = pool.status.as_ref();
        let has_id = status.is_some_and(|s| s.host_ids.iter().any(|h| h.host == name));
        let uuid = pool
            .spec
            .uuid
            .as_deref()
            .or(status.and_then(|s| s.uuid.as_deref()));
        let connected = reported_uuid.is_some() && uuid == reported_uuid;
        if has_id || connected {
            let r = ObjectRef::from_obj(pool.as_ref());
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// The pools whose decisions a Lease change can affect (see the module doc).
pub fn lease_pools(
    hosts: Store<Host>,
    pools: Store<StoragePool>,
) -> impl Fn(Lease) -> Vec<ObjectRef<StoragePool>> + Send + Sync + 'static {
    move |lease: Lease| {
        let Some(host) = hosts.get(&ObjectRef::new(&lease.name_any())) else {
            return Vec::new();
        };
        let phase = host.status.as_ref().and_then(|s| s.phase);
        if matches!(phase, Some(p) if p != HostPhase::NonResponsive) {
            return Vec::new();
        }
        pools_of_host(&pools, &host)
    }
}
