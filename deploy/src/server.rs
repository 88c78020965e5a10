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

use crate::error::Error;
use crate::image_io::{decode, DecodeLimits};
use crate::model_card::ModelCard;
use crate::pipeline::{face_crops, Classifier, Prediction};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub max_batch: usize,
    /// Requests (images) that may wait for the worker before 429.
    pub queue: usize,
    /// Longest a request may take end to end before 504.
    pub timeout: Duration,
    /// Largest accepted request body in bytes (413 beyond).
    pub max_body: usize,
    pub limits: DecodeLimits,
    /// Requests served at once; more get 429 before their body is read.
    pub max_in_flight: usize,
    /// Images (multipart file parts or JSON images) per request; more: 413.
    pub max_images: usize,
    /// Decoded pixels per request, all its images together, read from the image headers before
    /// anything is decoded; more: 413. One image at the side limit (8192 x 8192) fits.
    pub max_pixels: u64,
    /// Images decoded and detected at once (one detector each when detecting). 0: one per
    /// detector in the pool, or one per core without detection.
    pub workers: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue: 64,
            timeout: Duration::from_secs(10),
            max_body: 20 << 20,
            limits: DecodeLimits::default(),
            max_in_flight: 64,
            max_images: 16,
            max_pixels: 8192 * 8192,
            workers: 0,
        }
    }
}

/// Face detectors shared by the request handlers: each image takes one for its detection, so
/// images are detected in parallel up to the pool's size. A detector whose run panicked is
/// dropped; the service is ready while at least one is left.
pub struct DetectorPool {
    free: std::sync::Mutex<Vec<crate::face::detect::Detector>>,
    pub size: usize,
    lost: std::sync::atomic::AtomicUsize,
    pub config: crate::face::detect::DetectorConfig,
}

impl DetectorPool {
    pub fn new(detectors: Vec<crate::face::detect::Detector>) -> Option<Self> {
        let config = detectors.first()?.config;
        Some(Self {
            size: detectors.len(),
            free: std::sync::Mutex::new(detectors),
            lost: Default::default(),
            config,
        })
    }

    /// Detectors still working.
    pub fn alive(&self) -> usize {
        self.size - self.lost.load(Ordering::Relaxed)
    }

    /// Runs `f` with a free detector. The caller holds one of the `workers` permits, of which
    /// there are as many as working detectors, so one is free.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut crate::face::detect::Detector) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let taken = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(mut d) = taken else {
            return Err(Error::Unavailable("no face detector is free".into()));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut d))) {
            Ok(r) => {
                self.free.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                r
            }
            Err(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "a face detector panicked and was dropped ({} of {} left)",
                    self.alive(),
                    self.size
                );
                Err(Error::Engine(
                    "the face detector failed on this image".into(),
                ))
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::BadInput(_) | Error::Preprocess(_) => StatusCode::BAD_REQUEST,
            Error::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Undecodable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Model(_) | Error::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string(), "kind": self.kind() })),
        )
            .into_response()
    }
}

/// Every face of one image, preprocessed, waiting for the worker as one job: the queue counts
/// images, so a crowded photo takes one place, and its faces are classified together or not
/// at all.
struct Job {
    /// `faces` inputs laid end to end.
    inputs: Vec<f32>,
    faces: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<(Vec<Prediction>, Timing), Error>>,
}

/// Where one image's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub decode_ms: f64,
    /// Face detection and alignment.
    pub detect_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// Faces in the largest engine batch this image's faces ran in.
    pub batch_size: usize,
}

/// The queue in front of the inference worker.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    capacity: usize,
}

