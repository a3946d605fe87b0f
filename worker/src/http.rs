//! `GET /healthz`, `GET /readyz` and `GET /metrics`, nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::WorkerError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::process::Processor;

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// Readiness.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: Metrics,
    /// The pools, once loaded (a pool that lost every sandbox makes the worker unready).
    pub processor: Arc<tokio::sync::OnceCell<Arc<Processor>>>,
}

/// Binds `addr` (fails at start if it cannot).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WorkerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| WorkerError::HttpBind {
            addr: addr.to_string(),
            message: e.to_string(),
        })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "http endpoint listening (/healthz, /readyz, /metrics)");
    }
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

fn route(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let dead = state
                .processor
                .get()
                .and_then(|p| p.dead_pool().map(str::to_string));
            match (state.health.readiness(), dead) {
                (Ok(()), None) => text(StatusCode::OK, "ready\n".into()),
                (Err(reason), _) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {reason}\n"),
                ),
                (Ok(()), Some(key)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: the pool of '{key}' has no sandbox left\n"),
                ),
            }
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            if let Ok(v) = "text/plain; version=0.0.4; charset=utf-8".parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
