//! ONNX protobuf types (generated once from the vendored `onnx.proto`, see
//! `scripts/gen-onnx-proto.sh`) and reading a model's metadata without running it.

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod pb;

use crate::error::{Error, Result};
use prost::Message;
use std::path::Path;

/// Decodes an ONNX file.
pub fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
    pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::Model(format!("{} is not an ONNX model: {e}", path.display())))
}

/// The `metadata_props` of a model as (key, value) pairs.
pub fn metadata(model: &pb::ModelProto) -> Vec<(String, String)> {
    model
        .metadata_props
        .iter()
        .map(|p| {
            (
                p.key.clone().unwrap_or_default(),
                p.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}
