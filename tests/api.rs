//! The API as users meet it, against a real kube-apiserver: CRDs install and become Established,
//! the examples apply, kubectl shows printer columns and field docs, invalid objects are rejected
//! with a message that names the field, and spec and status are written independently.

mod support;

use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use poolkeeper::api::{ConditionStatus, Host, HostReport, HostStatus, bounds, set_condition};
use serde_json::{Value, json};
use support::{client, kubectl_ok, kubectl_stdin, unique, uuid};

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("poolkeeper.io", "v1alpha1", kind))
}

async fn dynamic(kind: &str) -> Api<DynamicObject> {
    Api::all_with(client().await, &resource(kind))
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("object")
}

fn api_error(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message,
        Err(e) => panic!("expected a rejection by the API server, got {e}"),
        Ok(o) => panic!(
            "expected a rejection, but {:?} was accepted",
            o.metadata.name
        ),
    }
}

#[test]
fn crds_directory_is_current() {
    let expected = poolkeeper::api::crds_yaml().expect("crds");
    let path = format!("{}/crds/poolkeeper.yaml", env!("CARGO_MANIFEST_DIR"));
    let actual = std::fs::read_to_string(&path).expect("generated CRD file");
    assert!(
        actual == expected,
        "crds/poolkeeper.yaml is stale: run `make crds` and commit the result"
    );
}

#[tokio::test]
async fn crds_are_established_with_names_users_type() {
    let out = kubectl_ok(&["api-resources", "--api-group=poolkeeper.io", "-o", "wide"]);
    for (name, short) in [
        ("storagepools", "sp"),
        ("storagedomains", "sd"),
        ("hosts", ""),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from api-resources:\n{out}"));
        assert!(
            line.contains(short),
            "{name} lacks short name {short}: {line}"
        );
        assert!(
            line.contains("false"),
            "{name} must be cluster-scoped: {line}"
        );
        assert!(
            line.contains("poolkeeper"),
            "{name} lacks category poolkeeper: {line}"
        );
    }
}

#[tokio::test]
async fn examples_apply_and_kubectl_shows_printer_columns() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let applied = kubectl_ok(&["apply", "-f", dir]);
    assert_eq!(
        applied.lines().count(),
        7,
        "1 pool, 3 domains, 3 hosts: {applied}"
    );

    let out = kubectl_ok(&["get", "sp,sd,host"]);
    for header in [
        "COMPAT",
        "DOMAINS",
        "HOSTS",
        "IN-SYNC",
        "READY",
        "POOL",
        "TYPE",
        "PHASE",
        "VALID",
        "REPORTING",
        "AGE",
    ] {
        assert!(out.contains(header), "column {header} missing:\n{out}");
    }
    assert!(out.contains("storagepool.poolkeeper.io/dc1"), "{out}");
    assert!(out.contains("storagedomain.poolkeeper.io/iso1"), "{out}");
    assert!(out.contains("host.poolkeeper.io/host3"), "{out}");

    let by_category = kubectl_ok(&["get", "poolkeeper", "-o", "name"]);
    assert!(
        by_category.contains("storagedomain.poolkeeper.io/data2"),
        "{by_category}"
    );

    let selected = kubectl_ok(&[
        "get",
        "sd",
        "--field-selector",
        "spec.pool=dc1",
        "-o",
        "name",
    ]);
    assert_eq!(selected.lines().count(), 3, "{selected}");
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    let out = kubectl_ok(&["explain", "storagepool.spec.sync"]);
    assert!(out.contains("maxConcurrentConnects"), "{out}");
    assert!(out.contains("StoragePool.connect"), "{out}");
    let out = kubectl_ok(&["explain", "storagedomain.spec.maintenance"]);
    assert!(out.contains("MovingToMaintenance"), "{out}");
    let out = kubectl_ok(&["explain", "host.status.report.bootId"]);
    assert!(out.contains("agent starts"), "{out}");
}

