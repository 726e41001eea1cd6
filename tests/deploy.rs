//! deploy/ and crds/ against the real test API server: accepted as a user applies them (server
//! dry run, then for real), with the shape a production install needs; and the controller and
//! agent started as their Pods would start them, from the stored Deployment's and DaemonSet's own
//! args and env (fieldRefs filled in as the kubelet does, Secrets and host paths mounted as files),
//! running as their ServiceAccounts.
//!
//! Nothing runs Pods here (no kubelet, no controller-manager): the workloads' processes are the
//! real binary, started by the test, with the host ports a Pod would take moved to free ones (a
//! test machine is shared).

mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use poolkeeper::api::{Host, StoragePool};
use serde_json::{Value, json};
use support::{
    client,
    cluster::{LEASE_NAMESPACE, ensure_namespace, obj},
    control_plane, eventually, kubectl_ok, kubectl_stdin, unique,
};

const WAIT: Duration = Duration::from_secs(60);
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn path(rel: &str) -> String {
    format!("{ROOT}/{rel}")
}

/// `kubectl kustomize` of a kustomization: the objects it renders.
fn rendered(dir: &str) -> Vec<Value> {
    let yaml = kubectl_ok(&["kustomize", dir]);
    serde_saphyr::from_multiple(&yaml).expect("rendered YAML")
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

/// deploy/ and crds/ applied for real (server-side, as docs/install.md says), and nothing else:
/// the pool CA and every certificate come from the controller. Once per test binary.
fn installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        kubectl_ok(&["apply", "--server-side", "-k", &path("crds")]);
        kubectl_ok(&["apply", "--server-side", "-k", &path("deploy")]);
    });
}

/// The stored object, as the API server defaulted it.
fn stored(kind: &str, name: &str) -> Value {
    let out = kubectl_ok(&["-n", LEASE_NAMESPACE, "get", kind, name, "-o", "json"]);
    serde_json::from_str(&out).expect("object json")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A kubeconfig that acts as ServiceAccount `sa` of poolkeeper-system, as a Pod's bound token
/// would: on `node`, it carries the node name (`deploy/admission.yaml` reads it).
fn kubeconfig_as(sa: &str, node: Option<&str>, dir: &Path) -> PathBuf {
    let mut config =
        kube::config::Kubeconfig::from_yaml(control_plane().kubeconfig_yaml()).expect("kubeconfig");
    for user in &mut config.auth_infos {
        let auth = user.auth_info.as_mut().expect("user");
        auth.impersonate = Some(format!("system:serviceaccount:{LEASE_NAMESPACE}:{sa}"));
        auth.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{LEASE_NAMESPACE}"),
            "system:authenticated".into(),
        ]);
        auth.impersonate_user_extra = node.map(|n| {
            std::collections::HashMap::from([(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec![n.to_owned()],
            )])
        });
    }
    let path = dir.join(format!("kubeconfig-{sa}"));
    // JSON is YAML: kubectl and kube-rs read it.
    std::fs::write(
        &path,
        serde_json::to_string(&config).expect("kubeconfig json"),
    )
    .expect("write kubeconfig");
    path
}

/// What a container sees, laid out in a temporary directory: each mounted Secret as files, each
/// hostPath as a directory standing for the node's.
struct Container {
    dir: tempfile::TempDir,
    spec: Value,
    /// mountPath → local directory, longest first.
    mounts: Vec<(String, PathBuf)>,
    /// Environment variables, fieldRefs filled in.
    env: BTreeMap<String, String>,
    /// The node the Pod runs on (`spec.nodeName`), which its bound token names.
    node: Option<String>,
}

