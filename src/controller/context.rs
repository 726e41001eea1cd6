//! The one `Context` every reconcile shares: caches (with the memo of host views), the writer,
//! host RPC settings, metrics, the leader fence, the call ledger (with the Lease observation times
//! of [`super::liveness`], the only state kept in memory that a plan reads), each pool's wave of
//! calls being sent, and the pacing of progress writes.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, runtime::events::Reporter};

use super::{
    ControllerArgs, Error, FIELD_MANAGER,
    act::Waves,
    events::Recorder,
    ledger::{Ledger, Managers},
    report::Pacer,
    watch::Stores,
    write::Writer,
};
use crate::{api::StoragePool, metrics::Metrics, protocol};

/// Settings of a controller run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespace holding host Leases.
    pub lease_namespace: String,
    /// How many pools may be reconciled at once.
    pub concurrency: u16,
    /// The host RPC client (credential, CA).
    pub rpc: protocol::Client,
    /// Signs hosts' serving certificates with the pool CA (`None`: hosts' certificates come from
    /// elsewhere).
    pub signer: Option<Arc<super::signer::Signer>>,
}

impl Settings {
    /// Settings from the command line; with `--pool-ca-secret`, the pool CA is read (or created)
    /// through `client` and the controller signs hosts' certificates.
    ///
    /// # Errors
    /// When the token or a TLS file cannot be read, or the pool CA cannot be loaded.
    pub async fn from_args(args: &ControllerArgs, client: &Client) -> Result<Self, Error> {
        let token = args
            .token_file
            .as_deref()
            .map(protocol::Token::from_file)
            .transpose()
            .map_err(Error::Token)?;
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| Error::CaFile {
                path: path.clone(),
                source,
            })
        };
        let mut signer = None;
        let rpc = if let Some(secret) = &args.pool_ca_secret {
            let ca =
                super::signer::load_or_create_ca(client, &args.leader_election_namespace, secret)
                    .await
                    .map_err(Error::Signer)?;
            let ca_pem = ca.pem().as_bytes().to_vec();
            let made = super::signer::Signer::new(
                ca,
                args.agent_user()?,
                Duration::from_secs(args.certificate_lifetime_seconds),
            )
            .map_err(Error::Signer)?;
            let rpc = protocol::Client::with_identity(&ca_pem, Arc::clone(&made.identity), token);
            signer = Some(Arc::new(made));
            rpc
        } else {
            let ca = args.agent_ca_file.as_ref().map(read).transpose()?;
            match (&ca, &args.tls_cert, &args.tls_key, token) {
                (Some(ca), Some(cert), Some(key), token) => {
                    protocol::Client::mutual(ca, &read(cert)?, &read(key)?, token)
                }
                (_, _, _, Some(token)) => protocol::Client::new(token, ca.as_deref()),
                (_, _, _, None) => Err(protocol::ClientError::NoCredential),
            }
        }
        .map_err(Error::RpcClient)?;
        rpc.keep_at_most(args.kept_host_connections);
        Ok(Self {
            lease_namespace: args.lease_namespace.clone(),
            concurrency: args.concurrency,
            rpc,
            signer,
        })
    }
}

