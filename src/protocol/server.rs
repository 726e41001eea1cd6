//! The agent side of the protocol: decoding a JSON-RPC body (a request or a batch), dispatching
//! it to a [`Verbs`] implementation, and the [`Handler`] that serves it on STOMP connections.
//!
//! It holds no host state: the agent (or the simulator) implements [`Verbs`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ErrorCode, VdsmError};
use super::session::Handler;
use super::wire::{
    ConnectParams, CreateParams, DisconnectParams, DomainParams, GetInfoParams, HostStats,
    JSONRPC_VERSION, PoolInfo, PoolParams, ReconstructMasterParams, RefreshParams, Response,
    SpmStartParams, SpmStatusResult, SwitchMasterParams, Vitals, method,
};
use crate::api::bounds;

/// What a host does for each verb. Parameters arrive decoded and format-checked
/// (`validate`), so an implementation checks only semantics.
pub trait Verbs: Send + Sync {
    /// `StoragePool.connect`.
    ///
    /// # Errors
    /// VDSM's connect errors (323, 324, 325, 328...); the host state is unchanged then.
    fn connect(&self, params: ConnectParams) -> Result<(), VdsmError>;

    /// `StoragePool.disconnect`.
    ///
    /// # Errors
    /// Never for a pool that is not connected (that is a success).
    fn disconnect(&self, params: DisconnectParams) -> Result<(), VdsmError>;

    /// `StoragePool.getInfo`.
    ///
    /// # Errors
    /// 309 when the host is not connected to that pool.
    fn get_info(&self, params: GetInfoParams) -> Result<PoolInfo, VdsmError>;

    /// The vitals of every domain monitored now (`Host.getStats` `storageDomains`,
    /// `Host.getStorageRepoStats`).
    fn repo_stats(&self) -> BTreeMap<String, Vitals>;

    /// The pools the host is connected to (`Host.getConnectedStoragePools`: VDSM holds at most
    /// one).
    fn connected_pools(&self) -> Vec<String> {
        Vec::new()
    }

    /// `StoragePool.spmStart`; returns the task id (the task has finished when it returns).
    ///
    /// # Errors
    /// 309 not connected, 651 the lease is held elsewhere.
    fn spm_start(&self, params: SpmStartParams) -> Result<String, VdsmError> {
        Err(not_served(method::POOL_SPM_START, &params.storagepool_id))
    }

    /// `StoragePool.spmStop`.
    ///
    /// # Errors
    /// 309 not connected, 653 unfinished tasks.
    fn spm_stop(&self, params: PoolParams) -> Result<(), VdsmError> {
        Err(not_served(method::POOL_SPM_STOP, &params.storagepool_id))
    }

    /// `StoragePool.getSpmStatus`.
    ///
    /// # Errors
    /// 309 not connected.
    fn spm_status(&self, params: PoolParams) -> Result<SpmStatusResult, VdsmError> {
        Err(not_served(
            method::POOL_GET_SPM_STATUS,
            &params.storagepool_id,
        ))
    }

    /// `StoragePool.create`.
    ///
    /// # Errors
    /// VDSM's create errors (380 already attached, 651 lease held...).
    fn create(&self, params: CreateParams) -> Result<(), VdsmError> {
        Err(not_served(method::POOL_CREATE, &params.storagepool_id))
    }

    /// `StorageDomain.attach`, `activate`, `deactivate` or `detach` (`verb` is the method name).
    ///
    /// # Errors
    /// 654 not the pool manager, 328 too many domains, 353/375 not in the pool...
    fn domain_verb(&self, verb: &str, params: DomainParams) -> Result<(), VdsmError> {
        Err(not_served(verb, &params.storagepool_id))
    }

    /// `StoragePool.switchMaster`.
    ///
    /// # Errors
    /// 654 not the pool manager, 324 wrong master...
    fn switch_master(&self, params: SwitchMasterParams) -> Result<(), VdsmError> {
        Err(not_served(
            method::POOL_SWITCH_MASTER,
            &params.storagepool_id,
        ))
    }

    /// `StoragePool.refresh` (disk backend).
    ///
    /// # Errors
    /// 309 not connected, 304/324 wrong master.
    fn refresh(&self, params: RefreshParams) -> Result<(), VdsmError> {
        Err(not_served(method::POOL_REFRESH, &params.storagepool_id))
    }

    /// `StoragePool.reconstructMaster`.
    ///
    /// # Errors
    /// 325 connected to the pool, 651 lease held...
    fn reconstruct_master(&self, params: ReconstructMasterParams) -> Result<(), VdsmError> {
        Err(not_served(
            method::POOL_RECONSTRUCT_MASTER,
            &params.storagepool_id,
        ))
    }
}

