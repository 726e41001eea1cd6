//! kube-state-metrics (built from its Go module by `hack/build-observability-tools.sh`) runs with
//! `deploy/observability/kube-state-metrics-config.yaml` against the test API server, where the
//! real controller keeps a pool of simulated hosts; its scrape must carry every phase and every
//! condition (status and reason) of the live StoragePool, StorageDomains and Hosts, as the API
//! server holds them.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use poolkeeper::api::DomainPhase;
use support::{
    cluster::{
        PoolOptions, WAIT, condition, domain, host, merge_spec, pool, sim_pool, wait_domain_phase,
    },
    control_plane, eventually,
};

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/observability/kube-state-metrics-config.yaml"
);

struct Ksm(Child);

impl Drop for Ksm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// One sample: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format (enough of it for kube-state-metrics' output).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = value.parse().expect("number");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let end = after.find('"').expect("closing quote");
            map.insert(
                key.trim_start_matches(',').to_owned(),
                after[..end].to_owned(),
            );
            rest = &after[end + 1..];
        }
        out.push((name.to_owned(), map, value));
    }
    out
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
        .2
}

/// Every condition the API server holds for an object is a series with its status and reason.
fn assert_conditions(
    samples: &[Sample],
    prefix: &str,
    object: (&str, &str),
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    assert!(!conditions.is_empty(), "{object:?} has conditions");
    for c in conditions {
        let labels = [
            object,
            ("condition", c.type_.as_str()),
            ("status", c.status.as_str()),
            ("reason", c.reason.as_str()),
        ];
        assert_eq!(
            value(samples, &format!("{prefix}_status_condition"), &labels),
            1.0
        );
        let at = value(
            samples,
            &format!("{prefix}_status_condition_last_transition_time"),
            &[object, ("condition", c.type_.as_str())],
        );
        #[allow(
            clippy::cast_precision_loss,
            reason = "seconds since the epoch fit in f64"
        )]
        let expected = c.last_transition_time.0.as_second() as f64;
        assert_eq!(at, expected, "{object:?} {} transition time", c.type_);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_state_metrics_exposes_every_phase_and_condition_of_live_objects() {
    let binary = support::go_tool("kube-state-metrics");
    let sp = sim_pool(PoolOptions::default()).await;
    // One domain in maintenance, so two phases are live.
    let parked = &sp.domains[1];
    merge_spec::<poolkeeper::api::StorageDomain>(parked, serde_json::json!({"maintenance": true}))
        .await;
    wait_domain_phase(&sp.domains[0], DomainPhase::Active).await;
    wait_domain_phase(parked, DomainPhase::Maintenance).await;
    eventually("the pool Ready", WAIT, || async {
        let p = pool(&sp.pool).await.status?;
        (condition(&p.conditions, "Ready")?.0 == "True").then_some(())
    })
    .await;

    let port = free_port();
    let telemetry = free_port();
    let _ksm = Ksm(Command::new(&binary)
        .args([
            "--kubeconfig",
            &control_plane().kubeconfig_path().display().to_string(),
            "--custom-resource-state-only",
            "--custom-resource-state-config-file",
            CONFIG,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--telemetry-host",
            "127.0.0.1",
            "--telemetry-port",
            &telemetry.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kube-state-metrics"));

    let url = format!("http://127.0.0.1:{port}/metrics");
    let last_host = sp.hosts.last().expect("hosts").clone();
    let text = eventually("kube-state-metrics serves our objects", WAIT, || {
        let url = url.clone();
        let last_host = last_host.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let ready = text.contains(&format!("host=\"{last_host}\""))
                && text.contains("kube_poolkeeper_storagepool_status_counts");
            ready.then_some(text)
        }
    })
    .await;
    // kube-state-metrics listed the objects after they settled: its series are their status now.
    let samples = parse(&text);

    // The pool: conditions, counts, versions.
    let p = pool(&sp.pool).await;
    let ps = p.status.expect("pool status");
    let who = ("storagepool", sp.pool.as_str());
    assert_conditions(&samples, "kube_poolkeeper_storagepool", who, &ps.conditions);
    let count = |c: &str| {
        value(
            &samples,
            "kube_poolkeeper_storagepool_status_counts",
            &[who, ("count", c)],
        )
    };
    assert_eq!(count("hosts"), 3.0);
    assert_eq!(count("inSync"), f64::from(ps.counts.in_sync));
    assert_eq!(count("domains"), f64::from(ps.counts.domains));
    #[allow(clippy::cast_precision_loss, reason = "small versions")]
    let map_version = ps.map_version as f64;
    assert_eq!(
        value(
            &samples,
            "kube_poolkeeper_storagepool_status_map_version",
            &[who]
        ),
        map_version
    );

    // Each domain: its phase as a state set over every phase, and its conditions.
    for name in &sp.domains {
        let d = domain(name).await;
        let s = d.status.expect("domain status");
        let who = ("storagedomain", name.as_str());
        let current = s.phase.expect("phase");
        for phase in poolkeeper::api::domain::ALL_PHASES {
            let v = value(
                &samples,
                "kube_poolkeeper_storagedomain_status_phase",
                &[who, ("pool", sp.pool.as_str()), ("phase", phase.as_str())],
            );
            assert_eq!(v, f64::from(u8::from(phase == current)), "{name} {phase:?}");
        }
        assert_conditions(
            &samples,
            "kube_poolkeeper_storagedomain",
            who,
            &s.conditions,
        );
    }

    // Each host: phase, conditions, agent version and endpoint.
    for name in &sp.hosts {
        let h = host(name).await;
        let s = h.status.expect("host status");
        let who = ("host", name.as_str());
        let current = s.phase.expect("phase");
        for phase in poolkeeper::api::host::ALL_PHASES {
            let v = value(
                &samples,
                "kube_poolkeeper_host_status_phase",
                &[who, ("phase", phase.as_str())],
            );
            assert_eq!(v, f64::from(u8::from(phase == current)), "{name} {phase:?}");
        }
        assert_conditions(&samples, "kube_poolkeeper_host", who, &s.conditions);
        assert_eq!(
            value(
                &samples,
                "kube_poolkeeper_host_info",
                &[
                    who,
                    ("agent_version", env!("CARGO_PKG_VERSION")),
                    ("endpoint", s.endpoint.as_deref().expect("endpoint"))
                ]
            ),
            1.0
        );
    }
}
