//! The controller (`poolkeeper controller`): one reconcile per StoragePool, observe → plan → act →
//! report. This module is the I/O shell around [`crate::plan`]; every decision lives there.
//!
//! A pool reconcile reads top to bottom: [`observe`] → [`crate::plan::plan`] → [`act`] →
//! [`crate::plan::report`] → [`report`] → [`finalize`].
//!
//! - [`watch`]: reflectors over pools, domains, hosts and host Leases, and the mappers that turn a
//!   change of any of them into the pools to reconcile.
//! - [`index`]: pool membership, decided in one place (observe, the mappers, the domain controller).
//! - [`observe`]: narrows the caches and the call ledger into a [`crate::plan::Observed`] (the
//!   only place that turns raw objects into decision inputs; the other steps read the caches only
//!   for resourceVersions, finalizers and event references).
//! - [`act`]: records the plan's ledger changes, persists the new map first, then sends the planned
//!   calls with timeouts, recording each in the ledger.
//! - [`report`]: writes the statuses [`crate::plan::report`] built, only when they changed, and
//!   publishes events.
//! - [`finalize`]: the plan's finalizer changes, last.
//! - [`domains`]: the second controller, for domains no existing pool owns.
//! - [`election`]: leader election over the `poolkeeper-controller` Lease (a standby wakes when it is released).
//! - [`ledger`]: the call ledger, the only state not rebuilt from the API server that plans read.
//! - [`liveness`]: when each host Lease's renewal was observed (a cache rebuilt on start, as the
//!   node-lifecycle controller's), from which the planner judges responsiveness.
//! - [`crash`]: crash points that fault tests arm through the environment (inert otherwise).
//! - [`context`]: the one `Context` every reconcile shares.
//! - [`write`](mod@write): every API write (statuses, finalizers, events), with a timeout and an outcome metric.
//! - [`events`]: events.k8s.io Events, folded into a series only when identical (note included).
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.

pub mod act;
pub mod context;
pub mod crash;
pub mod domains;
pub mod election;
pub mod events;
pub mod finalize;
pub mod http;
pub mod index;
pub mod ledger;
pub mod liveness;
pub mod observe;
pub mod report;
pub mod signer;
pub mod watch;
pub mod write;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Client, ResourceExt,
    runtime::{Controller, controller::Action},
};
use tracing::{debug, info, warn};

use crate::api::StoragePool;
pub use context::{Context, Settings};
use write::WriteError;

/// The field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "poolkeeper-controller";

/// Errors of the controller. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable Kubernetes client configuration.
    #[error("loading the Kubernetes client configuration")]
    Config(#[source] kube::Error),
    /// Writing the pool status before telling hosts failed; nothing was sent.
    #[error("persisting the map of pool {pool}")]
    PersistMap {
        /// The pool.
        pool: String,
        /// The cause.
        #[source]
        source: WriteError,
    },
    /// The object was deleted, or deleted and created again under its name, since the reconcile
    /// read it: nothing made from the old one is written (a recreated pool must not take the old
    /// one's map and host ids). Retried soon, like a conflict, on whatever now has the name.
    #[error("{kind} {name} was deleted or replaced since it was read")]
    Replaced {
        /// The kind.
        kind: &'static str,
        /// The object.
        name: String,
    },
    /// A status write failed.
    #[error("writing the status of {kind} {name}")]
    WriteStatus {
        /// The kind.
        kind: &'static str,
        /// The object.
        name: String,
        /// The cause.
        #[source]
        source: WriteError,
    },
    /// A finalizer change failed.
    #[error("updating finalizers of {kind} {name}")]
    Finalizer {
        /// The kind.
        kind: &'static str,
        /// The object.
        name: String,
        /// The cause.
        #[source]
        source: WriteError,
    },
    /// The host RPC client could not be built.
    #[error("building the host RPC client")]
    RpcClient(#[source] crate::protocol::ClientError),
    /// The agents' bearer token could not be read.
    #[error("reading the agent token")]
    Token(#[source] crate::protocol::TokenError),
    /// The agents' CA file, or the controller's certificate or key, could not be read.
    #[error("reading the TLS file {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Leader election could not start.
    #[error("starting leader election")]
    LeaderElection(#[source] kube_lease_manager::LeaseManagerError),
    /// The leader-election timings contradict each other.
    #[error(
        "--leader-election-renew-grace-seconds ({grace}) must be less than --leader-election-lease-seconds ({lease})"
    )]
    LeaderElectionTimings {
        /// The Lease duration, seconds.
        lease: u64,
        /// The renewal grace, seconds.
        grace: u64,
    },
    /// The pool CA could not be loaded, created or published.
    #[error("the pool CA")]
    Signer(#[source] signer::SignerError),
    /// A flag is invalid.
    #[error("{0}")]
    Flag(String),
    /// This replica lost the leader-election Lease and stopped acting.
    #[error("lost the leader-election lease")]
    LeadershipLost,
    /// The metrics and health server could not start.
    #[error("serving metrics on {addr}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the API server refused a write because the object changed since it was read.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::PersistMap { source, .. }
            | Self::WriteStatus { source, .. }
            | Self::Finalizer { source, .. } => source.is_conflict(),
            Self::Replaced { .. } => true,
            _ => false,
        }
    }

    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Config(_) => "Config",
            Self::PersistMap { .. } => "PersistMap",
            Self::Replaced { .. } => "Replaced",
            Self::WriteStatus { .. } => "WriteStatus",
            Self::Finalizer { .. } => "Finalizer",
            Self::RpcClient(_) => "RpcClient",
            Self::Token(_) => "Token",
            Self::CaFile { .. } => "CaFile",
            Self::Signer(_) => "Signer",
            Self::Flag(_) => "Flag",
            Self::Http { .. } => "Http",
            Self::LeaderElection(_) | Self::LeaderElectionTimings { .. } => "LeaderElection",
            Self::LeadershipLost => "LeadershipLost",
        }
    }
}