impl Container {
    fn new(workload: &Value, field_refs: &BTreeMap<&str, String>) -> Self {
        let pod = &workload["spec"]["template"]["spec"];
        let spec = pod["containers"][0].clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mounts = Vec::new();
        // A container without mounts (the controller's) has no volumeMounts at all.
        for m in spec["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().expect("mount name");
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volume {name} of a mount is missing"));
            let local = dir.path().join(name);
            std::fs::create_dir_all(&local).expect("mount dir");
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let s: Value = serde_json::from_str(&kubectl_ok(&[
                    "-n",
                    LEASE_NAMESPACE,
                    "get",
                    "secret",
                    secret,
                    "-o",
                    "json",
                ]))
                .expect("secret json");
                for (key, value) in s["data"].as_object().expect("secret data") {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.as_str().expect("base64"))
                        .expect("secret value");
                    std::fs::write(local.join(key), bytes).expect("secret file");
                }
            } else if let Some(map) = volume["configMap"]["name"].as_str() {
                let cm: Value = serde_json::from_str(&kubectl_ok(&[
                    "-n",
                    LEASE_NAMESPACE,
                    "get",
                    "configmap",
                    map,
                    "-o",
                    "json",
                ]))
                .expect("configmap json");
                for (key, value) in cm["data"].as_object().expect("configmap data") {
                    std::fs::write(local.join(key), value.as_str().expect("text"))
                        .expect("configmap file");
                }
            } else {
                assert!(
                    volume.get("hostPath").is_some(),
                    "unexpected volume kind: {volume}"
                );
            }
            let mount_path = m["mountPath"].as_str().expect("mountPath").to_owned();
            mounts.push((mount_path, local));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut env = BTreeMap::new();
        for e in spec["env"].as_array().expect("env") {
            let name = e["name"].as_str().expect("env name").to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else {
                let field = e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("env {name}: only values and fieldRefs are filled in")
                    });
                field_refs
                    .get(field)
                    .unwrap_or_else(|| panic!("env {name}: no value for fieldRef {field}"))
                    .clone()
            };
            env.insert(name, value);
        }
        Self {
            dir,
            spec,
            mounts,
            env,
            node: field_refs.get("spec.nodeName").cloned(),
        }
    }

    /// The container's args with `$(VAR)` expanded as the kubelet does and mounted paths moved
    /// to their local directories.
    fn args(&self) -> Vec<String> {
        self.spec["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| {
                let mut arg = a.as_str().expect("arg").to_owned();
                for (name, value) in &self.env {
                    arg = arg.replace(&format!("$({name})"), value);
                }
                for (mount, local) in &self.mounts {
                    arg = arg.replace(mount.as_str(), &local.display().to_string());
                }
                arg
            })
            .collect()
    }

    fn port(&self, name: &str) -> u16 {
        let port = self.spec["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"));
        u16::try_from(port["containerPort"].as_u64().expect("containerPort")).expect("port")
    }

    /// Starts the image's entrypoint (the binary) with `args`, the container's env plus `extra`,
    /// acting as ServiceAccount `sa`. Its log goes to a file shown if the test fails.
    fn start(&self, sa: &str, args: &[String], extra: &[(&str, String)]) -> Child {
        let log_path = self.dir.path().join("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
            .args(args)
            .env_clear()
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "KUBECONFIG",
                kubeconfig_as(sa, self.node.as_deref(), self.dir.path()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the binary");
        Child { child, log_path }
    }
}

/// A started process, killed when the test ends; its log is printed if the test failed.
struct Child {
    child: std::process::Child,
    log_path: PathBuf,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let mut err = std::io::stderr();
            let _ = writeln!(err, "--- process log (last lines):");
            for line in tail.iter().rev() {
                let _ = writeln!(err, "{line}");
            }
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((status, content_type, resp.text().await.ok()?))
}

/// The default of `--flag` in `poolkeeper <subcommand> --help`.
fn default_of(subcommand: &str, flag: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
        .args([subcommand, "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    let from_flag = &help[help
        .find(&format!("  {flag} "))
        .unwrap_or_else(|| panic!("{flag} not in {subcommand} --help"))..];
    let default = &from_flag[from_flag
        .find("[default: ")
        .unwrap_or_else(|| panic!("no default for {flag}"))
        + "[default: ".len()..];
    default[..default.find(']').expect("]")].to_owned()
}

#[test]
fn deploy_and_crds_are_accepted_by_the_api_server() {
    // The namespace exists before a server dry run can place objects in it.
    kubectl_ok(&["apply", "-f", &path("deploy/namespace.yaml")]);
    let crds = kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "--server-side",
        "-k",
        &path("crds"),
    ]);
    assert_eq!(crds.lines().count(), 3, "three CRDs: {crds}");
    let out = kubectl_ok(&["apply", "--dry-run=server", "-k", &path("deploy")]);
    for object in [
        "priorityclass.scheduling.k8s.io/poolkeeper",
        "deployment.apps/poolkeeper-controller",
        "poddisruptionbudget.policy/poolkeeper-controller",
        "service/poolkeeper-controller-metrics",
        "daemonset.apps/poolkeeper-agent",
        "validatingadmissionpolicy.admissionregistration.k8s.io/poolkeeper-agent-own-node",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/poolkeeper-agent-own-node",
    ] {
        assert!(out.contains(object), "{object} not applied: {out}");
    }
}

