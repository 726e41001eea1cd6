//! The one `Context` every reconcile shares: client, caches, host RPC client, event recorder,
//! metrics, settings, and the per-host backoff (the only state kept in memory).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use rand::Rng;
use tokio::sync::Semaphore;

use super::{ControllerArgs, Error, FIELD_MANAGER, watch::Stores};
use crate::{
    api::StoragePool,
    metrics::Metrics,
    plan::{HostBackoff, ObjectKind},
    protocol,
};

/// Settings of a controller run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespace holding host Leases.
    pub lease_namespace: String,
    /// How many pools may be reconciled at once.
    pub concurrency: u16,
    /// The host RPC client (credential, CA).
    pub rpc: protocol::Client,
}

impl Settings {
    /// Settings from the command line.
    ///
    /// # Errors
    /// When the token or CA file cannot be read.
    pub fn from_args(args: &ControllerArgs) -> Result<Self, Error> {
        let token = protocol::Token::from_file(&args.token_file).map_err(Error::Token)?;
        let ca = match &args.agent_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| Error::CaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let rpc = protocol::Client::new(token, ca.as_deref()).map_err(Error::RpcClient)?;
        Ok(Self {
            lease_namespace: args.lease_namespace.clone(),
            concurrency: args.concurrency,
            rpc,
        })
    }
}

/// Shared state of the controller.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The caches.
    pub stores: Stores,
    /// Settings.
    pub settings: Settings,
    /// Publishes events.k8s.io events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    backoff: Mutex<HashMap<String, Backoff>>,
    slots: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    written: Mutex<HashMap<(ObjectKind, String), Written>>,
    told: Mutex<HashMap<String, (u64, Timestamp)>>,
    /// Checks, before hosts are called, that this replica still holds the leader Lease (`None`:
    /// no election).
    pub fence: Option<Fence>,
    /// The leader-election state, when this replica takes part in an election (`None`: always
    /// leader).
    pub leader: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    /// Asks the controller to reconcile a pool again (a call finished after its reconcile).
    pub requeue: tokio::sync::mpsc::UnboundedSender<ObjectRef<StoragePool>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The leader Lease as a fence: the lease manager only notices a lost Lease when it can read it
/// again, so a leader cut off from the API server could keep calling hosts after a standby took
/// over. Hosts are called only after a fresh read shows this replica holds an unexpired Lease.
#[derive(Clone)]
pub struct Fence {
    /// The Leases of the election's namespace.
    pub leases: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// Whether this replica holds the Lease now.
    pub async fn holds(&self) -> bool {
        let Ok(Some(lease)) = self.leases.get_opt(&self.name).await else {
            return false;
        };
        let Some(spec) = lease.spec else { return false };
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expires = spec.renew_time.map(|t| t.0).and_then(|t| {
            t.checked_add(jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(0),
            )))
            .ok()
        });
        ours && expires.is_some_and(|e| e > Timestamp::now())
    }
}

/// A status the controller wrote, remembered until the cache catches up with it.
#[derive(Clone, Debug)]
struct Written {
    /// The cached object's resourceVersion when the write was made.
    seen_version: Option<String>,
    /// A hash of the status written.
    content: u64,
}

fn call_hash(call: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call.hash(&mut h);
    h.finish()
}

fn content_hash(content: &impl serde::Serialize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(content)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug)]
struct Backoff {
    failures: u32,
    not_before: Timestamp,
    last_error: Option<String>,
}