/// Each row: kind, spec, the field the message must name, and a fragment of the message.
fn invalid_objects() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let long = "a".repeat(300);
    let long_path = "/x".repeat(600);
    let domain = |extra: Value| {
        let mut spec = json!({"uuid": uuid(), "storage": {"path": "/srv/d"}});
        merge(&mut spec, extra);
        spec
    };
    vec![
        (
            "StoragePool",
            json!({"uuid": "not-a-uuid"}),
            "spec.uuid",
            "lower-case UUID",
        ),
        (
            "StoragePool",
            json!({"uuid": "5849B030-626E-47CB-AD90-3CE782D831B3"}),
            "spec.uuid",
            "lower-case UUID",
        ),
        (
            "StoragePool",
            json!({"uuid": "5849b030626e47cbad903ce782d831b3"}),
            "spec.uuid",
            "8-4-4-4-12",
        ),
        (
            "StoragePool",
            json!({"compatibilityVersion": "3"}),
            "spec.compatibilityVersion",
            "major.minor",
        ),
        (
            "StoragePool",
            json!({"compatibilityVersion": "3.x"}),
            "spec.compatibilityVersion",
            "major.minor",
        ),
        (
            "StoragePool",
            json!({"masterDomain": "master"}),
            "spec.masterDomain",
            "lower-case UUID",
        ),
        (
            "StoragePool",
            json!({"sync": {"maxHosts": 0}}),
            "spec.sync.maxHosts",
            "greater than or equal to 1",
        ),
        (
            "StoragePool",
            json!({"sync": {"maxHosts": 2001}}),
            "spec.sync.maxHosts",
            "less than or equal to 2000",
        ),
        (
            "StoragePool",
            json!({"sync": {"maxConcurrentConnects": 0}}),
            "spec.sync.maxConcurrentConnects",
            "greater than or equal to 1",
        ),
        (
            "StoragePool",
            json!({"sync": {"connectTimeoutSeconds": 601}}),
            "spec.sync.connectTimeoutSeconds",
            "less than or equal to 600",
        ),
        (
            "StoragePool",
            json!({"sync": {"problemGraceSeconds": 0}}),
            "spec.sync.problemGraceSeconds",
            "greater than or equal to 1",
        ),
        (
            "StoragePool",
            json!({"sync": {"maxHosts": "many"}}),
            "spec.sync.maxHosts",
            "integer",
        ),
        (
            "StorageDomain",
            json!({"storage": {"path": "/srv/d"}}),
            "spec.uuid",
            "Required",
        ),
        (
            "StorageDomain",
            domain(json!({"uuid": "xyz"})),
            "spec.uuid",
            "lower-case UUID",
        ),
        (
            "StorageDomain",
            domain(json!({"type": "Backup"})),
            "spec.type",
            "Unsupported value",
        ),
        (
            "StorageDomain",
            domain(json!({"pool": "Bad_Pool"})),
            "spec.pool",
            "name of an object",
        ),
        (
            "StorageDomain",
            domain(json!({"pool": long})),
            "spec.pool",
            "Too long",
        ),
        (
            "StorageDomain",
            domain(json!({"storage": {"path": ""}})),
            "spec.storage.path",
            "at least 1",
        ),
        (
            "StorageDomain",
            domain(json!({"storage": {"path": long_path}})),
            "spec.storage.path",
            "Too long",
        ),
        (
            "StorageDomain",
            domain(json!({"storage": {"kind": "Block", "path": "/d"}})),
            "spec.storage.kind",
            "Unsupported value",
        ),
        (
            "Host",
            json!({"endpoint": "https://host1:54321/jsonrpc"}),
            "spec.endpoint",
            "must be host:port",
        ),
        (
            "Host",
            json!({"endpoint": "host1 port 54321"}),
            "spec.endpoint",
            "must be host:port",
        ),
        (
            "Host",
            json!({"endpoint": "host1:65536"}),
            "spec.endpoint",
            "must be host:port",
        ),
        (
            "Host",
            json!({"endpoint": "Host1:54321"}),
            "spec.endpoint",
            "must be host:port",
        ),
        (
            "Host",
            json!({"endpoint": ""}),
            "spec.endpoint",
            "at least 3",
        ),
        (
            "Host",
            json!({"endpoint": "h:1", "pool": "-dc1"}),
            "spec.pool",
            "name of an object",
        ),
    ]
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (k, v) in from {
            into.insert(k, v);
        }
    }
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_message_naming_the_field() {
    let cases = invalid_objects();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (kind, spec, field, fragment) in cases {
        let api = dynamic(kind).await;
        let name = unique("invalid");
        let msg = api_error(
            api.create(&PostParams::default(), &object(kind, &name, spec.clone()))
                .await,
        );
        if !(msg.contains(field) && msg.contains(fragment)) {
            failures.push(format!(
                "{kind} {spec}: expected `{field}` and `{fragment}` in: {msg}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn create_then_reject_update(kind: &str, spec: Value, change: Value, fragment: &str) {
    let api = dynamic(kind).await;
    let name = unique("update");
    api.create(&PostParams::default(), &object(kind, &name, spec))
        .await
        .expect("valid object is accepted");
    let patch = json!({"spec": change});
    let msg = api_error(
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert!(msg.contains(fragment), "expected `{fragment}` in: {msg}");
}

#[tokio::test]
async fn pool_uuid_cannot_change_or_be_removed() {
    let original = uuid();
    create_then_reject_update(
        "StoragePool",
        json!({"uuid": original}),
        json!({"uuid": uuid()}),
        "spec.uuid is immutable",
    )
    .await;
    create_then_reject_update(
        "StoragePool",
        json!({"uuid": original}),
        json!({"uuid": null}),
        "spec.uuid is immutable",
    )
    .await;
}

#[tokio::test]
async fn pool_uuid_can_be_set_once_when_it_was_unset() {
    let api = dynamic("StoragePool").await;
    let name = unique("late-uuid");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({})),
    )
    .await
    .expect("created");
    let patch = json!({"spec": {"uuid": uuid()}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("setting an unset uuid is allowed");
}

#[tokio::test]
async fn compatibility_version_can_be_raised_but_never_lowered() {
    create_then_reject_update(
        "StoragePool",
        json!({"compatibilityVersion": "3.6"}),
        json!({"compatibilityVersion": "3.5"}),
        "cannot be lowered",
    )
    .await;
    create_then_reject_update(
        "StoragePool",
        json!({"compatibilityVersion": "4.0"}),
        json!({"compatibilityVersion": "3.9"}),
        "cannot be lowered",
    )
    .await;
    create_then_reject_update(
        "StoragePool",
        json!({"compatibilityVersion": "3.10"}),
        json!({"compatibilityVersion": "3.9"}),
        "cannot be lowered",
    )
    .await;

    let api = dynamic("StoragePool").await;
    let name = unique("raise");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({"compatibilityVersion": "3.4"})),
    )
    .await
    .expect("created");
    let patch = json!({"spec": {"compatibilityVersion": "3.10"}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("raising 3.4 to 3.10 is allowed (numeric, not lexical)");
}

#[tokio::test]
async fn domain_uuid_is_immutable() {
    create_then_reject_update(
        "StorageDomain",
        json!({"uuid": uuid(), "storage": {"path": "/srv/d"}}),
        json!({"uuid": uuid()}),
        "spec.uuid is immutable",
    )
    .await;
}

#[tokio::test]
async fn defaults_are_filled_in_by_the_schema() {
    let api = dynamic("StoragePool").await;
    let name = unique("defaults");
    let created = api
        .create(
            &PostParams::default(),
            &object("StoragePool", &name, json!({})),
        )
        .await
        .expect("created");
    let spec = &created.data["spec"];
    assert_eq!(spec["compatibilityVersion"], "3.5");
    assert_eq!(spec["sync"]["maxConcurrentConnects"], 32);
    assert_eq!(spec["sync"]["connectTimeoutSeconds"], 30);
    assert_eq!(spec["sync"]["problemGraceSeconds"], 300);
    assert_eq!(spec["sync"]["maxHosts"], 250);
}

#[tokio::test]
async fn oversized_status_lists_are_rejected() {
    let api = dynamic("StoragePool").await;
    let name = unique("biglist");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({})),
    )
    .await
    .expect("created");
    let map: Vec<Value> = (0..101)
        .map(|_| json!({"uuid": uuid(), "status": "active"}))
        .collect();
    let patch = json!({"status": {"domainMap": map}});
    let msg = api_error(
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert!(
        msg.contains("status.domainMap") && msg.contains("Too many"),
        "{msg}"
    );
}

#[tokio::test]
async fn pool_uuid_cannot_be_set_to_another_uuid_on_a_running_pool() {
    let api = dynamic("StoragePool").await;
    let name = unique("running-uuid");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({})),
    )
    .await
    .expect("created");
    // The controller recorded the uuid the hosts were given.
    let given = uuid();
    let status = json!({"status": {"uuid": given}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status written");

    let patch = json!({"spec": {"uuid": uuid()}});
    let msg = api_error(
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert!(
        msg.contains("spec.uuid must equal status.uuid")
            && msg.contains("create a new StoragePool"),
        "{msg}"
    );

    let patch = json!({"spec": {"uuid": given}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pinning the uuid in use is allowed");
}

#[tokio::test]
async fn domain_type_is_immutable() {
    create_then_reject_update(
        "StorageDomain",
        json!({"uuid": uuid(), "type": "Data", "storage": {"path": "/srv/d"}}),
        json!({"type": "ISO"}),
        "spec.type is immutable",
    )
    .await;
}

/// A status with one condition whose message is `message`.
fn status_with_message(message: String) -> Value {
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        "Ready",
        ConditionStatus::False,
        "ConnectFailed",
        message,
        Some(1),
        jiff::Timestamp::from_second(1_700_000_000).expect("timestamp"),
    );
    json!({"status": {"conditions": conditions}})
}

#[tokio::test]
async fn condition_messages_beyond_the_bound_are_rejected_and_bounded_ones_accepted() {
    let huge = "é".repeat(bounds::CONDITION_MESSAGE_MAX + 1);
    for (kind, spec) in [
        ("StoragePool", json!({})),
        (
            "StorageDomain",
            json!({"uuid": uuid(), "storage": {"path": "/srv/d"}}),
        ),
        ("Host", json!({"endpoint": "h:54321"})),
    ] {
        let api = dynamic(kind).await;
        let name = unique("bigmsg");
        api.create(&PostParams::default(), &object(kind, &name, spec))
            .await
            .expect("created");

        // What a writer that does not bound its messages would send.
        let mut unbounded = status_with_message(String::new());
        unbounded["status"]["conditions"][0]["message"] = json!(huge);
        let msg = api_error(
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&unbounded))
                .await,
        );
        assert!(
            msg.contains("status.conditions[0].message") && msg.contains("Too long"),
            "{kind}: {msg}"
        );

        // The same message through set_condition fits.
        let bounded = status_with_message(huge.clone());
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&bounded))
            .await
            .unwrap_or_else(|e| panic!("{kind}: the bounded message is accepted: {e}"));
    }
}

#[tokio::test]
async fn condition_reasons_and_types_follow_metav1_condition() {
    let api = dynamic("StoragePool").await;
    let name = unique("badreason");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({})),
    )
    .await
    .expect("created");
    for (field, value, fragment) in [
        (
            "reason",
            json!("not a reason!"),
            "status.conditions[0].reason",
        ),
        (
            "reason",
            json!("R".repeat(1025)),
            "status.conditions[0].reason",
        ),
        ("type", json!("T".repeat(317)), "status.conditions[0].type"),
        ("status", json!("Maybe"), "status.conditions[0].status"),
    ] {
        let mut status = status_with_message("m".into());
        status["status"]["conditions"][0][field] = value;
        let msg = api_error(
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await,
        );
        assert!(msg.contains(fragment), "{field}: {msg}");
    }
}

