//! The controller side of the protocol: JSON-RPC 2.0 over STOMP 1.2, as oVirt's engine talks to
//! VDSM. One connection per host, opened on the first call and reused by later ones while it is
//! among the [`DEFAULT_KEPT_CONNECTIONS`] most recently used (a fleet of 2,000 hosts does not
//! cost 2,000 idle TLS sessions); TLS unless the client was built plain ([`Client::new`] without
//! a CA); a timeout on every call; a host that cannot be reached is dialed again with a growing
//! delay, and never holds back calls to other hosts.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::RpcError;
use super::stomp::{self, Decoded, Frame, command};
use super::tls::{self, TlsError};
use super::token::Token;
use super::wire::{
    ConnectParams, DisconnectParams, GetInfoParams, HostStats, JSONRPC_VERSION, Outcome, PoolInfo,
    Request, Response, method,
};
use crate::api::bounds;

/// The heart-beat the client asks the host for (VDSM's Python client asks 24 s); a connection
/// silent for twice that, and a margin, is taken as dead.
const HEART_BEAT_MS: u64 = 24_000;
/// How long opening a connection (TCP, TLS, CONNECT) may take at most.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The first delay before dialing a host again after a failed dial; it doubles up to
/// [`MAX_REDIAL_DELAY`].
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(200);
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(10);
/// How many open connections a client keeps between calls by default: those to the hosts it
/// called most recently. A pool's default `maxHosts` is 250, so a default pool's hosts all keep
/// theirs; past it, a connection costs about 10 KiB (rustls' 4 KiB read buffer, keys, the peer's
/// certificate, the task), 20 MiB at 2,000 hosts, against one TLS handshake per call to a host
/// not called lately.
pub const DEFAULT_KEPT_CONNECTIONS: usize = 256;

/// Where a call goes: the host's `host:port`, and the name its TLS certificate must carry (the
/// Host's name when the controller calls; a bare endpoint stands for its own host part).
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The name the host's certificate must carry.
    pub name: &'a str,
    /// `host:port`.
    pub endpoint: &'a str,
}

impl<'a> From<&'a str> for Target<'a> {
    fn from(endpoint: &'a str) -> Self {
        let name = split_endpoint(endpoint).map_or(endpoint, |(host, _)| host);
        Self { name, endpoint }
    }
}

impl<'a> From<&'a String> for Target<'a> {
    fn from(endpoint: &'a String) -> Self {
        Self::from(endpoint.as_str())
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA bundle is not PEM certificates.
    #[error("cannot read the CA bundle")]
    Ca(#[source] TlsError),
    /// Neither a token nor a client certificate was given.
    #[error("no credential: give a token, or a client certificate and key with the CA")]
    NoCredential,
}

impl ClientError {
    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Ca(_) => "CaInvalid",
            Self::NoCredential => "NoCredential",
        }
    }
}

/// A JSON-RPC client for hosts. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    token: Option<Token>,
    tls: Option<Arc<rustls::ClientConfig>>,
    hosts: Mutex<HashMap<String, Arc<Slot>>>,
    kept: Mutex<Kept>,
}

/// One host's connection, and how many were opened to it.
#[derive(Default)]
struct Slot {
    dial: tokio::sync::Mutex<Dial>,
    opened: std::sync::atomic::AtomicU64,
}

