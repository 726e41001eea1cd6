//! What an operator reads, against the real API server with the real controller and simulated
//! hosts: `kubectl get` columns (reasons, Ready, `-o wide`) and condition reasons that say the
//! state an object is in.

mod support;

use support::{
    cluster::{PoolOptions, WAIT, condition, domain, pool, sim_pool},
    eventually, kubectl_ok,
};

/// Waits until the pool says Ready=True.
async fn wait_pool_ready(name: &str) {
    eventually(&format!("pool {name} Ready"), WAIT, || async {
        let p = pool(name).await;
        let s = p.status?;
        let (status, _, _) = condition(&s.conditions, "Ready")?;
        (status == "True" && s.observed_generation == p.metadata.generation).then_some(())
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
    assert!(row["ENDPOINT"].starts_with("http://127.0.0.1:"), "{row:?}");

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
