//! The agent side of a STOMP connection, as VDSM's `StompAdapterImpl` serves it, a little better:
//! CONNECT (version 1.2, heart-beats, the credential), SUBSCRIBE/UNSUBSCRIBE, SEND to VDSM's
//! request destinations (answered as MESSAGE frames on the request's `reply-to`), DISCONNECT with
//! a receipt. Requests run concurrently; a batch is answered as a batch and a notification not at
//! all (VDSM stops answering after one). A malformed frame is answered with ERROR and the
//! connection closes; the process stays up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use super::stomp::{self, Decoded, Frame, command};
use super::token::Token;

/// Requests one connection may have running at once; beyond that its frames wait to be read.
const MAX_IN_FLIGHT: usize = 64;

/// The least heart-beat interval either side may ask for (VDSM raises smaller ones to this).
const MIN_HEART_BEAT_MS: u64 = 1000;

/// What answers a request body: a JSON-RPC request or batch in, the response (or batch of them)
/// out, `None` when nothing is to be answered (notifications).
pub trait Handler: Send + Sync + 'static {
    /// Runs one SEND body.
    fn call(&self, body: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>>;
}

/// What every connection of a listener shares.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The credential a CONNECT must carry as `passcode`; `None`: the transport authenticated
    /// the caller (mutual TLS).
    pub token: Option<Token>,
    /// The largest frame read.
    pub max_frame_bytes: usize,
}

enum Out {
    Bytes(Vec<u8>),
    /// Send heart-beats every this many milliseconds when idle (0: never).
    HeartBeat(u64),
    /// Write what is queued before, then close (answers still running are dropped).
    Close,
}

/// Serves one connection until the peer leaves, sends a bad frame, or stays silent past the
/// heart-beat it promised.
pub async fn serve<S>(stream: S, handler: Arc<dyn Handler>, opts: SessionOptions)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Out>(MAX_IN_FLIGHT + 8);
    let writer = tokio::spawn(write_loop(wr, rx));
    let mut session = Session {
        opts,
        connected: false,
        subscriptions: HashMap::new(),
        next_message: 0,
        tx: tx.clone(),
        handler,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        silence: None,
    };
    let mut buf = Vec::new();
    'conn: loop {
        loop {
            match stomp::decode(&buf, session.opts.max_frame_bytes) {
                Ok(None) => break,
                Ok(Some((decoded, n))) => {
                    buf.drain(..n);
                    if let Decoded::Frame(f) = decoded
                        && session.on_frame(f).await == Flow::Close
                    {
                        break 'conn;
                    }
                }
                Err(e) => {
                    session.error(&e.to_string()).await;
                    break 'conn;
                }
            }
        }
        stomp::make_room(&mut buf);
        let read = match session.silence {
            Some(limit) => match tokio::time::timeout(limit, rd.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!("stomp peer silent past its heart-beat; closing");
                    break;
                }
            },
            None => rd.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(session);
    let _ = tx.send(Out::Close).await;
    drop(tx);
    let _ = writer.await;
}

