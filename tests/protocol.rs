//! Protocol tests: the real `protocol::Client` against the real agent server on 127.0.0.1, with
//! file storage in temp dirs and no API server (the agent serves calls from memory).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Running, TlsFiles, start};
use poolkeeper::api::MapStatus::{self, Active, Attached};
use poolkeeper::protocol::wire::{HostStats, PoolInfo};
use poolkeeper::protocol::{
    Client, ConnectParams, DisconnectParams, ErrorCode, RpcError, Token, Vitals,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
const TOKEN: &str = "test-token-0123456789";

struct Agent {
    running: Running,
    root: tempfile::TempDir,
    client: Client,
    endpoint: String,
}

impl Agent {
    async fn start() -> Self {
        Self::start_with(None, 64 * 1024).await
    }

    async fn start_with(tls: Option<TlsFiles>, max_body_bytes: usize) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let https = tls.is_some();
        let running = start(Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise_url: None,
            tls,
            token: Token::new(TOKEN).expect("token"),
            max_body_bytes,
            monitor: MonitorConfig {
                period: Duration::from_millis(100),
                check_timeout: Duration::from_millis(400),
            },
            hosts: Hosts::Single {
                name: "host-under-test".into(),
                storage_root: root.path().to_owned(),
            },
            kube: None,
        })
        .await
        .expect("agent starts");
        let scheme = if https { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}/jsonrpc", running.local_addr());
        let client = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
        Self {
            running,
            root,
            client,
            endpoint,
        }
    }

    fn domain(&self, sd: &str) {
        make_file_domain(self.root.path(), "nfs1:_export", sd).expect("layout");
    }

    async fn connect(&self, p: &ConnectParams) -> Result<(), RpcError> {
        self.client.connect(&self.endpoint, p, T).await
    }

    async fn info(&self, pool: &str) -> Result<PoolInfo, RpcError> {
        self.client.get_info(&self.endpoint, pool, T).await
    }

    async fn stats(&self) -> BTreeMap<String, Vitals> {
        self.client
            .get_stats(&self.endpoint, T)
            .await
            .expect("getStats")
            .storage_domains
    }

    async fn raw(&self, body: &str, auth: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.expect("sent")
    }

    /// Polls getStats until `check` holds for domain `sd`.
    async fn wait_vitals(&self, sd: &str, what: &str, check: impl Fn(&Vitals) -> bool) -> Vitals {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats().await;
            if let Some(v) = stats.get(sd).filter(|v| check(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn params(
    pool: &str,
    host_id: i32,
    master: &str,
    map: Option<&[(&str, MapStatus)]>,
) -> ConnectParams {
    ConnectParams {
        storagepool_id: pool.to_owned(),
        host_id,
        scsi_key: pool.to_owned(),
        master_sd_uuid: master.to_owned(),
        master_version: 1,
        domain_dict: map.map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
    }
}

fn code(r: Result<impl std::fmt::Debug, RpcError>) -> ErrorCode {
    match r {
        Err(RpcError::Vdsm(e)) => e.code,
        other => panic!("expected a VDSM error, got {other:?}"),
    }
}

// --- the decision table, row by row ---

#[tokio::test]
async fn not_connected_connect_with_map_holds_it_and_monitors_active_entries() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.domain(&d1);
    a.domain(&d2);
    a.connect(&params(
        &sp,
        3,
        &d1,
        Some(&[(&d1, Active), (&d2, Attached)]),
    ))
    .await
    .expect("connects");
    let info = a.info(&sp).await.expect("getInfo");
    assert_eq!(info.info.master_uuid, d1);
    assert_eq!(
        info.domain_map(),
        BTreeMap::from([(d1.clone(), Active), (d2.clone(), Attached)])
    );
    let stats = a.stats().await;
    assert_eq!(
        stats.keys().collect::<Vec<_>>(),
        vec![&d1],
        "only active entries are monitored"
    );
    let v = a
        .wait_vitals(&d1, "a valid actual check", |v| v.actual && v.valid)
        .await;
    assert_eq!(v.code, 0);
    assert!(v.acquired);
    assert_eq!(v.version, 5);
    a.running.shutdown().await;
}

#[tokio::test]
async fn connected_to_another_pool_connect_fails_323_without_change() {
    let a = Agent::start().await;
    let (sp, other, d1) = (uuid(), uuid(), uuid());
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    let e = a
        .connect(&params(&other, 1, &d1, Some(&[(&d1, Active)])))
        .await;
    assert_eq!(code(e), ErrorCode::CannotConnectMultiplePools);
    assert_eq!(code(a.info(&other).await), ErrorCode::StoragePoolUnknown);
    assert!(a.info(&sp).await.is_ok());
    a.running.shutdown().await;
}

#[tokio::test]
async fn connected_same_pool_and_host_id_replaces_the_whole_map_and_monitors() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active), (&d2, Active)])))
        .await
        .expect("connects");
    assert_eq!(a.stats().await.len(), 2);
    a.connect(&params(
        &sp,
        1,
        &d2,
        Some(&[(&d1, Attached), (&d2, Active)]),
    ))
    .await
    .expect("refresh");
    assert_eq!(a.stats().await.keys().collect::<Vec<_>>(), vec![&d2]);
    let info = a.info(&sp).await.expect("getInfo");
    assert_eq!(info.info.master_uuid, d2);
    assert_eq!(info.domain_map()[&d1], Attached);
    // The same map again is a cheap, idempotent refresh.
    a.connect(&params(
        &sp,
        1,
        &d2,
        Some(&[(&d1, Attached), (&d2, Active)]),
    ))
    .await
    .expect("same map");
    assert_eq!(a.info(&sp).await.expect("getInfo"), info);
    a.running.shutdown().await;
}

