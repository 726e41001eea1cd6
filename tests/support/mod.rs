//! Test harness shared by the integration tests: one real control plane (etcd + kube-apiserver)
//! per test binary, started on first use and shared by its tests, which run in parallel and keep
//! apart by unique object names.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::{
    process::Output,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use poolkeeper::testenv::ControlPlane;

pub mod cluster;

/// The control plane of this test binary. Starting it takes a few seconds; a failure (for example
/// missing binaries: run `make control-plane`) fails every test that needs it, loudly.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        // Started on a runtime of its own: the processes outlive any one test's runtime.
        std::thread::spawn(|| {
            poolkeeper::telemetry::init();
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(ControlPlane::start())
        })
        .join()
        .expect("control plane thread")
        .unwrap_or_else(|e| panic!("cannot start the test control plane: {e}"))
    })
}

/// A fresh admin client for the current test's runtime.
pub async fn client() -> kube::Client {
    control_plane().client().await.expect("client")
}

/// A name no other test of this run uses: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A random canonical UUID.
pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs the version-matched kubectl against the control plane with `args`.
pub fn kubectl(args: &[&str]) -> Output {
    control_plane()
        .kubectl()
        .expect("kubectl built with the control plane")
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Runs kubectl with `stdin` as input (for `apply -f -`).
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = control_plane()
        .kubectl()
        .expect("kubectl built with the control plane")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// stdout of a kubectl run that must succeed.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of Go tool `name` (`promtool`, `kube-state-metrics`), built from its Go module when
/// missing (`hack/build-observability-tools.sh`; a no-op once cached, and `make test` builds them
/// first, with progress).
pub fn go_tool(name: &str) -> std::path::PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hack/build-observability-tools.sh"
    );
    let out = std::process::Command::new(script)
        .arg(name)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run hack/build-observability-tools.sh");
    assert!(
        out.status.success(),
        "cannot build {name}: run `make observability-tools`"
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