#[tokio::test]
async fn oversize_status_strings_are_rejected() {
    let api = dynamic("StoragePool").await;
    let name = unique("bigstr");
    api.create(
        &PostParams::default(),
        &object("StoragePool", &name, json!({})),
    )
    .await
    .expect("created");
    let long_name = "h".repeat(bounds::NAME_MAX + 1);
    for (status, fragment) in [
        (
            json!({"hostIds": [{"host": long_name, "id": 1}]}),
            "status.hostIds[0].host",
        ),
        (
            json!({"masterDomain": "m".repeat(37)}),
            "status.masterDomain",
        ),
        (
            json!({"domainMap": [{"uuid": "u".repeat(37), "status": "active"}]}),
            "status.domainMap[0].uuid",
        ),
    ] {
        let patch = json!({"status": status});
        let msg = api_error(
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        );
        assert!(msg.contains(fragment) && msg.contains("Too long"), "{msg}");
    }
}

#[tokio::test]
async fn spec_and_status_are_written_independently() {
    let hosts: Api<Host> = Api::all(client().await);
    let name = unique("subresource");
    let host = kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: poolkeeper.io/v1alpha1\nkind: Host\nmetadata:\n  name: {name}\nspec:\n  endpoint: {name}:54321\n  pool: dc-a\n"
        ),
    );
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );

    // A status write does not touch spec, even when the body carries a spec.
    let status = HostStatus {
        report: Some(HostReport {
            agent_version: "test".into(),
            boot_id: uuid(),
            ..HostReport::default()
        }),
        ..HostStatus::default()
    };
    let patch = json!({"spec": {"pool": "dc-b"}, "status": status});
    let after = hosts
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status patch");
    assert_eq!(
        after.spec.pool.as_deref(),
        Some("dc-a"),
        "status write changed spec"
    );
    assert_eq!(
        after
            .status
            .as_ref()
            .and_then(|s| s.report.as_ref())
            .map(|r| r.agent_version.as_str()),
        Some("test")
    );

    // A spec write does not touch status, even when the body carries a status.
    let patch = json!({"spec": {"maintenance": true}, "status": {"report": {"agentVersion": "overwritten"}}});
    let after = hosts
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("spec patch");
    assert!(after.spec.maintenance);
    assert_eq!(
        after.status.and_then(|s| s.report).map(|r| r.agent_version),
        Some("test".to_owned()),
        "spec write changed status"
    );
}

