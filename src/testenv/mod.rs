//! A real local control plane (etcd + kube-apiserver on 127.0.0.1) for tests and `poolkeeper dev`,
//! started the way controller-runtime's envtest does it.
//!
//! The binaries are built from upstream Go modules by `make control-plane` (see
//! `hack/build-control-plane.sh`) into a cache outside the checkout; [`binaries_dir`] finds them.
//! This module never builds anything: a missing binary is an error that names the make target.
//!
//! [`ControlPlane::start`] generates throwaway certificates, starts etcd and kube-apiserver on free
//! loopback ports, waits for `/readyz`, installs the poolkeeper CRDs and waits until they are
//! Established. Dropping the [`ControlPlane`] stops the processes it started (its own PIDs only) and
//! removes its temporary directory; a watchdog process does the same if the owning process exits
//! without dropping it (a `static` shared by a test binary is never dropped). Fault tests stop and
//! start etcd or kube-apiserver in place (same flags, ports and data).

mod certs;

pub use crate::pki::{Issued, PoolCa};
/// Certificate usages, for [`PoolCa::issue`].
pub use rcgen::ExtendedKeyUsagePurpose as KeyUsage;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use tracing::info;

/// The pinned Kubernetes version of the test control plane.
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// The pinned etcd version of the test control plane.
pub const ETCD_VERSION: &str = "v3.6.16";
/// The field manager that installs CRDs.
const FIELD_MANAGER: &str = "poolkeeper-testenv";
/// How long kube-apiserver may take to become ready (loaded CI machines have needed 30 s and more).
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// Errors of the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is missing from the cache.
    #[error(
        "{binary} not found at {path}: build the test control plane with `make control-plane` (or set POOLKEEPER_CP_DIR)"
    )]
    MissingBinary {
        /// The missing binary.
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A local I/O step failed (temp dir, files, ports, process start).
    #[error("{step}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificates could not be generated.
    #[error("generating certificates")]
    Certs(#[from] rcgen::Error),
    /// A process did not become ready in time.
    #[error("{component} did not become ready within {seconds} s; last log lines:\n{log_tail}")]
    NotReady {
        /// etcd or kube-apiserver.
        component: &'static str,
        /// The deadline.
        seconds: u64,
        /// The end of its log.
        log_tail: String,
    },
    /// The kubeconfig could not be turned into a client.
    #[error("building a client from the kubeconfig")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A request to the API server failed.
    #[error("talking to the API server")]
    Kube(#[from] kube::Error),
    /// The readiness probe client could not be built.
    #[error("building the readiness probe client")]
    Http(#[source] reqwest::Error),
    /// A CRD did not become Established.
    #[error("waiting for CRD {name} to be Established")]
    CrdNotEstablished {
        /// The CRD's name.
        name: String,
    },
}

impl Error {
    fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { step, source }
    }
}

/// The directory holding `etcd`, `kube-apiserver` and `kubectl`: `$POOLKEEPER_CP_DIR`, else
/// `$POOLKEEPER_CACHE_DIR/control-plane/k8s-<v>-etcd-<v>` (default cache dir `~/.cache/poolkeeper`).
pub fn binaries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POOLKEEPER_CP_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("POOLKEEPER_CACHE_DIR").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/poolkeeper")
        },
        PathBuf::from,
    );
    cache
        .join("control-plane")
        .join(format!("k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"))
}

fn binary(name: &'static str) -> Result<PathBuf, Error> {
    let path = binaries_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { binary: name, path })
    }
}

/// The path of the version-matched `kubectl` built with the control plane.
///
/// # Errors
/// When it has not been built.
pub fn kubectl_path() -> Result<PathBuf, Error> {
    binary("kubectl")
}

/// A running etcd + kube-apiserver pair with the poolkeeper CRDs installed.
///
/// Fault tests stop and start either process in place ([`Self::restart_apiserver`],
/// [`Self::stop_etcd`], [`Self::start_etcd`]...): the same binaries, flags, ports, certificates
/// and etcd data directory, so clients keep their configuration and the cluster keeps its state.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Component,
    apiserver: Component,
    watchdog: Option<Child>,
    kubeconfig: PathBuf,
    kubeconfig_yaml: String,
    url: String,
    etcd_url: String,
}

/// One process of the control plane: how to start it, and the running child if any.
struct Component {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
}

