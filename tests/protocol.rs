//! Protocol tests: the real `protocol::Client` against the real agent server on 127.0.0.1 (VDSM's
//! wire: JSON-RPC over STOMP), and raw STOMP frames as VDSM's and the oVirt engine's clients send
//! them, with file storage in temp dirs and no API server (the agent serves calls from memory). A real file
//! host checks the master as VDSM does, so each pool here is first created on storage with
//! `StoragePool.create`, as a pool manager would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Running, Tls, TlsFiles, start};
use poolkeeper::api::MapStatus::{self, Active, Attached};
use poolkeeper::protocol::stomp::{self, Decoded, Frame};
use poolkeeper::protocol::wire::{
    CreateParams, DomainParams, HostStats, PoolInfo, PoolParams, RefreshParams, SpmStartParams,
    SpmStatusResult, SwitchMasterParams, method,
};
use poolkeeper::protocol::{
    Client, ConnectParams, DisconnectParams, ErrorCode, RpcError, Token, Vitals,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);
const TOKEN: &str = "test-token-0123456789";

struct Agent {
    running: Running,
    root: std::sync::Arc<tempfile::TempDir>,
    client: Client,
    endpoint: String,
}

impl Agent {
    async fn start() -> Self {
        Self::start_with(None, 64 * 1024).await
    }

    async fn start_with(tls: Option<TlsFiles>, max_frame_bytes: usize) -> Self {
        let root = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_on(root, tls, max_frame_bytes).await
    }

