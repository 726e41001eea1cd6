//! `poolkeeper dev`: a local control plane (or the cluster of `$KUBECONFIG` with `--use-kubeconfig`),
//! the controller and `--hosts N` simulated hosts in one process, with an example pool of three
//! domains applied, until Ctrl-C or SIGTERM. Everything it started stops with it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tracing::info;

use crate::{
    agent::{self, Hosts, lease::LeaseConfig, monitor::MonitorConfig},
    api::{Host, StorageDomain, StoragePool},
    controller::{self, Settings},
    protocol::{self, Token},
    testenv::{self, ControlPlane},
};

/// The field manager of the objects the dev mode applies (as an operator would).
const FIELD_MANAGER: &str = "poolkeeper-dev";
/// The namespace holding host Leases.
const LEASE_NAMESPACE: &str = "poolkeeper-system";

/// Errors of the dev mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local control plane did not start.
    #[error("starting the local control plane")]
    ControlPlane(#[from] testenv::Error),
    /// The `$KUBECONFIG` cluster is not reachable.
    #[error("loading $KUBECONFIG")]
    Config(#[source] kube::Error),
    /// A request to the API server failed.
    #[error("{step}")]
    Kube {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The simulated hosts did not start.
    #[error("starting the simulated hosts")]
    Agent(#[from] agent::Error),
    /// The controller failed.
    #[error("running the controller")]
    Controller(#[from] controller::Error),
    /// A local file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host RPC client could not be built.
    #[error("building the host RPC client")]
    Rpc(#[from] protocol::ClientError),
    /// The generated token was refused (a bug).
    #[error("generating the agent token")]
    Token(#[from] protocol::TokenError),
}

/// Arguments of `poolkeeper dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// How many simulated hosts to run.
    #[arg(long, default_value_t = 10)]
    pub hosts: usize,
    /// Where to write the kubeconfig of the local control plane.
    #[arg(long, default_value = ".cache/kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Use the cluster `$KUBECONFIG` points at instead of starting a local control plane.
    #[arg(long)]
    pub use_kubeconfig: bool,
    /// Where the controller serves metrics and health.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// Where the first simulated host serves VDSM's wire; host `i` listens on this address plus
    /// `i` (127.1.0.1, 127.1.0.2, ...), same port.
    #[arg(long, default_value = "127.1.0.1:54321")]
    pub agent_addr: SocketAddr,
    /// Where the simulator serves its fault-injection API (docs/simulator.md).
    #[arg(long, default_value = "127.0.0.1:54320")]
    pub control_addr: SocketAddr,
}

/// Runs until interrupted.
///
/// # Errors
/// When a part cannot start.
pub async fn run(args: DevArgs) -> Result<(), Error> {
    let (client, control_plane) = if args.use_kubeconfig {
        let client = Client::try_default().await.map_err(Error::Config)?;
        testenv::install_crds(&client).await?;
        (client, None)
    } else {
        println!(
            "starting a local control plane (etcd + kube-apiserver {})",
            testenv::KUBERNETES_VERSION
        );
        let cp = ControlPlane::start().await?;
        if let Some(dir) = args.kubeconfig.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(&args.kubeconfig, cp.kubeconfig_yaml()).map_err(|source| Error::Write {
            path: args.kubeconfig.clone(),
            source,
        })?;
        (cp.client().await?, Some(cp))
    };
    ensure_namespace(&client).await?;

    let secret: String = uuid::Uuid::new_v4().simple().to_string();
    let token = Token::new(&secret)?;
    let agents = agent::start(agent::Options {
        listen: args.agent_addr,
        advertise: None,
        control_listen: Some(args.control_addr),
        // The demo's hosts and controller share this process: plain TCP, as `--insecure`.
        tls: None,
        token: Some(token.clone()),
        max_frame_bytes: agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_secs(2),
            check_timeout: Duration::from_secs(5),
        },
        hosts: Hosts::Simulated {
            count: args.hosts,
            prefix: "host".into(),
            storage: None,
        },
        kube: Some((
            client.clone(),
            LeaseConfig {
                namespace: LEASE_NAMESPACE.into(),
                ..LeaseConfig::default()
            },
        )),
    })
    .await?;
    let control_addr = agents.control_addr().unwrap_or(args.control_addr);

    let settings = Settings {
        lease_namespace: LEASE_NAMESPACE.into(),
        concurrency: 8,
        rpc: protocol::Client::new(token, None)?,
        signer: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_controller = stop_rx.clone();
    let controller = tokio::spawn(controller::run_with(
        client.clone(),
        settings,
        args.metrics_addr,
        async move {
            let _ = stop_controller.changed().await;
        },
    ));

    let names: Vec<String> = agents.hosts().iter().map(|h| h.name().to_owned()).collect();
    apply_examples(&client, &names).await?;

    println!();
    println!(
        "poolkeeper is running: controller, {} simulated hosts, pool dc1 with 3 domains.",
        args.hosts
    );
    if control_plane.is_some() {
        println!("  export KUBECONFIG={}", args.kubeconfig.display());
        // A kubectl of the same version was built with the control plane.
        println!("  export PATH={}:$PATH", testenv::binaries_dir().display());
    }
    println!("  kubectl get sp,sd,host");
    println!("  kubectl wait --for=condition=Ready storagepool/dc1 --timeout=60s");
    println!("  kubectl patch sd data2 --type=merge -p '{{\"spec\":{{\"maintenance\":true}}}}'");
    println!("  metrics: http://{}/metrics", args.metrics_addr);
    println!(
        "  fault injection (docs/simulator.md): http://{control_addr}/control/hosts  (token: {secret})"
    );
    println!("Ctrl-C stops everything.");

    crate::shutdown::signal().await;
    info!("stopping");
    let _ = stop_tx.send(true);
    agents.shutdown().await;
    match controller.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "the controller task failed"),
    }
    drop(control_plane);
    Ok(())
}

async fn ensure_namespace(client: &Client) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE}});
    api.patch(
        LEASE_NAMESPACE,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&ns),
    )
    .await
    .map_err(|source| Error::Kube {
        step: "creating the lease namespace",
        source,
    })?;
    Ok(())
}