/// Arguments of `poolkeeper controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// The namespace holding the hosts' Leases (the agents' heartbeat).
    #[arg(
        long,
        env = "POOLKEEPER_LEASE_NAMESPACE",
        default_value = "poolkeeper-system"
    )]
    pub lease_namespace: String,
    /// A file holding the token the agents expect when a connection opens (a mounted Secret).
    /// Not needed with a client certificate (--pool-ca-secret or --tls-cert).
    #[arg(
        long,
        env = "POOLKEEPER_TOKEN_FILE",
        required_unless_present_any = ["tls_cert", "pool_ca_secret"]
    )]
    pub token_file: Option<PathBuf>,
    /// The Secret (`kubernetes.io/tls`, in the controller's namespace) holding the pool CA,
    /// created when missing: the controller signs hosts' certificate requests (signer
    /// `poolkeeper.io/host-serving`) and its own client certificate with it, and publishes the CA
    /// certificate in a ConfigMap of the same name for the agents. Mutual TLS with no file to
    /// hand out.
    #[arg(
        long,
        env = "POOLKEEPER_POOL_CA_SECRET",
        conflicts_with_all = ["tls_cert", "agent_ca_file", "insecure"]
    )]
    pub pool_ca_secret: Option<String>,
    /// The agents' ServiceAccount (`namespace:name`): the only requester whose certificate
    /// requests are signed (with --pool-ca-secret).
    #[arg(long, default_value = "poolkeeper-system:poolkeeper-agent")]
    pub agent_service_account: String,
    /// How long the certificates the pool CA issues last (hosts renew theirs, and the controller
    /// its own, before they expire). With --pool-ca-secret.
    #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(u64).range(600..=366 * 24 * 3600))]
    pub certificate_lifetime_seconds: u64,
    /// The controller's client certificate (PEM), signed by the pool CA for
    /// `poolkeeper-controller`: mutual TLS, as the oVirt engine calls VDSM. Instead of
    /// --pool-ca-secret, for a CA kept outside the cluster.
    #[arg(long, env = "POOLKEEPER_TLS_CERT", requires_all = ["tls_key", "agent_ca_file"])]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "POOLKEEPER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A PEM file with the CA that signed the agents' serving certificates: hosts are called
    /// over TLS, trusting only it.
    #[arg(
        long,
        env = "POOLKEEPER_AGENT_CA_FILE",
        required_unless_present_any = ["insecure", "pool_ca_secret"]
    )]
    pub agent_ca_file: Option<PathBuf>,
    /// Call hosts over plain TCP (tests and demos only).
    #[arg(long, conflicts_with = "agent_ca_file")]
    pub insecure: bool,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "POOLKEEPER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// How many pools may be reconciled at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// How many connections to hosts stay open between calls: those to the hosts called most
    /// recently (about 10 KiB each). A call to a host past them opens a new one (one TLS
    /// handshake). Raise it to the fleet's size to keep one to every host.
    #[arg(
        long,
        default_value_t = crate::protocol::client::DEFAULT_KEPT_CONNECTIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
    )]
    pub kept_host_connections: usize,
    /// Run as one of several replicas: only the holder of the `poolkeeper-controller` Lease acts.
    #[arg(long, env = "POOLKEEPER_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "poolkeeper-system")]
    pub leader_election_namespace: String,
    /// How long the leader-election Lease lasts without renewal: a leader that dies without
    /// releasing it is replaced after at most this long.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub leader_election_lease_seconds: u64,
    /// How long before the Lease expires the leader renews it (less than the lease; more leaves
    /// room for a slow API server, and a leader that cannot renew in time stops acting).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3599))]
    pub leader_election_renew_grace_seconds: u64,
}

