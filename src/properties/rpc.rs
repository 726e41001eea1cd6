//! The JSON-RPC parsers: the agent's [`server::handle`] (any request body), the controller's
//! [`decode_response`] (any answer body), and the bearer-token check (any `Authorization` header).

use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::{body, config, json, mutate, nested, text};
use crate::api::bounds::OUTSIDE_TEXT_MAX;
use crate::protocol::client::decode_response;
use crate::protocol::server::{self, Verbs};
use crate::protocol::wire::{Outcome, Response, is_uuid};
use crate::protocol::{
    ConnectParams, DisconnectParams, GetInfoParams, HostStats, PoolInfo, RpcError, Token,
    VdsmError, Vitals,
};

const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
const SD: &str = "11111111-2222-3333-4444-555555555555";

/// The longest error message an answer may carry: a fixed sentence around outside text cut to
/// [`OUTSIDE_TEXT_MAX`].
const MESSAGE_MAX: usize = OUTSIDE_TEXT_MAX + 128;

/// A host that records what reaches it.
#[derive(Default)]
struct Recorder {
    connects: Mutex<Vec<ConnectParams>>,
    disconnects: Mutex<Vec<DisconnectParams>>,
    infos: Mutex<Vec<GetInfoParams>>,
}

impl Verbs for Recorder {
    fn connect(&self, params: ConnectParams) -> Result<(), VdsmError> {
        self.connects.lock().expect("lock").push(params);
        Ok(())
    }
    fn disconnect(&self, params: DisconnectParams) -> Result<(), VdsmError> {
        self.disconnects.lock().expect("lock").push(params);
        Ok(())
    }
    fn get_info(&self, params: GetInfoParams) -> Result<PoolInfo, VdsmError> {
        self.infos.lock().expect("lock").push(params);
        Ok(PoolInfo {
            info: crate::protocol::wire::PoolInfoDetails {
                name: "No Description".into(),
                pool_status: "connected".into(),
                master_uuid: SD.into(),
                master_ver: 1,
                lver: -1,
                spm_id: -1,
                domains: format!("{SD}:Active"),
            },
            dominfo: BTreeMap::new(),
        })
    }
    fn repo_stats(&self) -> BTreeMap<String, Vitals> {
        BTreeMap::new()
    }
}

/// What the agent answers `body` with, checked: it serialises, its error message is bounded,
/// and only well-formed parameters reached the host.
fn serve(body: &[u8]) -> Result<Option<Response>, TestCaseError> {
    let host = Recorder::default();
    let answer = server::handle(&host, body);
    if let Some(r) = &answer {
        prop_assert!(serde_json::to_vec(r).is_ok());
        prop_assert!(matches!(
            r.id,
            Value::Null | Value::Number(_) | Value::String(_)
        ));
        if let Outcome::Error(e) = &r.outcome {
            let n = e.message.chars().count();
            prop_assert!(n <= MESSAGE_MAX, "a {n}-character error message");
        }
    }
    for p in host.connects.lock().expect("lock").iter() {
        prop_assert!(is_uuid(&p.storagepool_id) && (1..=2000).contains(&p.host_id));
        prop_assert!(p.master_sd_uuid.is_empty() || is_uuid(&p.master_sd_uuid));
        let keys_ok = p
            .domain_dict
            .as_ref()
            .is_none_or(|m| m.keys().all(|k| is_uuid(k)));
        prop_assert!(keys_ok, "a malformed domainDict key reached the host");
    }
    for p in host.disconnects.lock().expect("lock").iter() {
        prop_assert!(is_uuid(&p.storagepool_id) && (1..=2000).contains(&p.host_id));
    }
    for p in host.infos.lock().expect("lock").iter() {
        prop_assert!(is_uuid(&p.storagepool_id));
    }
    Ok(answer)
}

fn error_code(answer: Option<&Response>) -> Option<i64> {
    match &answer?.outcome {
        Outcome::Error(e) => Some(e.code),
        Outcome::Result(_) => None,
    }
}

/// Well-formed requests of every verb the agent serves.
fn request() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"jsonrpc": "2.0", "method": "StoragePool.connect", "id": 1, "params": {
            "storagepoolID": SP, "hostID": 1, "scsiKey": SP, "masterSdUUID": SD,
            "masterVersion": 1, "domainDict": {SD: "active"}}}),
        json!({"jsonrpc": "2.0", "method": "StoragePool.disconnect", "id": "a", "params": {
            "storagepoolID": SP, "hostID": 2, "scsiKey": SP}}),
        json!({"jsonrpc": "2.0", "method": "StoragePool.getInfo", "id": 3, "params": {
            "storagepoolID": SP}}),
        json!({"jsonrpc": "2.0", "method": "Host.getStats", "id": 4}),
        json!({"jsonrpc": "2.0", "method": "Host.getStorageRepoStats", "id": 5, "params": {}}),
    ])
}

