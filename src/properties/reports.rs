//! Host reports as the controller reads them: `Host` objects from the API server (any JSON the
//! watch may deliver), narrowed by [`report_view`] and [`validate_report`].

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{config, json, mutate, text};
use crate::api::bounds::OUTSIDE_TEXT_MAX;
use crate::api::{Host, HostReport};
use crate::controller::observe::{report_view, validate_report};
use crate::plan::ReportView;

/// The longest reason a refused report gets (it goes into statuses): a sentence quoting at most a
/// uuid's length of the report's text, escaped.
const REASON_MAX: usize = OUTSIDE_TEXT_MAX;

const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
const SD: &str = "11111111-2222-3333-4444-555555555555";

/// A Host as an agent writes it.
fn host() -> Value {
    json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": "Host",
        "metadata": {"name": "h1", "resourceVersion": "7", "uid": "u1"},
        "spec": {"pool": "pool1", "endpoint": "https://h1:54321", "maintenance": false},
        "status": {
            "phase": "Up",
            "report": {
                "agentVersion": "0.1.0",
                "bootId": "b1",
                "pool": {"uuid": SP, "hostId": 1, "masterDomain": SD, "masterVersion": 1,
                         "domainMap": [{"uuid": SD, "status": "active"}]},
                "domains": [{"uuid": SD, "valid": true, "code": 0, "delaySeconds": 0.001,
                             "lastCheckSeconds": 2.0, "acquired": true, "actual": true,
                             "version": 5}],
                "domainCount": 1,
            },
        },
    })
}

/// Narrows `value` as the controller would if the watch delivered it: no panic, and a refused
/// report says why in a few words.
fn narrow(value: &Value) -> Result<(), TestCaseError> {
    if let Ok(report) = serde_json::from_value::<HostReport>(value.clone())
        && let Err(reason) = validate_report(&report)
    {
        prop_assert!(reason.chars().count() <= REASON_MAX, "{}", reason.len());
    }
    let Ok(host) = serde_json::from_value::<Host>(value.clone()) else {
        return Ok(());
    };
    let host = Arc::new(host);
    match report_view(&host) {
        ReportView::Invalid(reason) => {
            prop_assert!(reason.chars().count() <= REASON_MAX, "{}", reason.len());
        }
        ReportView::Parsed(r) => prop_assert!(validate_report(&r).is_ok()),
        ReportView::Missing => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_json_is_a_host_or_an_error(v in json()) {
        narrow(&v)?;
        narrow(&json!({"metadata": {"name": "h"}, "spec": {"endpoint": ""},
                       "status": {"report": v}}))?;
    }

    #[test]
    fn a_host_with_a_field_replaced_is_read_or_refused(
        pick in any::<usize>(),
        with in json(),
    ) {
        narrow(&mutate(&host(), pick, with))?;
    }

    #[test]
    fn reports_with_odd_strings_and_numbers_are_read_or_refused(
        uuid in text(),
        host_id in prop_oneof![any::<i32>().prop_map(Value::from), Just(json!(1e300)), Just(json!(u64::MAX))],
        version in prop_oneof![any::<i64>().prop_map(Value::from), Just(json!(-1.5))],
        boot in text(),
    ) {
        let mut h = host();
        h["status"]["report"]["pool"]["uuid"] = json!(uuid);
        h["status"]["report"]["pool"]["hostId"] = host_id;
        h["status"]["report"]["pool"]["masterVersion"] = version;
        h["status"]["report"]["bootId"] = json!(boot);
        h["status"]["report"]["domains"][0]["uuid"] = json!(uuid);
        narrow(&h)?;
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// A report listing tens of thousands of domains or map entries (more than any schema
    /// allows: a report written under an older CRD) is refused in a few words.
    #[test]
    fn huge_reports_are_refused_briefly(
        domains in 0usize..20_000,
        entries in 0usize..20_000,
        long in 0usize..1_000_000,
    ) {
        let mut h = host();
        let uuid = |i: usize| format!("aaaaaaaa-0000-0000-0000-{i:012}");
        h["status"]["report"]["domains"] = Value::Array(
            (0..domains).map(|i| json!({"uuid": uuid(i), "valid": true, "code": 0})).collect(),
        );
        h["status"]["report"]["pool"]["domainMap"] = Value::Array(
            (0..entries).map(|i| json!({"uuid": uuid(i), "status": "active"})).collect(),
        );
        h["status"]["report"]["agentVersion"] = json!("v".repeat(long));
        narrow(&h)?;
    }
}
