//! The routes: prediction (admission, decoding, detection, queueing, the answer), the model
//! card, readiness, metrics, the OpenAPI document; every error as one JSON body.

use super::batcher::Timing;
use super::request::images_of;
use super::state::AppState;
use crate::error::Error;
use crate::image_io::decode;
use crate::pipeline::{face_crops, Prediction};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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

/// The routes, for error messages (the OpenAPI document describes each).
const ROUTES: &str =
    "POST /v1/predict; GET /v1/model, /healthz, /readyz, /metrics, /openapi.json, /";

/// The OpenAPI 3.1 description of the service (`deploy/openapi.json`, with this build's
/// version). A test validates real responses of every route against it.
pub fn openapi() -> serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).expect("valid JSON");
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