#[test]
fn crds_are_apart_from_the_workloads() {
    let deploy = rendered(&path("deploy"));
    assert!(
        deploy
            .iter()
            .all(|o| o["kind"] != "CustomResourceDefinition"),
        "deleting deploy/ must never delete the CRDs (and with them every pool and domain)"
    );
    let crds = rendered(&path("crds"));
    let names: Vec<&str> = crds
        .iter()
        .map(|o| o["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "hosts.poolkeeper.io",
            "storagedomains.poolkeeper.io",
            "storagepools.poolkeeper.io",
        ]
    );
}

#[test]
fn workloads_have_the_production_shape() {
    let objects = rendered(&path("deploy"));
    let image = String::from_utf8(
        Command::new(path("hack/build-image.sh"))
            .arg("--print-ref")
            .output()
            .expect("image ref")
            .stdout,
    )
    .expect("utf-8");
    let controller = find(&objects, "Deployment", "poolkeeper-controller");
    let agent = find(&objects, "DaemonSet", "poolkeeper-agent");
    for workload in [controller, agent] {
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["image"],
            image.trim(),
            "the image make image builds"
        );
        assert_eq!(pod["priorityClassName"], "poolkeeper");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        for probe in ["livenessProbe", "readinessProbe"] {
            assert!(c[probe]["httpGet"].is_object(), "{probe} missing");
        }
    }
    find(&objects, "PriorityClass", "poolkeeper");

    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(controller["spec"]["replicas"], 2);
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"], controller["spec"]["selector"]["matchLabels"],
        "the replicas keep apart from each other"
    );
    let pdb = find(&objects, "PodDisruptionBudget", "poolkeeper-controller");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], controller["spec"]["selector"]);
    let svc = find(&objects, "Service", "poolkeeper-controller-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    for flag in [
        "--leader-elect",
        "--leader-election-lease-seconds=",
        "--leader-election-renew-grace-seconds=",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} not in {args:?}"
        );
    }

    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["poolkeeper.io/hypervisor"], "true");
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == "poolkeeper.io/hypervisor" && t["operator"] == "Exists"),
        "the agent tolerates the hypervisor taint: {tolerations:?}"
    );
    let storage = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "storage")
        .expect("storage mount");
    assert_eq!(storage["readOnly"], true, "the agent only reads storage");
}