    /// An agent over the storage of another one (two hosts sharing an export).
    async fn start_on(
        root: std::sync::Arc<tempfile::TempDir>,
        tls: Option<TlsFiles>,
        max_frame_bytes: usize,
    ) -> Self {
        let token = Some(Token::new(TOKEN).expect("token"));
        let running = single_host(root.path(), tls, token, max_frame_bytes).await;
        let endpoint = running.rpc_addr().to_string();
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

    /// Makes `master` (unless it exists) and creates pool `sp` on it, as a pool manager would.
    async fn pool(&self, sp: &str, master: &str) {
        if poolkeeper::agent::domains::FileDomains::new(self.root.path())
            .read(master)
            .is_err()
        {
            self.domain(master);
        }
        let p = CreateParams {
            storagepool_id: sp.to_owned(),
            name: "dc".into(),
            master_sd_uuid: master.to_owned(),
            master_version: 1,
            domain_list: vec![master.to_owned()],
        };
        self.call::<_, Value>(method::POOL_CREATE, &p)
            .await
            .expect("StoragePool.create");
    }

    async fn call<P: serde::Serialize + Sync, R: serde::de::DeserializeOwned>(
        &self,
        verb: &str,
        params: &P,
    ) -> Result<R, RpcError> {
        self.client.call(&self.endpoint, verb, params, T).await
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

    /// One raw STOMP session: `frames` are sent as they are, then the frames the agent sends
    /// are read until it closes or stays quiet for two seconds.
    async fn raw(&self, frames: &[Frame]) -> Vec<Frame> {
        // Quiet for 2 s: long enough that a loaded machine's late answer is still read.
        raw_session(&self.endpoint, frames, Duration::from_secs(2)).await
    }

    /// CONNECT (with `passcode` when given), SUBSCRIBE to `jms.topic.vdsm_responses` as the
    /// engine does, and SEND `body`; what the agent sent back.
    async fn raw_call(&self, body: &str, passcode: Option<&str>) -> Vec<Frame> {
        let mut connect = Frame::new("CONNECT").header("accept-version", "1.2");
        if let Some(p) = passcode {
            connect = connect.header("passcode", p);
        }
        self.raw(&[
            connect,
            subscribe(stomp::RESPONSES, "sub-1"),
            send(body, Some(stomp::RESPONSES)),
        ])
        .await
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

/// A SEND of `body` to VDSM's request destination, with `reply-to` when given.
fn send(body: &str, reply_to: Option<&str>) -> Frame {
    let mut f = Frame::new("SEND")
        .header("destination", stomp::REQUESTS)
        .header("content-type", "application/json");
    if let Some(r) = reply_to {
        f = f.header("reply-to", r);
    }
    f.with_body(body.as_bytes().to_vec())
}

fn subscribe(destination: &str, id: &str) -> Frame {
    Frame::new("SUBSCRIBE")
        .header("destination", destination)
        .header("ack", "auto")
        .header("id", id)
}

async fn raw_session(endpoint: &str, frames: &[Frame], quiet: Duration) -> Vec<Frame> {
    let mut tcp = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("connect");
    let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
    tcp.write_all(&bytes).await.expect("write");
    read_frames(&mut tcp, quiet).await
}

/// Frames (heart-beats left out) until the peer closes or stays quiet for `quiet`.
async fn read_frames(tcp: &mut tokio::net::TcpStream, quiet: Duration) -> Vec<Frame> {
    let (mut buf, mut out, mut chunk) = (Vec::new(), Vec::new(), vec![0u8; 65536]);
    loop {
        while let Ok(Some((d, n))) = stomp::decode(&buf, stomp::MAX_FRAME_BYTES) {
            buf.drain(..n);
            if let Decoded::Frame(f) = d {
                out.push(f);
            }
        }
        match tokio::time::timeout(quiet, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}

fn commands(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.command.as_str()).collect()
}

/// The JSON body of the only MESSAGE among `frames`.
fn answer(frames: &[Frame]) -> Value {
    let messages: Vec<&Frame> = frames.iter().filter(|f| f.command == "MESSAGE").collect();
    assert_eq!(messages.len(), 1, "{frames:?}");
    serde_json::from_slice(&messages[0].body).expect("json")
}

/// A real host named `host-under-test` over file storage at `root`, with no API server.
async fn single_host(
    root: &Path,
    tls: Option<TlsFiles>,
    token: Option<Token>,
    max_frame_bytes: usize,
) -> Running {
    start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: tls.map(Tls::Files),
        token,
        max_frame_bytes,
        monitor: MonitorConfig {
            period: Duration::from_millis(100),
            check_timeout: Duration::from_millis(400),
        },
        hosts: Hosts::Single {
            name: "host-under-test".into(),
            storage_root: root.to_owned(),
        },
        kube: None,
    })
    .await
    .expect("agent starts")
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
    a.domain(&d2);
    a.pool(&sp, &d1).await;
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
    a.pool(&sp, &d1).await;
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
    a.pool(&sp, &d1).await;
    // A second master of the same pool, as a master change that skipped the pool manager's
    // migration would leave behind (VDSM accepts either as master).
    a.pool(&sp, &d2).await;
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
    a.pool(&sp, &d1).await;
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
    a.pool(&sp, &d1).await;
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
async fn without_map_the_disk_backend_reads_the_master_and_checks_its_version() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.domain(&d2);
    a.pool(&sp, &d1).await;
    let mut p = params(&sp, 1, &d1, None);
    p.master_version = 2;
    assert_eq!(
        code(a.connect(&p).await),
        ErrorCode::StoragePoolWrongMaster,
        "MASTER_VERSION on the master is 1"
    );
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.connect(&params(&sp, 1, &d1, None))
        .await
        .expect("disk backend");
    let info = a.info(&sp).await.expect("connected");
    assert_eq!(info.domain_map(), BTreeMap::from([(d1.clone(), Active)]));
    // The disk backend's getInfo reads the pool keys from the master.
    assert_eq!(
        (info.info.name.as_str(), info.info.lver, info.info.spm_id),
        ("dc", -1, -1)
    );
    a.call::<_, String>(method::POOL_SPM_START, &spm_start(&sp))
        .await
        .expect("spmStart");
    let info = a.info(&sp).await.expect("connected");
    assert_eq!((info.info.lver, info.info.spm_id), (2, 1));
    a.call::<_, Value>(
        method::POOL_SPM_STOP,
        &PoolParams {
            storagepool_id: sp.clone(),
        },
    )
    .await
    .expect("spmStop");
    // A refresh reads the map again; a wrong master is 324 and changes nothing.
    let refresh = |master: &str, version| RefreshParams {
        storagepool_id: sp.clone(),
        master_sd_uuid: master.to_owned(),
        master_version: version,
    };
    assert_eq!(
        code(
            a.call::<_, Value>(method::POOL_REFRESH, &refresh(&d2, 1))
                .await
        ),
        ErrorCode::StoragePoolWrongMaster
    );
    a.call::<_, Value>(method::POOL_REFRESH, &refresh(&d1, 1))
        .await
        .expect("refresh");
    // With a map: the live upgrade to the memory backend; back without one: 325.
    a.connect(&params(
        &sp,
        1,
        &d1,
        Some(&[(&d1, Active), (&d2, Attached)]),
    ))
    .await
    .expect("upgrade");
    assert_eq!(a.info(&sp).await.expect("connected").domain_map().len(), 2);
    assert_eq!(
        code(a.connect(&params(&sp, 1, &d1, None)).await),
        ErrorCode::StoragePoolConnected
    );
    a.running.shutdown().await;
}

#[tokio::test]
async fn the_master_is_checked_as_set_master_domain_does_304_and_324() {
    let a = Agent::start().await;
    let (sp, other, d1, d2, d3) = (uuid(), uuid(), uuid(), uuid(), uuid());
    let map = |m: &str| params(&sp, 1, m, Some(&[(m, Active)]));
    assert_eq!(
        code(a.connect(&map(&d1)).await),
        ErrorCode::StoragePoolMasterNotFound,
        "missing"
    );
    a.domain(&d1);
    assert_eq!(
        code(a.connect(&map(&d1)).await),
        ErrorCode::StoragePoolWrongMaster,
        "made by make-domain, not a master"
    );
    a.pool(&other, &d2).await;
    assert_eq!(
        code(a.connect(&map(&d2)).await),
        ErrorCode::StoragePoolWrongMaster,
        "the master of another pool"
    );
    a.pool(&sp, &d3).await;
    assert_eq!(
        code(a.connect(&map(&d3.to_ascii_uppercase())).await),
        ErrorCode::StoragePoolMasterNotFound,
        "upper case: no such domain directory"
    );
    let mut empty = map(&d3);
    empty.master_sd_uuid.clear();
    assert_eq!(
        code(a.connect(&empty).await),
        ErrorCode::StoragePoolMasterNotFound,
        "no master"
    );
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.connect(&map(&d3)).await.expect("make-domain plus create");
    a.running.shutdown().await;
}

#[tokio::test]
async fn master_not_active_in_the_map_fails_324_connected_or_not() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.pool(&sp, &d1).await;
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
    a.pool(&sp, &d2).await;
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
    a.pool(&sp, &d1).await;
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
async fn a_connect_is_never_refused_328_but_a_map_the_report_cannot_hold_is_302() {
    let a = Agent::start().await;
    let sp = uuid();
    let map: Vec<String> = (0..129).map(|_| uuid()).collect();
    a.pool(&sp, &map[0]).await;
    let entries: Vec<(&str, MapStatus)> = map.iter().map(|d| (d.as_str(), Attached)).collect();
    let mut entries = entries;
    entries[0].1 = Active;
    assert_eq!(
        code(a.connect(&params(&sp, 1, &map[0], Some(&entries))).await),
        ErrorCode::StoragePoolConnectionError
    );
    a.connect(&params(&sp, 1, &map[0], Some(&entries[..101])))
        .await
        .expect("101 domains: 328 is an attach error only");
    a.running.shutdown().await;
}

// --- auth, limits and malformed calls ---

#[tokio::test]
async fn calls_without_the_right_token_are_refused_with_no_state_change() {
    let a = Agent::start().await;
    let (sp, d1) = (uuid(), uuid());
    a.pool(&sp, &d1).await;
    let p = params(&sp, 1, &d1, Some(&[(&d1, Active)]));
    let body = json!({"jsonrpc": "2.0", "method": "StoragePool.connect", "params": p, "id": 1})
        .to_string();
    for (passcode, what) in [(None, "missing"), (Some("nope"), "wrong")] {
        let got = a.raw_call(&body, passcode).await;
        assert_eq!(commands(&got), ["ERROR"], "{what}");
        assert_eq!(got[0].get("message"), Some("credential refused"), "{what}");
    }
    let wrong = Client::new(Token::new("wrong-token").expect("token"), None).expect("client");
    let e = wrong.connect(&a.endpoint, &p, T).await;
    assert!(matches!(e, Err(RpcError::Unauthorized)), "{e:?}");
    assert_eq!(e.map_err(|e| e.category()).err(), Some("Unauthorized"));
    assert_eq!(
        code(a.info(&sp).await),
        ErrorCode::StoragePoolUnknown,
        "nothing happened"
    );
    let ok = a.raw_call(&body, Some(TOKEN)).await;
    assert_eq!(commands(&ok), ["CONNECTED", "MESSAGE"]);
    assert_eq!(answer(&ok)["result"], true);
    assert!(a.info(&sp).await.is_ok());
    a.running.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_are_refused_with_an_error_frame() {
    let a = Agent::start_with(None, 2048).await;
    let sp = uuid();
    let map: Vec<String> = (0..60).map(|_| uuid()).collect();
    let entries: Vec<(&str, MapStatus)> = map.iter().map(|d| (d.as_str(), Active)).collect();
    let e = a.connect(&params(&sp, 1, &map[0], Some(&entries))).await;
    assert!(
        matches!(&e, Err(RpcError::Refused { message }) if message.contains("larger than 2048")),
        "{e:?}"
    );
    assert_eq!(code(a.info(&sp).await), ErrorCode::StoragePoolUnknown);
    a.running.shutdown().await;
}

#[tokio::test]
async fn malformed_calls_get_json_rpc_protocol_errors() {
    let a = Agent::start().await;
    let error_code = |v: &Value| v["error"]["code"].as_i64();
    let r = answer(&a.raw_call("{not json", Some(TOKEN)).await);
    assert_eq!(error_code(&r), Some(-32700));
    assert_eq!(r["id"], Value::Null);
    let r = answer(
        &a.raw_call(r#"{"method":"Host.getStats","id":1}"#, Some(TOKEN))
            .await,
    );
    assert_eq!(error_code(&r), Some(-32600));
    // A batch is answered as a batch (JSON-RPC 2.0), element by element.
    let r = answer(&a.raw_call("[1,2]", Some(TOKEN)).await);
    let codes: Vec<Option<i64>> = r
        .as_array()
        .expect("a batch")
        .iter()
        .map(error_code)
        .collect();
    assert_eq!(codes, [Some(-32600), Some(-32600)]);
    let r = answer(&a.raw_call("[]", Some(TOKEN)).await);
    assert_eq!(error_code(&r), Some(-32600));

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

/// The frames of VDSM's Python client (a fresh reply destination, one-element batches, no
/// `host`) and of the oVirt engine's (`jms.topic.vdsm_responses` and `jms.queue.events`, a
/// `host` header, UNSUBSCRIBE and DISCONNECT with a receipt on close) are both served.
#[tokio::test]
async fn vdsm_and_engine_clients_frames_are_served() {
    let a = Agent::start().await;
    let stats = r#"{"jsonrpc":"2.0","method":"Host.getStats","params":{},"id":"e1"}"#;
    // VDSM's Python client: SUBSCRIBE before CONNECTED arrives, a one-element batch.
    let queue = uuid();
    let got = a
        .raw(&[
            Frame::new("CONNECT")
                .header("accept-version", "1.2")
                .header("heart-beat", "0,24000")
                .header("passcode", TOKEN),
            subscribe(&queue, "s1"),
            send(&format!("[{stats}]"), Some(&queue)),
        ])
        .await;
    assert_eq!(commands(&got), ["CONNECTED", "MESSAGE"]);
    assert_eq!(got[0].get("version"), Some("1.2"));
    assert_eq!(got[0].get("heart-beat"), Some("24000,0"));
    assert_eq!(got[1].get("destination"), Some(queue.as_str()));
    assert_eq!(got[1].get("subscription"), Some("s1"));
    assert_eq!(got[1].get("content-type"), Some("application/json"));
    let r = answer(&got);
    assert_eq!(r[0]["id"], "e1");
    assert!(r[0]["result"]["storageDomains"].is_object(), "{r}");

    // The engine's client.
    let got = a
        .raw(&[
            Frame::new("CONNECT")
                .header("accept-version", "1.2")
                .header("host", "127.0.0.1")
                .header("passcode", TOKEN),
            subscribe(stomp::RESPONSES, "r"),
            subscribe(stomp::EVENTS, "e"),
            send(stats, Some(stomp::RESPONSES)).header("ovirtCorrelationId", "flow-1"),
            Frame::new("UNSUBSCRIBE").header("id", "r"),
            Frame::new("DISCONNECT").header("receipt", "bye-1"),
        ])
        .await;
    assert_eq!(commands(&got)[0], "CONNECTED");
    assert!(commands(&got).contains(&"RECEIPT"), "{got:?}");
    let receipt = got
        .iter()
        .find(|f| f.command == "RECEIPT")
        .expect("receipt");
    assert_eq!(receipt.get("receipt-id"), Some("bye-1"));
    a.running.shutdown().await;
}

/// What VDSM gets wrong or refuses, answered as STOMP and JSON-RPC say: a notification gets no
/// answer and the agent keeps answering (VDSM's worker dies on one), other versions and a SEND
/// before CONNECT get ERROR, a reply-to nobody subscribed to gets ERROR, and heart-beats come at
/// the interval asked for.
#[tokio::test]
async fn notifications_versions_and_heart_beats() {
    let a = Agent::start().await;
    let note = r#"{"jsonrpc":"2.0","method":"Host.getStats","params":{}}"#;
    let stats = r#"{"jsonrpc":"2.0","method":"Host.getStats","params":{},"id":2}"#;
    let got = a
        .raw(&[
            Frame::new("CONNECT")
                .header("accept-version", "1.2")
                .header("passcode", TOKEN),
            subscribe("q", "s"),
            send(note, Some("q")),
            send(stats, Some("q")),
        ])
        .await;
    assert_eq!(commands(&got), ["CONNECTED", "MESSAGE"]);
    assert_eq!(answer(&got)["id"], 2);
    let _: HostStats = a.client.get_stats(&a.endpoint, T).await.expect("serving");

    let got = a
        .raw(&[Frame::new("CONNECT")
            .header("accept-version", "1.0,1.1")
            .header("passcode", TOKEN)])
        .await;
    assert_eq!(commands(&got), ["ERROR"]);
    assert_eq!(got[0].get("message"), Some("Version unsupported"));
    let got = a
        .raw(&[Frame::new("CONNECT")
            .header("accept-version", "1.1,1.2")
            .header("passcode", TOKEN)])
        .await;
    assert_eq!(commands(&got), ["CONNECTED"], "1.2 among others is spoken");
    let got = a.raw(&[send(stats, Some("q"))]).await;
    assert_eq!(commands(&got), ["ERROR"], "SEND before CONNECT");
    let got = a
        .raw(&[
            Frame::new("CONNECT")
                .header("accept-version", "1.2")
                .header("passcode", TOKEN),
            send(stats, Some("nobody-listens")),
        ])
        .await;
    assert_eq!(commands(&got), ["CONNECTED", "ERROR"]);
    assert!(
        got[1]
            .get("message")
            .is_some_and(|m| m.contains("SUBSCRIBE")),
        "{got:?}"
    );

    // Heart-beats: asked for every second, bare newlines arrive while the session is idle.
    let mut tcp = tokio::net::TcpStream::connect(&a.endpoint)
        .await
        .expect("connect");
    let connect = Frame::new("CONNECT")
        .header("accept-version", "1.2")
        .header("heart-beat", "0,1000")
        .header("passcode", TOKEN)
        .encode();
    tcp.write_all(&connect).await.expect("write");
    let got = read_frames(&mut tcp, Duration::from_millis(300)).await;
    assert_eq!(got[0].get("heart-beat"), Some("1000,0"));
    let mut newlines = 0;
    let deadline = Instant::now() + Duration::from_millis(2600);
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        if let Ok(Ok(1)) =
            tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut byte)).await
        {
            newlines += usize::from(byte[0] == b'\n');
        }
    }
    assert!(newlines >= 2, "{newlines} heart-beats in 2.6 s");
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
        .get_stats(&addr.to_string(), Duration::from_millis(200))
        .await;
    assert!(matches!(e, Err(RpcError::Timeout { .. })), "{e:?}");
    hold.abort();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = client.get_stats(&format!("127.0.0.1:{port}"), T).await;
    assert!(matches!(e, Err(RpcError::Transport { .. })), "{e:?}");
    assert!(e.as_ref().err().is_some_and(RpcError::is_unreachable));
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
    let a = Agent::start_with(
        Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        }),
        64 * 1024,
    )
    .await;
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
    assert!(matches!(e, Err(RpcError::Transport { .. })), "{e:?}");
    let plain = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
    let e = plain.get_stats(&a.endpoint, Duration::from_secs(2)).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "plain TCP to a TLS port: {e:?}"
    );
    a.running.shutdown().await;
}