#[tokio::test]
async fn a_pool_status_made_from_a_deleted_pool_is_refused_by_one_created_again_with_its_name() {
    use poolkeeper::{
        api::StoragePool,
        controller::{events::Recorder, write::Writer},
        metrics::Metrics,
    };
    let client = client().await;
    let writer = Writer::new(
        client.clone(),
        Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "poolkeeper-test".into(),
                instance: None,
            },
        ),
        Metrics::default(),
    );
    let pools: Api<StoragePool> = Api::all(client);
    let name = unique("recreated");
    let create = async || {
        let pool: StoragePool = serde_json::from_value(json!({
            "apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool",
            "metadata": {"name": name}, "spec": {},
        }))
        .expect("pool");
        pools
            .create(&PostParams::default(), &pool)
            .await
            .expect("create pool")
    };
    let first = create().await;
    let read = writer
        .status::<StoragePool>(
            &name,
            &json!({"mapVersion": 1}),
            first.metadata.resource_version.as_deref(),
        )
        .await
        .expect("a status based on the version read");

    // The pool is deleted and created again between a reconcile's read and its write. The
    // controller writes the pool's status based on the version it read: the new pool refuses it.
    // (A `metadata.uid` in the body would not do: on the status subresource the API server keeps
    // the stored metadata, uid included, and applies the status to whatever has the name.)
    pools
        .delete(&name, &Default::default())
        .await
        .expect("delete pool");
    let second = create().await;
    assert_ne!(first.metadata.uid, second.metadata.uid);
    let stale = writer
        .status::<StoragePool>(&name, &json!({"mapVersion": 7}), read.as_deref())
        .await
        .expect_err("the old pool's status must not land on the new pool");
    assert!(stale.is_conflict(), "a conflict (plan again): {stale:?}");
    let now = pools.get(&name).await.expect("pool");
    assert_eq!(
        now.status.map_or(0, |s| s.map_version),
        0,
        "the new pool has no map yet"
    );
}