impl ControllerArgs {
    /// The user name of the agents' ServiceAccount (--agent-service-account).
    ///
    /// # Errors
    /// When the flag is not `namespace:name`.
    pub fn agent_user(&self) -> Result<String, Error> {
        match self.agent_service_account.split_once(':') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
                Ok(format!("system:serviceaccount:{ns}:{name}"))
            }
            _ => Err(Error::Flag(format!(
                "--agent-service-account {:?} must be namespace:name, e.g. poolkeeper-system:poolkeeper-agent",
                self.agent_service_account
            ))),
        }
    }
}

/// Runs the controller with the ambient Kubernetes configuration until SIGINT/SIGTERM.
///
/// # Errors
/// When the client or the metrics server cannot start.
pub async fn run(args: ControllerArgs) -> Result<(), Error> {
    // Flags first: a mistake is reported as such, before any connection is tried.
    if args.leader_elect {
        election_timings(&args)?;
    }
    if args.pool_ca_secret.is_some() {
        args.agent_user()?;
    }
    let client = Client::try_default().await.map_err(Error::Config)?;
    let settings = Settings::from_args(&args, &client).await?;
    let shutdown = crate::shutdown::signal();
    if args.leader_elect {
        run_elected(client, settings, &args, shutdown).await
    } else {
        run_with(client, settings, args.metrics_addr, shutdown).await
    }
}

/// Runs the controller on `client` until `shutdown` resolves. Used by `run`, `poolkeeper dev` and
/// the tests (in-process, against a real API server).
///
/// # Errors
/// When the metrics server cannot start.
pub async fn run_with(
    client: Client,
    settings: Settings,
    metrics_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    run_inner(client, settings, metrics_addr, None, shutdown).await
}

/// The leader-election Lease duration and renewal grace, in seconds. The lease manager panics on
/// a grace that is not shorter than the lease; a flag mistake is an error message instead.
fn election_timings(args: &ControllerArgs) -> Result<(u64, u64), Error> {
    let (lease, grace) = (
        args.leader_election_lease_seconds,
        args.leader_election_renew_grace_seconds,
    );
    if grace == 0 || grace >= lease {
        return Err(Error::LeaderElectionTimings { lease, grace });
    }
    Ok((lease, grace))
}

/// The name of the Lease replicas compete for.
const LEADER_LEASE: &str = crate::metrics::LEADER_LEASE;

