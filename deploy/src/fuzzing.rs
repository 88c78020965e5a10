//! Entry points the fuzz targets (`deploy/fuzz`) and the corpus replay test
//! (`deploy/tests/fuzz_corpus.rs`) share, so that every input a fuzzer ever found stays a test
//! in the normal suite, without a nightly toolchain. Each one runs the real code path on
//! untrusted bytes and panics only on a broken invariant (a finding).

use crate::image_io::{decode, DecodeLimits};
use crate::preprocess::Preprocess;

/// Small limits keep each execution fast and its memory bounded, the way the server's do. The
/// decoders' code paths do not depend on the size beyond their loop counts, while a mutated
/// header that claims thousands of pixels per side costs a full decode and resize of that size;
/// the refusal path for larger images runs either way.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_side: 512,
    max_alloc: 8 << 20,
};

/// Bytes -> decode -> 5-landmark alignment -> classifier preprocessing. The first 40 bytes are
/// the landmarks (10 little-endian f32, any bit pattern: NaN and infinities included), the rest
/// the image file.
pub fn image_path(data: &[u8]) {
    if data.len() < 40 {
        return;
    }
    let (head, file) = data.split_at(40);
    let v: Vec<f32> = head
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let landmarks: [[f32; 2]; 5] = std::array::from_fn(|i| [v[2 * i], v[2 * i + 1]]);
    let Ok(img) = decode(file, &LIMITS) else {
        return;
    };
    assert!(
        img.width() >= 1 && img.height() >= 1,
        "decoded an empty image"
    );
    assert!(
        img.width() <= LIMITS.max_side && img.height() <= LIMITS.max_side,
        "decode exceeded its side limit"
    );
    let pre = Preprocess::default();
    // The whole image as the crop (dmue-serve --no-detect), then the aligned crop.
    let whole = pre
        .eval_tensor(&img)
        .expect("preprocessing a decoded image");
    assert_eq!(whole.len(), (3 * pre.crop * pre.crop) as usize);
    assert!(
        whole.iter().all(|x| x.is_finite()),
        "non-finite input tensor"
    );
    if let Some((crop, t)) = crate::face::align::align(&img, &landmarks, 112) {
        assert_eq!(crop.dimensions(), (112, 112));
        assert!(
            t.scale().is_finite() && t.scale() > 0.0,
            "degenerate transform"
        );
        let x = pre
            .eval_tensor(&crop)
            .expect("preprocessing an aligned crop");
        assert!(x.iter().all(|x| x.is_finite()), "non-finite aligned input");
    }
}

/// The HTTP request parsing of `POST /v1/predict`: the first byte picks the content type (raw
/// image, multipart with a fixed boundary, or the next line of the input as the header), the rest
/// is the body. Every part that comes out goes through [`image_path`]'s decoding.
#[cfg(feature = "server")]
pub fn request(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body) = match kind % 4 {
        0 => ("image/png".to_string(), rest),
        1 => ("application/octet-stream".to_string(), rest),
        2 => ("multipart/form-data; boundary=XyZ".to_string(), rest),
        _ => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            (
                String::from_utf8_lossy(&rest[..end]).into_owned(),
                rest.get(end + 1..).unwrap_or(&[]),
            )
        }
    };
    let Ok(req) = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/predict")
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return; // a header value the HTTP layer itself refuses
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let max_images = crate::server::ServeConfig::default().max_images;
    if let Ok(images) = rt.block_on(crate::server::images_of(req, max_images)) {
        assert!(!images.is_empty(), "Ok with no image");
        for (name, bytes) in images {
            assert!(
                !name.is_empty() && !bytes.is_empty(),
                "an empty part came out"
            );
            let _ = decode(&bytes, &LIMITS);
        }
    }
}