#[tokio::test]
async fn connected_with_another_host_id_fails_325() {
    let a = Agent::start().await;
    let (sp, d1) = (uuid(), uuid());
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    assert_eq!(
        code(
            a.connect(&params(&sp, 2, &d1, Some(&[(&d1, Active)])))
                .await
        ),
        ErrorCode::StoragePoolConnected
    );
    a.running.shutdown().await;
}

#[tokio::test]
async fn connected_with_a_map_connect_without_map_fails_325_and_keeps_the_map() {
    let a = Agent::start().await;
    let (sp, d1) = (uuid(), uuid());
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    assert_eq!(
        code(a.connect(&params(&sp, 1, &d1, None)).await),
        ErrorCode::StoragePoolConnected
    );
    assert_eq!(
        a.info(&sp)
            .await
            .expect("still connected")
            .domain_map()
            .len(),
        1
    );
    a.running.shutdown().await;
}

#[tokio::test]
async fn not_connected_connect_without_map_is_a_clear_legacy_error() {
    let a = Agent::start().await;
    let (sp, d1) = (uuid(), uuid());
    let e = a.connect(&params(&sp, 1, &d1, None)).await;
    let Err(RpcError::Vdsm(e)) = e else {
        panic!("expected an error, got {e:?}")
    };
    assert_eq!(e.code, ErrorCode::StoragePoolConnectionError);
    assert!(e.message.contains("legacy"), "{}", e.message);
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.running.shutdown().await;
}

#[tokio::test]
async fn master_not_active_in_the_map_fails_324_connected_or_not() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    assert_eq!(
        code(
            a.connect(&params(
                &sp,
                1,
                &d1,
                Some(&[(&d1, Attached), (&d2, Active)])
            ))
            .await
        ),
        ErrorCode::StoragePoolWrongMaster
    );
    assert_eq!(
        code(a.info(&sp).await),
        ErrorCode::StoragePoolUnknown,
        "no state change"
    );
    a.connect(&params(&sp, 1, &d2, Some(&[(&d2, Active)])))
        .await
        .expect("connects");
    assert_eq!(
        code(
            a.connect(&params(&sp, 1, &d1, Some(&[(&d2, Active)])))
                .await
        ),
        ErrorCode::StoragePoolWrongMaster
    );
    assert_eq!(a.info(&sp).await.expect("connected").info.master_uuid, d2);
    a.running.shutdown().await;
}

