//! What an operator reads, against the real API server with the real controller and simulated
//! hosts: `kubectl get` columns (reasons, Ready, `-o wide`) and condition reasons that say the
//! state an object is in, and the controller's `/metrics` as Prometheus scrapes it (content type,
//! host-call latency, the leader gauge, process metrics).

mod support;

use support::{
    cluster::{PoolOptions, WAIT, condition, controller, domain, pool, sim_pool},
    eventually, kubectl_ok,
};

/// Waits until the pool says Ready=True.
/// Waits until the pool is Ready because its hosts hold the map (`InSync`), not merely Ready
/// before any host joined (`NoHosts`).
async fn wait_pool_ready(name: &str) {
    eventually(&format!("pool {name} Ready and in sync"), WAIT, || async {
        let p = pool(name).await;
        let s = p.status?;
        let (status, reason, _) = condition(&s.conditions, "Ready")?;
        let current = s.observed_generation == p.metadata.generation;
        (status == "True" && reason == "InSync" && current).then_some(())
    })
    .await;
}

/// The rows of `kubectl get` output as header → value maps.
fn table(out: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = out.lines();
    let header = lines.next().expect("a header line");
    // Columns start where a header word starts; values are cut at the same offsets.
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &s)| {
                    let e = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(line.len())
                        .min(line.len());
                    let name = header[s..starts.get(n + 1).copied().unwrap_or(header.len())].trim();
                    (
                        name.to_owned(),
                        line.get(s.min(line.len())..e)
                            .unwrap_or("")
                            .trim()
                            .to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_why_and_wide_shows_agent_and_endpoint() {
    let sp = sim_pool(PoolOptions::default()).await;
    wait_pool_ready(&sp.pool).await;
    let host = &sp.hosts[0];
    let d = &sp.domains[0];

    // Host: a short name, Reason and Ready columns; -o wide adds the agent version and endpoint.
    let rows = table(&kubectl_ok(&["get", "ho", host]));
    let row = &rows[0];
    assert_eq!(row["PHASE"], "Up", "{row:?}");
    assert_eq!(row["REASON"], "HostUp", "{row:?}");
    assert_eq!(row["READY"], "True", "{row:?}");
    assert!(
        !row.contains_key("AGENT"),
        "wide columns only with -o wide: {row:?}"
    );
    let wide = table(&kubectl_ok(&["get", "ho", host, "-o", "wide"]));
    let row = &wide[0];
    assert_eq!(row["AGENT"], env!("CARGO_PKG_VERSION"), "{row:?}");
    assert!(
        row["ENDPOINT"].starts_with("127.0.0."),
        "host:port: {row:?}"
    );

    // Domain and pool: the Ready condition's reason.
    let row = &table(&kubectl_ok(&["get", "sd", d]))[0];
    assert_eq!(
        (row["PHASE"].as_str(), row["REASON"].as_str()),
        ("Active", "Active")
    );
    let row = &table(&kubectl_ok(&["get", "sp", &sp.pool, "-o", "wide"]))[0];
    assert_eq!(row["REASON"], "InSync", "{row:?}");
    assert!(
        row["MESSAGE"].starts_with("every host holds map version"),
        "{row:?}"
    );

    // An idle, active domain is not "Progressing" and not "NoHostReports".
    let s = domain(d).await.status.expect("status");
    let (status, reason, _) = condition(&s.conditions, "Stalled").expect("Stalled");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Idle"));
    let (status, reason, _) =
        condition(&s.conditions, "MovingToMaintenance").expect("MovingToMaintenance");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "MaintenanceNotRequested")
    );
    let p = pool(&sp.pool).await.status.expect("status");
    let (status, reason, _) = condition(&p.conditions, "Stalled").expect("Stalled");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Idle"));
}

/// `/metrics` with the `Accept` header Prometheus sends: (content type, body).
async fn scrape(accept: Option<&str>) -> (String, String) {
    let url = format!("http://{}/metrics", controller());
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("scrape");
    assert!(resp.status().is_success());
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, resp.text().await.expect("body"))
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_declare_their_format_and_time_host_calls() {
    let sp = sim_pool(PoolOptions::default()).await;
    wait_pool_ready(&sp.pool).await;

    // Prometheus asks for OpenMetrics first; what it gets must say so and end as the format ends.
    let (ct, body) = scrape(Some(
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
    ))
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(body.contains("# TYPE poolkeeper_host_call_duration_seconds histogram"));
    let connects = sample(
        &body,
        "poolkeeper_host_call_duration_seconds_count{verb=\"connect\",outcome=\"ok\"}",
    )
    .expect("connect latency recorded");
    assert!(connects >= 3.0, "one connect per host at least: {connects}");
    assert!(body.contains(
        "poolkeeper_host_call_duration_seconds_bucket{le=\"0.001\",verb=\"connect\",outcome=\"ok\"}"
    ) || body.contains(
        "poolkeeper_host_call_duration_seconds_bucket{verb=\"connect\",outcome=\"ok\",le=\"0.001\"}"
    ), "latency buckets by verb and outcome");
    assert_eq!(
        sample(
            &body,
            "leader_election_master_status{name=\"poolkeeper-controller\"}"
        ),
        Some(1.0),
        "a controller without election acts"
    );
    let rss = sample(&body, "process_resident_memory_bytes ").expect("RSS");
    assert!(rss > 1_000_000.0, "RSS {rss}");
    assert!(sample(&body, "process_open_fds ").expect("fds") > 3.0);
    assert!(sample(&body, "process_cpu_seconds_total ").expect("cpu") > 0.0);
    assert!(sample(&body, "process_start_time_seconds ").expect("start") > 1.6e9);

    // curl and older scrapers get the Prometheus text format, declared as such.
    let (ct, body) = scrape(None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!body.contains("# EOF"));
    assert!(body.contains("# TYPE controller_runtime_reconcile_total counter"));
}
