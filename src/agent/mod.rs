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

use axum::Router;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::domains::FileDomains;
use self::host::{HostAgent, PoolStorage, SpmLease};
use self::lease::LeaseConfig;
use self::monitor::{MAX_PERIOD, MonitorConfig};
use self::storage::{FileStorage, Storage};
use crate::protocol::server::{DEFAULT_MAX_BODY_BYTES, protect, router};
use crate::protocol::{RPC_PATH, Token, TokenError, Verbs};

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
    Tls(#[source] std::io::Error),
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
    /// Address to listen on (VDSM's port is 54321).
    #[arg(long, env = "POOLKEEPER_LISTEN", default_value = "0.0.0.0:54321")]
    pub listen: SocketAddr,
    /// Base URL the controller reaches this process at; the Host endpoint is `<url>/jsonrpc`
    /// (simulated hosts: `<url>/hosts/<name>/jsonrpc`). Default: from the listen address, or the
    /// machine's host name when listening on every address.
    #[arg(long, env = "POOLKEEPER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The Host's name. Default: the machine's host name.
    #[arg(long, env = "POOLKEEPER_HOST_NAME")]
    pub host_name: Option<String>,
    /// Where storage is mounted: file domains are `<root>/<mount>/<sdUUID>/dom_md/metadata`.
    #[arg(long, default_value = "/rhev/data-center/mnt")]
    pub storage_root: PathBuf,
    /// File holding the bearer token every call must carry (a mounted Secret).
    #[arg(long, env = "POOLKEEPER_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// TLS certificate chain (PEM); with --tls-key, the agent serves HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (tests and demos only); without TLS files the agent refuses to start
    /// unless this is given.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,
    /// Largest request body accepted (413 beyond).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
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
}

/// TLS files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Everything [`start`] needs.
#[derive(Clone)]
pub struct Options {
    /// Address to listen on (port 0: any free port, see [`Running::local_addr`]).
    pub listen: SocketAddr,
    /// Base URL of this process for Host endpoints; `None`: derived from the bound address.
    pub advertise_url: Option<String>,
    /// HTTPS with these files; `None`: plain HTTP (the caller decided it is allowed).
    pub tls: Option<TlsFiles>,
    /// The bearer token calls must carry.
    pub token: Token,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Monitor timing.
    pub monitor: MonitorConfig,
    /// The hosts to run.
    pub hosts: Hosts,
    /// Kubernetes: registration, reports and Leases. `None`: serve calls only.
    pub kube: Option<(kube::Client, LeaseConfig)>,
}

/// A started agent.
pub struct Running {
    addr: SocketAddr,
    hosts: Arc<[Arc<HostAgent>]>,
    faults: Option<Arc<sim::FaultTable>>,
    shutdown: watch::Sender<bool>,
    server: axum_server::Handle<SocketAddr>,
    server_task: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// The simulator's storage directory, removed when the process stops.
    _sim_root: Option<tempfile::TempDir>,
}

impl Running {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

