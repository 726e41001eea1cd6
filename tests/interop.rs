//! Interoperability: oVirt's own engine-side client library (`vdsm-jsonrpc-java-client` 1.7.4,
//! what ovirt-engine calls VDSM with) drives a real agent over STOMP and mutual TLS, with the
//! controller's certificate: `StoragePool.connect`, `getInfo`, `Host.getStorageRepoStats`, a
//! call VDSM refuses with its code, and `StoragePool.disconnect`. The Java program is
//! `interop/java` (see interop/README.md), built once by `hack/build-interop.sh` with Maven and
//! cached outside the checkout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Tls, TlsFiles, start};
use poolkeeper::protocol::wire::{CreateParams, method};
use poolkeeper::protocol::{Client, Target};
use poolkeeper::testenv::{Issued, PoolCa};
use serde_json::Value;

const HOST: &str = "interop-host";

/// The command that runs the engine-client check (built on first use).
fn engine_client() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("hack/build-interop.sh"))
        .current_dir(root)
        .output()
        .expect("run hack/build-interop.sh");
    assert!(
        out.status.success(),
        "building the engine-client check failed (Java 17 and Maven are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmd: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!cmd.is_empty(), "hack/build-interop.sh printed no command");
    cmd
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write");
    path.display().to_string()
}

/// Runs the check as `identity`; its exit code and one JSON value per call.
fn check(
    cmd: &[String],
    dir: &Path,
    port: u16,
    ca: &PoolCa,
    identity: &Issued,
    pool: &str,
    sd: &str,
) -> (Option<i32>, Vec<Value>) {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--ca", &write(dir, "ca.pem", ca.pem())])
        .args(["--cert", &write(dir, "client.pem", &identity.cert_pem)])
        .args(["--key", &write(dir, "client-key.pem", &identity.key_pem)])
        .args(["--pool", pool, "--host-id", "1", "--master", sd])
        .args(["--master-version", "1", "--domain", &format!("{sd}=active")])
        .args(["--timeout", "20"])
        .output()
        .expect("run the engine-client check");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ovirt_engine_client_drives_the_agent_over_mutual_tls() {
    let cmd = engine_client();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = tempfile::tempdir().expect("tempdir");
    let ca = PoolCa::generate("pool-ca").expect("ca");
    let host = ca.host(HOST, "127.0.0.1").expect("host cert");
    let controller = ca.controller().expect("controller cert");
    let running = start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: Some(Tls::Files(TlsFiles {
            cert: write(dir.path(), "tls.crt", &host.cert_pem).into(),
            key: write(dir.path(), "tls.key", &host.key_pem).into(),
            client_ca: Some(write(dir.path(), "agent-ca.crt", ca.pem()).into()),
        })),
        token: None,
        max_frame_bytes: poolkeeper::agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_millis(200),
            check_timeout: Duration::from_secs(1),
        },
        hosts: Hosts::Single {
            name: HOST.into(),
            storage_root: storage.path().to_owned(),
        },
        kube: None,
    })
    .await
    .expect("agent starts");
    let endpoint = running.rpc_addr().to_string();
    let port = running.rpc_addr().port();

    // The pool exists on storage first, as its pool manager would have created it (VDSM refuses
    // a connect whose master is not this pool's).
    let (pool, sd) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    make_file_domain(storage.path(), "nfs1:_export", &sd).expect("layout");
    let rust = Client::mutual(
        ca.pem().as_bytes(),
        controller.cert_pem.as_bytes(),
        controller.key_pem.as_bytes(),
        None,
    )
    .expect("client");
    let create = CreateParams {
        storagepool_id: pool.clone(),
        name: "dc".into(),
        master_sd_uuid: sd.clone(),
        master_version: 1,
        domain_list: vec![sd.clone()],
    };
    rust.call::<_, Value>(
        Target {
            name: HOST,
            endpoint: &endpoint,
        },
        method::POOL_CREATE,
        &create,
        Duration::from_secs(5),
    )
    .await
    .expect("StoragePool.create");

    // The engine's client, in a blocking thread (it is a separate process anyway).
    let (code, lines) =
        tokio::task::block_in_place(|| check(&cmd, dir.path(), port, &ca, &controller, &pool, &sd));
    let methods: Vec<&str> = lines.iter().filter_map(|l| l["method"].as_str()).collect();
    assert_eq!(
        methods,
        [
            "StoragePool.connect",
            "StoragePool.getInfo",
            "Host.getStorageRepoStats",
            "StoragePool.getInfo",
            "StoragePool.disconnect"
        ],
        "{lines:#?}"
    );
    for l in &lines {
        assert_eq!(l["check"], "pass", "{l}");
    }
    // The refused call carried VDSM's code for an unknown pool.
    assert_eq!(lines[3]["error"]["code"], 309, "{}", lines[3]);
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        running.hosts()[0].report().pool.is_none(),
        "disconnected at the end"
    );

    // A host's certificate is not the controller's: the agent takes no call from it.
    let (code, lines) =
        tokio::task::block_in_place(|| check(&cmd, dir.path(), port, &ca, &host, &pool, &sd));
    assert_ne!(code, Some(0), "{lines:#?}");
    assert!(
        lines.iter().all(|l| l["ok"] != true),
        "no call succeeded: {lines:#?}"
    );
    assert!(running.hosts()[0].report().pool.is_none());
    running.shutdown().await;
}