impl Batcher {
    /// Moves the classifier into a worker thread; the thread ends when every sender is gone.
    /// The worker takes the images that are waiting until they hold `max_batch` faces, and runs
    /// their faces in engine batches of at most `max_batch`.
    pub fn start(
        mut classifier: Classifier,
        max_batch: usize,
        queue: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let max_batch = max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("dmue-inference".into())
            .spawn(move || {
                let classes = classifier.card.classes.len();
                let crop = classifier.card.preprocess.crop as usize;
                let per_face = 3 * crop * crop;
                while let Some(first) = rx.blocking_recv() {
                    let mut faces = first.faces;
                    let mut jobs = vec![first];
                    while faces < max_batch {
                        match rx.try_recv() {
                            Ok(j) => {
                                faces += j.faces;
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    // Requests that timed out or went away while queued are not worth computing.
                    jobs.retain(|j| !j.reply.is_closed());
                    if jobs.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let inputs: Vec<f32> =
                        jobs.iter().flat_map(|j| j.inputs.iter().copied()).collect();
                    let mut result = Ok(Vec::with_capacity(inputs.len() / per_face * classes));
                    let mut largest = 0;
                    for chunk in inputs.chunks(max_batch * per_face) {
                        let n = chunk.len() / per_face;
                        largest = largest.max(n);
                        match (&mut result, classifier.logits(chunk, n)) {
                            (Ok(all), Ok(l)) => all.extend(l),
                            (_, Err(e)) => {
                                result = Err(e);
                                break;
                            }
                            (Err(_), _) => break,
                        }
                    }
                    let inference_ms = started.elapsed().as_secs_f64() * 1e3;
                    metrics::histogram!("dmue_inference_seconds").record(inference_ms / 1e3);
                    metrics::histogram!("dmue_batch_size").record(largest as f64);
                    match result {
                        Ok(logits) => {
                            let mut rows = logits.chunks(classes);
                            for j in jobs {
                                let predictions: Vec<Prediction> = rows
                                    .by_ref()
                                    .take(j.faces)
                                    .map(|row| classifier.prediction(row))
                                    .collect();
                                let timing = Timing {
                                    queue_ms: (started - j.enqueued).as_secs_f64() * 1e3,
                                    inference_ms,
                                    batch_size: largest,
                                    ..Default::default()
                                };
                                let _ = j.reply.send(Ok((predictions, timing)));
                            }
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            for j in jobs {
                                let _ = j.reply.send(Err(Error::Engine(msg.clone())));
                            }
                        }
                    }
                }
            })
            .expect("spawn the inference thread");
        (
            Self {
                tx,
                capacity: queue.max(1),
            },
            worker,
        )
    }

    /// Whether the inference worker has stopped (its thread ended or panicked).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Images waiting for the worker.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Queues the faces of one image (`faces` preprocessed inputs laid end to end) and waits
    /// for their predictions, in order. 429 when the queue is full: then none of them is queued.
    pub async fn submit(
        &self,
        inputs: Vec<f32>,
        faces: usize,
    ) -> Result<(Vec<Prediction>, Timing), Error> {
        if faces == 0 {
            return Ok((Vec::new(), Timing::default()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                inputs,
                faces,
                enqueued: Instant::now(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Overloaded("the inference queue is full; retry later".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Error::Engine("the inference worker has stopped".into())
                }
            })?;
        metrics::gauge!("dmue_queue_depth").set(self.depth() as f64);
        rx.await
            .map_err(|_| Error::Engine("the inference worker dropped the request".into()))?
    }
}

pub struct AppState {
    pub card: ModelCard,
    pub engine: &'static str,
    pub batcher: Batcher,
    pub config: ServeConfig,
    pub ready: AtomicBool,
    pub metrics: PrometheusHandle,
    /// Face detectors; `None` takes every image as one aligned face crop (`--no-detect`).
    pub detectors: Option<DetectorPool>,
    /// Where to write every aligned crop the classifier saw (`--save-crops`).
    pub save_crops: Option<std::path::PathBuf>,
    /// Permits for requests being served (`max_in_flight`).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Permits for images being decoded and detected (`workers`).
    workers: Arc<tokio::sync::Semaphore>,
    /// When a request last started or ended (ms after `born`), and whether one has since the
    /// last time [`AppState::went_idle`] said so.
    last_activity_ms: AtomicU64,
    active_since_idle: AtomicBool,
    born: Instant,
}

impl AppState {
    /// Starts the inference worker for `classifier` and builds the service's state around it;
    /// `detectors` form the detection pool (none: `--no-detect`). The worker thread ends once
    /// the state (and every clone of its queue) is dropped.
    pub fn start(
        classifier: Classifier,
        detectors: impl IntoIterator<Item = crate::face::detect::Detector>,
        config: ServeConfig,
        save_crops: Option<std::path::PathBuf>,
    ) -> (Arc<Self>, std::thread::JoinHandle<()>) {
        let card = classifier.card.clone();
        let engine = classifier.engine_name();
        let (batcher, worker) = Batcher::start(classifier, config.max_batch, config.queue);
        let detectors = DetectorPool::new(detectors.into_iter().collect());
        let workers = match (config.workers, &detectors) {
            (0, Some(p)) => p.size,
            (0, None) => crate::engine::cores(),
            (n, Some(p)) => n.min(p.size),
            (n, None) => n,
        };
        let state = Arc::new(AppState {
            card,
            engine,
            batcher,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            workers: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            config,
            ready: AtomicBool::new(true),
            metrics: metrics_handle(),
            detectors,
            save_crops,
            last_activity_ms: AtomicU64::new(0),
            active_since_idle: AtomicBool::new(false),
            born: Instant::now(),
        });
        (state, worker)
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.active_since_idle.store(true, Ordering::Relaxed);
    }

    /// True once per quiet spell: no request in flight, none started or ended for `quiet`, and
    /// at least one served since the last time this returned true. dmue-serve gives freed
    /// memory back to the system then (a large photo's buffers would otherwise stay in the
    /// allocator's heaps), in a gap between requests rather than while they are served.
    pub fn went_idle(&self, quiet: Duration) -> bool {
        let none_in_flight = self.in_flight.available_permits() == self.config.max_in_flight.max(1);
        let now = self.born.elapsed().as_millis() as u64;
        let quiet_for = now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
        none_in_flight
            && quiet_for >= quiet.as_millis() as u64
            && self.active_since_idle.swap(false, Ordering::Relaxed)
    }

    /// Why the service cannot serve, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Relaxed) {
            Some("shutting down")
        } else {
            self.broken()
        }
    }

    /// What failed beyond recovery in this process, if anything: the inference worker, or every
    /// face detector.
    pub fn broken(&self) -> Option<&'static str> {
        if self.batcher.is_closed() {
            Some("the inference worker has stopped")
        } else if self.detectors.as_ref().is_some_and(|d| d.alive() == 0) {
            Some("every face detector failed (panicked)")
        } else {
            None
        }
    }
}

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

/// The process-wide Prometheus recorder (installed once, shared by every router in a process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let secs = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &secs,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("dmue_batch_size".into()),
                        &sizes,
                    )
                })
                .expect("valid buckets")
                .install_recorder()
                .expect("one Prometheus recorder per process")
        })
        .clone()
}

