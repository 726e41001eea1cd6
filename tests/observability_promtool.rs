//! The alert rules of `deploy/observability/prometheusrule.yaml`, checked by Prometheus's own
//! `promtool` (built from its Go module by `hack/build-observability-tools.sh`, cached under
//! `~/.cache/poolkeeper`): `check rules` on the rule groups as shipped, `test rules` with
//! `deploy/observability/prometheusrule_test.yaml` (each alert fires on the series that should
//! fire it, names the pool, domain and hosts, and stays silent otherwise), and `check metrics` on
//! the controller's own exposition.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const RULES: &str = include_str!("../deploy/observability/prometheusrule.yaml");
const RULE_TESTS: &str = include_str!("../deploy/observability/prometheusrule_test.yaml");

fn run(promtool: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The shipped rule groups as a Prometheus rule file, with the unit tests beside it.
fn rule_files() -> tempfile::TempDir {
    let rule: serde_json::Value = serde_saphyr::from_str(RULES).expect("PrometheusRule parses");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let dir = tempfile::tempdir().expect("temp dir");
    // JSON is YAML: the `spec` of a PrometheusRule is a rule file as it is.
    std::fs::write(
        dir.path().join("poolkeeper.rules.yaml"),
        serde_json::to_string_pretty(&rule["spec"]).expect("json"),
    )
    .expect("write rules");
    std::fs::write(dir.path().join("poolkeeper.rules_test.yaml"), RULE_TESTS).expect("write tests");
    dir
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let promtool = support::go_tool("promtool");
    let dir = rule_files();
    let checked = run(
        &promtool,
        &["check", "rules", "poolkeeper.rules.yaml"],
        dir.path(),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(
        &promtool,
        &["test", "rules", "poolkeeper.rules_test.yaml"],
        dir.path(),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let rule: serde_json::Value = serde_saphyr::from_str(RULES).expect("PrometheusRule parses");
    let tests: serde_json::Value = serde_saphyr::from_str(RULE_TESTS).expect("tests parse");
    let tested: Vec<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            assert!(
                tested.contains(&name),
                "alert {name} has no promtool unit test"
            );
        }
    }
}

#[test]
fn promtool_reads_the_controllers_metrics() {
    let promtool = support::go_tool("promtool");
    let metrics = poolkeeper::metrics::Metrics::default();
    metrics.host_call("connect", "ok", 0.002);
    metrics.reconciled("success", 0.01);
    metrics.set_leader(true);
    let (_, text) = metrics.render_for(None);
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool output");
    // `check metrics` exits non-zero on parse errors and on lint problems; both are ours to fix.
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