/// One connection per host, kept: when the host's process restarts at the same address, the
/// next call opens a new connection by itself (the old one's end was seen), and a host that is
/// gone fails fast with a transport error, not a hang.
#[tokio::test]
async fn the_connection_is_reopened_after_the_host_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    let token = || Some(Token::new(TOKEN).expect("token"));
    let first = single_host(root.path(), None, token(), 64 * 1024).await;
    let endpoint = first.rpc_addr().to_string();
    let client = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
    let _: HostStats = client.get_stats(&endpoint, T).await.expect("first call");
    first.shutdown().await;
    let e = client.get_stats(&endpoint, T).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "host gone: {e:?}"
    );

    let again = start(Options {
        listen: endpoint.parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: None,
        token: token(),
        max_frame_bytes: 64 * 1024,
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
    .expect("the host comes back at the same address");
    // Redialed after the delay the failed dial left (0.2 s), within the call's timeout.
    let _: HostStats = client
        .get_stats(&endpoint, T)
        .await
        .expect("called again on a new connection");
    again.shutdown().await;
}

/// Simulated hosts given the pool CA each serve with a certificate of their own, for their Host
/// name and address: the controller's certificate is served by each, a host's address answering
/// for another host's name is refused, and a client without a certificate is refused.
#[tokio::test]
async fn simulated_hosts_each_serve_their_own_certificate() {
    use poolkeeper::protocol::Target;
    use poolkeeper::testenv::PoolCa;

    let ca = PoolCa::generate("pool-ca").expect("ca");
    let controller = ca.controller().expect("controller cert");
    let running = start(Options {
        listen: "127.3.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: Some(Tls::Issued(std::sync::Arc::new(
            PoolCa::from_pem(ca.pem(), ca.key_pem()).expect("ca"),
        ))),
        // Mutual TLS: a token, if any, is not asked of RPC connections.
        token: Some(Token::new(TOKEN).expect("token")),
        max_frame_bytes: 64 * 1024,
        monitor: MonitorConfig {
            period: Duration::from_millis(100),
            check_timeout: Duration::from_millis(400),
        },
        hosts: Hosts::Simulated {
            count: 3,
            prefix: "sim-tls".into(),
            storage: None,
        },
        kube: None,
    })
    .await
    .expect("simulated hosts start");
    let client = Client::mutual(
        ca.pem().as_bytes(),
        controller.cert_pem.as_bytes(),
        controller.key_pem.as_bytes(),
        None,
    )
    .expect("client");
    let endpoints: Vec<(String, String)> = running
        .hosts()
        .iter()
        .map(|h| (h.name().to_owned(), h.endpoint().to_owned()))
        .collect();
    for (name, endpoint) in &endpoints {
        client
            .get_stats(Target { name, endpoint }, T)
            .await
            .expect("each host serves the controller with its own certificate");
    }
    let (a, _) = &endpoints[0];
    let (_, b_at) = &endpoints[1];
    let e = client
        .get_stats(
            Target {
                name: a,
                endpoint: b_at,
            },
            T,
        )
        .await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "host b answering for a: {e:?}"
    );
    let anonymous =
        Client::new(Token::new(TOKEN).expect("token"), Some(ca.pem().as_bytes())).expect("client");
    let (name, endpoint) = &endpoints[2];
    let e = anonymous.get_stats(Target { name, endpoint }, T).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "no client certificate: {e:?}"
    );
    running.shutdown().await;
}

