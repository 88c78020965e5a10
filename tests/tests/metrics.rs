//! dmue-serve's Prometheus metrics count what happened. The recorder is process-wide, so this
//! file holds one test: alone in its process, every count is exact.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dmue_deploy::server::ServeConfig;
use dmue_e2e::serve::{call, fixture, multipart, post};
use std::collections::HashMap;

/// `name{labels} value` lines of the text exposition format.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_images_and_faces() {
    let f = fixture(ServeConfig::default());
    // Three one-face requests, one after another; a 3-image request; a 415 and a 400.
    for face in &f.faces {
        assert_eq!(call(&f.app, post(face.clone())).await.0, StatusCode::OK);
    }
    let parts: Vec<(&str, &[u8])> = f.faces.iter().map(|b| ("x", b.as_slice())).collect();
    assert_eq!(call(&f.app, multipart(&parts)).await.0, StatusCode::OK);
    assert_eq!(
        call(&f.app, post(b"hello".to_vec())).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        call(&f.app, post(Vec::new())).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _, text) = call(
        &f.app,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = samples(&text);
    let want = [
        ("dmue_requests_total{status=\"200\"}", 4.0),
        ("dmue_requests_total{status=\"415\"}", 1.0),
        ("dmue_requests_total{status=\"400\"}", 1.0),
        ("dmue_request_seconds_count", 6.0),
        // Images that reached the decoder, detector and queue: 3 + 3.
        ("dmue_decode_seconds_count", 6.0),
        ("dmue_detect_seconds_count", 6.0),
        ("dmue_queue_seconds_count", 6.0),
        // Every face ran in some batch: batch sizes add up to the faces (each batch holds at
        // most --max-batch 8).
        ("dmue_batch_size_sum", 6.0),
        ("dmue_queue_depth", 0.0),
    ];
    let mut wrong = Vec::new();
    for (name, value) in want {
        if m.get(name) != Some(&value) {
            wrong.push(format!("{name}: want {value}, got {:?}", m.get(name)));
        }
    }
    // One engine run per batch: as many timings as batch sizes, at least 4 (the sequential
    // requests and the 3-image one), at most 6.
    let batches = m.get("dmue_batch_size_count").copied().unwrap_or(0.0);
    if !(4.0..=6.0).contains(&batches) || m.get("dmue_inference_seconds_count") != Some(&batches) {
        wrong.push(format!(
            "batches {batches}, inference timings {:?}",
            m.get("dmue_inference_seconds_count")
        ));
    }
    assert!(wrong.is_empty(), "{}\n{text}", wrong.join("\n"));
}