    /// Runs until the server fails or `stop` completes, then shuts down.
    ///
    /// # Errors
    /// When the server stops with an error.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let result = tokio::select! {
            r = &mut self.server_task => Some(r),
            () = stop => None,
        };
        self.stop_background().await;
        match result {
            None => {
                self.server.graceful_shutdown(Some(Duration::from_secs(5)));
                match self.server_task.await {
                    Ok(r) => r.map_err(Error::Serve),
                    Err(_) => Ok(()),
                }
            }
            Some(Ok(r)) => r.map_err(Error::Serve),
            Some(Err(join)) => Err(Error::Serve(std::io::Error::other(join.to_string()))),
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
/// When the address cannot be bound or the TLS files cannot be loaded.
pub async fn start(opts: Options) -> Result<Running, Error> {
    let std_listener = std::net::TcpListener::bind(opts.listen).map_err(|source| Error::Bind {
        addr: opts.listen,
        source,
    })?;
    let addr = std_listener.local_addr().map_err(|source| Error::Bind {
        addr: opts.listen,
        source,
    })?;
    let base = match &opts.advertise_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => default_base_url(addr, opts.tls.is_some()),
    };
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let changes = opts.kube.as_ref().map(|_| changes_tx);

    let lease = SpmLease::for_period(opts.monitor.period);
    let mut sim_root = None;
    let (hosts, faults, app): (Arc<[Arc<HostAgent>]>, _, Router) = match &opts.hosts {
        Hosts::Single { name, storage_root } => {
            let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(storage_root.clone()));
            // Real file domains: the master is checked as VDSM checks it.
            let pool_storage = PoolStorage {
                domains: FileDomains::new(storage_root.clone()),
                lease,
            };
            let host = Arc::new(HostAgent::new(
                0,
                name.clone(),
                format!("{base}{RPC_PATH}"),
                storage,
                pool_storage,
                changes,
            ));
            let verbs: Arc<dyn Verbs> = host.clone();
            let app = router(verbs, opts.token.clone(), opts.max_body_bytes);
            (Arc::from(vec![host]), None, app)
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
            let hosts: Arc<[Arc<HostAgent>]> = (0..*count)
                .map(|i| {
                    let name = format!("{prefix}-{i:04}");
                    let storage: Arc<dyn Storage> = Arc::new(
                        sim::SimStorage::new(Arc::clone(&faults), i)
                            .reading(pool_storage.domains.clone()),
                    );
                    let endpoint = format!("{base}/hosts/{name}{RPC_PATH}");
                    Arc::new(HostAgent::new(
                        i,
                        name,
                        endpoint,
                        storage,
                        pool_storage.clone(),
                        changes.clone(),
                    ))
                })
                .collect();
            let by_name: HashMap<String, usize> = hosts
                .iter()
                .map(|h| (h.name().to_owned(), h.index()))
                .collect();
            let state = sim::Sim {
                hosts: Arc::clone(&hosts),
                by_name: Arc::new(by_name),
                faults: Arc::clone(&faults),
                reachability: watch::Sender::new(0),
            };
            let app = protect(sim::routes(state), opts.token.clone(), opts.max_body_bytes);
            (hosts, Some(faults), app)
        }
    };

    let server = axum_server::Handle::new();
    let service = app.into_make_service();
    let server_task = match &opts.tls {
        Some(files) => {
            let _already_installed = rustls::crypto::ring::default_provider().install_default();
            let config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(Error::Tls)?;
            let srv = axum_server::tls_rustls::from_tcp_rustls(std_listener, config)
                .map_err(|source| Error::Bind { addr, source })?
                .handle(server.clone());
            tokio::spawn(srv.serve(service))
        }
        None => {
            let srv = axum_server::from_tcp(std_listener)
                .map_err(|source| Error::Bind { addr, source })?
                .handle(server.clone());
            tokio::spawn(srv.serve(service))
        }
    };
    tracing::info!(addr = %addr, base_url = %base, hosts = hosts.len(), tls = opts.tls.is_some(), "agent serving");

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(driver::run_driver(
        Arc::clone(&hosts),
        opts.monitor,
        shutdown_rx.clone(),
    ))];
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
    Ok(Running {
        addr,
        hosts,
        faults,
        shutdown,
        server,
        server_task,
        tasks,
        _sim_root: sim_root,
    })
}

fn default_base_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match addr.ip() {
        ip if ip.is_unspecified() => machine_host_name(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{scheme}://{host}:{}", addr.port())
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

impl Options {
    /// Options from the command line; `kube` is the client for registration, reports and Leases.
    ///
    /// # Errors
    /// When a flag is invalid, the token file unusable, or plain HTTP was not asked for.
    pub fn from_args(args: &AgentArgs, kube: Option<kube::Client>) -> Result<Self, Error> {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ if args.insecure_http => None,
            _ => {
                return Err(Error::Config(
                    "give --tls-cert and --tls-key, or --insecure-http to serve plain HTTP".into(),
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
                Hosts::Single {
                    name,
                    storage_root: args.storage_root.clone(),
                }
            }
        };
        Ok(Self {
            listen: args.listen,
            advertise_url: args.advertise_url.clone(),
            tls,
            token: Token::from_file(&args.token_file)?,
            max_body_bytes: args.max_body_bytes,
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
        health::serve(addr, Arc::clone(&running.hosts)).await?;
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