/// Mutual TLS, as VDSM takes calls only from the engine: the agent accepts only a client
/// certificate the pool CA signed for the controller, and the controller accepts only a host
/// certificate that names the Host it calls. No token is involved.
#[tokio::test]
async fn mutual_tls_accepts_only_the_controller_and_the_host_called() {
    use poolkeeper::protocol::Target;
    use poolkeeper::testenv::{KeyUsage, PoolCa};

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = PoolCa::generate("pool-ca").expect("ca");
    let host = ca.host("host-under-test", "127.0.0.1").expect("host cert");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    let files = TlsFiles {
        cert: write("tls.crt", &host.cert_pem),
        key: write("tls.key", &host.key_pem),
        client_ca: Some(write("ca.crt", ca.pem())),
    };
    let root = tempfile::tempdir().expect("tempdir");
    // No token: the controller's certificate is the only credential.
    let running = single_host(root.path(), Some(files), None, 64 * 1024).await;
    let endpoint = running.rpc_addr().to_string();
    let target = Target {
        name: "host-under-test",
        endpoint: &endpoint,
    };
    let short = Duration::from_secs(3);
    let with = |id: &poolkeeper::testenv::Issued, ca_pem: &str| {
        Client::mutual(
            ca_pem.as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
            None,
        )
        .expect("client")
    };

    let controller = with(&ca.controller().expect("controller cert"), ca.pem());
    controller
        .get_stats(target, short)
        .await
        .expect("the controller is served");

    // Refused: no client certificate at all...
    let anonymous =
        Client::new(Token::new(TOKEN).expect("token"), Some(ca.pem().as_bytes())).expect("client");
    let e = anonymous.get_stats(target, short).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "no client cert: {e:?}"
    );
    // ...a controller certificate from another CA...
    let other = PoolCa::generate("other-ca").expect("ca");
    let forged = with(&other.controller().expect("cert"), ca.pem());
    let e = forged.get_stats(target, short).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "other CA: {e:?}"
    );
    // ...a host's certificate presented as the controller (server use only)...
    let e = with(&host, ca.pem()).get_stats(target, short).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "host cert: {e:?}"
    );
    // ...and a client certificate of the pool CA that names someone else.
    let impostor = ca.issue(&["host-b"], KeyUsage::ClientAuth).expect("cert");
    let e = with(&impostor, ca.pem()).get_stats(target, short).await;
    assert!(
        e.as_ref().is_err_and(RpcError::is_unreachable),
        "not the controller: {e:?}"
    );

    // The controller refuses a host answering with another host's certificate.
    let e = controller
        .get_stats(
            Target {
                name: "host-b",
                endpoint: &endpoint,
            },
            short,
        )
        .await;
    assert!(
        matches!(&e, Err(RpcError::Transport { reason }) if reason.contains("tls")),
        "{e:?}"
    );
    running.shutdown().await;
}