#[test]
fn podmonitor_component_is_accepted_with_the_prometheus_operator_crd() {
    // The Prometheus Operator's PodMonitor kind, schema-less: the API group, version and kind
    // the component uses must exist.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "podmonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor", "listKind": "PodMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    });
    let out = kubectl_stdin(&["apply", "-f", "-"], &crd.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/podmonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]);
    kubectl_ok(&["apply", "-f", &path("deploy/namespace.yaml")]);
    let overlay = tempfile::tempdir().expect("tempdir");
    // Kustomize takes relative paths only: from the overlay up to `/`, then down to the checkout.
    let up = "../".repeat(overlay.path().components().count() - 1);
    let checkout = format!("{up}{}", ROOT.trim_start_matches('/'));
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {checkout}/deploy\ncomponents:\n  - {checkout}/deploy/components/podmonitor\n"
        ),
    )
    .expect("overlay");
    let dir = overlay.path().display().to_string();
    let out = kubectl_ok(&["apply", "--dry-run=server", "-k", &dir]);
    assert!(
        out.contains("podmonitor.monitoring.coreos.com/poolkeeper"),
        "{out}"
    );
    let monitor = rendered(&dir)
        .into_iter()
        .find(|o| o["kind"] == "PodMonitor")
        .expect("PodMonitor");
    assert_eq!(monitor["metadata"]["namespace"], LEASE_NAMESPACE);
    let ports: Vec<&str> = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["port"].as_str().expect("port"))
        .collect();
    assert_eq!(
        ports,
        ["metrics", "health"],
        "the controller's and the agents' ports"
    );
}

