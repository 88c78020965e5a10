//! The in-process dmue-serve the HTTP tests call (no port): a small exported network, three
//! synthetic aligned faces and the labels the tch network gives them, and request helpers.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::DetectorConfig;
use dmue_deploy::pipeline::Classifier;
use dmue_deploy::server::{self, AppState, ServeConfig};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub app: axum::Router,
    pub state: Arc<AppState>,
    pub faces: Vec<Vec<u8>>,
    pub expected: Vec<String>,
}

pub fn fixture(config: ServeConfig) -> Fixture {
    fixture_with(config, false)
}

/// `detect`: find faces with RetinaFace (models/, from scripts/fetch-models.sh); otherwise
/// every image is one aligned crop.
pub fn fixture_with(config: ServeConfig, detect: bool) -> Fixture {
    fixture_for(
        config,
        detect.then(DetectorConfig::default),
        &crate::test_configs()[0],
    )
}

/// The fixture for a network of any backbone; `detect`: the detector's settings.
pub fn fixture_for(
    config: ServeConfig,
    detect: Option<DetectorConfig>,
    model: &dmue_train::model::ModelConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let m = crate::exported_model_with(dir.path(), 7, model);
    let opts = dmue_train::synth::SynthOptions {
        train: 0,
        test: 3,
        size: 96,
        seed: 2,
        ..Default::default()
    };
    dmue_train::synth::generate(&opts, &dir.path().join("faces")).unwrap();
    let faces: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(dir.path().join(format!("faces/images/test/{i:06}.png"))).unwrap())
        .collect();
    // Expected labels from the tch network itself.
    let expected = faces
        .iter()
        .map(|bytes| {
            let img = image::load_from_memory(bytes).unwrap().to_rgb8();
            let input = m.card.preprocess.eval_tensor(&img).unwrap();
            let logits = crate::tch_logits(&m.net, &input, 1, 64);
            let best = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            m.card.classes[best].clone()
        })
        .collect();
    let classifier = Classifier::load(&m.path, EngineKind::Tract, 1).unwrap();
    let detectors = detect.map(|c| {
        let mut d = crate::detector();
        d.config = c;
        d
    });
    let (state, _worker) = AppState::start(classifier, detectors, config, None);
    Fixture {
        _dir: dir,
        app: server::router(state.clone()),
        state,
        faces,
        expected,
    }
}

/// `POST /v1/predict` with `body` as the raw request body.
pub fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/predict").body(body.into()).unwrap()
}

/// One answer of the service: status, content type and body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: String,
}

/// Sends `req` to the in-process service.
pub async fn exchange(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sends `req`; the status, the body as JSON (`Null` when it is not JSON) and as text.
pub async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, serde_json::Value, String) {
    let a = exchange(app, req).await;
    let json = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, json, a.body)
}

pub fn multipart(parts: &[(&str, &[u8])]) -> Request<Body> {
    let boundary = "dmue-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    Request::post("/v1/predict")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// `POST /v1/predict` with a JSON body.
pub fn json_request(body: &serde_json::Value) -> Request<Body> {
    Request::post("/v1/predict")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Standard base64, as a client would send an image in JSON.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
