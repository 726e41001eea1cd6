//! The controller side of the protocol: a typed JSON-RPC client with a bearer token, an optional
//! CA for the agents' TLS certificates, and a timeout on every call.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::error::RpcError;
use super::token::Token;
use super::wire::{
    ConnectParams, DisconnectParams, GetInfoParams, HostStats, JSONRPC_VERSION, Outcome, PoolInfo,
    Request, Response, method,
};
use crate::api::bounds;

/// The largest response body the client reads (a stats answer for 100 domains is ~20 KiB).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA bundle is not PEM certificates.
    #[error("cannot read the CA bundle")]
    Ca(#[source] reqwest::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the http client")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Ca(_) => "CaInvalid",
            Self::Build(_) => "ClientBuild",
        }
    }
}

/// A JSON-RPC client for agents. Cheap to clone; connections are pooled per agent address.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    token: Token,
    next_id: Arc<AtomicU64>,
}

impl Client {
    /// A client that sends `token` on every call and, when `ca_pem` is given, trusts only the
    /// certificates of that PEM bundle for `https://` endpoints (else the platform's roots).
    ///
    /// # Errors
    /// When the CA bundle is not PEM or the HTTP client cannot be built.
    pub fn new(token: Token, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        // reqwest is built without a crypto provider; ring is the one this crate uses.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(ClientError::Ca)?;
            builder = builder.tls_certs_only(certs);
        }
        Ok(Self {
            http: builder.build().map_err(ClientError::Build)?,
            token,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// `StoragePool.connect`: tells the host the pool, its host id, the master and the whole map.
    ///
    /// # Errors
    /// The host's VDSM error (323, 324, 325, 328, -32602...), or a transport failure or timeout.
    pub async fn connect(
        &self,
        endpoint: &str,
        params: &ConnectParams,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        self.call::<_, IgnoredAny>(endpoint, method::POOL_CONNECT, params, timeout)
            .await
            .map(|_| ())
    }

    /// `StoragePool.disconnect`: the host leaves the pool (a host not connected to it succeeds).
    ///
    /// # Errors
    /// A transport failure or timeout, or a VDSM error.
    pub async fn disconnect(
        &self,
        endpoint: &str,
        params: &DisconnectParams,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        self.call::<_, IgnoredAny>(endpoint, method::POOL_DISCONNECT, params, timeout)
            .await
            .map(|_| ())
    }

    /// `StoragePool.getInfo`: the pool as the host holds it.
    ///
    /// # Errors
    /// 309 when the host is not connected to that pool; transport failures and timeouts.
    pub async fn get_info(
        &self,
        endpoint: &str,
        storagepool_id: &str,
        timeout: Duration,
    ) -> Result<PoolInfo, RpcError> {
        let params = GetInfoParams {
            storagepool_id: storagepool_id.to_owned(),
        };
        self.call(endpoint, method::POOL_GET_INFO, &params, timeout)
            .await
    }

    /// `Host.getStats`: its `storageDomains`, the vitals of every monitored domain.
    ///
    /// # Errors
    /// Transport failures and timeouts, or a malformed answer.
    pub async fn get_stats(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<HostStats, RpcError> {
        self.call(endpoint, method::HOST_GET_STATS, &EMPTY, timeout)
            .await
    }

    /// Any verb with named `params`; the result is decoded as `R`. The whole exchange (connect,
    /// send, answer) must finish within `timeout`.
    ///
    /// # Errors
    /// See [`RpcError`].
    pub async fn call<P: Serialize + Sync, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            jsonrpc: JSONRPC_VERSION,
            method,
            params,
            id,
        };
        let exchange = async {
            let mut resp = self
                .http
                .post(endpoint)
                .bearer_auth(self.token.expose())
                .json(&request)
                .send()
                .await
                .map_err(|e| transport(e, timeout))?;
            match resp.status().as_u16() {
                200 => {}
                401 => return Err(RpcError::Unauthorized),
                status => return Err(RpcError::HttpStatus { status }),
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, timeout))? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(bad("response body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            decode_response(&body, id)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RpcError::Timeout { timeout }))
    }
}

/// Reads the body of the answer to the call numbered `id`: the verb's result decoded as `R`, or
/// the host's error. Never panics, whatever the body; every text it keeps from the body (the
/// host's message, why the body does not parse) is cut to [`bounds::OUTSIDE_TEXT_MAX`].
///
/// # Errors
/// [`RpcError::Vdsm`] for an error answer, [`RpcError::BadResponse`] for a body that is not the
/// answer to this call or whose result is not an `R`.
pub fn decode_response<R: DeserializeOwned>(body: &[u8], id: u64) -> Result<R, RpcError> {
    let response: Response = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    if response.id != id {
        return Err(bad("response id does not match the request"));
    }
    match response.outcome {
        Outcome::Result(v) => serde_json::from_value(v).map_err(|e| bad(&e.to_string())),
        Outcome::Error(mut e) => {
            if let Cow::Owned(cut) = bounds::outside(&e.message) {
                e.message = cut;
            }
            Err(RpcError::Vdsm(e.into()))
        }
    }
}

/// Empty named parameters, for verbs without any.
const EMPTY: Empty = Empty {};

#[derive(Serialize)]
struct Empty {}

fn transport(e: reqwest::Error, timeout: Duration) -> RpcError {
    if e.is_timeout() {
        RpcError::Timeout { timeout }
    } else {
        RpcError::Transport(e)
    }
}

fn bad(reason: &str) -> RpcError {
    RpcError::BadResponse {
        reason: bounds::outside(reason).into_owned(),
    }
}