/// Shared state of the controller.
pub struct Context {
    /// Every API write goes through it.
    pub writer: Writer,
    /// The caches.
    pub stores: Stores,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// What was sent to which host and what became of it.
    pub ledger: Ledger,
    /// Each pool's last pool-manager call and what became of it.
    pub managers: Managers,
    /// Each pool's calls being sent, at most `maxConcurrentConnects` at once.
    pub waves: Waves,
    /// When each pool and domain status was last written, to pace progress-only writes.
    pub pacer: Pacer,
    /// How much planning each pool's last reconcile cost, to space its reconciles.
    pub duty: Duty,
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
/// over. Hosts are called only after a fresh read shows this replica holds an unexpired Lease:
/// before a reconcile sends its calls ([`Fence::holds`]), and before each call of a wave that goes
/// on in the background ([`Fence::still_holds`], at most [`FENCE_FRESH`] after the last read).
#[derive(Clone)]
pub struct Fence {
    leases: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: String,
    identity: String,
    /// Until when the last read lets calls go without reading again.
    verified_until: Arc<Mutex<Option<Instant>>>,
}

/// How long a read of the Lease showing this replica as holder lets calls go without another
/// read (never past the Lease's expiry). A Lease taken by force stops this replica's calls
/// within this time; one read per second is the cost while a wave is being sent.
pub const FENCE_FRESH: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// The fence of the Lease `name` among `leases`, for the replica `identity`.
    pub fn new(
        leases: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
        name: String,
        identity: String,
    ) -> Self {
        Self {
            leases,
            name,
            identity,
            verified_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether this replica holds the Lease now (a fresh read).
    pub async fn holds(&self) -> bool {
        let valid_for = self.read().await;
        *self
            .verified_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            valid_for.map(|d| Instant::now() + d.min(FENCE_FRESH));
        valid_for.is_some()
    }

    /// Whether this replica still holds the Lease: `true` within [`FENCE_FRESH`] of a read that
    /// said so (and before the Lease it read expires), else a fresh read.
    pub async fn still_holds(&self) -> bool {
        let until = *self
            .verified_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if until.is_some_and(|u| Instant::now() < u) {
            return true;
        }
        self.holds().await
    }

    /// How long the Lease stays ours by what the API server says now; `None` when it is not ours
    /// (or cannot be read).
    async fn read(&self) -> Option<Duration> {
        let spec = self.leases.get_opt(&self.name).await.ok()??.spec?;
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return None;
        }
        let expires = spec
            .renew_time?
            .0
            .checked_add(jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(0),
            )))
            .ok()?;
        let left = Duration::try_from(expires.duration_since(Timestamp::now())).ok()?;
        (!left.is_zero()).then_some(left)
    }
}

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
        let metrics = Metrics::default();
        Ok(Self {
            writer: Writer::new(client, recorder, metrics.clone()),
            stores,
            settings,
            metrics,
            ledger: Ledger::default(),
            managers: Managers::default(),
            waves: Waves::default(),
            pacer: Pacer::default(),
            duty: Duty::default(),
            leader: Mutex::new(None),
            fence: None,
            requeue,
        })
    }
}

/// Spaces the reconciles of a pool so that its planning takes at most a tenth of a core: the next
/// reconcile of a pool starts no sooner than [`Duty::FACTOR`] times its last reconcile's planning
/// (observe, plan and report, the CPU-bound steps) after that reconcile ended. A reconcile is
/// level-triggered and plans the whole pool, so during a rollout of 2,000 hosts, whose reports
/// arrive one by one for a quarter of a minute, running one per report would cost a full plan per
/// report; spaced, one plan covers every report that arrived meanwhile (the scheduler merges their
/// triggers). A pool of 250 hosts plans in about 10 ms, so it waits at most 0.1 s; 2,000 hosts ×
/// 20 domains plan in about 75 ms, so 0.75 s. Lost on restart with no harm.
#[derive(Debug, Default)]
pub struct Duty {
    last: Mutex<std::collections::HashMap<String, (std::time::Instant, std::time::Duration)>>,
}

impl Duty {
    /// The spacing, in multiples of the last reconcile's planning time.
    pub const FACTOR: u32 = 10;

    /// How long the next reconcile of `pool` should wait before it starts (`None`: start now).
    pub fn wait(&self, pool: &str) -> Option<std::time::Duration> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ended, busy) = last.get(pool)?;
        (busy.saturating_mul(Self::FACTOR))
            .checked_sub(ended.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Records that a reconcile of `pool` ended now after `busy` of planning.
    pub fn record(&self, pool: &str, busy: std::time::Duration) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.insert(pool.to_owned(), (std::time::Instant::now(), busy));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Duty;

    #[test]
    fn a_pool_waits_ten_times_its_last_planning_and_others_not_at_all() {
        let duty = Duty::default();
        assert_eq!(
            duty.wait("p"),
            None,
            "a pool never reconciled starts at once"
        );
        duty.record("p", Duration::from_secs(1));
        let wait = duty.wait("p").expect("spaced");
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert_eq!(duty.wait("q"), None, "other pools are not held");
        duty.record("p", Duration::ZERO);
        assert_eq!(
            duty.wait("p"),
            None,
            "a cheap reconcile does not hold the next"
        );
    }
}