fn not_served(verb: &str, pool: &str) -> VdsmError {
    VdsmError::new(
        ErrorCode::MethodNotFound,
        format!("method {verb:?} is not served (pool {pool})"),
    )
}

/// Runs one request body (a SEND frame's): a request, or a batch of them answered as a batch
/// (JSON-RPC 2.0; VDSM's Python client sends one-element batches). The serialized answer, or
/// `None` when nothing is to be answered (notifications only). Never panics, whatever the body.
pub fn answer(verbs: &dyn Verbs, body: &[u8]) -> Option<Vec<u8>> {
    let answered = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if !items.is_empty() => {
            let answers: Vec<Response> = items
                .into_iter()
                .filter_map(|item| handle_value(verbs, item))
                .collect();
            if answers.is_empty() {
                return None;
            }
            serde_json::to_vec(&answers)
        }
        _ => serde_json::to_vec(&handle(verbs, body)?),
    };
    answered.ok()
}

/// Runs one request body that is a single request: parse, check, dispatch. `None` for a
/// notification (a request without `id`), which gets no response. Never panics, whatever the
/// body.
pub fn handle(verbs: &dyn Verbs, body: &[u8]) -> Option<Response> {
    match serde_json::from_slice(body) {
        Ok(value) => handle_value(verbs, value),
        Err(_) => Some(Response::error(
            Value::Null,
            &VdsmError::new(ErrorCode::ParseError, "body is not JSON"),
        )),
    }
}

fn handle_value(verbs: &dyn Verbs, value: Value) -> Option<Response> {
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(a) if a.is_empty() => return Some(invalid(Value::Null, "empty batch")),
        Value::Array(_) => return Some(invalid(Value::Null, "a batch may not hold a batch")),
        _ => return Some(invalid(Value::Null, "a request must be a JSON object")),
    };
    let id = obj.remove("id");
    let reply_id = match &id {
        None | Some(Value::Null | Value::Number(_) | Value::String(_)) => {
            id.clone().unwrap_or(Value::Null)
        }
        Some(_) => {
            return Some(invalid(
                Value::Null,
                "id must be a string, a number or null",
            ));
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC_VERSION) {
        return Some(invalid(reply_id, "jsonrpc must be \"2.0\""));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Some(invalid(reply_id, "method must be a string"));
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(Value::Array(_)) => {
            let e = VdsmError::new(
                ErrorCode::InvalidParams,
                "positional parameters are not supported; pass them by name",
            );
            return id.map(|_| Response::error(reply_id, &e));
        }
        Some(_) => return Some(invalid(reply_id, "params must be an object")),
    };
    let outcome = call(verbs, &method, params);
    if let Err(e) = &outcome {
        tracing::debug!(method = %method, code = e.code.code(), "rpc answered with an error");
    }
    id.map(|_| match outcome {
        Ok(v) => Response::result(reply_id, v),
        Err(e) => Response::error(reply_id, &e),
    })
}

fn invalid(id: Value, message: &str) -> Response {
    Response::error(id, &VdsmError::new(ErrorCode::InvalidRequest, message))
}