/// The routes, for error messages (the OpenAPI document describes each).
const ROUTES: &str =
    "POST /v1/predict; GET /v1/model, /healthz, /readyz, /metrics, /openapi.json, /";

/// The OpenAPI 3.1 description of the service (`deploy/openapi.json`, with this build's
/// version). A test validates real responses of every route against it.
pub fn openapi() -> serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("valid JSON");
        doc["info"]["version"] = env!("CARGO_PKG_VERSION").into();
        doc
    })
    .clone()
}

/// The service's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body;
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .merge(crate::web::routes())
        .method_not_allowed_fallback(|| async {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this route does not take that method: {ROUTES}"),
            )
        })
        .fallback(|uri: axum::http::Uri| async move {
            json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {uri}: {ROUTES}"),
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The one error body for responses that are not an [`Error`] (unknown route, wrong method).
fn json_error(status: StatusCode, kind: &str, error: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": error, "kind": kind })),
    )
        .into_response()
}

/// Ready unless shutting down, the inference worker has stopped, or every face detector
/// panicked: a balancer should send traffic elsewhere then.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.problem() {
        None => Json(serde_json::json!({"status": "ready"})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": format!("not ready: {why}"), "kind": "not_ready"})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    metrics::gauge!("dmue_queue_depth").set(s.batcher.depth() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The model card and how this instance serves it (the web page's model panel reads this).
async fn model(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let detector = s.detectors.as_ref().map(|d| {
        serde_json::json!({
            "input_size": d.config.input_size,
            "max_input_size": d.config.max_input_size,
            "score_threshold": d.config.score_threshold,
            "pool": d.size,
        })
    });
    Json(serde_json::json!({
        "card": s.card,
        "crop_rule": s.card.crop_rule(),
        "engine": s.engine,
        "synthetic": s.card.trained_on_synthetic(),
        "detector": detector,
        "limits": {
            "max_body_bytes": s.config.max_body,
            "max_side": s.config.limits.max_side,
            "max_images": s.config.max_images,
            "max_pixels": s.config.max_pixels,
            "max_in_flight": s.config.max_in_flight,
            "timeout_ms": s.config.timeout.as_millis() as u64,
        },
    }))
}

/// One face of one image, as the API and `dmue-serve predict --format jsonl` report it.
#[derive(Serialize)]
pub struct Face {
    /// `[x0, y0, x1, y1]` in image pixels (the whole image without detection).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub landmarks: Option<[[f32; 2]; 5]>,
    pub detection_score: Option<f32>,
    #[serde(flatten)]
    pub prediction: Prediction,
    /// The aligned crop the classifier saw, PNG in base64 (with `?return_crops=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_png_base64: Option<String>,
}

impl Face {
    pub fn new(
        crop: &crate::pipeline::FaceCrop,
        prediction: Prediction,
        crop_png_base64: Option<String>,
    ) -> Self {
        Self {
            bbox: crop.bbox,
            landmarks: crop.landmarks,
            detection_score: crop.detection_score,
            prediction,
            crop_png_base64,
        }
    }
}

#[derive(Serialize)]
struct ImageResult {
    image: String,
    faces: Vec<Face>,
    timing: Timing,
}

/// The images of a request: the raw body, every file part of a multipart form (at most
/// `max_images`: 413 at the next part, before it is read), or the images of a JSON body.
pub(crate) async fn images_of(
    req: Request,
    max_images: usize,
) -> Result<Vec<(String, Bytes)>, Error> {
    let too_large = |status: StatusCode, msg: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge(format!("request body is larger than the limit: {msg}"))
        } else {
            Error::BadInput(msg)
        }
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut images = Vec::new();
    if content_type.starts_with("application/json") {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| too_large(e.status(), e.body_text()))?;
        images = json_images(&body, max_images)?;
    } else if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| too_large(e.status(), e.body_text()))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| too_large(e.status(), e.body_text()))?
        {
            if images.len() == max_images {
                return Err(Error::TooLarge(format!(
                    "more than {max_images} images in one request (--max-images)"
                )));
            }
            let name = field.file_name().or(field.name()).unwrap_or("").to_string();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| too_large(e.status(), e.body_text()))?;
            let name = if name.is_empty() {
                format!("part-{}", images.len())
            } else {
                name
            };
            images.push((name, bytes));
        }
    } else {
        let bytes = Bytes::from_request(req, &())
            .await
            .map_err(|e| too_large(e.status(), e.body_text()))?;
        images.push(("body".to_string(), bytes));
    }
    images.retain(|(_, b)| !b.is_empty());
    if images.is_empty() {
        return Err(Error::BadInput(
            "no image in the request: send image bytes as the body, multipart file parts, or \
             JSON {\"images\": [{\"data\": base64}]}"
                .into(),
        ));
    }
    Ok(images)
}