/// One host's connection, or when to dial it again. The connection lives while [`Kept`] keeps
/// it or a call uses it.
#[derive(Default)]
struct Dial {
    live: Option<Weak<Live>>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The connections kept open between calls: the `limit` most recently used. Letting one go
/// drops the handle that kept it; it closes when the last call on it ends.
struct Kept {
    limit: usize,
    /// Ticks once per use: the order of use.
    clock: u64,
    by_host: HashMap<String, (u64, Arc<Live>)>,
    by_use: BTreeMap<u64, String>,
}

impl Kept {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            clock: 0,
            by_host: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    /// `live`, the connection to `key`, was just used: it is kept, and the least recently used
    /// past the limit are let go.
    fn used(&mut self, key: &str, live: &Arc<Live>) {
        self.clock += 1;
        let now = self.clock;
        let last = self
            .by_host
            .insert(key.to_owned(), (now, Arc::clone(live)))
            .map(|(at, _)| at);
        if let Some(at) = last {
            self.by_use.remove(&at);
        }
        self.by_use.insert(now, key.to_owned());
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.by_host.len() > self.limit {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.by_host.remove(&oldest);
        }
    }
}

/// The callers waiting for an answer, by request id: the response's bytes, or why none comes.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Vec<u8>, RpcError>>>>>;

/// An open connection: callers write their frames in turn; its task reads the answers and hands
/// each to its caller by request id. No queue and no writer task: with hundreds of connections
/// kept, those were 3 KiB per connection.
struct Live {
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// Set when the connection is done for: its task ended, or a frame was not written whole.
    /// The next call dials again.
    ended: Arc<AtomicBool>,
    pending: Pending,
    reply_to: String,
    /// Dropped with the last handle on the connection: its task stops at once (a dropped client,
    /// a stopped controller, sends nothing more; a connection [`Kept`] let go closes).
    _alive: oneshot::Sender<()>,
}

/// The connection's write half.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Live {
    /// Writes one frame whole; false when the connection is done for. A write cut short (the
    /// call's timeout while the host does not read) would leave half a frame on the wire, so it
    /// retires the connection: no other frame follows it.
    async fn send(&self, frame: &[u8]) -> bool {
        let mut writer = self.writer.lock().await;
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        let Some(w) = writer.as_mut() else {
            return false;
        };
        let unfinished = Retire(&self.ended);
        let written = w.write_all(frame).await.is_ok() && w.flush().await.is_ok();
        unfinished.disarm();
        if !written {
            self.ended.store(true, Ordering::Release);
            *writer = None;
        }
        written
    }
}

/// Retires the connection when dropped: armed while a frame is being written.
struct Retire<'a>(&'a AtomicBool);