/// Well-formed answers of the verbs the controller calls, all to call 7.
fn response() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"jsonrpc": "2.0", "id": 7, "result": true}),
        json!({"jsonrpc": "2.0", "id": 7, "error": {"code": 323, "message": "other pool"}}),
        json!({"jsonrpc": "2.0", "id": 7, "result": {"storageDomains": {SD: {
            "valid": true, "code": 0, "lastCheck": "1.5", "delay": "0.001", "acquired": true,
            "actual": true, "version": 5}}}}),
        json!({"jsonrpc": "2.0", "id": 7, "result": {"info": {"name": "No Description",
            "pool_status": "connected", "master_uuid": SD, "master_ver": 1, "lver": -1,
            "spm_id": -1, "domains": ""}, "dominfo": {SD: {"status": "Active"}}}}),
    ])
}

/// What the controller makes of `body` as the answer to call 7, checked: no panic, and every
/// text kept from the body is cut.
fn read_answer(body: &[u8]) -> Result<(), TestCaseError> {
    fn bounded<R>(r: Result<R, RpcError>) -> Result<(), TestCaseError> {
        match r {
            Ok(_) => {}
            Err(RpcError::Vdsm(e)) => {
                prop_assert!(e.message.chars().count() <= OUTSIDE_TEXT_MAX);
            }
            Err(RpcError::BadResponse { reason }) => {
                prop_assert!(reason.chars().count() <= OUTSIDE_TEXT_MAX);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
        Ok(())
    }
    bounded(decode_response::<IgnoredAny>(body, "7"))?;
    bounded(decode_response::<HostStats>(body, "7"))?;
    bounded(decode_response::<PoolInfo>(body, "7"))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_agent_answers_any_body(body in body()) {
        serve(&body)?;
    }

    #[test]
    fn the_agent_answers_any_json(v in json()) {
        serve(&serde_json::to_vec(&v).expect("serialises"))?;
    }

    #[test]
    fn the_agent_refuses_requests_with_a_field_replaced(
        base in request(),
        pick in any::<usize>(),
        with in json(),
    ) {
        serve(&serde_json::to_vec(&mutate(&base, pick, with)).expect("serialises"))?;
    }

    #[test]
    fn the_controller_reads_any_answer(body in body()) {
        read_answer(&body)?;
    }

    #[test]
    fn the_controller_reads_answers_with_a_field_replaced(
        base in response(),
        pick in any::<usize>(),
        with in json(),
    ) {
        read_answer(&serde_json::to_vec(&mutate(&base, pick, with)).expect("serialises"))?;
    }

    #[test]
    fn a_token_file_holds_one_printable_word_or_is_refused(text in "\\PC{0,20}|[ -~\t\n]{0,20}") {
        let word = text.trim();
        let valid = !word.is_empty() && word.bytes().all(|b| b.is_ascii_graphic());
        prop_assert_eq!(Token::new(&text).is_ok(), valid);
    }

    #[test]
    fn only_the_exact_bearer_token_passes(
        header in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "Bearer \\PC{0,12}".prop_map(String::into_bytes),
            Just(b"Bearer s3cret".to_vec()),
            Just(b"Bearer s3cret ".to_vec()),
            Just(b"bearer s3cret".to_vec()),
        ],
    ) {
        let token = Token::new("s3cret").expect("valid");
        prop_assert_eq!(token.matches_header(&header), header == b"Bearer s3cret");
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// Nesting far beyond serde_json's recursion limit (128) is refused, not followed down the
    /// stack; a megabyte of text in any field yields a short message.
    #[test]
    fn deep_nesting_and_huge_fields_get_short_errors(
        base in request(),
        pick in any::<usize>(),
        depth in 100usize..200_000,
        shape in 0u8..4,
        long in (1usize..1_000_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        big in prop_oneof![Just("1e999999"), Just("99999999999999999999999"), Just("-1e400")],
    ) {
        let deep = nested(depth, shape);
        prop_assert!(error_code(serve(&deep)?.as_ref()).is_some());
        prop_assert!(read_answer(&deep).is_ok());
        // The nesting inside a request that is otherwise fine.
        let marker = "\"NESTED\"";
        let text = serde_json::to_string(&mutate(&base, pick, Value::from("NESTED")))
            .expect("serialises");
        let inner = String::from_utf8_lossy(&deep).into_owned();
        let body = text.replacen(marker, &inner, 1);
        serve(body.as_bytes())?;
        read_answer(body.as_bytes())?;
        let body = text.replacen(marker, big, 1);
        serve(body.as_bytes())?;
        let huge = mutate(&base, pick, Value::String(long.clone()));
        let body = serde_json::to_vec(&huge).expect("serialises");
        serve(&body)?;
        read_answer(&body)?;
        // A host's message, or a result of the wrong type, a megabyte long.
        for answer in [
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": 1, "message": long}}),
            json!({"jsonrpc": "2.0", "id": 7, "result": long}),
        ] {
            read_answer(&serde_json::to_vec(&answer).expect("serialises"))?;
        }
    }

    #[test]
    fn long_method_names_and_ids_are_not_echoed_whole(
        method in text(),
        id in prop_oneof![text().prop_map(Value::String), any::<i64>().prop_map(Value::from)],
    ) {
        let body = json!({"jsonrpc": "2.0", "method": method, "id": id});
        serve(&serde_json::to_vec(&body).expect("serialises"))?;
    }
}