fn call(verbs: &dyn Verbs, method: &str, params: Value) -> Result<Value, VdsmError> {
    match method {
        method::POOL_CONNECT => {
            let p: ConnectParams = decode(params)?;
            p.validate()?;
            verbs.connect(p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_DISCONNECT => {
            let p: DisconnectParams = decode(params)?;
            p.validate()?;
            verbs.disconnect(p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_GET_INFO => {
            let p: GetInfoParams = decode(params)?;
            p.validate()?;
            encode(&verbs.get_info(p)?)
        }
        method::HOST_GET_STATS => encode(&HostStats {
            storage_domains: verbs.repo_stats(),
        }),
        method::HOST_GET_STORAGE_REPO_STATS => encode(&verbs.repo_stats()),
        method::HOST_GET_CONNECTED_STORAGE_POOLS => encode(&verbs.connected_pools()),
        method::POOL_SPM_START => {
            let p: SpmStartParams = decode(params)?;
            p.validate()?;
            encode(&verbs.spm_start(p)?)
        }
        method::POOL_SPM_STOP => {
            let p: PoolParams = decode(params)?;
            p.validate()?;
            verbs.spm_stop(p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_GET_SPM_STATUS => {
            let p: PoolParams = decode(params)?;
            p.validate()?;
            encode(&verbs.spm_status(p)?)
        }
        method::POOL_CREATE => {
            let p: CreateParams = decode(params)?;
            p.validate()?;
            verbs.create(p)?;
            Ok(Value::Bool(true))
        }
        method::DOMAIN_ATTACH
        | method::DOMAIN_ACTIVATE
        | method::DOMAIN_DEACTIVATE
        | method::DOMAIN_DETACH => {
            let p: DomainParams = decode(params)?;
            p.validate()?;
            verbs.domain_verb(method, p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_SWITCH_MASTER => {
            let p: SwitchMasterParams = decode(params)?;
            p.validate()?;
            verbs.switch_master(p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_REFRESH => {
            let p: RefreshParams = decode(params)?;
            p.validate()?;
            verbs.refresh(p)?;
            Ok(Value::Bool(true))
        }
        method::POOL_RECONSTRUCT_MASTER => {
            let p: ReconstructMasterParams = decode(params)?;
            p.validate()?;
            verbs.reconstruct_master(p)?;
            Ok(Value::Bool(true))
        }
        other => Err(VdsmError::new(
            ErrorCode::MethodNotFound,
            format!("method {} is not served", bounds::quote(other)),
        )),
    }
}

/// The parameters as `T`; why not, cut short: serde's message may quote a whole parameter.
fn decode<T: DeserializeOwned>(params: Value) -> Result<T, VdsmError> {
    serde_json::from_value(params)
        .map_err(|e| VdsmError::new(ErrorCode::InvalidParams, bounds::outside(&e.to_string())))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Value, VdsmError> {
    serde_json::to_value(v).map_err(|e| VdsmError::new(ErrorCode::InternalError, e.to_string()))
}

/// The [`Handler`] of one host: every request body goes to its [`Verbs`].
pub struct Rpc(pub Arc<dyn Verbs>);

impl Handler for Rpc {
    fn call(&self, body: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        let answer = answer(self.0.as_ref(), &body);
        Box::pin(std::future::ready(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Nothing;

    impl Verbs for Nothing {
        fn connect(&self, _: ConnectParams) -> Result<(), VdsmError> {
            Ok(())
        }
        fn disconnect(&self, _: DisconnectParams) -> Result<(), VdsmError> {
            Ok(())
        }
        fn get_info(&self, _: GetInfoParams) -> Result<PoolInfo, VdsmError> {
            Err(VdsmError::new(
                ErrorCode::StoragePoolUnknown,
                "unknown pool",
            ))
        }
        fn repo_stats(&self) -> BTreeMap<String, Vitals> {
            BTreeMap::new()
        }
    }

    fn code_of(body: &str) -> Option<i64> {
        let r = handle(&Nothing, body.as_bytes()).expect("a response");
        match r.outcome {
            super::super::wire::Outcome::Error(e) => Some(e.code),
            super::super::wire::Outcome::Result(_) => None,
        }
    }

    #[test]
    fn protocol_errors_have_their_codes() {
        assert_eq!(code_of("{nope"), Some(-32700));
        assert_eq!(code_of("[]"), Some(-32600));
        assert_eq!(code_of("3"), Some(-32600));
        assert_eq!(
            code_of(r#"{"jsonrpc":"1.0","method":"Host.getStats","id":1}"#),
            Some(-32600)
        );
        assert_eq!(
            code_of(r#"{"jsonrpc":"2.0","method":7,"id":1}"#),
            Some(-32600)
        );
        assert_eq!(
            code_of(r#"{"jsonrpc":"2.0","method":"Nope","id":1}"#),
            Some(-32601)
        );
        assert_eq!(
            code_of(r#"{"jsonrpc":"2.0","method":"StoragePool.connect","params":[1],"id":1}"#),
            Some(-32602)
        );
        assert_eq!(
            code_of(
                r#"{"jsonrpc":"2.0","method":"StoragePool.getInfo","params":{"storagepoolID":1},"id":1}"#
            ),
            Some(-32602)
        );
        assert_eq!(
            code_of(r#"{"jsonrpc":"2.0","method":"Host.getStats","id":"a"}"#),
            None
        );
    }

    #[test]
    fn notifications_get_no_response_and_ids_are_echoed() {
        assert!(handle(&Nothing, br#"{"jsonrpc":"2.0","method":"Host.getStats"}"#).is_none());
        let r = handle(
            &Nothing,
            br#"{"jsonrpc":"2.0","method":"Host.getStats","id":"x7"}"#,
        )
        .expect("a response");
        assert_eq!(r.id, json!("x7"));
    }
}
