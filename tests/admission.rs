//! `deploy/admission.yaml` against the real API server: requests made *as the agent's
//! ServiceAccount* (impersonation, with the node name a bound token carries in
//! `userInfo.extra["authentication.kubernetes.io/node-name"]`) write their own node's Host status
//! and Lease, and nothing else: not another host's status or Lease, not a Host's spec, not the
//! controller's leader-election Lease, and nothing at all without a node name.
//!
//! The API server loads a policy asynchronously: each test first waits (bounded) until the
//! policy denies a probe.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use poolkeeper::agent::report::{FIELD_MANAGER, apply_report};
use poolkeeper::api::{Host, HostReport, HostSpec};
use serde_json::json;
use support::cluster::LEASE_NAMESPACE;
use support::{client, control_plane, eventually, kubectl_ok, unique};

const AGENT: &str = "system:serviceaccount:poolkeeper-system:poolkeeper-agent";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const WAIT: Duration = Duration::from_secs(60);

/// The namespace, RBAC and admission policy of `deploy/`, once per test binary.
fn installed() {
    support::cluster::install_admission();
}

/// A client acting as the agent's ServiceAccount, as a Pod's bound token on `node` would
/// (`None`: a token bound to no node, e.g. a legacy Secret token).
async fn agent_on(node: Option<&str>) -> kube::Client {
    installed();
    let mut config = control_plane().config().await.expect("config");
    config.auth_info.impersonate = Some(AGENT.into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{LEASE_NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    // kube-rs sends each entry as an `Impersonate-Extra-<key>` header (the key percent-encoded).
    config.auth_info.impersonate_user_extra =
        node.map(|n| HashMap::from([(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()])]));
    kube::Client::try_from(config).expect("impersonating client")
}

/// The API server's refusal of `result`: its code and message.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Asserts `result` is the policy's refusal (403) and its message says `rule`.
#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, kube::Error>, rule: &str) {
    let (code, message) = refused(result);
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("poolkeeper-agent-own-node"),
        "the policy is named: {message}"
    );
    assert!(message.contains(rule), "{rule:?} not in: {message}");
}

/// Waits until the policy is loaded: a Lease write without a node name is refused by it.
async fn policy_active() {
    let anonymous = Api::<Lease>::namespaced(agent_on(None).await, LEASE_NAMESPACE);
    eventually("the admission policy to deny", WAIT, || {
        let leases = anonymous.clone();
        async move {
            match leases
                .create(&PostParams::default(), &lease(&unique("probe")))
                .await
            {
                Err(kube::Error::Api(s))
                    if s.code == 403 && s.message.contains("names no node") =>
                {
                    Some(())
                }
                _ => None,
            }
        }
    })
    .await;
}

fn lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(40),
            ..LeaseSpec::default()
        }),
    }
}

/// A Host registered by someone else (an operator, or the agent of `name` earlier).
async fn host_exists(name: &str) {
    let spec = HostSpec {
        pool: None,
        endpoint: None,
        maintenance: false,
    };
    Api::<Host>::all(client().await)
        .create(&PostParams::default(), &Host::new(name, spec))
        .await
        .expect("create host");
}

fn report() -> HostReport {
    HostReport {
        agent_version: "0.1.0".into(),
        boot_id: "boot-1".into(),
        ..HostReport::default()
    }
}