/// The first retry delay after a failed call; it doubles per failure up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Context {
    /// A context over started caches.
    ///
    /// # Errors
    /// Never today; kept fallible for configuration checks.
    pub fn new(
        client: Client,
        settings: Settings,
        stores: Stores,
        requeue: tokio::sync::mpsc::UnboundedSender<ObjectRef<StoragePool>>,
    ) -> Result<Self, Error> {
        let instance = std::env::var("POD_NAME").ok();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        );
        Ok(Self {
            client,
            stores,
            settings,
            recorder,
            metrics: Metrics::default(),
            backoff: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            told: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            fence: None,
            requeue,
        })
    }

    /// The backoff the planner sees for `host`.
    pub fn backoff(&self, host: &str) -> HostBackoff {
        let map = self
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(host)
            .map_or_else(HostBackoff::default, |b| HostBackoff {
                not_before: Some(b.not_before),
                last_error: b.last_error.clone(),
            })
    }

    /// Whether this exact status was already written while the cache still shows the object as it
    /// was before that write (the watch has not delivered our own write yet). Saves the repeated,
    /// no-op writes (and repeated events) of reconciles that run on a stale cache. Losing this
    /// memory costs one extra write, nothing else.
    pub fn already_written(
        &self,
        kind: ObjectKind,
        name: &str,
        cached_version: Option<&str>,
        content: &impl serde::Serialize,
    ) -> bool {
        let map = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(kind, name.to_owned())).is_some_and(|w| {
            w.seen_version.as_deref() == cached_version && w.content == content_hash(content)
        })
    }

    /// Remembers a status write (see [`Self::already_written`]).
    pub fn remember_write(
        &self,
        kind: ObjectKind,
        name: &str,
        cached_version: Option<&str>,
        content: &impl serde::Serialize,
    ) {
        let mut map = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(
            (kind, name.to_owned()),
            Written {
                seen_version: cached_version.map(str::to_owned),
                content: content_hash(content),
            },
        );
    }

    /// Remembers that `host` accepted `call` until `until`: the host's report may not have reached
    /// the cache yet, and sending the same call again would only repeat it.
    pub fn told(&self, host: &str, call: &impl std::hash::Hash, until: Timestamp) {
        let mut map = self
            .told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(host.to_owned(), (call_hash(call), until));
    }

    /// Whether `host` accepted exactly `call` recently (see [`Self::told`]).
    pub fn recently_told(&self, host: &str, call: &impl std::hash::Hash, now: Timestamp) -> bool {
        let mut map = self
            .told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, (_, until)| *until > now);
        map.get(host).is_some_and(|(h, _)| *h == call_hash(call))
    }

    /// Records a failed call: the next one waits 1 s, 2 s, 4 s ... up to 5 min, with jitter.
    pub fn call_failed(&self, host: &str, error: String, now: Timestamp) {
        let mut map = self
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failures = map.get(host).map_or(0, |b| b.failures).saturating_add(1);
        let exp = BASE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
        let delay = exp.min(MAX_BACKOFF);
        let jitter = rand::rng().random_range(0.0..0.2);
        let delay = delay.mul_f64(1.0 + jitter);
        let not_before = now
            .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(now);
        map.insert(
            host.to_owned(),
            Backoff {
                failures,
                not_before,
                last_error: Some(error),
            },
        );
    }

    /// Records a call that is on its way: no other call goes to `host` until `until` (the call's
    /// timeout), and an earlier failure stays visible meanwhile.
    pub fn call_started(&self, host: &str, until: Timestamp) {
        let mut map = self
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry(host.to_owned()).or_insert(Backoff {
            failures: 0,
            not_before: until,
            last_error: None,
        });
        entry.not_before = entry.not_before.max(until);
    }

    /// The semaphore that bounds the calls in flight to the hosts of `pool`, resized to `limit`.
    pub fn call_slots(&self, pool: &str, limit: usize) -> Arc<Semaphore> {
        let mut map = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (current, slots) = map
            .entry(pool.to_owned())
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
        if *current != limit {
            // Calls in flight keep their permits from the old semaphore; new calls use the new size.
            *current = limit;
            *slots = Arc::new(Semaphore::new(limit));
        }
        slots.clone()
    }

    /// Records a successful call: the backoff resets.
    /// Records a successful call: the host may be called again at once, but its failure count
    /// stays until it is seen in sync ([`Self::host_confirmed`]), so a host that accepts maps and
    /// never reports them still backs off further each time.
    pub fn call_succeeded(&self, host: &str) {
        let mut map = self
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = map.get_mut(host) {
            if entry.failures == 0 {
                map.remove(host);
            } else {
                entry.last_error = None;
                entry.not_before = Timestamp::now();
            }
        }
    }

    /// Drops what is remembered about objects that no longer exist (a deleted host's backoff, a
    /// deleted object's last write), so memory follows the cluster, not its history.
    pub fn forget_gone(&self) {
        let exists = |kind: ObjectKind, name: &str| {
            let r = ObjectRef::<StoragePool>::new(name);
            match kind {
                ObjectKind::StoragePool => self.stores.pools.get(&r).is_some(),
                ObjectKind::StorageDomain => {
                    self.stores.domains.get(&ObjectRef::new(name)).is_some()
                }
                ObjectKind::Host => self.stores.hosts.get(&ObjectRef::new(name)).is_some(),
            }
        };
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(kind, name), _| exists(*kind, name));
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|host, _| exists(ObjectKind::Host, host));
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|host, _| exists(ObjectKind::Host, host));
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|pool, _| exists(ObjectKind::StoragePool, pool));
    }

    /// The host holds what it should: its backoff resets.
    pub fn host_confirmed(&self, host: &str) {
        let mut map = self
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(host);
    }
}
