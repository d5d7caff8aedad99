//! Connections before and around the protocols: one accept loop that backs
//! off when the process runs out of descriptors (instead of spinning), a
//! gRPC connection handed to tonic only once it has sent its first bytes in
//! time, and HTTP/1 connections served with hyper under a watchdog that
//! closes a connection whose request headers trickle in or that sits idle.
//! hyper's own header timer also runs while a kept-alive connection waits,
//! so it would cut idle connections at the header timeout; the watchdog
//! keeps the two apart.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The first wait after a failed accept, doubled up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two failed accepts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Bytes of the HTTP/2 client preface; a TLS hello is longer.
const PREFACE_LEN: usize = 24;

/// Accepts connections on `listener` until `stop`, backing off after a
/// failure (EMFILE, ENFILE, ENOBUFS…: retrying at once would spin a core
/// while nothing can be accepted). Connections arrive on the receiver.
pub fn accept_loop(
    listener: TcpListener,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<(TcpStream, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = FIRST_ACCEPT_BACKOFF;
        let mut failures = 0u64;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    backoff = FIRST_ACCEPT_BACKOFF;
                    let _ = tcp.set_nodelay(true);
                    if tx.send((tcp, peer)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    failures += 1;
                    // Said once per doubling, not once per try.
                    if failures.is_power_of_two() {
                        tracing::warn!(what, failures, ?backoff, "accept failed: {e}; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    });
    rx
}

/// gRPC connections for tonic: each handed over only once its first
/// [`PREFACE_LEN`] bytes (the HTTP/2 preface or a TLS hello) arrived
/// within `handshake`; a connection that sends nothing, or too little, in
/// time is closed and never reaches the server.
pub fn grpc_incoming(
    listener: TcpListener,
    handshake: Duration,
    stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TcpStream>> {
    let mut accepted = accept_loop(listener, "gRPC", stop);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((tcp, peer)) = accepted.recv().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, first_bytes(&tcp, PREFACE_LEN)).await {
                    Ok(Ok(())) => {
                        let _ = tx.send(Ok(tcp)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "gRPC connection closed early: {e}"),
                    Err(_) => {
                        tracing::debug!(%peer, ?handshake, "gRPC connection sent no preface in time; closed")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Waits until `n` bytes can be read from `tcp` without reading them.
async fn first_bytes(tcp: &TcpStream, n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n];
    loop {
        let ready = tcp.ready(tokio::io::Interest::READABLE).await?;
        match tcp.peek(&mut buf).await? {
            got if got >= n => return Ok(()),
            // The peer hung up before sending it all (peek shows the bytes
            // it did send, not the hang-up).
            _ if ready.is_read_closed() => return Err(io::ErrorKind::UnexpectedEof.into()),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            // Part of it: the socket stays readable, so poll gently.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// How long an HTTP connection may take over each step.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// From a request's first byte to its last header.
    pub header: Duration,
    /// Without a request in progress.
    pub idle: Duration,
    /// TLS handshake.
    pub tls_handshake: Duration,
}

/// Serves `router` over HTTP/1 on the connections of `listener` (after a
/// TLS handshake when `tls` is set) until `stop`; then stops accepting,
/// lets each connection finish its request in progress, and returns when
/// all have closed.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    timeouts: HttpTimeouts,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut accepted = accept_loop(listener, "HTTP", stop.clone());
    let mut connections = JoinSet::new();
    while let Some((tcp, peer)) = accepted.recv().await {
        // Reap finished connections as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(tcp, router, timeouts, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, router, timeouts, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// What the watchdog knows of one connection, shared with its I/O and
/// service wrappers. Times are ms since the connection began.
#[derive(Debug)]
struct Activity {
    began: Instant,
    /// Requests whose response is not yet produced.
    in_flight: AtomicUsize,
    /// When the first byte of the next request arrived (`u64::MAX`: none yet).
    head_started: AtomicU64,
    /// When the last response was produced (or the connection began).
    last_done: AtomicU64,
}

impl Activity {
    fn now(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    /// Why the connection should close now, if it should.
    fn overdue(&self, timeouts: &HttpTimeouts) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_started.load(Ordering::Acquire);
        if head != u64::MAX {
            (now.saturating_sub(head) > timeouts.header.as_millis() as u64)
                .then_some("request headers not received in time")
        } else {
            let idle = now.saturating_sub(self.last_done.load(Ordering::Acquire));
            (idle > timeouts.idle.as_millis() as u64).then_some("idle")
        }
    }
}

async fn serve_connection<I>(
    io: I,
    router: axum::Router,
    timeouts: HttpTimeouts,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        began: Instant::now(),
        in_flight: AtomicUsize::new(0),
        head_started: AtomicU64::new(u64::MAX),
        last_done: AtomicU64::new(0),
    });
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            activity.head_started.store(u64::MAX, Ordering::Release);
            let (activity, router) = (activity.clone(), router.clone());
            async move {
                let response = tower::ServiceExt::oneshot(router, request).await;
                activity.last_done.store(activity.now(), Ordering::Release);
                activity.in_flight.fetch_sub(1, Ordering::AcqRel);
                response
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The watchdog below times headers and idleness apart.
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let tick = (timeouts.header.min(timeouts.idle) / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut watchdog = tokio::time::interval(tick);
    let mut draining = false;
    loop {
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = watchdog.tick() => {
                // Dropping the connection closes it; nothing is in progress.
                if let Some(why) = activity.overdue(&timeouts) {
                    tracing::debug!(why, "closing an HTTP connection");
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// An I/O stream that tells [`Activity`] when a request's bytes begin.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let activity = &self.activity;
        if buf.filled().len() > before && activity.in_flight.load(Ordering::Acquire) == 0 {
            let now = activity.now();
            let _ = activity.head_started.compare_exchange(
                u64::MAX,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