/// The JSON form of a predict request: `{"images": [{"name": "a.jpg", "data": "<base64>"}]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    images: Vec<JsonImage>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonImage {
    #[serde(default)]
    name: Option<String>,
    /// Standard base64 (padding optional), or a `data:` URL as browsers make them.
    data: String,
}

/// The images of a JSON request body, named as given or `image-K`.
fn json_images(body: &[u8], max_images: usize) -> Result<Vec<(String, Bytes)>, Error> {
    use base64::Engine as _;
    let request: JsonRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadInput(format!(
            "bad JSON request (expected {{\"images\": [{{\"name\": optional string, \"data\": base64 string}}]}}): {e}"
        ))
    })?;
    if request.images.len() > max_images {
        return Err(Error::TooLarge(format!(
            "{} images in one request, more than {max_images} (--max-images)",
            request.images.len()
        )));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    request
        .images
        .into_iter()
        .enumerate()
        .map(|(k, image)| {
            let name = image.name.unwrap_or_else(|| format!("image-{k}"));
            // `data:image/jpeg;base64,....` (what a browser's FileReader gives) or bare base64.
            let data = match image.data.split_once(";base64,") {
                Some((head, rest)) if head.starts_with("data:") => rest,
                _ => image.data.as_str(),
            };
            let bytes = engine.decode(data.trim()).map_err(|e| {
                Error::BadInput(format!("{name}: \"data\" is not valid base64: {e}"))
            })?;
            Ok((name, Bytes::from(bytes)))
        })
        .collect()
}