// --- monitors over temp dirs ---

/// Connects to a new pool whose map has `sd` active beside its master.
async fn monitored(a: &Agent, sd: &str) {
    let (sp, master) = (uuid(), uuid());
    a.pool(&sp, &master).await;
    a.connect(&params(
        &sp,
        1,
        &master,
        Some(&[(&master, Active), (sd, Active)]),
    ))
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
async fn unreadable_metadata_is_2001() {
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
    assert!(!v.valid && !v.acquired);
    assert_eq!(v.code, 2001);
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
async fn hung_read_is_not_actual_first_then_2001_with_growing_last_check_then_recovers() {
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
    let hung = a.wait_vitals(&sd, "the deadline", |v| v.code == 2001).await;
    assert!(hung.actual && !hung.valid, "{hung:?}");
    let later = a
        .wait_vitals(&sd, "lastCheck growing", |v| {
            v.last_check > hung.last_check + 0.3
        })
        .await;
    assert_eq!(later.code, 2001);
    // Storage comes back: the hung read returns the metadata.
    release(&dom_md, &format!("SDUUID={sd}\nVERSION=5\n"));
    let v = a.wait_vitals(&sd, "recovery", |v| v.valid).await;
    assert_eq!(v.code, 0);
    assert!(v.last_check < later.last_check, "{v:?}");
    a.running.shutdown().await;
}

// --- the pool on storage: the pool manager's verbs ---

fn domain_params(sp: &str, sd: &str, master: &str, version: i64) -> DomainParams {
    DomainParams {
        storagedomain_id: sd.to_owned(),
        storagepool_id: sp.to_owned(),
        master_sd_uuid: master.to_owned(),
        master_version: version,
        force: false,
    }
}

fn spm_start(sp: &str) -> SpmStartParams {
    SpmStartParams {
        storagepool_id: sp.to_owned(),
        prev_id: -1,
        prev_lver: -1,
        enable_scsi_fencing: false,
        max_host_id: 250,
        dom_version: None,
    }
}

impl Agent {
    async fn spm_status(&self, sp: &str) -> (String, i64, i64) {
        let p = PoolParams {
            storagepool_id: sp.to_owned(),
        };
        let r: SpmStatusResult = self
            .call(method::POOL_GET_SPM_STATUS, &p)
            .await
            .expect("getSpmStatus");
        (r.spm_st.spm_status, r.spm_st.spm_lver, r.spm_st.spm_id)
    }

    async fn verb(&self, verb: &str, p: &DomainParams) -> Result<Value, RpcError> {
        self.call(verb, p).await
    }

    fn metadata(&self, sd: &str) -> poolkeeper::agent::metadata::Metadata {
        poolkeeper::agent::domains::FileDomains::new(self.root.path())
            .read(sd)
            .expect("metadata")
    }
}

#[tokio::test]
async fn pool_manager_verbs_run_only_on_the_pool_manager_and_write_metadata_as_vdsm() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.domain(&d2);
    a.pool(&sp, &d1).await;
    let pool = PoolParams {
        storagepool_id: sp.clone(),
    };
    assert_eq!(
        code(
            a.call::<_, Value>(method::POOL_SPM_START, &spm_start(&sp))
                .await
        ),
        ErrorCode::StoragePoolUnknown,
        "not connected"
    );
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    let attach = domain_params(&sp, &d2, "", 0);
    assert_eq!(
        code(a.verb(method::DOMAIN_ATTACH, &attach).await),
        ErrorCode::SpmStatusError,
        "654 before spmStart"
    );
    // `create` held the master's lease for a moment (lver 1), as VDSM's does.
    assert_eq!(a.spm_status(&sp).await, ("Free".into(), 1, -1));
    a.call::<_, String>(method::POOL_SPM_START, &spm_start(&sp))
        .await
        .expect("spmStart");
    assert_eq!(a.spm_status(&sp).await, ("SPM".into(), 2, 1));
    let disc = DisconnectParams {
        storagepool_id: sp.clone(),
        host_id: 1,
        scsi_key: sp.clone(),
    };
    let e = a.client.disconnect(&a.endpoint, &disc, T).await;
    assert_eq!(code(e), ErrorCode::IsSpm);

    a.verb(method::DOMAIN_ATTACH, &attach)
        .await
        .expect("attach");
    assert_eq!(a.metadata(&d2).pools(), vec![sp.as_str()]);
    assert_eq!(a.info(&sp).await.expect("info").domain_map()[&d2], Attached);
    a.verb(method::DOMAIN_ACTIVATE, &attach)
        .await
        .expect("activate");
    assert_eq!(a.info(&sp).await.expect("info").domain_map()[&d2], Active);
    a.wait_vitals(&d2, "the activated domain monitored", |v| v.valid)
        .await;

    // Deactivating the master with a new one migrates the role first (the 3.5-era path).
    a.verb(method::DOMAIN_DEACTIVATE, &domain_params(&sp, &d1, &d2, 2))
        .await
        .expect("deactivate the master");
    let info = a.info(&sp).await.expect("info");
    assert_eq!(
        (info.info.master_uuid.as_str(), info.info.master_ver),
        (d2.as_str(), 2)
    );
    assert_eq!(info.domain_map()[&d1], Attached);
    assert!(a.metadata(&d2).is_master() && !a.metadata(&d1).is_master());
    assert_eq!(
        a.spm_status(&sp).await.0,
        "SPM",
        "the role moved with its lease"
    );

    // switchMaster (4.4.3+): no deactivation; the new master must be active.
    let switch = |old: &str, new: &str, v| SwitchMasterParams {
        storagepool_id: sp.clone(),
        old_master_uuid: old.to_owned(),
        new_master_uuid: new.to_owned(),
        master_version: v,
    };
    assert_eq!(
        code(
            a.call::<_, Value>(method::POOL_SWITCH_MASTER, &switch(&d2, &d1, 3))
                .await
        ),
        ErrorCode::StorageDomainNotActive
    );
    a.verb(method::DOMAIN_ACTIVATE, &domain_params(&sp, &d1, "", 0))
        .await
        .expect("activate");
    a.call::<_, Value>(method::POOL_SWITCH_MASTER, &switch(&d2, &d1, 3))
        .await
        .expect("switchMaster");
    assert!(a.metadata(&d1).is_master() && !a.metadata(&d2).is_master());

    assert_eq!(
        code(
            a.verb(method::DOMAIN_DETACH, &domain_params(&sp, &d1, "", 0))
                .await
        ),
        ErrorCode::CannotDetachMasterStorageDomain
    );
    a.verb(method::DOMAIN_DEACTIVATE, &domain_params(&sp, &d2, "", 0))
        .await
        .expect("deactivate");
    a.verb(method::DOMAIN_DETACH, &domain_params(&sp, &d2, "", 0))
        .await
        .expect("detach");
    assert!(a.metadata(&d2).pools().is_empty());
    assert!(
        !a.info(&sp)
            .await
            .expect("info")
            .domain_map()
            .contains_key(&d2)
    );

    // Unfinished work holds the role (653); once done, spmStop frees it and disconnect works.
    let host = a.running.host("host-under-test").expect("host");
    host.set_unfinished_tasks(1);
    assert_eq!(
        code(a.call::<_, Value>(method::POOL_SPM_STOP, &pool).await),
        ErrorCode::SpmStopError
    );
    host.set_unfinished_tasks(0);
    a.call::<_, Value>(method::POOL_SPM_STOP, &pool)
        .await
        .expect("spmStop");
    // The lease of `d1`, taken again by switchMaster (lver 3), is free.
    assert_eq!(a.spm_status(&sp).await, ("Free".into(), 3, -1));
    a.client
        .disconnect(&a.endpoint, &disc, T)
        .await
        .expect("disconnect after spmStop");
    a.running.shutdown().await;
}

#[tokio::test]
async fn two_agents_sharing_storage_are_never_both_pool_manager() {
    let a = Agent::start().await;
    let b = Agent::start_on(std::sync::Arc::clone(&a.root), None, 64 * 1024).await;
    let (sp, d1) = (uuid(), uuid());
    a.pool(&sp, &d1).await;
    for (agent, id) in [(&a, 1), (&b, 2)] {
        agent
            .connect(&params(&sp, id, &d1, Some(&[(&d1, Active)])))
            .await
            .expect("connects");
    }
    a.call::<_, String>(method::POOL_SPM_START, &spm_start(&sp))
        .await
        .expect("a starts");
    // While `a` renews (every 50 ms, a 600 ms lease), `b` never gets the role.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            code(
                b.call::<_, Value>(method::POOL_SPM_START, &spm_start(&sp))
                    .await
            ),
            ErrorCode::AcquireLockFailure
        );
        assert_eq!(b.spm_status(&sp).await, ("Free".into(), 2, 1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `a` dies without spmStop: its lease expires unrenewed and `b` takes over, lver + 1.
    a.running.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b
            .call::<_, String>(method::POOL_SPM_START, &spm_start(&sp))
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "b never took over: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.spm_status(&sp).await, ("SPM".into(), 3, 2));
    b.running.shutdown().await;
}

#[tokio::test]
async fn reconstruct_master_needs_a_disconnected_host_and_writes_a_new_master() {
    let a = Agent::start().await;
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    a.domain(&d2);
    a.pool(&sp, &d1).await;
    let reconstruct = json!({"storagepoolID": sp, "hostId": 1, "name": "dc",
        "masterSdUUID": d2, "masterVersion": 7, "domainDict": {&d1: "attached", &d2: "active"}});
    a.connect(&params(&sp, 1, &d1, Some(&[(&d1, Active)])))
        .await
        .expect("connects");
    assert_eq!(
        code(
            a.call::<_, Value>(method::POOL_RECONSTRUCT_MASTER, &reconstruct)
                .await
        ),
        ErrorCode::StoragePoolConnected
    );
    let disc = DisconnectParams {
        storagepool_id: sp.clone(),
        host_id: 1,
        scsi_key: sp.clone(),
    };
    a.client
        .disconnect(&a.endpoint, &disc, T)
        .await
        .expect("disconnect");
    a.call::<_, Value>(method::POOL_RECONSTRUCT_MASTER, &reconstruct)
        .await
        .expect("reconstructMaster");
    // The disk backend connects on the new master with its version and map.
    let mut p = params(&sp, 1, &d2, None);
    p.master_version = 7;
    a.connect(&p).await.expect("connects on the new master");
    assert_eq!(
        a.info(&sp).await.expect("info").domain_map(),
        BTreeMap::from([(d1.clone(), Attached), (d2.clone(), Active)])
    );
    a.running.shutdown().await;
}

#[tokio::test]
async fn simulated_hosts_share_storage_check_the_master_as_vdsm_and_hold_one_pool_manager() {
    let running = start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls: None,
        token: Some(Token::new(TOKEN).expect("token")),
        max_frame_bytes: 64 * 1024,
        monitor: MonitorConfig {
            period: Duration::from_millis(100),
            check_timeout: Duration::from_millis(400),
        },
        hosts: Hosts::Simulated {
            count: 2,
            prefix: "sim".into(),
            storage: None,
        },
        kube: None,
    })
    .await
    .expect("simulator starts");
    let base = format!("http://{}", running.control_addr().expect("control"));
    let client = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
    // Each simulated host serves on its own address.
    let endpoint = |i: usize| running.hosts()[i].endpoint().to_owned();
    assert_ne!(endpoint(0), endpoint(1));
    let (sp, d1, d2) = (uuid(), uuid(), uuid());
    // A domain fresh from make-domain is no pool's master: refused (324) as by VDSM, until the
    // pool is created on the shared storage (by one host; the other sees it).
    let first = params(&sp, 1, &d1, Some(&[(&d1, Active)]));
    assert_eq!(
        code(client.connect(&endpoint(0), &first, T).await),
        ErrorCode::StoragePoolWrongMaster
    );
    let create = CreateParams {
        storagepool_id: sp.clone(),
        name: "dc".into(),
        master_sd_uuid: d1.clone(),
        master_version: 1,
        domain_list: vec![d1.clone()],
    };
    client
        .call::<_, Value>(&endpoint(0), method::POOL_CREATE, &create, T)
        .await
        .expect("create");
    for i in 0..2 {
        let p = params(
            &sp,
            i32::try_from(i + 1).expect("id"),
            &d1,
            Some(&[(&d1, Active)]),
        );
        client.connect(&endpoint(i), &p, T).await.expect("connects");
    }
    client
        .call::<_, String>(&endpoint(0), method::POOL_SPM_START, &spm_start(&sp), T)
        .await
        .expect("host 0 is pool manager");
    let e = client
        .call::<_, String>(&endpoint(1), method::POOL_SPM_START, &spm_start(&sp), T)
        .await;
    assert_eq!(code(e), ErrorCode::AcquireLockFailure);
    // The pool manager's writes are what every host reads: the domain attached by host 0 names
    // the pool, and a master claimed by another pool is refused (324) even here.
    client
        .call::<_, Value>(
            &endpoint(0),
            method::DOMAIN_ATTACH,
            &domain_params(&sp, &d2, "", 0),
            T,
        )
        .await
        .expect("attach");
    let other = uuid();
    let p = params(&other, 1, &d2, Some(&[(&d2, Active)]));
    client
        .disconnect(
            &endpoint(1),
            &DisconnectParams {
                storagepool_id: sp.clone(),
                host_id: 2,
                scsi_key: sp.clone(),
            },
            T,
        )
        .await
        .expect("host 1 leaves");
    assert_eq!(
        code(client.connect(&endpoint(1), &p, T).await),
        ErrorCode::StoragePoolWrongMaster
    );
    // Unfinished work injected through the control surface holds the role (653).
    let tasks = format!("{base}/control/hosts/sim-0000/tasks");
    let http = reqwest::Client::new();
    let put = http
        .put(&tasks)
        .bearer_auth(TOKEN)
        .json(&json!({"unfinished": 1}))
        .send()
        .await
        .expect("control");
    assert_eq!(put.status(), 204);
    let stop = PoolParams {
        storagepool_id: sp.clone(),
    };
    let e = client
        .call::<_, Value>(&endpoint(0), method::POOL_SPM_STOP, &stop, T)
        .await;
    assert_eq!(code(e), ErrorCode::SpmStopError);
    let del = http
        .delete(&tasks)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("control");
    assert_eq!(del.status(), 204);
    client
        .call::<_, Value>(&endpoint(0), method::POOL_SPM_STOP, &stop, T)
        .await
        .expect("spmStop");
    running.shutdown().await;
}

