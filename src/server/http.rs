//! The HTTP server loop: axum's router on hyper, with what `axum::serve`
//! leaves out and a public server needs.
//!
//! - A header-read timeout: a client that trickles its request headers
//!   (slow-loris) or keeps an idle keep-alive connection open holds a
//!   descriptor each; after `header_timeout` without a complete request the
//!   connection is closed. (hyper's timer starts whenever it waits for a
//!   request head, so the same limit closes idle keep-alive connections.)
//! - A bounded shutdown: once the calls are drained, in-flight requests get
//!   [`GRACE`] to finish and whatever is left (half-sent requests, idle
//!   connections) is abandoned with the process, instead of holding the
//!   exit until the last client goes away.
//! - The peer's address, as axum's `ConnectInfo`, for the demo's and the
//!   pending sockets' per-address rules.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// After the drain, how long requests still in flight may take.
const GRACE: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `stop` resolves, then shuts down
/// within [`GRACE`].
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    // HTTP/1.1 only: Twilio, browsers and the proxies in front of us all
    // speak it, and cleartext HTTP/2 would bring flow-control windows and
    // keep-alives of its own to bound.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let connections = TaskTracker::new();
    let shutdown = CancellationToken::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: the connections we
                    // hold will time out; do not spin meanwhile.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Audio frames are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // Finish the request in flight, take no other.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    shutdown.cancel();
    connections.close();
    if tokio::time::timeout(GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("connections still open at exit were dropped");
    }
}
