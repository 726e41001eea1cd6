//! The host agent: serves VDSM's pool verbs, holds the pool connection in memory only, runs domain
//! monitors, reports into `Host.status.report`, renews its Lease; and the many-host simulator.
//!
//! Layout: [`state`] is the pure connect decision table and pool-manager role; [`monitor`] the
//! pure domain monitor table; [`metadata`] VDSM's sealed key=value metadata (pure);
//! [`storage`] where monitors read metadata from; [`domains`] where the pool verbs read and
//! write it, and the pool manager's lease; [`manager`] what the pool manager writes, as sp.py
//! does; [`host`] one host tying them together behind
//! the [`crate::protocol::Verbs`] trait; [`driver`] the shared ticker that reads metadata and
//! feeds each host's monitors; [`report`] and [`lease`] the only code that talks to Kubernetes;
//! [`sim`] simulated storage and fault injection; [`health`] the probe and metrics endpoint.
//! Calls are served from memory whatever the API server does.

pub mod bridge;
pub mod certificate;
pub mod domains;
pub mod driver;
pub mod health;
pub mod host;
pub mod lease;
pub mod manager;
pub mod metadata;
pub mod monitor;
pub mod report;
pub mod sim;
pub mod state;
pub mod storage;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::domains::FileDomains;
use self::host::{HostAgent, PoolStorage, SpmLease};
use self::lease::LeaseConfig;
use self::monitor::{MAX_PERIOD, MonitorConfig};
use self::storage::{FileStorage, Storage};
use crate::protocol::server::Rpc;
use crate::protocol::session::{Handler, SessionOptions, TlsServing, accept_loop};
use crate::protocol::{Token, TokenError};

/// The simulator's first host address when `--listen` names every address: host `i` listens on
/// this address plus `i` (127.1.0.1, 127.1.0.2, ... all loopback).
const SIM_FIRST_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 1, 0, 1);