/// How long reconciles in flight may run on after a shutdown (or a lost Lease) before they are
/// dropped: short enough that the leader Lease is still released (up to 5 s more) within the
/// Pod's `terminationGracePeriodSeconds` of 10.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs as one of several replicas: serves health at once (a standby is live and ready, so a
/// rolling update can proceed), reconciles only while it holds the `poolkeeper-controller` Lease,
/// and stops with [`Error::LeadershipLost`] when it loses it (the Pod restarts as a standby; a
/// replica that may have missed writes never keeps acting).
///
/// # Errors
/// When the election cannot start, the metrics server cannot bind, or the Lease is lost.
pub async fn run_elected(
    client: Client,
    settings: Settings,
    args: &ControllerArgs,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let (lease, grace) = election_timings(args)?;
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("poolkeeper-{}", uuid::Uuid::new_v4().simple()));
    let candidate = election::Candidate {
        namespace: args.leader_election_namespace.clone(),
        lease: LEADER_LEASE.to_owned(),
        identity: identity.clone(),
        duration: lease,
        grace,
        field_manager: FIELD_MANAGER.to_owned(),
    };
    let (leader, task) = election::campaign(client.clone(), candidate).await?;
    info!(identity = %identity, lease = LEADER_LEASE, "leader election: standing by");
    let fence = context::Fence::new(
        kube::Api::namespaced(client.clone(), &args.leader_election_namespace),
        LEADER_LEASE.to_owned(),
        identity,
    );
    let result = run_inner(
        client,
        settings,
        args.metrics_addr,
        Some((leader, fence)),
        shutdown,
    )
    .await;
    // Every receiver is gone now: the Lease is released, and the standby, woken by the release,
    // takes over at once instead of after the Lease expires.
    let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
    result
}

async fn run_inner(
    client: Client,
    settings: Settings,
    metrics_addr: SocketAddr,
    election: Option<(tokio::sync::watch::Receiver<bool>, context::Fence)>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let (stores, streams) = watch::start(&client, &settings);
    let (requeue_tx, requeue_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut leader, fence) = election.map_or((None, None), |(rx, fence)| (Some(rx), Some(fence)));
    let signer_client = client.clone();
    let mut ctx = Context::new(client, settings, stores, requeue_tx)?;
    ctx.fence = fence;
    let ctx = Arc::new(ctx);
    *ctx.leader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = leader.clone();
    // A standby says so on its metrics until it acquires the Lease; without election it acts.
    ctx.metrics.set_leader(leader.is_none());
    // Every replica keeps its client certificate valid, standby or not.
    let _renewing = ctx.settings.signer.clone().map(|signer| {
        let task = tokio::spawn(signer::renew_own(signer));
        AbortOnDrop(task)
    });
    let server = http::serve(metrics_addr, ctx.clone()).await?;
    info!(addr = %server, "serving metrics and health");

    let mut shutdown = Box::pin(shutdown);
    if let Some(rx) = leader.as_mut() {
        let standby = tokio::select! {
            acquired = rx.wait_for(|is_leader| *is_leader) => acquired.is_err().then_some(Err(Error::LeadershipLost)),
            () = &mut shutdown => Some(Ok(())),
        };
        if let Some(result) = standby {
            // Dropping every receiver lets the lease manager stop at once.
            ctx.leader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            return result;
        }
        info!("leader election: acquired, reconciling");
        ctx.metrics.set_leader(true);
    }
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    let shutdown = async move {
        match leader {
            Some(mut rx) => {
                tokio::select! {
                    () = shutdown => {}
                    _ = rx.wait_for(|is_leader| !*is_leader) => {
                        lost_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        warn!("leader election: lost the lease, stopping");
                    }
                }
            }
            None => shutdown.await,
        }
    };

    // No debounce: kube's debounce restarts its timer on every trigger, so a steady stream of
    // Lease renewals would starve a pool. The scheduler already merges triggers for a pool that
    // is waiting, and a reconcile is level-triggered, so bursts cost one extra run at most.
    let config = kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stop_seen = shutdown_rx.clone();
    // The domain controller sees the same domain and pool changes as the pool controller.
    let (domain_changes, domains_too) = watch::tee(streams.domains);
    let (pool_changes, pools_too) = watch::tee(streams.pools);
    let domains = Controller::for_stream(domains_too, ctx.stores.domains.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(2))
        .watches_stream(pools_too, watch::pool_domains(ctx.stores.clone()))
        .graceful_shutdown_on(stopped(shutdown_rx))
        .run(domains::reconcile, domains::error_policy, ctx.clone())
        .for_each(log_failure);
    let pools = Controller::for_stream(pool_changes, ctx.stores.pools.clone())
        .with_config(config)
        .watches_stream(domain_changes, watch::domain_pools)
        .watches_stream(streams.hosts, watch::host_pools(ctx.stores.clone()))
        .watches_stream(streams.leases, watch::lease_pools(ctx.stores.clone()))
        .reconcile_on(watch::receiver_stream(requeue_rx))
        .graceful_shutdown_on(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        })
        .run(reconcile_pool, error_policy, ctx.clone())
        .for_each(log_failure);
    // kube-runtime holds a controller's runner until its store is ready, and after a shutdown
    // nothing feeds the store any more: a replica asked to stop before its caches synced (just
    // after it acquired the Lease, or while the API server is unreachable) would wait forever.
    // Reconciles in flight get SHUTDOWN_GRACE to finish; then they are dropped (a cut call is
    // re-planned from the hosts' reports by the next leader).
    let signing = {
        let (client, hosts, signer) = (
            signer_client,
            ctx.stores.hosts.clone(),
            ctx.settings.signer.clone(),
        );
        let stop = stopped(stop_seen.clone());
        async move {
            if let Some(signer) = signer {
                signer::run(client, hosts, signer, stop).await;
            }
        }
    };
    let mut stopping = stop_seen;
    tokio::select! {
        _ = async { tokio::join!(pools, domains, signing) } => {}
        () = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the shutdown grace; stopping anyway"),
    }
    ctx.metrics.set_leader(false);
    ctx.leader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    info!("controller stopped");
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::LeadershipLost);
    }
    Ok(())
}