impl Retire<'_> {
    /// The write finished (whole or failed): nothing to retire on its account.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Client {
    /// A client that offers `token` when it opens a connection and, with `ca_pem`, speaks TLS
    /// and trusts only the certificates of that PEM bundle; without it, plain TCP (tests and
    /// demos: `--insecure`).
    ///
    /// # Errors
    /// When the CA bundle holds no usable certificate.
    pub fn new(token: Token, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let tls = ca_pem
            .map(|ca| tls::client_config(ca, None))
            .transpose()
            .map_err(ClientError::Ca)?;
        Ok(Self::with(Some(token), tls))
    }

    /// A client for mutual TLS: trusts only the certificates of `ca_pem` (the pool CA),
    /// presents `cert_pem`/`key_pem` (the controller's identity), and offers `token` too when
    /// given (agents that still expect one). A host's certificate must name the Host called
    /// ([`Target`]).
    ///
    /// # Errors
    /// When the CA bundle or the identity is unusable.
    pub fn mutual(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        token: Option<Token>,
    ) -> Result<Self, ClientError> {
        let identity = tls::Identity::from_pem(cert_pem, key_pem).map_err(ClientError::Ca)?;
        Self::with_identity(ca_pem, identity, token)
    }

    /// A client for mutual TLS presenting `identity`, which may be replaced while the client
    /// runs (the controller renews its certificate): connections opened afterwards present the
    /// new one.
    ///
    /// # Errors
    /// When the CA bundle is unusable.
    pub fn with_identity(
        ca_pem: &[u8],
        identity: Arc<tls::Identity>,
        token: Option<Token>,
    ) -> Result<Self, ClientError> {
        let tls = tls::client_config_with(ca_pem, Some(identity)).map_err(ClientError::Ca)?;
        Ok(Self::with(token, Some(tls)))
    }

    fn with(token: Option<Token>, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        // ring is the process's TLS provider (HTTP clients built later, in tests and the dev
        // control plane, find it installed); this client names it explicitly anyway.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        Self {
            inner: Arc::new(Inner {
                token,
                tls,
                hosts: Mutex::new(HashMap::new()),
                kept: Mutex::new(Kept::new(DEFAULT_KEPT_CONNECTIONS)),
            }),
        }
    }

    /// Keeps at most `limit` (at least 1) connections open between calls: those to the hosts
    /// called most recently ([`DEFAULT_KEPT_CONNECTIONS`] unless set). A connection let go
    /// closes when the calls on it end; the next call to its host dials again.
    pub fn keep_at_most(&self, limit: usize) {
        let mut kept = lock(&self.inner.kept);
        kept.limit = limit.max(1);
        kept.shrink();
    }

    /// `StoragePool.connect`: tells the host the pool, its host id, the master and the whole map.
    ///
    /// # Errors
    /// The host's VDSM error (323, 324, 325, 328, -32602...), or a transport failure or timeout.
    pub async fn connect(
        &self,
        to: impl Into<Target<'_>> + Send,
        params: &ConnectParams,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        self.call::<_, IgnoredAny>(to, method::POOL_CONNECT, params, timeout)
            .await
            .map(|_| ())
    }

    /// `StoragePool.disconnect`: the host leaves the pool (a host not connected to it succeeds).
    ///
    /// # Errors
    /// A transport failure or timeout, or a VDSM error.
    pub async fn disconnect(
        &self,
        to: impl Into<Target<'_>> + Send,
        params: &DisconnectParams,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        self.call::<_, IgnoredAny>(to, method::POOL_DISCONNECT, params, timeout)
            .await
            .map(|_| ())
    }

    /// `StoragePool.getInfo`: the pool as the host holds it.
    ///
    /// # Errors
    /// 309 when the host is not connected to that pool; transport failures and timeouts.
    pub async fn get_info(
        &self,
        to: impl Into<Target<'_>> + Send,
        storagepool_id: &str,
        timeout: Duration,
    ) -> Result<PoolInfo, RpcError> {
        let params = GetInfoParams {
            storagepool_id: storagepool_id.to_owned(),
        };
        self.call(to, method::POOL_GET_INFO, &params, timeout).await
    }

    /// `Host.getStats`: its `storageDomains`, the vitals of every monitored domain.
    ///
    /// # Errors
    /// Transport failures and timeouts, or a malformed answer.
    pub async fn get_stats(
        &self,
        to: impl Into<Target<'_>> + Send,
        timeout: Duration,
    ) -> Result<HostStats, RpcError> {
        self.call(to, method::HOST_GET_STATS, &EMPTY, timeout).await
    }

    /// Any verb with named `params`; the result is decoded as `R`. Everything (dialing when no
    /// connection is open, sending, the answer) must finish within `timeout`.
    ///
    /// # Errors
    /// See [`RpcError`].
    pub async fn call<P: Serialize + Sync, R: DeserializeOwned>(
        &self,
        to: impl Into<Target<'_>> + Send,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let to = to.into();
        let id = uuid::Uuid::new_v4().to_string();
        let request = Request {
            jsonrpc: JSONRPC_VERSION,
            method,
            params,
            id: &id,
        };
        let body = serde_json::to_vec(&request).map_err(|e| RpcError::Transport {
            reason: format!("cannot encode the request: {e}"),
        })?;
        let mut sent_on: Option<Pending> = None;
        let exchange = async {
            let live = self.live(to).await?;
            let (answer_tx, answer_rx) = oneshot::channel();
            lock(&live.pending).insert(id.clone(), answer_tx);
            sent_on = Some(Arc::clone(&live.pending));
            let frame = Frame::new(command::SEND)
                .header("destination", stomp::REQUESTS)
                .header("content-type", "application/json")
                .header("reply-to", live.reply_to.as_str())
                .with_body(body);
            if !live.send(&frame.encode()).await {
                return Err(closed());
            }
            let answer = answer_rx.await.map_err(|_| closed())??;
            decode_response(&answer, &id)
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RpcError::Timeout { timeout }));
        if let Some(pending) = sent_on {
            lock(&pending).remove(&id);
        }
        result
    }

    fn slot(&self, to: Target<'_>) -> (String, Arc<Slot>) {
        let key = format!("{}@{}", to.name, to.endpoint);
        let slot = Arc::clone(lock(&self.inner.hosts).entry(key.clone()).or_default());
        (key, slot)
    }

    /// How many connections to `to` this client has opened: one more each time the host closed
    /// the last (a restarted VDSM does; the bridge, whose client calls one host, reads that as
    /// lost memory) or this client let it go (more than [`Client::keep_at_most`] hosts called
    /// since).
    pub fn connections_opened(&self, to: Target<'_>) -> u64 {
        self.slot(to)
            .1
            .opened
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The open connection to `endpoint`, dialed now when there is none (after the delay a
    /// failed dial left).
    async fn live(&self, to: Target<'_>) -> Result<Arc<Live>, RpcError> {
        let (key, slot) = self.slot(to);
        let mut dial = slot.dial.lock().await;
        if let Some(live) = dial.live.as_ref().and_then(Weak::upgrade)
            && !live.ended.load(Ordering::Acquire)
        {
            lock(&self.inner.kept).used(&key, &live);
            return Ok(live);
        }
        dial.live = None;
        if let Some(at) = dial.retry_at {
            tokio::time::sleep_until(at).await;
        }
        let opened = tokio::time::timeout(DIAL_TIMEOUT, open(&self.inner, to))
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::Transport {
                    reason: format!("no connection within {DIAL_TIMEOUT:?}"),
                })
            });
        match opened {
            Ok(live) => {
                *dial = Dial {
                    live: Some(Arc::downgrade(&live)),
                    ..Dial::default()
                };
                lock(&self.inner.kept).used(&key, &live);
                slot.opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(live)
            }
            Err(e) => {
                dial.failures = dial.failures.saturating_add(1);
                let delay = FIRST_REDIAL_DELAY
                    .saturating_mul(1 << dial.failures.min(8).saturating_sub(1))
                    .min(MAX_REDIAL_DELAY);
                dial.retry_at = Some(Instant::now() + delay);
                Err(e)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn closed() -> RpcError {
    RpcError::Transport {
        reason: "the connection closed before the answer".into(),
    }
}

fn transport(what: &str, e: &dyn std::fmt::Display) -> RpcError {
    RpcError::Transport {
        reason: bounds::outside(&format!("{what}: {e}")).into_owned(),
    }
}

/// `host:port`, or `[v6]:port`: the host (without brackets) and the port.
///
/// # Errors
/// [`RpcError::Transport`] for anything else.
pub fn split_endpoint(endpoint: &str) -> Result<(&str, u16), RpcError> {
    let bad = || RpcError::Transport {
        reason: format!("endpoint {} is not host:port", bounds::quote(endpoint)),
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

async fn open(inner: &Inner, to: Target<'_>) -> Result<Arc<Live>, RpcError> {
    let (host, port) = split_endpoint(to.endpoint)?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| transport("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    match &inner.tls {
        None => session(tcp, inner, host).await,
        Some(config) => {
            // The host's certificate must name the Host called, not only its address.
            let name = rustls::pki_types::ServerName::try_from(to.name.to_owned())
                .map_err(|e| transport("tls server name", &e))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
                .map_err(|e| transport("tls", &e))?;
            session(stream, inner, host).await
        }
    }
}

/// CONNECT (and SUBSCRIBE to a fresh reply destination, as VDSM's Python client does, so a host
/// shared with an oVirt engine never sends us the engine's answers); then the connection's task.
async fn session<S>(stream: S, inner: &Inner, host: &str) -> Result<Arc<Live>, RpcError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reply_to = uuid::Uuid::new_v4().to_string();
    let subscription = uuid::Uuid::new_v4().to_string();
    let mut connect = Frame::new(command::CONNECT)
        .header("accept-version", stomp::VERSION)
        .header("heart-beat", format!("0,{HEART_BEAT_MS}"))
        .header("host", host);
    if let Some(token) = &inner.token {
        connect = connect.header("passcode", token.expose());
    }
    let mut hello = connect.encode();
    hello.extend(
        Frame::new(command::SUBSCRIBE)
            .header("destination", reply_to.as_str())
            .header("ack", "auto")
            .header("id", subscription)
            .encode(),
    );
    wr.write_all(&hello)
        .await
        .map_err(|e| transport("send CONNECT", &e))?;
    wr.flush()
        .await
        .map_err(|e| transport("send CONNECT", &e))?;
    let mut buf = Vec::new();
    let connected = loop {
        match stomp::decode(&buf, stomp::MAX_FRAME_BYTES) {
            Ok(Some((Decoded::HeartBeat, n))) => {
                buf.drain(..n);
            }
            Ok(Some((Decoded::Frame(f), n))) => {
                buf.drain(..n);
                break f;
            }
            Ok(None) => {}
            Err(e) => return Err(transport("answer to CONNECT", &e)),
        }
        stomp::make_room(&mut buf);
        match rd.read_buf(&mut buf).await {
            Ok(0) => return Err(closed()),
            Ok(_) => {}
            Err(e) => return Err(transport("read", &e)),
        }
    };
    match connected.command.as_str() {
        command::CONNECTED => {}
        command::ERROR => return Err(refused(&connected)),
        other => {
            return Err(RpcError::BadResponse {
                reason: format!("{} instead of CONNECTED", bounds::quote(other)),
            });
        }
    }
    // The host promised a heart-beat every `sx` ms: silence for twice that is a dead host.
    let (sx, _) = stomp::heart_beat(connected.get("heart-beat"));
    let silence = (sx > 0).then(|| Duration::from_millis(sx * 2) + Duration::from_secs(5));
    let (alive, dropped) = oneshot::channel();
    let pending: Pending = Arc::default();
    let writer: Arc<tokio::sync::Mutex<Option<Writer>>> =
        Arc::new(tokio::sync::Mutex::new(Some(Box::new(wr))));
    let ended = Arc::new(AtomicBool::new(false));
    tokio::spawn(run(
        rd,
        Arc::clone(&writer),
        Arc::clone(&ended),
        dropped,
        Arc::clone(&pending),
        buf,
        silence,
    ));
    Ok(Arc::new(Live {
        writer,
        ended,
        pending,
        reply_to,
        _alive: alive,
    }))
}

fn refused(f: &Frame) -> RpcError {
    let message = f
        .get("message")
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&f.body).into_owned());
    if message == "credential refused" {
        RpcError::Unauthorized
    } else {
        RpcError::Refused {
            message: bounds::outside(&message).into_owned(),
        }
    }
}

/// The connection's task: reads answers and hands each to its caller. When it ends (the host
/// closed, went silent, or sent ERROR; or every [`Live`] was dropped), every caller still waiting
/// gets an error at once, and the connection is closed.
async fn run<R>(
    mut rd: R,
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    ended: Arc<AtomicBool>,
    mut dropped: oneshot::Receiver<()>,
    pending: Pending,
    mut buf: Vec<u8>,
    silence: Option<Duration>,
) where
    R: AsyncRead + Unpin,
{
    'conn: loop {
        loop {
            match stomp::decode(&buf, stomp::MAX_FRAME_BYTES) {
                Ok(None) => break,
                Ok(Some((Decoded::HeartBeat, n))) => {
                    buf.drain(..n);
                }
                Ok(Some((Decoded::Frame(f), n))) => {
                    buf.drain(..n);
                    match f.command.as_str() {
                        command::MESSAGE => deliver(&pending, f.body),
                        command::ERROR => {
                            // The host closes after an ERROR: every caller learns why.
                            tracing::debug!(error = ?refused(&f), "host sent a stomp ERROR");
                            for (_, tx) in lock(&pending).drain() {
                                let _ = tx.send(Err(refused(&f)));
                            }
                            break 'conn;
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "unreadable frame from host");
                    break 'conn;
                }
            }
        }
        stomp::make_room(&mut buf);
        let read = async {
            match silence {
                Some(limit) => tokio::time::timeout(limit, rd.read_buf(&mut buf))
                    .await
                    .unwrap_or(Ok(0)),
                None => rd.read_buf(&mut buf).await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut dropped => break,
            got = read => match got {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    ended.store(true, Ordering::Release);
    lock(&pending).clear();
    // A caller in the middle of a frame finishes it first (the lock waits for it).
    if let Some(mut wr) = writer.lock().await.take() {
        let _ = wr.shutdown().await;
    }
}

/// Hands each response of a MESSAGE body (one response, or a batch) to the caller waiting for
/// its id; answers nobody waits for (late, or unknown) are dropped.
fn deliver(pending: &Pending, body: Vec<u8>) {
    let id_of = |v: &Value| match v.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        tracing::debug!("a MESSAGE body that is not JSON, dropped");
        return;
    };
    let mut waiting = lock(pending);
    match value {
        Value::Array(items) => {
            for item in items {
                if let Some(tx) = id_of(&item).and_then(|id| waiting.remove(&id)) {
                    let _ = tx.send(Ok(serde_json::to_vec(&item).unwrap_or_default()));
                }
            }
        }
        single => {
            if let Some(tx) = id_of(&single).and_then(|id| waiting.remove(&id)) {
                let _ = tx.send(Ok(body));
            }
        }
    }
}

/// Reads the body of the answer to the call numbered `id`: the verb's result decoded as `R`, or
/// the host's error. Never panics, whatever the body; every text it keeps from the body (the
/// host's message, why the body does not parse) is cut to [`bounds::OUTSIDE_TEXT_MAX`].
///
/// # Errors
/// [`RpcError::Vdsm`] for an error answer, [`RpcError::BadResponse`] for a body that is not the
/// answer to this call or whose result is not an `R`.
pub fn decode_response<R: DeserializeOwned>(body: &[u8], id: &str) -> Result<R, RpcError> {
    let response: Response = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let same = match &response.id {
        Value::String(s) => s == id,
        Value::Number(n) => n.to_string() == id,
        _ => false,
    };
    if !same {
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

fn bad(reason: &str) -> RpcError {
    RpcError::BadResponse {
        reason: bounds::outside(reason).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(
            split_endpoint("h1.example:54321").ok(),
            Some(("h1.example", 54321))
        );
        assert_eq!(
            split_endpoint("127.0.3.7:54321").ok(),
            Some(("127.0.3.7", 54321))
        );
        assert_eq!(split_endpoint("[::1]:54321").ok(), Some(("::1", 54321)));
        for bad in ["h1", ":54321", "h1:0", "h1:x", "http://h1:54321/jsonrpc"] {
            assert!(split_endpoint(bad).is_err(), "{bad}");
        }
    }

    fn live_writing_to(wr: impl AsyncWrite + Send + Unpin + 'static) -> Live {
        Live {
            writer: Arc::new(tokio::sync::Mutex::new(Some(Box::new(wr)))),
            ended: Arc::default(),
            pending: Arc::default(),
            reply_to: "r".into(),
            _alive: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_retires_the_connection() {
        // A host that reads nothing: the frame cannot be written whole.
        let (wr, mut host) = tokio::io::duplex(16);
        let live = live_writing_to(wr);
        let frame = vec![b'x'; 1024];
        let cut = tokio::time::timeout(Duration::from_millis(50), live.send(&frame)).await;
        assert!(cut.is_err(), "the write waits for the host");
        assert!(
            live.ended.load(Ordering::Acquire),
            "half a frame is on the wire"
        );
        // The host reads again; still no frame follows the half one.
        let mut got = vec![0; 16];
        let n = host.read(&mut got).await.expect("read");
        assert!(!live.send(b"next").await, "the connection is retired");
        assert_eq!(n, 16, "only the first part of the cut frame");
    }

    #[tokio::test]
    async fn whole_frames_go_out_in_turn() {
        // A pipe smaller than a frame: each frame takes several writes, so frames written at once
        // would interleave without the lock.
        let (wr, mut host) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 800];
            host.read_exact(&mut got).await.map(|_| got)
        });
        let live = Arc::new(live_writing_to(wr));
        let sends = (0..8u8).map(|i| {
            let live = Arc::clone(&live);
            tokio::spawn(async move { live.send(&[i; 100]).await })
        });
        for sent in futures::future::join_all(sends).await {
            assert!(sent.expect("task"), "every frame is written");
        }
        assert!(!live.ended.load(Ordering::Acquire));
        let got = reader.await.expect("task").expect("read");
        for frame in got.chunks(100) {
            assert!(
                frame.iter().all(|b| *b == frame[0]),
                "frames are not interleaved"
            );
        }
    }
}