/// The largest request frame the agent reads by default: a connect with 100 domains is about
/// 6 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or option is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The token file cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be loaded.
    #[error("cannot load the tls certificate and key")]
    Tls(#[source] crate::protocol::tls::TlsError),
    /// No Kubernetes client could be built.
    #[error("cannot build a kubernetes client")]
    Kube(#[source] kube::Error),
    /// The HTTP server stopped with an error.
    #[error("rpc server failed")]
    Serve(#[source] std::io::Error),
    /// The domain layout cannot be written.
    #[error("cannot write the domain layout")]
    Layout(#[source] std::io::Error),
}

impl Error {
    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Config(_) => "Config",
            Self::Token(e) => e.category(),
            Self::Bind { .. } => "Bind",
            Self::Tls(_) => "Tls",
            Self::Kube(_) => "KubeClient",
            Self::Serve(_) => "Serve",
            Self::Layout(_) => "Layout",
        }
    }
}

/// Arguments of `poolkeeper agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Address to serve VDSM's wire on (JSON-RPC over STOMP; VDSM's port is 54321). Simulated
    /// host `i` listens on this IPv4 address plus `i`, same port (every address: from 127.1.0.1).
    #[arg(long, env = "POOLKEEPER_LISTEN", default_value = "0.0.0.0:54321")]
    pub listen: SocketAddr,
    /// `host:port` the controller reaches this host at (the Host's `endpoint`). Default: the
    /// listen address, or the machine's host name when listening on every address.
    #[arg(long, env = "POOLKEEPER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the simulator serves its fault-injection API (HTTP, token-checked; see
    /// docs/simulator.md). Only with --simulate.
    #[arg(long, default_value = "127.0.0.1:54320")]
    pub control_listen: SocketAddr,
    /// The Host's name. Default: the machine's host name.
    #[arg(long, env = "POOLKEEPER_HOST_NAME")]
    pub host_name: Option<String>,
    /// Where storage is mounted: file domains are `<root>/<mount>/<sdUUID>/dom_md/metadata`.
    #[arg(long, default_value = "/rhev/data-center/mnt")]
    pub storage_root: PathBuf,
    /// File holding the token every connection must offer (CONNECT `passcode`; a mounted
    /// Secret). Not needed with --tls-client-ca: the controller's certificate is the credential.
    #[arg(
        long,
        env = "POOLKEEPER_TOKEN_FILE",
        required_unless_present_any = ["tls_client_ca", "vdsm", "sim_ca_cert"]
    )]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, the agent serves STOMP over TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The pool CA (PEM): mutual TLS, calls accepted only from a client certificate it signed
    /// for the controller (`poolkeeper-controller`), as VDSM accepts only the engine's. Read at
    /// start.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Obtain the serving certificate from the cluster instead of files: a
    /// CertificateSigningRequest to signer `poolkeeper.io/host-serving` (the controller signs it
    /// with the pool CA once it has checked the request comes from this Host's node), renewed
    /// before it expires. Needs --tls-client-ca (the pool CA), and the agent's own
    /// node-bound ServiceAccount token.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "simulate"], requires = "tls_client_ca")]
    pub request_certificate: bool,
    /// Run beside a real VDSM at this `host:port` (e.g. 127.0.0.1:54321): serve nothing,
    /// register the Host with VDSM's address as its endpoint (the controller calls VDSM
    /// directly), renew its Lease, and report what VDSM answers, polled every
    /// --monitor-period-seconds and written only on change.
    #[arg(long, env = "POOLKEEPER_VDSM", conflicts_with_all = ["simulate", "request_certificate", "tls_cert", "tls_key", "tls_client_ca"])]
    pub vdsm: Option<String>,
    /// VDSM's CA (PEM; `/etc/pki/vdsm/certs/cacert.pem` on an oVirt host): VDSM is called over
    /// TLS, trusting only it.
    #[arg(long, requires = "vdsm", conflicts_with = "insecure")]
    pub vdsm_ca: Option<PathBuf>,
    /// A client certificate VDSM accepts (PEM; on an oVirt host VDSM's own,
    /// `/etc/pki/vdsm/certs/vdsmcert.pem`, signed by the engine's CA).
    #[arg(long, requires_all = ["vdsm_key", "vdsm_ca"])]
    pub vdsm_cert: Option<PathBuf>,
    /// Its private key (PEM; `/etc/pki/vdsm/keys/vdsmkey.pem`).
    #[arg(long, requires = "vdsm_cert")]
    pub vdsm_key: Option<PathBuf>,
    /// The name VDSM's certificate must carry. Default: the host part of --vdsm.
    #[arg(long, requires = "vdsm_ca")]
    pub vdsm_tls_name: Option<String>,
    /// Serve plain TCP (tests and demos only); without TLS the agent refuses to start unless
    /// this is given. With --vdsm: call VDSM over plain TCP.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_client_ca", "request_certificate"])]
    pub insecure: bool,
    /// Largest frame accepted (beyond it: ERROR, and the connection closes).
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Seconds between domain checks (VDSM: 10; at most 20).
    #[arg(long, default_value_t = 10.0)]
    pub monitor_period_seconds: f64,
    /// Seconds a metadata read may take before the domain is reported unreadable (2001).
    #[arg(long, default_value_t = 10.0)]
    pub check_timeout_seconds: f64,
    /// Namespace of the host Leases (must exist).
    #[arg(
        long,
        env = "POOLKEEPER_LEASE_NAMESPACE",
        default_value = "poolkeeper-system"
    )]
    pub lease_namespace: String,
    /// `leaseDurationSeconds` of the host Leases (kube-node-lease's 40 s by default).
    #[arg(long, default_value_t = 40)]
    pub lease_duration_seconds: u32,
    /// Seconds between Lease renewals of each host (kube-node-lease's 10 s by default: one write
    /// per renewal, 0.1 writes per second per idle host).
    #[arg(long, default_value_t = 10.0)]
    pub lease_renew_seconds: f64,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (plain HTTP, no token; apart from the
    /// RPC port). Not served unless given.
    #[arg(long, env = "POOLKEEPER_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Run N simulated hosts instead of one real host.
    #[arg(long, value_name = "N")]
    pub simulate: Option<usize>,
    /// Name prefix of simulated hosts: `<prefix>-0000`, `<prefix>-0001`...
    #[arg(long, default_value = "sim")]
    pub sim_prefix: String,
    /// Where the simulated hosts keep their domains (one directory shared by all, as an NFS
    /// export is). Default: a temporary directory, removed on exit; give one to keep the pools
    /// on storage across agent restarts, as real storage does.
    #[arg(long, value_name = "DIR")]
    pub sim_storage: Option<PathBuf>,
    /// The pool CA's certificate (PEM) for simulated hosts: each serves TLS with a certificate
    /// of its own, for its Host name and address, issued from this CA at start, and takes calls
    /// only from a client certificate it signed for the controller, as real hosts do.
    #[arg(long, value_name = "FILE", requires_all = ["simulate", "sim_ca_key"], conflicts_with_all = ["insecure", "tls_cert", "tls_client_ca"])]
    pub sim_ca_cert: Option<PathBuf>,
    /// The pool CA's private key (PEM), with --sim-ca-cert.
    #[arg(long, value_name = "FILE", requires = "sim_ca_cert")]
    pub sim_ca_key: Option<PathBuf>,
}