/// Applies the example pool and domains, and puts every simulated host in the pool once it has
/// registered (as an operator would).
async fn apply_examples(client: &Client, hosts: &[String]) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER);
    let pools: Api<StoragePool> = Api::all(client.clone());
    let pool = json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool",
        "metadata": {"name": "dc1"},
        "spec": {"uuid": "5849b030-626e-47cb-ad90-3ce782d831b3", "masterDomain": "1b6e2d9c-6a3e-4c1f-9d2b-2f0e8a7c4d11"},
    });
    pools
        .patch("dc1", &params, &Patch::Apply(&pool))
        .await
        .map_err(|source| Error::Kube {
            step: "applying the example pool",
            source,
        })?;
    let domains: Api<StorageDomain> = Api::all(client.clone());
    for (name, uuid, type_) in [
        ("data1", "1b6e2d9c-6a3e-4c1f-9d2b-2f0e8a7c4d11", "Data"),
        ("data2", "7c0f3a52-94d8-4b6e-8e1a-5d2c9b3f6a20", "Data"),
        ("iso1", "c3d4e5f6-0718-4293-a4b5-c6d7e8f90a1b", "ISO"),
    ] {
        let d = json!({
            "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StorageDomain",
            "metadata": {"name": name},
            "spec": {"uuid": uuid, "type": type_, "storage": {"kind": "File", "path": format!("nfs.example.com:/exports/{name}")}, "pool": "dc1"},
        });
        domains
            .patch(name, &params, &Patch::Apply(&d))
            .await
            .map_err(|source| Error::Kube {
                step: "applying an example domain",
                source,
            })?;
    }
    let host_api: Api<Host> = Api::all(client.clone());
    for name in hosts {
        // The agent registers its Host; wait for it, then set the operator-owned pool field.
        for _ in 0..100 {
            if host_api.get_opt(name).await.ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let patch = json!({"spec": {"pool": "dc1"}});
        host_api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Kube {
                step: "putting a host in the pool",
                source,
            })?;
    }
    Ok(())
}
