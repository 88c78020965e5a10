//! The HTTP service of `dmue-serve` (axum).
//!
//! Admission comes before any work: at most `max_in_flight` requests are served at once (more
//! get 429 before their body is read), a request holds at most `max_images` images and
//! `max_pixels` decoded pixels in all (413; the pixels are read from the image headers, before
//! decoding). Each image is then decoded, its faces detected and preprocessed on the blocking
//! pool, at most `workers` images at a time, each with a detector from the pool. Each image, with
//! all its faces, is queued as one job for the inference worker thread that owns the engine. The
//! worker takes the images that arrived while the previous batch ran (until they hold
//! `max_batch` faces) and runs their faces in batches of at most `max_batch`. The queue counts
//! images and is bounded: when it is full the image is refused with 429 (none of its faces
//! queued) instead of waiting forever. A request that times out (504) or is dropped stops its
//! remaining work: images not yet decoded or detected are skipped, and queued faces are not
//! computed.
//!
//! Images arrive as the raw body, as multipart file parts, or as JSON with base64 data; all
//! three pass the same admission and give the same answers.
//!
//! Status codes: 200 ok; 400 bad request (empty body, bad multipart, JSON or base64); 413 body
//! or image too large; 415 not an image in a supported format; 422 a damaged or cut-short
//! image; 429 queue full; 503 not ready / shutting down; 504 request timed out; 500 engine
//! failure; 404 unknown route; 405 wrong method. Every error body is
//! `{"error": "...", "kind": "..."}`; `deploy/openapi.json` (served at `/openapi.json`)
//! describes every route.

mod batcher;
mod metrics;
mod request;
mod routes;
mod state;

pub use batcher::{Batcher, Timing};
pub use metrics::metrics_handle;
#[cfg(feature = "fuzzing")]
pub(crate) use request::images_of;
pub use routes::{openapi, router, save_crop, Face};
pub use state::{AppState, DetectorPool, ServeConfig};

use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves `state` on `listener` until `shutdown` resolves; then readiness turns false, new
/// predictions get 503, and the requests in flight finish before this returns.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.ready.store(false, Ordering::Relaxed);
            tracing::info!("shutting down: finishing requests in flight");
        })
        .await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
