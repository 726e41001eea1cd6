//! Reflectors over pools, domains, hosts and host Leases, and the mappers from a changed object to
//! the pools that must look again.
//!
//! Caches keep only what decisions need: managed fields and annotations are dropped before an object
//! enters a store. Lease renewals are the noisiest input (every host, every few seconds); a renewal
//! wakes a pool only when it can change a decision: the controller has marked the host
//! NonResponsive (it is back) or has not judged it yet. Expiry needs no event: the planner asks for
//! a reconcile at the earliest expiry.
//!
//! Every pool, domain and host watch event also feeds the [`PoolIndex`], here and nowhere else:
//! after the reflector applied it to its store and before a mapper sees the object. Every Lease
//! watch event (and failure) feeds the [`LeaseClock`] the same way, and every Host watch event
//! drops that host's memoized view ([`HostViews`]), so the memo never keeps a replaced Host alive.

use std::sync::Arc;

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

use super::{Settings, index, index::PoolIndex, liveness::LeaseClock, observe::HostViews};
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
    /// Pool membership of the pools, domains and hosts above, kept by their watch events.
    pub index: Arc<PoolIndex>,
    /// When each Lease's renewal was observed, kept by the Lease watch events.
    pub lease_clock: Arc<LeaseClock>,
    /// Each Host's narrowed report and status, per Host version (a memo of the host cache).
    pub views: Arc<HostViews>,
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
    let index = Arc::new(PoolIndex::default());
    let lease_clock = Arc::new(LeaseClock::new(jiff::Timestamp::now()));
    let (pools, pools_stream) = reflect(Api::<StoragePool>::all(client.clone()), {
        let index = index.clone();
        move |event| {
            if let Ok(event) = event {
                index.pool_event(event);
            }
        }
    });
    let (domains, domains_stream) = reflect(Api::<StorageDomain>::all(client.clone()), {
        let index = index.clone();
        move |event| {
            if let Ok(event) = event {
                index.domain_event(event);
            }
        }
    });
    let views = Arc::new(HostViews::default());
    let (hosts, hosts_stream) = reflect(Api::<Host>::all(client.clone()), {
        let (index, views) = (index.clone(), views.clone());
        move |event| {
            if let Ok(event) = event {
                index.host_event(event);
                views.host_event(event);
            }
        }
    });
    let (leases, leases_stream) = reflect(
        Api::<Lease>::namespaced(client.clone(), &settings.lease_namespace),
        {
            let clock = lease_clock.clone();
            move |event| clock.event(event, jiff::Timestamp::now())
        },
    );
    (
        Stores {
            pools,
            domains,
            hosts,
            leases,
            index,
            lease_clock,
            views,
        },
        Streams {
            pools: pools_stream,
            domains: domains_stream,
            hosts: hosts_stream,
            leases: leases_stream,
        },
    )
}

/// A reflector over `api`; `on_event` sees each event once it is in the store (an applied or
/// deleted object, a relist's start, objects and end) and before the object is yielded, and each
/// failure of the watch.
fn reflect<K>(
    api: Api<K>,
    on_event: impl Fn(Result<&watcher::Event<K>, &watcher::Error>) + Send + 'static,
) -> (Store<K>, BoxStream<K>)
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
        .inspect(move |event| on_event(event.as_ref()))
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// The pools a domain belongs to ([`index::domain_pools`]).
pub fn domain_pools(domain: StorageDomain) -> Vec<ObjectRef<StoragePool>> {
    index::domain_pools(&domain)
        .into_iter()
        .map(ObjectRef::new)
        .collect()
}

/// The pools a host belongs to ([`PoolIndex::host_pools`]).
pub fn host_pools(
    stores: Stores,
) -> impl Fn(Host) -> Vec<ObjectRef<StoragePool>> + Send + Sync + 'static {
    move |host: Host| stores.index.host_pools(&stores.pools, &host)
}

/// The domains a changed pool concerns (for the domain controller: a pool created or deleted
/// changes who owns them; [`PoolIndex::pool_domains`]).
pub fn pool_domains(
    stores: Stores,
) -> impl Fn(StoragePool) -> Vec<ObjectRef<StorageDomain>> + Send + Sync + 'static {
    move |pool: StoragePool| stores.index.pool_domains(&stores.domains, &pool.name_any())
}

/// The items sent into `rx`, as a stream.
pub fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Splits a watch stream in two: the returned stream yields what `stream` yields, and the second
/// one a copy of every object, for a second controller. The copy is fed as the first is polled.
pub fn tee<K>(stream: BoxStream<K>) -> (BoxStream<K>, BoxStream<K>)
where
    K: Clone + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let first = stream
        .inspect(move |item| {
            if let Ok(obj) = item {
                let _ = tx.send(obj.clone());
            }
        })
        .boxed();
    let second = receiver_stream(rx).map(Ok).boxed();
    (first, second)
}

/// The pools whose decisions a Lease change can affect (see the module doc).
pub fn lease_pools(
    stores: Stores,
) -> impl Fn(Lease) -> Vec<ObjectRef<StoragePool>> + Send + Sync + 'static {
    move |lease: Lease| {
        let Some(host) = stores.hosts.get(&ObjectRef::new(&lease.name_any())) else {
            return Vec::new();
        };
        let phase = host.status.as_ref().and_then(|s| s.phase);
        if matches!(phase, Some(p) if p != HostPhase::NonResponsive) {
            return Vec::new();
        }
        stores.index.host_pools(&stores.pools, &host)
    }
}