#[tokio::test]
async fn disconnect_not_connected_or_other_pool_succeeds_and_disconnect_stops_monitors() {
    let a = Agent::start().await;
    let (sp, other, d1) = (uuid(), uuid(), uuid());
    let disc = |pool: &str| DisconnectParams {
        storagepool_id: pool.to_owned(),
        host_id: 1,
        scsi_key: pool.to_owned(),
    };
    a.client
        .disconnect(&a.endpoint, &disc(&sp), T)
        .await
        .expect("not connected: success");
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    a.client
        .disconnect(&a.endpoint, &disc(&other), T)
        .await
        .expect("other pool: success");
    assert_eq!(
        a.stats().await.len(),
        1,
        "other pool's disconnect changes nothing"
    );
    a.client
        .disconnect(&a.endpoint, &disc(&sp), T)
        .await
        .expect("disconnects");
    assert!(a.stats().await.is_empty());
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.running.shutdown().await;
}

#[tokio::test]
async fn more_than_100_domains_fail_328() {
    let a = Agent::start().await;
    let sp = uuid();
    let map: Vec<String> = (0..101).map(|_| uuid()).collect();
    let entries: Vec<(&str, MapStatus)> = map.iter().map(|d| (d.as_str(), Active)).collect();
    assert_eq!(
        code(a.connect(&params(&sp, 1, &map[0], Some(&entries))).await),
        ErrorCode::TooManyDomainsInStoragePool
    );
    a.connect(&params(&sp, 1, &map[0], Some(&entries[..100])))
        .await
        .expect("100 is fine");
    a.running.shutdown().await;
}

// --- auth, limits and malformed calls ---