/// Arguments of `poolkeeper make-domain`.
#[derive(Debug, clap::Args)]
pub struct MakeDomainArgs {
    /// The storage root (the agent's --storage-root).
    #[arg(long)]
    pub root: PathBuf,
    /// The mount directory under the root, e.g. `nfs1.example.com:_exports_data1`.
    #[arg(long, default_value = "local")]
    pub mount: String,
    /// The domain's UUID (sdUUID).
    #[arg(long)]
    pub uuid: String,
}

/// Which hosts the process runs.
#[derive(Clone, Debug)]
pub enum Hosts {
    /// One real host over file storage.
    Single {
        /// The Host's name.
        name: String,
        /// The storage root.
        storage_root: PathBuf,
    },
    /// `count` simulated hosts named `<prefix>-NNNN`, over simulated storage.
    Simulated {
        /// How many.
        count: usize,
        /// Name prefix.
        prefix: String,
        /// Their shared storage directory (created if missing); `None`: a temporary one.
        storage: Option<PathBuf>,
    },
    /// One real host whose VDSM serves the calls: the agent reports what VDSM answers
    /// ([`bridge`]) and serves nothing.
    Bridge {
        /// The Host's name.
        name: String,
        /// Where VDSM is and how to reach it.
        vdsm: bridge::Vdsm,
    },
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Files, read at start.
    Files(TlsFiles),
    /// The cluster: requested from signer `poolkeeper.io/host-serving` and renewed
    /// ([`certificate`]); calls wait until the first one is issued. Real hosts only.
    Requested {
        /// The pool CA, PEM: client certificates required, signed by it and naming the
        /// controller.
        client_ca: PathBuf,
    },
    /// Issued at start by this CA, one certificate per host for its Host name and address
    /// (simulated hosts); client certificates required, signed by it and naming the controller.
    Issued(Arc<crate::pki::PoolCa>),
}

/// TLS files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// The pool CA, PEM: client certificates required, signed by it and naming the controller.
    pub client_ca: Option<PathBuf>,
}

/// Everything [`start`] needs.
#[derive(Clone)]
pub struct Options {
    /// Address to serve on (port 0: any free port, see [`Running::rpc_addr`]); simulated host
    /// `i` serves on this IPv4 address plus `i`.
    pub listen: SocketAddr,
    /// `host:port` of the single host for its Host endpoint; `None`: the bound address.
    pub advertise: Option<String>,
    /// The simulator's fault-injection API (HTTP); `None`: not served.
    pub control_listen: Option<SocketAddr>,
    /// STOMP over TLS; `None`: plain TCP (the caller decided it is allowed).
    pub tls: Option<Tls>,
    /// The token connections must offer unless mutual TLS checks the caller (then it is not
    /// asked); also the simulator's control API's bearer token (not served without one).
    pub token: Option<Token>,
    /// Largest frame read.
    pub max_frame_bytes: usize,
    /// Monitor timing.
    pub monitor: MonitorConfig,
    /// The hosts to run.
    pub hosts: Hosts,
    /// Kubernetes: registration, reports and Leases. `None`: serve calls only.
    pub kube: Option<(kube::Client, LeaseConfig)>,
}

/// A started agent.
pub struct Running {
    rpc_addrs: Vec<SocketAddr>,
    control: Option<(SocketAddr, axum_server::Handle<SocketAddr>)>,
    hosts: Arc<[Arc<HostAgent>]>,
    faults: Option<Arc<sim::FaultTable>>,
    serving: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    /// One accept loop per host; aborting one closes every connection it accepted.
    listeners: Vec<JoinHandle<()>>,
    control_task: Option<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
    /// The simulator's storage directory, removed when the process stops.
    _sim_root: Option<tempfile::TempDir>,
}

