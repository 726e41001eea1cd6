//! The host protocol: JSON-RPC 2.0 over HTTP POST with VDSM's verbs, parameter names and error
//! codes; the typed client (controller side) and the server pieces (agent side).
//!
//! This module holds no host state and makes no Kubernetes calls: the agent implements
//! [`server::Verbs`], the controller calls [`Client`].

pub mod client;
pub mod error;
pub mod server;
pub mod token;
pub mod wire;

pub use client::{Client, ClientError};
pub use error::{ErrorCode, RpcError, VdsmError};
pub use server::Verbs;
pub use token::{Token, TokenError};
pub use wire::{
    ConnectParams, DisconnectParams, GetInfoParams, HostStats, MAX_DOMAINS_IN_POOL, PoolInfo,
    RPC_PATH, Vitals,
};