#[tokio::test]
async fn calls_without_the_right_token_are_refused_with_no_state_change() {
    let a = Agent::start().await;
    let (sp, d1) = (uuid(), uuid());
    let p = params(&sp, 1, &d1, Some(&[(&d1, Active)]));
    let body = json!({"jsonrpc": "2.0", "method": "StoragePool.connect", "params": p, "id": 1})
        .to_string();
    assert_eq!(a.raw(&body, None).await.status(), 401, "missing");
    assert_eq!(
        a.raw(&body, Some("Bearer nope")).await.status(),
        401,
        "wrong"
    );
    assert_eq!(
        a.raw(&body, Some(TOKEN)).await.status(),
        401,
        "not a bearer header"
    );
    let wrong = Client::new(Token::new("wrong-token").expect("token"), None).expect("client");
    let e = wrong.connect(&a.endpoint, &p, T).await;
    assert!(matches!(e, Err(RpcError::Unauthorized)), "{e:?}");
    assert_eq!(e.map_err(|e| e.category()).err(), Some("Unauthorized"));
    assert_eq!(
        code(a.info(&sp).await),
        ErrorCode::StoragePoolUnknown,
        "nothing happened"
    );
    let ok = a.raw(&body, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(ok.status(), 200);
    assert!(a.info(&sp).await.is_ok());
    a.running.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let a = Agent::start_with(None, 2048).await;
    let sp = uuid();
    let map: Vec<String> = (0..60).map(|_| uuid()).collect();
    let entries: Vec<(&str, MapStatus)> = map.iter().map(|d| (d.as_str(), Active)).collect();
    let e = a.connect(&params(&sp, 1, &map[0], Some(&entries))).await;
    assert!(
        matches!(e, Err(RpcError::HttpStatus { status: 413 })),
        "{e:?}"
    );
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.running.shutdown().await;
}

#[tokio::test]
async fn malformed_calls_get_json_rpc_protocol_errors() {
    let a = Agent::start().await;
    let auth = format!("Bearer {TOKEN}");
    let error_code = |v: Value| v["error"]["code"].as_i64();
    let r: Value = a
        .raw("{not json", Some(&auth))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(error_code(r.clone()), Some(-32700));
    assert_eq!(r["id"], Value::Null);
    let r: Value = a
        .raw(r#"{"method":"Host.getStats","id":1}"#, Some(&auth))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(error_code(r), Some(-32600));
    let r: Value = a
        .raw("[1,2]", Some(&auth))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(error_code(r), Some(-32600));

    let e = a
        .client
        .call::<_, Value>(&a.endpoint, "StoragePool.explode", &json!({}), T)
        .await;
    assert_eq!(code(e), ErrorCode::MethodNotFound);
    let e = a
        .client
        .call::<_, Value>(
            &a.endpoint,
            "StoragePool.getInfo",
            &json!({"storagepoolID": 5}),
            T,
        )
        .await;
    assert_eq!(code(e), ErrorCode::InvalidParams);
    let e = a.client.call::<_, Value>(&a.endpoint, "StoragePool.connect",
        &json!({"storagepoolID": uuid(), "hostID": "one", "masterSdUUID": "", "masterVersion": 1}), T).await;
    assert_eq!(code(e), ErrorCode::InvalidParams);
    let e = a.client.call::<_, Value>(&a.endpoint, "StoragePool.connect",
        &json!({"storagepoolID": "not-a-uuid", "hostID": 1, "masterSdUUID": "", "masterVersion": 1, "domainDict": {}}), T).await;
    assert_eq!(code(e), ErrorCode::InvalidParams);
    let e = a.client.call::<_, Value>(&a.endpoint, "StoragePool.connect",
        &json!({"storagepoolID": uuid(), "hostID": 1, "masterSdUUID": "", "masterVersion": 1, "domainDict": {uuid(): "frozen"}}), T).await;
    assert_eq!(code(e), ErrorCode::InvalidParams);
    // Still serving after all that.
    let _: HostStats = a.client.get_stats(&a.endpoint, T).await.expect("serving");
    a.running.shutdown().await;
}

#[tokio::test]
async fn transport_failures_and_timeouts_are_not_vdsm_errors() {
    let client = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let e = client
        .get_stats(
            &format!("http://{addr}/jsonrpc"),
            Duration::from_millis(200),
        )
        .await;
    assert!(matches!(e, Err(RpcError::Timeout { .. })), "{e:?}");
    hold.abort();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = client
        .get_stats(&format!("http://127.0.0.1:{port}/jsonrpc"), T)
        .await;
    assert!(matches!(e, Err(RpcError::Transport(_))), "{e:?}");
    assert!(e.as_ref().err().is_some_and(RpcError::is_unreachable));
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
    let a = Agent::start_with(Some(TlsFiles { cert, key }), 64 * 1024).await;
    assert!(a.endpoint.starts_with("https://"));
    let trusted = Client::new(
        Token::new(TOKEN).expect("token"),
        Some(ck.cert.pem().as_bytes()),
    )
    .expect("client");
    trusted
        .get_stats(&a.endpoint, T)
        .await
        .expect("TLS call works");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let untrusted = Client::new(
        Token::new(TOKEN).expect("token"),
        Some(other.cert.pem().as_bytes()),
    )
    .expect("client");
    let e = untrusted.get_stats(&a.endpoint, T).await;
    assert!(matches!(e, Err(RpcError::Transport(_))), "{e:?}");
    a.running.shutdown().await;
}

// --- monitors over temp dirs ---

async fn monitored(a: &Agent, sd: &str) {
    let sp = uuid();
    a.connect(&params(&sp, 1, sd, Some(&[(sd, Active)])))
        .await
        .expect("connects");
}

#[tokio::test]
async fn healthy_domain_is_valid_and_actual() {
    let a = Agent::start().await;
    let sd = uuid();
    a.domain(&sd);
    monitored(&a, &sd).await;
    let v = a.wait_vitals(&sd, "valid", |v| v.actual).await;
    assert!(v.valid && v.code == 0, "{v:?}");
    assert!(v.last_check < 5.0 && v.delay < 5.0, "{v:?}");
    a.running.shutdown().await;
}

#[tokio::test]
async fn missing_domain_is_358() {
    let a = Agent::start().await;
    let sd = uuid();
    monitored(&a, &sd).await;
    let v = a.wait_vitals(&sd, "a check", |v| v.actual).await;
    assert!(!v.valid);
    assert_eq!(v.code, 358);
    a.running.shutdown().await;
}

#[tokio::test]
async fn unreadable_metadata_is_379() {
    let a = Agent::start().await;
    let sd = uuid();
    let metadata = a
        .root
        .path()
        .join("mnt1")
        .join(&sd)
        .join("dom_md")
        .join("metadata");
    // A directory where the file should be: unreadable even for root.
    std::fs::create_dir_all(&metadata).expect("dirs");
    monitored(&a, &sd).await;
    let v = a.wait_vitals(&sd, "a check", |v| v.actual).await;
    assert!(!v.valid);
    assert_eq!(v.code, 379);
    a.running.shutdown().await;
}

#[tokio::test]
async fn metadata_naming_another_domain_is_379() {
    let a = Agent::start().await;
    let (sd, other) = (uuid(), uuid());
    let path = make_file_domain(a.root.path(), "mnt1", &sd).expect("layout");
    std::fs::write(&path, format!("SDUUID={other}\nVERSION=5\n")).expect("write");
    monitored(&a, &sd).await;
    let v = a.wait_vitals(&sd, "a check", |v| v.actual).await;
    assert!(!v.valid);
    assert_eq!(v.code, 379);
    // Fixing the metadata makes it valid at the next check.
    std::fs::write(&path, format!("SDUUID={sd}\nVERSION=5\n")).expect("write");
    a.wait_vitals(&sd, "valid again", |v| v.valid).await;
    a.running.shutdown().await;
}

/// Ends a hung read for good: a regular file replaces `metadata` (so no later check hangs), then
/// a writer opens the FIFO the hung read waits on, through its second name, and writes `content`.
fn release(dom_md: &Path, content: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let fresh = dom_md.join("metadata.new");
    if std::fs::write(&fresh, content).is_ok() {
        let _ = std::fs::rename(&fresh, dom_md.join("metadata"));
    }
    if let Ok(mut w) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(dom_md.join("metadata.fifo"))
    {
        let _ = w.write_all(content.as_bytes());
    }
}

/// Releases the hung read even when the test fails, so no blocking thread outlives the test.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        release(&self.0, "");
    }
}