impl Running {
    /// The address the first host (the only one of a real agent) serves RPC on (`0.0.0.0:0` for
    /// a bridge, which serves nothing: VDSM does).
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Whether calls are taken: at once, or once the certificate requested from the cluster is
    /// issued.
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }

    /// The simulator's fault-injection API (`None` when not served).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(|(a, _)| *a)
    }

    /// Every host of the process.
    pub fn hosts(&self) -> &[Arc<HostAgent>] {
        &self.hosts
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Arc<HostAgent>> {
        self.hosts.iter().find(|h| h.name() == name)
    }

    /// The simulator's fault table (`None` for a real host).
    pub fn faults(&self) -> Option<&Arc<sim::FaultTable>> {
        self.faults.as_ref()
    }

    /// Runs until `stop` completes (or the simulator's control API fails), then shuts down:
    /// every listener and connection closes.
    ///
    /// # Errors
    /// When the control API stopped with an error.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let failed = match self.control_task.as_mut() {
            Some(task) => tokio::select! {
                r = task => Some(r),
                () = stop => None,
            },
            None => {
                stop.await;
                None
            }
        };
        for l in self.listeners.drain(..) {
            l.abort();
        }
        self.stop_background().await;
        if let Some((_, handle)) = &self.control {
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
        match (failed, self.control_task.take()) {
            (Some(Ok(r)), _) => r.map_err(Error::Serve),
            (Some(Err(join)), _) => Err(Error::Serve(std::io::Error::other(join.to_string()))),
            (None, Some(task)) => match task.await {
                Ok(r) => r.map_err(Error::Serve),
                Err(_) => Ok(()),
            },
            (None, None) => Ok(()),
        }
    }

    /// Stops serving and every background task, as a process exit would (memory is lost).
    pub async fn shutdown(self) {
        // The stop future is ready at once; a server error at shutdown is of no interest.
        let _ = self.run_until(std::future::ready(())).await;
    }

    async fn stop_background(&mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// Starts the agent: binds, serves calls, and drives monitors, reports and Leases.
///
/// # Errors
/// When an address cannot be bound or the TLS files cannot be loaded.
pub async fn start(opts: Options) -> Result<Running, Error> {
    if matches!(opts.tls, Some(Tls::Requested { .. }))
        && (opts.kube.is_none() || !matches!(opts.hosts, Hosts::Single { .. }))
    {
        return Err(Error::Config(
            "--request-certificate needs one real host and a Kubernetes client".into(),
        ));
    }
    let (tls, requested) = serving_tls(opts.tls.as_ref())?;
    // With mutual TLS the client's certificate is the credential: a token (the simulator's
    // control API's) is not asked of RPC connections then.
    let mutual = matches!(
        &opts.tls,
        Some(
            Tls::Files(TlsFiles {
                client_ca: Some(_),
                ..
            }) | Tls::Requested { .. }
                | Tls::Issued(_)
        )
    );
    let session = SessionOptions {
        token: if mutual { None } else { opts.token.clone() },
        max_frame_bytes: opts.max_frame_bytes,
    };
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let changes = opts.kube.as_ref().map(|_| changes_tx);

    let lease = SpmLease::for_period(opts.monitor.period);
    let mut sim_root = None;
    // Aborted if `start` fails half-way (a later address cannot be bound, a certificate cannot
    // be issued): no listener outlives a failed start.
    let mut listeners = AbortAll(Vec::new());
    let mut rpc_addrs = Vec::new();
    // With a certificate requested from the cluster, connections wait in the listen backlog
    // until it is issued (the first handshake then presents it).
    let (issued_tx, issued_rx) = watch::channel(requested.is_none());
    let serve = |listener, handler: Arc<dyn Handler>, tls: Option<TlsServing>| {
        let (session, mut issued) = (session.clone(), issued_rx.clone());
        tokio::spawn(async move {
            if issued.wait_for(|issued| *issued).await.is_ok() {
                accept_loop(listener, handler, tls, session).await;
            }
        })
    };
    let (hosts, faults, control): (Arc<[Arc<HostAgent>]>, _, _) = match &opts.hosts {
        Hosts::Single { name, storage_root } => {
            let (listener, addr) = bind(opts.listen)?;
            let endpoint = opts
                .advertise
                .clone()
                .unwrap_or_else(|| default_endpoint(addr));
            let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(storage_root.clone()));
            // Real file domains: the master is checked as VDSM checks it.
            let pool_storage = PoolStorage {
                domains: FileDomains::new(storage_root.clone()),
                lease,
            };
            let host = Arc::new(HostAgent::new(
                0,
                name.clone(),
                endpoint,
                storage,
                pool_storage,
                changes,
            ));
            let tls = match &opts.tls {
                Some(Tls::Issued(ca)) => {
                    Some(issued_serving(ca, host.name(), &addr.ip().to_string())?)
                }
                _ => tls.clone(),
            };
            listeners
                .0
                .push(serve(listener, Arc::new(Rpc(host.clone())), tls));
            rpc_addrs.push(addr);
            (Arc::from(vec![host]), None, None)
        }
        Hosts::Bridge { name, vdsm } => {
            // VDSM serves the calls: nothing is bound, no monitor runs here (the agent's own
            // state stays empty; its report is VDSM's).
            let endpoint = opts
                .advertise
                .clone()
                .unwrap_or_else(|| vdsm.endpoint.clone());
            let host = Arc::new(HostAgent::new(
                0,
                name.clone(),
                endpoint,
                Arc::new(FileStorage::new(PathBuf::new())),
                PoolStorage {
                    domains: FileDomains::new(PathBuf::new()),
                    lease,
                },
                changes,
            ));
            (Arc::from(vec![host]), None, None)
        }
        Hosts::Simulated {
            count,
            prefix,
            storage,
        } => {
            let faults = Arc::new(sim::FaultTable::default());
            // One storage directory shared by every simulated host, as a shared NFS export
            // is: domains appear on first use (unattached, as `make-domain` leaves them); the
            // master check is VDSM's, so a pool exists only once `StoragePool.create` made it.
            let dir = match storage {
                Some(dir) => {
                    std::fs::create_dir_all(dir).map_err(Error::Layout)?;
                    dir.clone()
                }
                None => {
                    let root = tempfile::Builder::new()
                        .prefix("poolkeeper-sim-")
                        .tempdir()
                        .map_err(Error::Layout)?;
                    let dir = root.path().to_owned();
                    sim_root = Some(root);
                    dir
                }
            };
            let pool_storage = PoolStorage {
                domains: FileDomains::provisioning(&dir),
                lease,
            };
            let reachability = watch::Sender::new(0);
            let mut hosts = Vec::with_capacity(*count);
            for i in 0..*count {
                // Each simulated host has its own address, as real hosts do.
                let at = sim_address(opts.listen, i)?;
                let (listener, addr) = bind(at)?;
                let name = format!("{prefix}-{i:04}");
                let storage: Arc<dyn Storage> = Arc::new(
                    sim::SimStorage::new(Arc::clone(&faults), i)
                        .reading(pool_storage.domains.clone()),
                );
                let host = Arc::new(HostAgent::new(
                    i,
                    name,
                    addr.to_string(),
                    storage,
                    pool_storage.clone(),
                    changes.clone(),
                ));
                let handler = sim::SimRpc {
                    host: Arc::clone(&host),
                    reachability: reachability.clone(),
                };
                let tls = match &opts.tls {
                    Some(Tls::Issued(ca)) => {
                        Some(issued_serving(ca, host.name(), &addr.ip().to_string())?)
                    }
                    _ => tls.clone(),
                };
                listeners.0.push(serve(listener, Arc::new(handler), tls));
                rpc_addrs.push(addr);
                hosts.push(host);
            }
            let hosts: Arc<[Arc<HostAgent>]> = Arc::from(hosts);
            let by_name: HashMap<String, usize> = hosts
                .iter()
                .map(|h| (h.name().to_owned(), h.index()))
                .collect();
            let state = sim::Sim {
                hosts: Arc::clone(&hosts),
                by_name: Arc::new(by_name),
                faults: Arc::clone(&faults),
                reachability,
            };
            let control = match (opts.control_listen, &opts.token) {
                (Some(at), Some(token)) => {
                    let std_listener = std::net::TcpListener::bind(at)
                        .map_err(|source| Error::Bind { addr: at, source })?;
                    let addr = std_listener
                        .local_addr()
                        .map_err(|source| Error::Bind { addr: at, source })?;
                    let app = sim::protect(sim::routes(state), token.clone());
                    let handle = axum_server::Handle::new();
                    let srv = axum_server::from_tcp(std_listener)
                        .map_err(|source| Error::Bind { addr, source })?
                        .handle(handle.clone());
                    let task = tokio::spawn(srv.serve(app.into_make_service()));
                    Some((addr, handle, task))
                }
                _ => None,
            };
            (hosts, Some(faults), control)
        }
    };
    tracing::info!(first = ?rpc_addrs.first(), hosts = hosts.len(), tls = opts.tls.is_some(), control = ?control.as_ref().map(|c| c.0), "agent serving");

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(driver::run_driver(
        Arc::clone(&hosts),
        opts.monitor,
        shutdown_rx.clone(),
    ))];
    match (&requested, &opts.kube, hosts.first()) {
        (Some(identity), Some((client, _)), Some(host)) if hosts.len() == 1 => {
            tasks.push(tokio::spawn(certificate::run(
                client.clone(),
                host.name().to_owned(),
                Arc::clone(identity),
                issued_tx,
                shutdown_rx.clone(),
            )));
        }
        // Checked above: a requested certificate has one real host and a client.
        _ => drop(issued_tx),
    }
    if let (Hosts::Bridge { vdsm, .. }, Some((client, _)), Some(host)) =
        (&opts.hosts, &opts.kube, hosts.first())
    {
        tasks.push(tokio::spawn(bridge::run(
            vdsm.clone(),
            Arc::clone(host),
            client.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some((client, lease_config)) = opts.kube {
        tasks.push(tokio::spawn(report::run_reporter(
            client.clone(),
            Arc::clone(&hosts),
            changes_rx,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(lease::run_renewer(
            client,
            Arc::clone(&hosts),
            lease_config,
            shutdown_rx,
        )));
    }
    let (control, control_task) = match control {
        Some((addr, handle, task)) => (Some((addr, handle)), Some(task)),
        None => (None, None),
    };
    Ok(Running {
        rpc_addrs,
        control,
        hosts,
        faults,
        serving: issued_rx,
        shutdown,
        listeners: std::mem::take(&mut listeners.0),
        control_task,
        tasks,
        _sim_root: sim_root,
    })
}

/// The TLS a listener serves and, when the certificate is requested from the cluster, the
/// identity [`certificate::run`] fills.
fn serving_tls(
    tls: Option<&Tls>,
) -> Result<
    (
        Option<TlsServing>,
        Option<Arc<crate::protocol::tls::Identity>>,
    ),
    Error,
> {
    use crate::protocol::tls::{self, CONTROLLER_NAME, Identity};
    let (config, client_ca, requested) = match tls {
        // One certificate per host: see `issued_serving`.
        None | Some(Tls::Issued(_)) => return Ok((None, None)),
        Some(Tls::Files(files)) => (
            tls::server_config(&files.cert, &files.key, files.client_ca.as_deref()),
            files.client_ca.as_ref(),
            None,
        ),
        Some(Tls::Requested { client_ca }) => {
            let identity = Arc::new(Identity::default());
            let pem = std::fs::read(client_ca).map_err(|e| {
                Error::Tls(tls::TlsError::Pem {
                    what: client_ca.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
            let what = client_ca.display().to_string();
            (
                tls::server_config_with(Arc::clone(&identity), Some((&what, &pem))),
                Some(client_ca),
                Some(identity),
            )
        }
    };
    let serving = TlsServing {
        acceptor: tokio_rustls::TlsAcceptor::from(config.map_err(Error::Tls)?),
        client_name: client_ca.map(|_| CONTROLLER_NAME.to_owned()),
    };
    Ok((Some(serving), requested))
}

/// TLS for host `name` at `address` with a certificate `ca` issues now (a year), taking calls
/// only from the controller's certificate `ca` signed.
fn issued_serving(ca: &crate::pki::PoolCa, name: &str, address: &str) -> Result<TlsServing, Error> {
    use crate::protocol::tls::{self, CONTROLLER_NAME, Identity};
    let issued = ca
        .issue_at(
            &[name, address],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            std::time::SystemTime::now(),
            Duration::from_secs(365 * 24 * 3600),
        )
        .map_err(|e| Error::Config(format!("issuing host {name}'s certificate: {e}")))?;
    let identity = Identity::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
        .map_err(Error::Tls)?;
    let config = tls::server_config_with(identity, Some(("the pool CA", ca.pem().as_bytes())))
        .map_err(Error::Tls)?;
    Ok(TlsServing {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        client_name: Some(CONTROLLER_NAME.to_owned()),
    })
}

/// Tasks aborted when dropped.
struct AbortAll(Vec<JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A listener on `addr`, and the address it is bound to (port 0: the one chosen).
fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let bound = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        let local = l.local_addr()?;
        Ok((tokio::net::TcpListener::from_std(l)?, local))
    });
    bound.map_err(|source| Error::Bind { addr, source })
}

/// Where simulated host `i` listens: the listen address plus `i` (IPv4), same port.
fn sim_address(listen: SocketAddr, i: usize) -> Result<SocketAddr, Error> {
    let IpAddr::V4(first) = listen.ip() else {
        return Err(Error::Config(
            "--listen must be an IPv4 address to simulate hosts (host i listens on it plus i)"
                .into(),
        ));
    };
    let first = if first.is_unspecified() {
        SIM_FIRST_ADDRESS
    } else {
        first
    };
    let ip = u32::from(first)
        .checked_add(u32::try_from(i).unwrap_or(u32::MAX))
        .map(std::net::Ipv4Addr::from)
        .ok_or_else(|| Error::Config("too many simulated hosts for --listen".into()))?;
    Ok(SocketAddr::new(IpAddr::V4(ip), listen.port()))
}

/// `host:port` of a single host bound to `addr`: the machine's host name when bound to every
/// address.
fn default_endpoint(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => machine_host_name(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{host}:{}", addr.port())
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn seconds(what: &str, value: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Error::Config(format!("{what} must be a positive number of seconds")))
}

fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 240
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        )))
    }
}

fn lease_config(args: &AgentArgs) -> Result<LeaseConfig, Error> {
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        duration: Duration::from_secs(u64::from(args.lease_duration_seconds)),
        renew_every: seconds("--lease-renew-seconds", args.lease_renew_seconds)?,
    };
    if lease.renew_every >= lease.duration {
        return Err(Error::Config(
            "--lease-renew-seconds must be shorter than --lease-duration-seconds".into(),
        ));
    }
    Ok(lease)
}

/// How the bridge reaches VDSM at `endpoint`, from the command line.
fn vdsm_target(args: &AgentArgs, endpoint: &str, period: Duration) -> Result<bridge::Vdsm, Error> {
    let (host, _) = crate::protocol::client::split_endpoint(endpoint).map_err(|_| {
        Error::Config(format!(
            "--vdsm {endpoint:?} must be host:port, e.g. 127.0.0.1:54321"
        ))
    })?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && args.advertise.is_none() {
        return Err(Error::Config(format!(
            "--vdsm {endpoint:?} is this machine's loopback: the controller calls VDSM at the Host's endpoint, so give --advertise with an address it reaches (e.g. --advertise=192.0.2.7:54321)"
        )));
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            Error::Tls(crate::protocol::tls::TlsError::Pem {
                what: path.display().to_string(),
                reason: e.to_string(),
            })
        })
    };
    let token = args
        .token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()?;
    let client = match (&args.vdsm_ca, &args.vdsm_cert, &args.vdsm_key) {
        (Some(ca), Some(cert), Some(key)) => {
            crate::protocol::Client::mutual(&read(ca)?, &read(cert)?, &read(key)?, token)
        }
        (ca, None, None) if ca.is_some() || args.insecure => {
            let ca = ca.as_ref().map(read).transpose()?;
            let token = token.ok_or_else(|| {
                Error::Config(
                    "--vdsm without a client certificate (--vdsm-cert, --vdsm-key) needs --token-file".into(),
                )
            })?;
            crate::protocol::Client::new(token, ca.as_deref())
        }
        _ => {
            return Err(Error::Config(
                "--vdsm needs --vdsm-ca (and --vdsm-cert, --vdsm-key: VDSM takes calls only with a client certificate its CA signed), or --insecure".into(),
            ));
        }
    }
    .map_err(|e| Error::Config(format!("calling VDSM: {e}")))?;
    Ok(bridge::Vdsm {
        endpoint: endpoint.to_owned(),
        tls_name: args
            .vdsm_tls_name
            .clone()
            .unwrap_or_else(|| host.to_owned()),
        client,
        period,
    })
}

