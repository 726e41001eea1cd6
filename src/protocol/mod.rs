//! The host protocol, VDSM's wire: JSON-RPC 2.0 over STOMP 1.2 over TLS (plain TCP only when
//! asked), with VDSM's verbs, parameter names and error codes; the typed client (controller
//! side) and the server pieces (agent side): [`stomp`] frames, [`session`] the server's
//! connections, [`client`] the controller's, [`server`] the dispatch to [`Verbs`].
//!
//! This module holds no host state and makes no Kubernetes calls: the agent implements
//! [`server::Verbs`], the controller calls [`Client`].

pub mod client;
pub mod error;
pub mod server;
pub mod session;
pub mod stomp;
pub mod tls;
pub mod token;
pub mod wire;

pub use client::{Client, ClientError, Target};
pub use error::{ErrorCode, RpcError, VdsmError};
pub use server::Verbs;
pub use token::{Token, TokenError};
pub use wire::{
    ConnectParams, DisconnectParams, GetInfoParams, HostStats, MAX_DOMAINS_IN_POOL, PoolInfo,
    Vitals,
};