#[tokio::test]
async fn deploy_base_applies_and_grants_least_privilege() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    kubectl_ok(&["apply", "-f", &format!("{dir}/namespace.yaml")]);
    let out = kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=poolkeeper-tests",
        "-k",
        dir,
    ]);
    for kind in [
        "deployment.apps/poolkeeper-controller",
        "daemonset.apps/poolkeeper-agent",
        "clusterrole.rbac.authorization.k8s.io/poolkeeper-controller",
    ] {
        assert!(out.contains(kind), "{kind} missing from: {out}");
    }

    let can = |who: &str, verb: &str, resource: &str, ns: Option<&str>| {
        let sa = format!("system:serviceaccount:poolkeeper-system:{who}");
        // `kind/status` means the status subresource here (kubectl would read it as a name).
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let subresource = format!("--subresource={sub}");
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa];
        if !sub.is_empty() {
            args.push(&subresource);
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = support::kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let controller = "poolkeeper-controller";
    let agent = "poolkeeper-agent";
    let expectations = [
        (
            controller,
            "watch",
            "storagepools.poolkeeper.io",
            None,
            true,
        ),
        (
            controller,
            "patch",
            "storagepools.poolkeeper.io/status",
            None,
            true,
        ),
        (
            controller,
            "patch",
            "hosts.poolkeeper.io/status",
            None,
            true,
        ),
        (controller, "patch", "hosts.poolkeeper.io", None, false),
        (
            controller,
            "delete",
            "storagedomains.poolkeeper.io",
            None,
            false,
        ),
        (
            controller,
            "create",
            "events.events.k8s.io",
            Some("default"),
            true,
        ),
        (
            controller,
            "watch",
            "leases.coordination.k8s.io",
            Some("poolkeeper-system"),
            true,
        ),
        (
            controller,
            "update",
            "leases.coordination.k8s.io",
            Some("poolkeeper-system"),
            false,
        ),
        (
            controller,
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
            false,
        ),
        (agent, "create", "hosts.poolkeeper.io", None, true),
        (agent, "watch", "hosts.poolkeeper.io", None, true),
        (agent, "patch", "hosts.poolkeeper.io/status", None, true),
        // The spec is the operators': the agent publishes its endpoint in the status.
        (agent, "patch", "hosts.poolkeeper.io", None, false),
        (agent, "update", "hosts.poolkeeper.io", None, false),
        (agent, "delete", "hosts.poolkeeper.io", None, false),
        (agent, "patch", "storagepools.poolkeeper.io", None, false),
        // Leases: created once, then renewed by patch (which one: deploy/admission.yaml).
        (
            agent,
            "create",
            "leases.coordination.k8s.io",
            Some("poolkeeper-system"),
            true,
        ),
        (
            agent,
            "patch",
            "leases.coordination.k8s.io",
            Some("poolkeeper-system"),
            true,
        ),
        (
            agent,
            "update",
            "leases.coordination.k8s.io",
            Some("poolkeeper-system"),
            false,
        ),
        (
            agent,
            "patch",
            "leases.coordination.k8s.io",
            Some("default"),
            false,
        ),
    ];
    let wrong: Vec<String> = expectations
        .iter()
        .filter(|(who, verb, res, ns, want)| can(who, verb, res, *ns) != *want)
        .map(|(who, verb, res, ns, want)| format!("{who} {verb} {res} in {ns:?}: expected {want}"))
        .collect();
    assert!(wrong.is_empty(), "RBAC differs:\n{}", wrong.join("\n"));
}