#[tokio::test]
async fn hung_read_is_not_actual_first_then_379_with_growing_last_check_then_recovers() {
    let a = Agent::start().await;
    let sd = uuid();
    let dom_md = a.root.path().join("mnt1").join(&sd).join("dom_md");
    std::fs::create_dir_all(&dom_md).expect("dirs");
    // Opening a FIFO with no writer blocks: a read from hung storage. A second name for the same
    // FIFO lets the test release the read after `metadata` is replaced.
    let fifo = dom_md.join("metadata.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    std::fs::hard_link(&fifo, dom_md.join("metadata")).expect("link");
    let _release = Release(dom_md.clone());
    monitored(&a, &sd).await;
    let first = a.stats().await[&sd].clone();
    assert!(!first.actual, "first status is synthetic: {first:?}");
    assert!(first.valid && first.code == 0, "{first:?}");
    let hung = a.wait_vitals(&sd, "the deadline", |v| v.code == 379).await;
    assert!(hung.actual && !hung.valid, "{hung:?}");
    let later = a
        .wait_vitals(&sd, "lastCheck growing", |v| {
            v.last_check > hung.last_check + 0.3
        })
        .await;
    assert_eq!(later.code, 379);
    // Storage comes back: the hung read returns the metadata.
    release(&dom_md, &format!("SDUUID={sd}\nVERSION=5\n"));
    let v = a.wait_vitals(&sd, "recovery", |v| v.valid).await;
    assert_eq!(v.code, 0);
    assert!(v.last_check < later.last_check, "{v:?}");
    a.running.shutdown().await;
}