#[tokio::test]
async fn an_agent_registers_and_reports_its_own_host_and_renews_its_own_lease() {
    policy_active().await;
    let node = unique("node-a");
    let agent = agent_on(Some(&node)).await;
    let hosts: Api<Host> = Api::all(agent.clone());
    let spec = HostSpec {
        pool: None,
        endpoint: None,
        maintenance: false,
    };
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    hosts
        .create(&pp, &Host::new(&node, spec))
        .await
        .expect("registration with an empty spec is accepted");
    let endpoint = "192.0.2.10:54321";
    apply_report(&hosts, &node, endpoint, &report())
        .await
        .expect("its own status is accepted");
    let stored = Api::<Host>::all(client().await)
        .get(&node)
        .await
        .expect("host");
    let status = stored.status.expect("status");
    assert_eq!(status.endpoint.as_deref(), Some(endpoint));
    assert_eq!(status.report, Some(report()));
    // Once the controller wrote its part of the status, the agent's next report still passes.
    let verdict = json!({
        "apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host",
        "status": {"phase": "Up", "observedGeneration": 1, "conditions": [{
            "type": "Ready", "status": "True", "reason": "HostUp", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    });
    Api::<Host>::all(client().await)
        .patch_status(
            &node,
            &PatchParams::apply("poolkeeper-controller"),
            &Patch::Apply(&verdict),
        )
        .await
        .expect("the controller's verdict");
    let next = HostReport {
        boot_id: "boot-2".into(),
        ..report()
    };
    apply_report(&hosts, &node, endpoint, &next)
        .await
        .expect("its next report is accepted beside the controller's status");

    let leases: Api<Lease> = Api::namespaced(agent, LEASE_NAMESPACE);
    leases
        .create(&pp, &lease(&node))
        .await
        .expect("its own Lease is accepted");
    let renew = json!({"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}});
    leases
        .patch(&node, &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .expect("renewing its own Lease is accepted");
}

#[tokio::test]
async fn an_agent_may_not_write_another_hosts_status() {
    policy_active().await;
    let (a, b) = (unique("node-a"), unique("node-b"));
    host_exists(&b).await;
    let hosts: Api<Host> = Api::all(agent_on(Some(&a)).await);
    denied(
        apply_report(&hosts, &b, "192.0.2.66:54321", &report()).await,
        &format!("poolkeeper-agent on node {a} may not write Host {b}"),
    );
    // Registering another node's Host is refused too.
    denied(
        hosts
            .create(
                &PostParams::default(),
                &Host::new(
                    &unique("node-c"),
                    HostSpec {
                        pool: None,
                        endpoint: None,
                        maintenance: false,
                    },
                ),
            )
            .await,
        "an agent writes only its own Host and Lease",
    );
}

#[tokio::test]
async fn an_agent_may_not_write_another_hosts_lease() {
    policy_active().await;
    let (a, b) = (unique("node-a"), unique("node-b"));
    let admin: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    admin
        .create(&PostParams::default(), &lease(&b))
        .await
        .expect("b's Lease");
    let leases: Api<Lease> = Api::namespaced(agent_on(Some(&a)).await, LEASE_NAMESPACE);
    let renew = json!({"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}});
    denied(
        leases
            .patch(&b, &PatchParams::default(), &Patch::Merge(&renew))
            .await,
        &format!("poolkeeper-agent on node {a} may not write Lease {b}"),
    );
    denied(
        leases
            .create(&PostParams::default(), &lease(&unique("node-c")))
            .await,
        "an agent writes only its own Host and Lease",
    );
}

#[tokio::test]
async fn an_agent_may_not_touch_the_leader_lease() {
    policy_active().await;
    let admin: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    // The controller may not be running here: the Lease is made as it would be.
    match admin
        .create(&PostParams::default(), &lease("poolkeeper-controller"))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("leader Lease: {e}"),
    }
    // Even an agent on a node that happens to be named after the Lease.
    for node in [unique("node-a"), "poolkeeper-controller".to_owned()] {
        let leases: Api<Lease> = Api::namespaced(agent_on(Some(&node)).await, LEASE_NAMESPACE);
        let take = json!({"spec": {"holderIdentity": node}});
        denied(
            leases
                .patch(
                    "poolkeeper-controller",
                    &PatchParams::default(),
                    &Patch::Merge(&take),
                )
                .await,
            "may not write Lease poolkeeper-controller: it is the controller's leader-election Lease",
        );
    }
}

#[tokio::test]
async fn an_agent_may_not_change_a_hosts_spec() {
    policy_active().await;
    let node = unique("node-a");
    let hosts: Api<Host> = Api::all(agent_on(Some(&node)).await);
    // Registration with a pool, in maintenance, or with an endpoint is refused.
    for spec in [
        json!({"pool": "dc1"}),
        json!({"maintenance": true}),
        json!({"endpoint": "192.0.2.10:54321"}),
    ] {
        let host: Host = serde_json::from_value(json!({
            "apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host",
            "metadata": {"name": node}, "spec": spec,
        }))
        .expect("host");
        denied(
            hosts.create(&PostParams::default(), &host).await,
            &format!("poolkeeper-agent may create Host {node} only with an empty spec"),
        );
    }
    host_exists(&node).await;
    let patch = json!({"spec": {"endpoint": "192.0.2.10:54321"}});
    // RBAC refuses first: the agent's role has no patch on hosts.
    let (code, message) = refused(
        hosts
            .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("cannot patch resource \"hosts\""),
        "{message}"
    );
    // And should the role ever be widened, the policy still refuses.
    let widened = unique("widened-agent");
    kubectl_ok(&[
        "create",
        "clusterrole",
        &widened,
        "--verb=patch,update",
        "--resource=hosts.poolkeeper.io",
    ]);
    kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &widened,
        &format!("--clusterrole={widened}"),
        &format!("--serviceaccount={LEASE_NAMESPACE}:poolkeeper-agent"),
    ]);
    let message = eventually("the widened role to reach the authorizer", WAIT, || {
        let hosts = hosts.clone();
        let (node, patch) = (node.clone(), patch.clone());
        async move {
            let (code, message) = refused(
                hosts
                    .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            );
            (code == 403 && !message.contains("cannot patch")).then_some(message)
        }
    })
    .await;
    kubectl_ok(&["delete", "clusterrolebinding", &widened]);
    kubectl_ok(&["delete", "clusterrole", &widened]);
    assert!(
        message.contains(&format!("poolkeeper-agent may not change Host {node}")),
        "{message}"
    );
    assert!(message.contains("poolkeeper-agent-own-node"), "{message}");
}

#[tokio::test]
async fn an_agent_may_not_write_the_controllers_part_of_its_status() {
    policy_active().await;
    let node = unique("node-a");
    host_exists(&node).await;
    let hosts: Api<Host> = Api::all(agent_on(Some(&node)).await);
    apply_report(&hosts, &node, "192.0.2.10:54321", &report())
        .await
        .expect("its own report is accepted");
    let rule = format!(
        "poolkeeper-agent may not change status.phase, status.observedGeneration or status.conditions of Host {node}"
    );
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for status in [
        json!({"phase": "Up"}),
        json!({"observedGeneration": 7}),
        json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "HostUp", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]}),
    ] {
        let body =
            json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host", "status": status});
        denied(
            hosts.patch_status(&node, &pp, &Patch::Apply(&body)).await,
            &rule,
        );
    }
}

#[tokio::test]
async fn a_request_without_a_node_name_is_denied() {
    policy_active().await;
    let node = unique("node-a");
    host_exists(&node).await;
    let anonymous = agent_on(None).await;
    let hosts: Api<Host> = Api::all(anonymous.clone());
    let rule = "this request names no node";
    denied(
        apply_report(&hosts, &node, "192.0.2.10:54321", &report()).await,
        rule,
    );
    denied(
        hosts
            .create(
                &PostParams::default(),
                &Host::new(
                    &unique("node-b"),
                    HostSpec {
                        pool: None,
                        endpoint: None,
                        maintenance: false,
                    },
                ),
            )
            .await,
        rule,
    );
    let leases: Api<Lease> = Api::namespaced(anonymous, LEASE_NAMESPACE);
    denied(
        leases.create(&PostParams::default(), &lease(&node)).await,
        rule,
    );
}