/// The query string of `POST /v1/predict`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictParams {
    /// Return each aligned crop as a base64 PNG.
    #[serde(default)]
    return_crops: bool,
}

async fn predict(
    State(s): State<Arc<AppState>>,
    params: Result<Query<PredictParams>, QueryRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let return_crops = match params {
        Ok(Query(p)) => p.return_crops,
        Err(e) => {
            return Error::BadInput(format!(
                "bad query string (the one parameter is return_crops=true|false): {}",
                e.body_text()
            ))
            .into_response()
        }
    };
    // Admission before anything is read: a bounded number of requests in flight.
    let Ok(_permit) = s.in_flight.clone().try_acquire_owned() else {
        let e = Error::Overloaded(format!(
            "{} requests are being served (--max-in-flight); retry later",
            s.config.max_in_flight
        ));
        metrics::counter!("dmue_requests_total", "status" => "429").increment(1);
        return e.into_response();
    };
    s.touch();
    let result = tokio::time::timeout(
        s.config.timeout,
        predict_inner(s.clone(), req, return_crops),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::Timeout(format!(
            "the request took longer than {:?}",
            s.config.timeout
        )))
    });
    let response = match result {
        Ok(results) => Json(serde_json::json!({ "classes": s.card.classes, "results": results }))
            .into_response(),
        Err(e) => e.into_response(),
    };
    metrics::counter!("dmue_requests_total", "status" => response.status().as_u16().to_string())
        .increment(1);
    metrics::histogram!("dmue_request_seconds").record(started.elapsed().as_secs_f64());
    s.touch();
    response
}