/// What `events` tells next (`None` after 5 s of nothing).
async fn next(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) -> Option<&'static str> {
    tokio::time::timeout(T, events.recv()).await.ok().flatten()
}

/// A host that answers every call with an empty result and says when a connection of its opens
/// and when one ends.
async fn counting_host() -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tx.send("opened");
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 4096]);
                loop {
                    while let Ok(Some((d, n))) = stomp::decode(&buf, stomp::MAX_FRAME_BYTES) {
                        buf.drain(..n);
                        let Decoded::Frame(f) = d else { continue };
                        let out = match f.command.as_str() {
                            "CONNECT" => Frame::new("CONNECTED").header("version", "1.2"),
                            "SEND" => {
                                let call: Value = serde_json::from_slice(&f.body).expect("json");
                                let result =
                                    json!({"jsonrpc": "2.0", "id": call["id"], "result": {}});
                                Frame::new("MESSAGE").with_body(result.to_string().into_bytes())
                            }
                            _ => continue,
                        };
                        if tcp.write_all(&out.encode()).await.is_err() {
                            break;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let _ = tx.send("closed");
            });
        }
    });
    (endpoint, rx)
}

#[tokio::test]
async fn only_the_most_recently_used_connections_are_kept() {
    let client = Client::new(Token::new(TOKEN).expect("token"), None).expect("client");
    client.keep_at_most(2);
    let (mut hosts, mut seen) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (endpoint, events) = counting_host().await;
        hosts.push(endpoint);
        seen.push(events);
    }
    let ping = |i: usize| {
        let (client, endpoint) = (client.clone(), hosts[i].clone());
        async move {
            client
                .call::<_, Value>(&endpoint, "Host.ping2", &json!({}), T)
                .await
                .expect("the host answers")
        }
    };
    ping(0).await;
    ping(1).await;
    ping(0).await;
    assert_eq!(next(&mut seen[0]).await, Some("opened"));
    assert_eq!(next(&mut seen[1]).await, Some("opened"));
    // Host 0 was used last but one: a third host lets host 1's connection go, and it closes.
    ping(2).await;
    assert_eq!(next(&mut seen[2]).await, Some("opened"));
    assert_eq!(next(&mut seen[1]).await, Some("closed"));
    assert!(seen[0].try_recv().is_err(), "host 0 keeps its connection");
    // Calling host 1 again dials it again.
    ping(1).await;
    assert_eq!(next(&mut seen[1]).await, Some("opened"));
    assert_eq!(client.connections_opened((&hosts[1]).into()), 2);
    assert_eq!(client.connections_opened((&hosts[0]).into()), 1);
    // Host 0 is now the least recently used of three: its connection goes.
    assert_eq!(next(&mut seen[0]).await, Some("closed"));
}