impl Options {
    /// Options from the command line; `kube` is the client for registration, reports and Leases.
    ///
    /// # Errors
    /// When a flag is invalid, the token file unusable, or plain HTTP was not asked for.
    pub fn from_args(args: &AgentArgs, kube: Option<kube::Client>) -> Result<Self, Error> {
        let tls = match (&args.tls_cert, &args.tls_key, &args.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(Tls::Files(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            })),
            (None, None, Some(client_ca)) if args.request_certificate => Some(Tls::Requested {
                client_ca: client_ca.clone(),
            }),
            (None, None, None) if args.sim_ca_cert.is_some() => {
                let read = |path: &Option<PathBuf>| {
                    let path = path
                        .as_ref()
                        .ok_or_else(|| Error::Config("--sim-ca-cert needs --sim-ca-key".into()))?;
                    std::fs::read_to_string(path)
                        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))
                };
                let ca = crate::pki::PoolCa::from_pem(
                    &read(&args.sim_ca_cert)?,
                    &read(&args.sim_ca_key)?,
                )
                .map_err(|e| Error::Config(format!("--sim-ca-cert and --sim-ca-key: {e}")))?;
                Some(Tls::Issued(Arc::new(ca)))
            }
            _ if args.insecure || args.vdsm.is_some() => None,
            _ => {
                return Err(Error::Config(
                    "give --tls-cert and --tls-key, or --request-certificate with --tls-client-ca, or --insecure to serve plain TCP".into(),
                ));
            }
        };
        let monitor = MonitorConfig {
            period: seconds("--monitor-period-seconds", args.monitor_period_seconds)?,
            check_timeout: seconds("--check-timeout-seconds", args.check_timeout_seconds)?,
        };
        if monitor.period > MAX_PERIOD {
            return Err(Error::Config(format!(
                "--monitor-period-seconds must be at most {}",
                MAX_PERIOD.as_secs()
            )));
        }
        let lease = lease_config(args)?;
        let hosts = match args.simulate {
            Some(count) => {
                check_name("--sim-prefix", &args.sim_prefix)?;
                Hosts::Simulated {
                    count,
                    prefix: args.sim_prefix.clone(),
                    storage: args.sim_storage.clone(),
                }
            }
            None => {
                let name = args.host_name.clone().unwrap_or_else(machine_host_name);
                check_name("--host-name", &name)?;
                match &args.vdsm {
                    Some(endpoint) => Hosts::Bridge {
                        name,
                        vdsm: vdsm_target(args, endpoint, monitor.period)?,
                    },
                    None => Hosts::Single {
                        name,
                        storage_root: args.storage_root.clone(),
                    },
                }
            }
        };
        if let Some(adv) = &args.advertise {
            let valid = crate::protocol::client::split_endpoint(adv).is_ok()
                && !adv.bytes().any(|b| b.is_ascii_uppercase() || b == b'/');
            if !valid {
                return Err(Error::Config(format!(
                    "--advertise {adv:?} must be host:port, e.g. host1.example.com:54321 or 192.0.2.7:54321 (lower case, no scheme, no path)"
                )));
            }
        }
        if args.simulate.is_some() && args.advertise.is_some() {
            return Err(Error::Config(
                "--advertise names one host; simulated hosts advertise the address each listens on"
                    .into(),
            ));
        }
        Ok(Self {
            listen: args.listen,
            advertise: args.advertise.clone(),
            control_listen: args.simulate.map(|_| args.control_listen),
            tls,
            token: args
                .token_file
                .as_deref()
                .map(Token::from_file)
                .transpose()?,
            max_frame_bytes: args.max_frame_bytes,
            monitor,
            hosts,
            kube: kube.map(|c| (c, lease)),
        })
    }
}

