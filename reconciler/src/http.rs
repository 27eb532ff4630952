//! The HTTP server under the API, with the limits a server on a shared network needs.
//!
//! - At most `max_connections` connections are served at once; the next ones wait in the kernel's backlog until
//!   one closes, so no number of clients can take the descriptors the source loop and the store need.
//! - A connection that has not sent a whole request head within `header_timeout` (slowly, or not at all, also
//!   between two requests on a kept-alive connection) is closed, so a waiting connection soon gets its turn.
//! - On shutdown it stops accepting, lets requests in flight finish for at most `SHUTDOWN_GRACE`, and returns:
//!   a log stream or an agent's WebSocket never holds a stop up for longer.
//!
//! An upgraded connection (an agent's WebSocket) leaves the count once upgraded: agents are few, authenticated,
//! and the hub replaces an agent's old connection with its new one.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How long requests in flight may run on after a stop was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What one server allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, each request carrying its client's address as
/// [`ConnectInfo`].
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, mostly: wait for some to close rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|never| match never {})) }
        });
        let mut connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to tell anyone.
            tokio::select! {
                _ = &mut connection => {}
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    // The request in flight is answered; the connection is not kept alive.
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!("connections still open after {SHUTDOWN_GRACE:?}: closed");
    }
}
