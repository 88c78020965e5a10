//! The images of a predict request, in its three forms: raw body, multipart parts, JSON with
//! base64 data.

use crate::error::Error;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};

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
