//! The Grafana dashboard and the alert rules in `deploy/observability/` query only metrics the
//! controller exports: every metric name in every PromQL expression is one the controller's
//! registry declares (a renamed metric breaks this test, not a dashboard in production).

use std::collections::BTreeSet;

use serde_json::Value;

const DASHBOARD: &str = include_str!("../deploy/observability/grafana-dashboard.json");
const RULES: &str = include_str!("../deploy/observability/prometheusrule.yaml");

/// The series names the controller exports, from its registry's own exposition (histograms as
/// their `_bucket`, `_sum` and `_count` series).
fn exported() -> BTreeSet<String> {
    use poolkeeper::metrics::{
        ApiWriteLabels, BlockingLabels, Metrics, PoolPhaseLabels, PoolStateLabels, WriteLabels,
    };
    // A family shows in the exposition once it has a series: give each one.
    let m = Metrics::default();
    m.host_call("connect", "ok", 0.01);
    m.reconciled("error", 0.01);
    m.set_leader(true);
    m.step("plan", std::time::Instant::now());
    m.pool_hosts
        .get_or_create(&PoolStateLabels {
            pool: "p".into(),
            state: "hosts",
        })
        .set(1);
    for family in [&m.pool_domains, &m.pool_host_phases] {
        family
            .get_or_create(&PoolPhaseLabels {
                pool: "p".into(),
                phase: "Up",
            })
            .set(1);
    }
    m.set_blocking(
        "p",
        vec![BlockingLabels {
            pool: "p".into(),
            domain: "d".into(),
            phase: "MovingToMaintenance",
            host: "h".into(),
            reason: "NotResponding",
        }],
    );
    m.status_writes
        .get_or_create(&WriteLabels { kind: "Host" })
        .inc();
    m.api_writes
        .get_or_create(&ApiWriteLabels {
            kind: "Host",
            op: "status",
            outcome: "ok",
        })
        .inc();
    let (_, text) = m.render_for(None);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (in `by (...)` and friends, or in `{...}`), strings, durations or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, label matchers and ranges go first; then grouping clauses, whose words are labels.
    let mut s = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = in_string {
            if c == q {
                in_string = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_string = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace == 0 && depth_bracket == 0 => s.push(c),
            _ => {}
        }
    }
    let keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut out = BTreeSet::new();
    let mut chars = s.char_indices().peekable();
    let mut skip_parens = false;
    while let Some((i, c)) = chars.next() {
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$') {
            if c == '(' && skip_parens {
                // A grouping clause: skip its label list.
                for (_, c) in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                }
                skip_parens = false;
            } else if !c.is_whitespace() {
                skip_parens = false;
            }
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let word = &s[i..end];
        let next = s[end..].trim_start().chars().next();
        if keywords.contains(&word) {
            skip_parens = true;
        } else if word.starts_with('$')
            || next == Some('(')
            || [
                "and",
                "or",
                "unless",
                "bool",
                "offset",
                "inf",
                "nan",
                "sum",
                "min",
                "max",
                "avg",
                "count",
                "stddev",
                "stdvar",
                "topk",
                "bottomk",
                "quantile",
                "count_values",
                "group",
            ]
            .contains(&word)
        {
            // A Grafana variable, a function, or an operator.
        } else {
            out.insert(word.to_owned());
        }
    }
    out
}

/// Every `expr` (and templating query) anywhere in the dashboard JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_expression_parser_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (verb, le) (rate(a_bucket{job=~"$job", x="y{z}"}[$__rate_interval]))) / on (job) group_left () b > 0 and c"#
        ),
        ["a_bucket", "b", "c"].map(String::from).into()
    );
    assert_eq!(
        metric_names("time() - process_start_time_seconds"),
        ["process_start_time_seconds".to_owned()].into()
    );
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "poolkeeper");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    // label_values(metric, label) names a metric too.
    let exprs: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.strip_prefix("label_values(")
                .and_then(|e| e.rsplit_once(','))
                .map_or_else(|| e.clone(), |(metric, _)| metric.to_owned())
        })
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let exported = exported();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name} ({e}), which the controller does not export; it exports {exported:?}"
            );
            used.insert(name);
        }
    }
    // Every family of ours is on the dashboard.
    for name in &exported {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            used.iter().any(|u| u.starts_with(family)),
            "{name} is on no panel"
        );
    }
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let rule: Value = serde_saphyr::from_str(RULES).expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    let exported = exported();
    let mut alerts = 0;
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let expr = r["expr"].as_str().expect("expr");
            alerts += 1;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "alert {} reads {name}, which the controller does not export",
                    r["alert"]
                );
            }
        }
    }
    assert!(alerts >= 10);
}