async fn predict_inner(
    s: Arc<AppState>,
    req: Request,
    return_crops: bool,
) -> Result<Vec<ImageResult>, Error> {
    if let Some(why) = s.problem() {
        return Err(Error::Unavailable(format!(
            "the service cannot serve: {why}"
        )));
    }
    let images = images_of(req, s.config.max_images).await?;
    // The decoded size of every image, from its header, before any is decoded.
    let mut pixels = 0u64;
    for (name, bytes) in &images {
        let (w, h) = crate::image_io::dimensions(bytes).map_err(|e| e.with_context(name))?;
        pixels += w as u64 * h as u64;
    }
    if pixels > s.config.max_pixels {
        return Err(Error::TooLarge(format!(
            "the request's images hold {pixels} pixels, more than the {} allowed per request (--max-megapixels)",
            s.config.max_pixels
        )));
    }
    // Set when this request's future is dropped (timeout, client gone): its blocking work
    // not started yet is skipped.
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    // All images of a request are decoded and queued together, so they can share batches.
    let work = images.into_iter().map(|(name, bytes)| {
        predict_image(s.clone(), name, bytes, return_crops, cancelled.clone())
    });
    futures_util::future::join_all(work)
        .await
        .into_iter()
        .collect()
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn predict_image(
    s: Arc<AppState>,
    name: String,
    bytes: Bytes,
    return_crops: bool,
    cancelled: Arc<AtomicBool>,
) -> Result<ImageResult, Error> {
    let state = s.clone();
    // At most `workers` images are decoded and detected at once: that bounds the memory of
    // decoded images, and each holds a detector from the pool.
    let permit = s
        .workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::Unavailable("the service is shutting down".into()))?;
    // Decoding, detection, alignment and resizing are CPU work: keep them off the async threads.
    let (crops, inputs, decode_s, detect_s) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let gone = || {
            cancelled
                .load(Ordering::Relaxed)
                .then(|| Error::Timeout("the request ended before this image was processed".into()))
        };
        if let Some(e) = gone() {
            return Err(e);
        }
        let t = Instant::now();
        let img = decode(&bytes, &state.config.limits)?;
        let decode_s = t.elapsed().as_secs_f64();
        if let Some(e) = gone() {
            return Err(e);
        }
        let t = Instant::now();
        let crops = match &state.detectors {
            Some(pool) => pool.with(|d| face_crops(&img, Some(d), state.card.aligned_size))?,
            None => face_crops(&img, None, state.card.aligned_size)?,
        };
        let inputs = crops
            .iter()
            .map(|c| state.card.preprocess.eval_tensor(&c.crop))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, Error>((crops, inputs, decode_s, t.elapsed().as_secs_f64()))
    })
    .await
    .map_err(|e| Error::Engine(format!("decode task failed: {e}")))?
    .map_err(|e| e.with_context(&name))?;
    metrics::histogram!("dmue_decode_seconds").record(decode_s);
    metrics::histogram!("dmue_detect_seconds").record(detect_s);
    let mut timing = Timing {
        decode_ms: decode_s * 1e3,
        detect_ms: detect_s * 1e3,
        ..Default::default()
    };
    let n = inputs.len();
    let (predictions, t) = s.batcher.submit(inputs.concat(), n).await?;
    if n > 0 {
        metrics::histogram!("dmue_queue_seconds").record(t.queue_ms / 1e3);
    }
    timing.queue_ms = t.queue_ms;
    timing.inference_ms = t.inference_ms;
    timing.batch_size = t.batch_size;
    // PNG encoding, base64 and file writes are blocking work too.
    let save_dir = s.save_crops.clone();
    let image_name = name.clone();
    let (crops, encoded) = tokio::task::spawn_blocking(move || {
        let mut encoded = Vec::with_capacity(crops.len());
        for (k, crop) in crops.iter().enumerate() {
            if let Some(dir) = &save_dir {
                save_crop(dir, &image_name, k, &crop.crop);
            }
            encoded.push(return_crops.then(|| png_base64(&crop.crop)));
        }
        (crops, encoded)
    })
    .await
    .map_err(|e| Error::Engine(format!("crop encoding task failed: {e}")))?;
    let faces = crops
        .into_iter()
        .zip(predictions)
        .zip(encoded)
        .map(|((crop, prediction), crop_png_base64)| Face::new(&crop, prediction, crop_png_base64))
        .collect();
    Ok(ImageResult {
        image: name,
        faces,
        timing,
    })
}

fn png_base64(img: &image::RgbImage) -> String {
    use base64::Engine as _;
    let mut buf = Vec::new();
    let _ = img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Writes `DIR/<image stem>-<face>.png`; a failure is logged, never fatal for the request.
pub fn save_crop(dir: &std::path::Path, image: &str, face: usize, crop: &image::RgbImage) {
    let stem = std::path::Path::new(image)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}-{face}.png"));
    if let Err(e) = crop.save(&path) {
        tracing::warn!("cannot save crop {}: {e}", path.display());
    }
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
