//! The one `Context` every reconcile shares: caches, the writer, host RPC settings, metrics, the
//! leader fence, the call ledger (with the Lease observation times of [`super::liveness`], the
//! only state kept in memory that a plan reads), each pool's wave of calls being sent, the pacing
//! of progress writes, and the memo of host views.

use std::sync::Mutex;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, runtime::events::Reporter};

use super::{
    ControllerArgs, Error, FIELD_MANAGER, act::Waves, events::Recorder, ledger::Ledger,
    observe::HostViews, report::Pacer, watch::Stores, write::Writer,
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
    /// Each Host's narrowed report and status, per Host version (a memo of the caches).
    pub views: HostViews,
    /// Each pool's calls being sent, at most `maxConcurrentConnects` at once.
    pub waves: Waves,
    /// When each pool and domain status was last written, to pace progress-only writes.
    pub pacer: Pacer,
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
            views: HostViews::default(),
            waves: Waves::default(),
            pacer: Pacer::default(),
            leader: Mutex::new(None),
            fence: None,
            requeue,
        })
    }
}