impl Component {
    fn new(name: &'static str, bin: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name,
            bin,
            args,
            log,
            child: std::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the process unless it runs; its output is appended to its log.
    fn start(&self) -> Result<(), Error> {
        let mut child = self.lock();
        if child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        {
            return Ok(());
        }
        *child = Some(spawn(&self.bin, &self.args, &self.log)?);
        Ok(())
    }

    /// Stops the process (SIGKILL: it is a throwaway test process) and reaps it.
    fn stop(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    fn exited(&self) -> bool {
        self.lock()
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports, waits until the API server is ready,
    /// installs the poolkeeper CRDs and waits until they are Established.
    ///
    /// # Errors
    /// When a binary is missing, a process fails to start or to become ready, or a CRD cannot be
    /// installed.
    pub async fn start() -> Result<Self, Error> {
        let started = Instant::now();
        let etcd_bin = binary("etcd")?;
        let apiserver_bin = binary("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("poolkeeper-cp-")
            .tempdir()
            .map_err(Error::io("creating the control plane's temp dir"))?;
        let certs = certs::generate(dir.path())?;

        let [etcd_port, etcd_peer_port, api_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = Component::new(
            "etcd",
            etcd_bin,
            vec![
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            dir.path().join("etcd.log"),
        );
        let url = format!("https://127.0.0.1:{api_port}");
        let apiserver = Component::new(
            "kube-apiserver",
            apiserver_bin,
            vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", dir.path().display()),
                format!("--tls-cert-file={}", certs.serving_cert.display()),
                format!("--tls-private-key-file={}", certs.serving_key.display()),
                format!("--client-ca-file={}", certs.ca_cert.display()),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                format!("--service-account-issuer={url}/"),
                format!("--service-account-key-file={}", certs.sa_public.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    certs.sa_private.display()
                ),
                "--authorization-mode=RBAC".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--allow-privileged=true".into(),
                "--v=1".into(),
            ],
            dir.path().join("kube-apiserver.log"),
        );
        etcd.start()?;
        apiserver.start()?;

        let kubeconfig_yaml = certs::kubeconfig(&url, &certs)?;
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(&kubeconfig, &kubeconfig_yaml).map_err(Error::io("writing the kubeconfig"))?;
        let mut cp = Self {
            dir,
            etcd,
            apiserver,
            watchdog: None,
            kubeconfig,
            kubeconfig_yaml,
            url,
            etcd_url,
        };
        cp.write_pids()?;
        cp.watchdog = cp.spawn_watchdog().ok();

        cp.wait_ready().await?;
        let ready = started.elapsed();
        cp.install_crds().await?;
        info!(
            url = %cp.url,
            ready_ms = ready.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "local control plane started"
        );
        Ok(cp)
    }

    /// Stops kube-apiserver (SIGKILL, as a crash); etcd keeps running.
    pub fn stop_apiserver(&self) {
        self.apiserver.stop();
        info!("kube-apiserver stopped");
    }

    /// Starts kube-apiserver again (same flags, port and etcd) and waits until it is ready.
    ///
    /// # Errors
    /// When it does not start or become ready (with etcd stopped it never does).
    pub async fn start_apiserver(&self) -> Result<(), Error> {
        self.apiserver.start()?;
        self.write_pids()?;
        self.wait_ready().await?;
        info!("kube-apiserver started again");
        Ok(())
    }

    /// Stops kube-apiserver and starts it again; returns once it is ready.
    ///
    /// # Errors
    /// As [`Self::start_apiserver`].
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// Stops etcd (SIGKILL; its data directory stays). kube-apiserver keeps running and answers
    /// storage errors (and `/readyz` fails) until etcd is back.
    pub fn stop_etcd(&self) {
        self.etcd.stop();
        info!("etcd stopped");
    }

    /// Starts etcd again on the same ports and data directory, and waits until kube-apiserver is
    /// ready again (when it runs).
    ///
    /// # Errors
    /// When etcd does not start, or the API server does not become ready.
    pub async fn start_etcd(&self) -> Result<(), Error> {
        self.etcd.start()?;
        self.write_pids()?;
        if !self.apiserver.exited() {
            self.wait_ready().await?;
        }
        info!("etcd started again");
        Ok(())
    }

    /// etcd's client URL (plain HTTP on loopback; its JSON gateway serves `/v3/...`).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig file for the admin user (group `system:masters`), usable by `kubectl --kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig's contents.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The directory holding the certificates, logs and etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client configuration for the admin user.
    ///
    /// # Errors
    /// When the kubeconfig cannot be parsed (a bug).
    pub async fn config(&self) -> Result<Config, Error> {
        let kc = Kubeconfig::from_yaml(&self.kubeconfig_yaml)?;
        Ok(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
    }

    /// A new client for the admin user. Each async runtime should make its own: a client's
    /// connections live on the runtime that created it.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub async fn client(&self) -> Result<Client, Error> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// A `kubectl` command (the version-matched one built with the control plane) pointed at
    /// this control plane.
    ///
    /// # Errors
    /// When kubectl has not been built.
    pub fn kubectl(&self) -> Result<Command, Error> {
        let mut cmd = Command::new(kubectl_path()?);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        Ok(cmd)
    }

    /// Whether kube-apiserver answers `/readyz` (which checks etcd) with success now.
    ///
    /// # Errors
    /// When the probe client cannot be built.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.probe_ready(&self.readyz_client()?).await)
    }

    /// A plain HTTP client trusting the control plane's CA: `/readyz` is open to anonymous users
    /// (system:public-info-viewer), and a plain client keeps the expected failures while the
    /// server starts out of the kube client's error log.
    fn readyz_client(&self) -> Result<reqwest::Client, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = fs::read(self.dir.path().join("ca.crt")).map_err(Error::io("reading the CA"))?;
        reqwest::Certificate::from_pem(&ca)
            .and_then(|ca| {
                reqwest::Client::builder()
                    .tls_certs_only([ca])
                    .timeout(Duration::from_secs(5))
                    .build()
            })
            .map_err(Error::Http)
    }

    async fn probe_ready(&self, http: &reqwest::Client) -> bool {
        let url = format!("{}/readyz", self.url);
        http.get(&url)
            .send()
            .await
            .is_ok_and(|resp| resp.status().is_success())
    }

    async fn wait_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_DEADLINE;
        let http = self.readyz_client()?;
        loop {
            if self.probe_ready(&http).await {
                return Ok(());
            }
            let exited = self.apiserver.exited() || self.etcd.exited();
            if exited || Instant::now() > deadline {
                let dead = if self.etcd.exited() {
                    &self.etcd
                } else {
                    &self.apiserver
                };
                return Err(Error::NotReady {
                    component: dead.name,
                    seconds: READY_DEADLINE.as_secs(),
                    log_tail: tail(&dead.log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn install_crds(&self) -> Result<(), Error> {
        let client = self.client().await?;
        install_crds(&client).await
    }

    /// Records the PIDs of the running processes for the watchdog (rewritten on every restart).
    fn write_pids(&self) -> Result<(), Error> {
        let pids: Vec<String> = [self.apiserver.pid(), self.etcd.pid()]
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        let tmp = self.dir.path().join("pids.tmp");
        fs::write(&tmp, pids.join(" ")).map_err(Error::io("writing the pid file"))?;
        fs::rename(&tmp, self.dir.path().join("pids")).map_err(Error::io("writing the pid file"))
    }

    /// Starts a process that stops etcd and kube-apiserver and removes the temp dir once this
    /// process is gone, so a control plane held in a `static` does not outlive its test binary.
    /// It reads the PIDs from the pid file at that moment, so restarted processes are stopped too.
    fn spawn_watchdog(&self) -> Result<Child, Error> {
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; pids=$(cat '{dir}/pids'); kill $pids 2>/dev/null; sleep 2; kill -9 $pids 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            dir = self.dir.path().display(),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("starting the control plane watchdog"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Applies every poolkeeper CRD (server-side apply) and waits until each is Established.
///
/// # Errors
/// When a CRD cannot be applied or does not become Established within 30 s.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        if tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .ok()
            .and_then(Result::ok)
            .is_none()
        {
            return Err(Error::CrdNotEstablished { name });
        }
    }
    Ok(())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, Error> {
    // Appended: a restarted process continues its log.
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("creating a process log"))?;
    let err = out
        .try_clone()
        .map_err(Error::io("creating a process log"))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(Error::io("starting a control plane process"))
}

/// Distinct free loopback ports (bound together, then released, so they differ from each other).
fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::io("finding free ports"))?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(Error::io("finding free ports"))?
            .port();
    }
    Ok(ports)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