async fn write_loop<W: AsyncWrite + Send>(wr: W, mut rx: mpsc::Receiver<Out>) {
    let mut wr = std::pin::pin!(wr);
    let mut beat: Option<Duration> = None;
    loop {
        let next = match beat {
            Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                Ok(next) => next,
                Err(_) => Some(Out::Bytes(b"\n".to_vec())),
            },
            None => rx.recv().await,
        };
        match next {
            None | Some(Out::Close) => break,
            Some(Out::HeartBeat(ms)) => beat = (ms > 0).then(|| Duration::from_millis(ms)),
            Some(Out::Bytes(bytes)) => {
                if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    opts: SessionOptions,
    connected: bool,
    /// Subscription id → destination.
    subscriptions: HashMap<String, String>,
    next_message: u64,
    tx: mpsc::Sender<Out>,
    handler: Arc<dyn Handler>,
    in_flight: Arc<Semaphore>,
    /// How long the peer may stay silent (twice the heart-beat it promised, and a margin).
    silence: Option<Duration>,
}

impl Session {
    async fn send(&self, frame: &Frame) {
        let _ = self.tx.send(Out::Bytes(frame.encode())).await;
    }

    /// An ERROR frame (`message` header and body, as STOMP 1.2 and VDSM word it); the caller
    /// closes the connection after it.
    async fn error(&self, message: &str) {
        tracing::debug!(message, "stomp error sent");
        let frame = Frame::new(command::ERROR)
            .header("message", message)
            .header("content-type", "text/plain")
            .with_body(message.as_bytes().to_vec());
        self.send(&frame).await;
    }

    async fn receipt(&self, f: &Frame) {
        if let Some(r) = f.get("receipt") {
            self.send(&Frame::new(command::RECEIPT).header("receipt-id", r))
                .await;
        }
    }

    async fn on_frame(&mut self, f: Frame) -> Flow {
        let cmd = f.command.as_str();
        // As VDSM, subscriptions may come before CONNECT (the engine's client sends them first
        // over plain TCP); a SEND needs the credential CONNECT carries, unless the TLS handshake
        // already checked the caller's certificate.
        let before_connect_ok = match cmd {
            command::CONNECT | command::STOMP | command::SUBSCRIBE | command::UNSUBSCRIBE => true,
            command::SEND => self.opts.token.is_none(),
            _ => false,
        };
        if !self.connected && !before_connect_ok {
            self.error("CONNECT first").await;
            return Flow::Close;
        }
        match cmd {
            command::CONNECT | command::STOMP => self.on_connect(&f).await,
            command::SUBSCRIBE => {
                let (Some(dest), Some(id)) = (f.get("destination"), f.get("id")) else {
                    self.error("Missing destination or subscription id header")
                        .await;
                    return Flow::Close;
                };
                if self.subscriptions.contains_key(id) {
                    self.error("Subscription id already exists").await;
                    return Flow::Close;
                }
                self.subscriptions.insert(id.to_owned(), dest.to_owned());
                self.receipt(&f).await;
                Flow::Continue
            }
            command::UNSUBSCRIBE => {
                let Some(id) = f.get("id") else {
                    self.error("Missing id header").await;
                    return Flow::Close;
                };
                self.subscriptions.remove(id);
                self.receipt(&f).await;
                Flow::Continue
            }
            command::SEND => self.on_send(f).await,
            command::DISCONNECT => {
                self.receipt(&f).await;
                Flow::Close
            }
            _ => {
                self.error(&format!(
                    "unknown command {}",
                    crate::api::bounds::quote(cmd)
                ))
                .await;
                Flow::Close
            }
        }
    }

    async fn on_connect(&mut self, f: &Frame) -> Flow {
        if self.connected {
            self.error("already connected").await;
            return Flow::Close;
        }
        let versions = f.get("accept-version").unwrap_or("1.0");
        if !versions.split(',').any(|v| v.trim() == stomp::VERSION) {
            let frame = Frame::new(command::ERROR)
                .header("version", stomp::VERSION)
                .header("message", "Version unsupported")
                .with_body(b"Version unsupported".to_vec());
            self.send(&frame).await;
            return Flow::Close;
        }
        if let Some(token) = &self.opts.token
            && !f
                .get("passcode")
                .is_some_and(|p| token.matches(p.as_bytes()))
        {
            tracing::debug!("refused a stomp connection without the right credential");
            self.error("credential refused").await;
            return Flow::Close;
        }
        let (cx, cy) = stomp::heart_beat(f.get("heart-beat"));
        let raise = |ms: u64| {
            if ms == 0 {
                0
            } else {
                ms.max(MIN_HEART_BEAT_MS)
            }
        };
        let (send_every, expect_every) = (raise(cy), raise(cx));
        self.silence = (expect_every > 0)
            .then(|| Duration::from_millis(expect_every * 2) + Duration::from_secs(5));
        self.connected = true;
        let _ = self.tx.send(Out::HeartBeat(send_every)).await;
        let frame = Frame::new(command::CONNECTED)
            .header("version", stomp::VERSION)
            .header("heart-beat", format!("{send_every},{expect_every}"));
        self.send(&frame).await;
        Flow::Continue
    }

    async fn on_send(&mut self, f: Frame) -> Flow {
        let dest = f.get("destination").unwrap_or_default();
        if !stomp::under(dest, stomp::REQUESTS) && !stomp::under(dest, stomp::IRS_REQUESTS) {
            self.error(&format!(
                "destination {} is not served; send requests to {}",
                crate::api::bounds::quote(dest),
                stomp::REQUESTS
            ))
            .await;
            return Flow::Close;
        }
        let reply_to = f.get("reply-to").unwrap_or(stomp::RESPONSES).to_owned();
        // The subscription the answer goes to: this connection's, to the reply-to destination
        // or one above it.
        let Some(subscription) = self
            .subscriptions
            .iter()
            .filter(|(_, d)| stomp::under(&reply_to, d))
            .map(|(id, _)| id.clone())
            .min()
        else {
            self.error(&format!(
                "no subscription to the reply-to destination {}: SUBSCRIBE to it first",
                crate::api::bounds::quote(&reply_to)
            ))
            .await;
            return Flow::Close;
        };
        self.receipt(&f).await;
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return Flow::Close;
        };
        self.next_message += 1;
        let message_id = self.next_message.to_string();
        let handler = Arc::clone(&self.handler);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(body) = handler.call(f.body).await {
                let frame = Frame::new(command::MESSAGE)
                    .header("destination", reply_to)
                    .header("content-type", "application/json")
                    .header("subscription", subscription)
                    .header("message-id", message_id)
                    .with_body(body);
                let _ = tx.send(Out::Bytes(frame.encode())).await;
            }
            drop(permit);
        });
        Flow::Continue
    }
}

/// TLS on a listener: the handshake, and, for mutual TLS, the name the client's certificate
/// must carry (the handshake already checked it was signed by the client CA, for client use).
#[derive(Clone)]
pub struct TlsServing {
    /// The handshake.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The only client accepted: its certificate must name it (see [`super::tls::names`]).
    pub client_name: Option<String>,
}

/// Accepts connections on `listener` and serves each (after the TLS handshake, with `tls`) until
/// the returned future is dropped: dropping it closes every connection it accepted, as a
/// process exit would.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    handler: Arc<dyn Handler>,
    tls: Option<TlsServing>,
    opts: SessionOptions,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, most likely: let connections end before retrying.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let handler = Arc::clone(&handler);
                let opts = opts.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve(tcp, handler, opts).await,
                        Some(TlsServing { acceptor, client_name }) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => {
                                    let named = |want: &str| {
                                        stream
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .is_some_and(|c| super::tls::names(c, want))
                                    };
                                    match client_name.as_deref() {
                                        Some(want) if !named(want) => tracing::debug!(
                                            %peer, want, "refused a client certificate that does not name the controller"
                                        ),
                                        _ => serve(stream, handler, opts).await,
                                    }
                                }
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