/// The controller from the Deployment and an agent from the DaemonSet, as their Pods would run
/// them, with nothing created by hand: the controller leads and creates the pool CA; the agent
/// registers, serves health, requests its serving certificate, which the controller signs; and
/// the controller then calls it over mutual TLS and brings it into a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_agent_from_the_manifests_work_together() {
    ensure_namespace().await;
    installed();
    let deployment = stored("deployment", "poolkeeper-controller");
    let pod_name = unique("poolkeeper-controller");
    let refs = BTreeMap::from([
        ("metadata.name", pod_name.clone()),
        ("metadata.namespace", LEASE_NAMESPACE.to_owned()),
    ]);
    let container = Container::new(&deployment, &refs);
    // The probes and the Service reach the port the binary listens on by default.
    let default = default_of("controller", "--metrics-addr");
    assert_eq!(
        default,
        format!("0.0.0.0:{}", container.port("metrics")),
        "containerPort metrics is not where the controller serves"
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _controller = container.start(
        "poolkeeper-controller",
        &container.args(),
        &[("POOLKEEPER_METRICS_ADDR", metrics.to_string())],
    );

    let probe = container.spec["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .expect("readiness path")
        .to_owned();
    eventually("the controller ready", WAIT, || async {
        get(metrics, &probe)
            .await
            .filter(|(code, _, _)| *code == 200)
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    let lease = eventually("the controller leading", WAIT, || {
        let (leases, pod_name) = (leases.clone(), pod_name.clone());
        async move {
            let spec = leases.get_opt("poolkeeper-controller").await.ok()??.spec?;
            (spec.holder_identity.as_deref() == Some(&pod_name)).then_some(spec)
        }
    })
    .await;
    assert_eq!(
        lease.lease_duration_seconds,
        Some(15),
        "--leader-election-lease-seconds of the Deployment"
    );

    let name = unique("deployed");
    let pool: StoragePool =
        serde_json::from_value(obj("StoragePool", &name, json!({}))).expect("pool");
    let pools: Api<StoragePool> = Api::all(client().await);
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    eventually(&format!("pool {name} reconciled"), WAIT, || {
        let pools = pools.clone();
        let name = name.clone();
        async move {
            let p = pools.get(&name).await.ok()?;
            (p.status?.observed_generation == p.metadata.generation).then_some(())
        }
    })
    .await;

    // The agent, from the DaemonSet.
    let daemonset = stored("daemonset", "poolkeeper-agent");
    let node = unique("hypervisor");
    let refs = BTreeMap::from([
        ("spec.nodeName", node.clone()),
        ("status.hostIP", "127.0.0.1".to_owned()),
    ]);
    let container = Container::new(&daemonset, &refs);
    let health_port = container.port("health");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container.spec[probe]["httpGet"]["port"], "health");
    }
    // The host ports a Pod would take, moved to free ones: the RPC port (the binary's default,
    // as the DaemonSet gives no --listen) and the health port (its flag).
    assert_eq!(
        default_of("agent", "--listen"),
        format!("0.0.0.0:{}", container.port("jsonrpc"))
    );
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let rpc_port = free_port();
    let advertised = format!("--advertise=127.0.0.1:{}", container.port("jsonrpc"));
    let args: Vec<String> = container
        .args()
        .into_iter()
        .map(|a| {
            let flag = format!("--health-addr=127.0.0.1:{health_port}");
            if a == flag {
                format!("--health-addr={health}")
            } else if a == advertised {
                format!("--advertise=127.0.0.1:{rpc_port}")
            } else {
                a
            }
        })
        .collect();
    assert!(
        args.contains(&format!("--advertise=127.0.0.1:{rpc_port}")),
        "the agent advertises the node's address and VDSM's port: {args:?}"
    );
    assert!(
        args.contains(&format!("--health-addr={health}")),
        "the agent's health address is the node's, on port {health_port}: {args:?}"
    );
    let _agent = container.start(
        "poolkeeper-agent",
        &args,
        &[("POOLKEEPER_LISTEN", format!("127.0.0.1:{rpc_port}"))],
    );

    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container.spec[probe]["httpGet"]["path"]
            .as_str()
            .expect("probe path")
            .to_owned();
        eventually(&format!("the agent's {probe}"), WAIT, || async {
            get(health, &path).await.filter(|(code, _, _)| *code == 200)
        })
        .await;
    }
    let hosts: Api<Host> = Api::all(client().await);
    let host = eventually("the agent's Host", WAIT, || async {
        hosts.get_opt(&node).await.ok().flatten()
    })
    .await;
    assert_eq!(host.spec.endpoint, None, "the agent never writes the spec");
    let host = eventually("the agent's endpoint", WAIT, || async {
        hosts
            .get_opt(&node)
            .await
            .ok()
            .flatten()
            .filter(|h| h.status.as_ref().is_some_and(|s| s.endpoint.is_some()))
    })
    .await;
    assert_eq!(
        host.status.and_then(|s| s.endpoint).as_deref(),
        Some(format!("127.0.0.1:{rpc_port}").as_str()),
        "the endpoint the DaemonSet advertises (its port moved to a free one)"
    );
    let leases: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    eventually("the agent's Lease", WAIT, || async {
        leases.get_opt(&node).await.ok().flatten()
    })
    .await;
    let (_, content_type, body) = get(health, "/metrics").await.expect("metrics");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        body.contains(&format!(
            "poolkeeper_agent_pool_connected{{host=\"{node}\"}} 0"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "poolkeeper_agent_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );

    // Its certificate, requested from the cluster and signed by the controller.
    let requests: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(client().await);
    eventually("the agent's certificate issued", WAIT, || async {
        requests
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{node}-")))
                    && c.status
                        .as_ref()
                        .and_then(|s| s.certificate.as_ref())
                        .is_some()
            })
    })
    .await;
    eventually("the agent ready (serving)", WAIT, || async {
        get(health, "/readyz")
            .await
            .filter(|(code, _, _)| *code == 200)
    })
    .await;

    // The controller calls it over mutual TLS: the host joins a pool with a domain on its
    // storage and comes in sync.
    let sd_uuid = support::uuid();
    let storage = container
        .mounts
        .iter()
        .find(|(path, _)| path == "/rhev/data-center/mnt")
        .map(|(_, local)| local.clone())
        .expect("the storage mount");
    poolkeeper::agent::storage::make_file_domain(&storage, "mnt1", &sd_uuid).expect("layout");
    support::cluster::join_new_pool(&node, &sd_uuid).await;
    eventually("the agent's host in sync over mutual TLS", WAIT, || {
        support::cluster::in_sync_report(&node)
    })
    .await;
}

#[test]
fn contradictory_leader_election_timings_are_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
        .args([
            "controller",
            "--token-file=/dev/null",
            "--insecure",
            "--leader-elect",
            "--leader-election-lease-seconds=5",
            "--leader-election-renew-grace-seconds=5",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--leader-election-renew-grace-seconds (5) must be less than --leader-election-lease-seconds (5)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