/// Runs the agent until interrupted (SIGINT or SIGTERM).
///
/// # Errors
/// When the agent cannot start or its server fails.
pub async fn run(args: AgentArgs) -> Result<(), Error> {
    // Flags are checked before any Kubernetes client exists, so a bad flag is reported as such.
    let mut opts = Options::from_args(&args, None)?;
    let client = kube::Client::try_default().await.map_err(Error::Kube)?;
    opts.kube = Some((client, lease_config(&args)?));
    let running = start(opts).await?;
    if let Some(addr) = args.health_addr {
        health::serve(addr, Arc::clone(&running.hosts), running.serving()).await?;
    }
    running.run_until(crate::shutdown::signal()).await
}

/// Creates a file-domain layout.
///
/// # Errors
/// When the layout cannot be written.
pub fn make_domain(args: &MakeDomainArgs) -> Result<(), Error> {
    if !crate::protocol::wire::is_uuid(&args.uuid) {
        return Err(Error::Config(format!(
            "--uuid {:?} is not a UUID",
            args.uuid
        )));
    }
    let path = storage::make_file_domain(&args.root, &args.mount, &args.uuid.to_ascii_lowercase())
        .map_err(Error::Layout)?;
    tracing::info!(path = %path.display(), "domain layout written");
    Ok(())
}
