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
//! without dropping it (a `static` shared by a test binary is never dropped).

mod certs;

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
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Child,
    watchdog: Option<Child>,
    kubeconfig: PathBuf,
    kubeconfig_yaml: String,
    url: String,
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
        let etcd = spawn(
            &etcd_bin,
            &[
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.path().join("etcd.log"),
        )?;
        let url = format!("https://127.0.0.1:{api_port}");
        let apiserver = spawn(
            &apiserver_bin,
            &[
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
            &dir.path().join("kube-apiserver.log"),
        )?;

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
        };
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

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_DEADLINE;
        // `/readyz` is open to anonymous users (system:public-info-viewer); a plain HTTP client
        // keeps the expected failures while the server starts out of the kube client's error log.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = fs::read(self.dir.path().join("ca.crt")).map_err(Error::io("reading the CA"))?;
        let http = reqwest::Certificate::from_pem(&ca)
            .and_then(|ca| {
                reqwest::Client::builder()
                    .tls_certs_only([ca])
                    .timeout(Duration::from_secs(5))
                    .build()
            })
            .map_err(Error::Http)?;
        let url = format!("{}/readyz", self.url);
        loop {
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            let exited = matches!(self.apiserver.try_wait(), Ok(Some(_)))
                || matches!(self.etcd.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let etcd_dead = matches!(self.etcd.try_wait(), Ok(Some(_)));
                let (component, log) = if etcd_dead {
                    ("etcd", "etcd.log")
                } else {
                    ("kube-apiserver", "kube-apiserver.log")
                };
                return Err(Error::NotReady {
                    component,
                    seconds: READY_DEADLINE.as_secs(),
                    log_tail: tail(&self.dir.path().join(log), 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn install_crds(&self) -> Result<(), Error> {
        let client = self.client().await?;
        install_crds(&client).await
    }

    /// Starts a process that stops etcd and kube-apiserver and removes the temp dir once this
    /// process is gone, so a control plane held in a `static` does not outlive its test binary.
    fn spawn_watchdog(&self) -> Result<Child, Error> {
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {api} {etcd} 2>/dev/null; sleep 2; kill -9 {api} {etcd} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            api = self.apiserver.id(),
            etcd = self.etcd.id(),
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
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
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
    let out = fs::File::create(log).map_err(Error::io("creating a process log"))?;
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