/// Aborts a task when dropped (a task that must not outlive the function that started it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stopped(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn log_failure<K, E: std::fmt::Display>(
    result: Result<K, kube::runtime::controller::Error<E, kube::runtime::watcher::Error>>,
) {
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
        Err(e) => warn!(error = %e, "reconcile failed"),
    }
}

async fn reconcile_pool(pool: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile(&pool, &ctx).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciled(outcome, started.elapsed().as_secs_f64());
    result
}

#[tracing::instrument(skip_all, fields(pool = %pool.name_any()))]
async fn reconcile(pool: &StoragePool, ctx: &Arc<Context>) -> Result<Action, Error> {
    // Planning from a cache that has not finished its first list would see no domains, hosts or
    // Leases: it would persist an empty map, drop host ids and restart grace periods.
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let name = pool.name_any();
    if let Some(wait) = ctx.duty.wait(&name) {
        // Reports that arrive meanwhile are merged into this one reconcile (see `Duty`).
        tokio::time::sleep(wait).await;
    }
    let metrics = &ctx.metrics;
    let now = jiff::Timestamp::now();
    let started = Instant::now();
    let observed = observe::pool(ctx, pool, now);
    metrics.step("observe", started);
    let mut busy = started.elapsed();
    let started = Instant::now();
    let plan = crate::plan::plan(&observed, now);
    metrics.step("plan", started);
    busy += started.elapsed();
    finalize::finalize(ctx, &plan.guards)
        .await
        .inspect_err(|_| ctx.duty.record(&name, busy))?;
    let started = Instant::now();
    let acted = act::act(ctx, &observed, &plan).await;
    metrics.step("act", started);
    let acted = acted.inspect_err(|_| ctx.duty.record(&name, busy))?;
    let started = Instant::now();
    let report = crate::plan::report(&observed, &plan, &acted.outcomes, jiff::Timestamp::now());
    busy += started.elapsed();
    let held = report::write(
        ctx,
        &observed,
        &report,
        &acted,
        plan.persist_first.is_some(),
    )
    .await
    .inspect_err(|_| ctx.duty.record(&name, busy))?;
    metrics.step("report", started);
    ctx.duty.record(&name, busy);
    let started = Instant::now();
    finalize::finalize(ctx, &plan.finalizers).await?;
    metrics.step("finalize", started);
    // A periodic look even when nothing changes guards against silently lost watches.
    let safety = Duration::from_secs(300);
    let after = [plan.requeue_after, held].into_iter().flatten().min();
    Ok(Action::requeue(after.map_or(safety, |d| d.min(safety))))
}

fn error_policy(pool: Arc<StoragePool>, error: &Error, _ctx: Arc<Context>) -> Action {
    retry_after(&pool.name_any(), error)
}

/// When to retry a failed reconcile: soon after a conflict (planned on a cache that had not seen
/// the latest write yet), else after a pause.
fn retry_after(object: &str, error: &Error) -> Action {
    if error.is_conflict() {
        debug!(
            object,
            "object changed since it was read; reconciling again"
        );
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(object, error = %error, category = error.category(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
