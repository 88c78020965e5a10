//! Canonical face geometry shared by the synthetic renderer, `prepare`, and `dmue-serve`.

pub mod align;
#[cfg(any(feature = "tract", feature = "ort"))]
pub mod detect;

/// Side of the aligned face crop in pixels (the paper resizes faces to 256x256).
pub const ALIGNED_SIZE: u32 = 256;

/// Identifier of [`TEMPLATE_256`], recorded in manifests and model cards so that a model is
/// never fed faces cut with another template.
pub const TEMPLATE_ID: &str = "dmue-5pt-256-v1";

/// Canonical positions (x, y) of the 5 landmarks in a 256x256 aligned crop, in this order:
/// eye on the image's left, eye on the image's right, nose tip, mouth corner on the image's
/// left, mouth corner on the image's right. The face fills the 224x224 centre crop with a
/// small margin, the framing FER crops are usually cut with.
pub const TEMPLATE_256: [[f32; 2]; 5] = [
    [90.0, 106.0],
    [166.0, 106.0],
    [128.0, 148.0],
    [98.0, 186.0],
    [158.0, 186.0],
];

/// Names of the 5 landmarks, in the order of [`TEMPLATE_256`].
pub const LANDMARK_NAMES: [&str; 5] =
    ["eye_left", "eye_right", "nose", "mouth_left", "mouth_right"];

/// The template scaled to a square crop of `size` pixels.
pub fn template(size: u32) -> [[f32; 2]; 5] {
    let s = size as f32 / ALIGNED_SIZE as f32;
    TEMPLATE_256.map(|[x, y]| [x * s, y * s])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_left_right_and_top_down() {
        let t = TEMPLATE_256;
        assert!(t[0][0] < t[1][0] && t[3][0] < t[4][0]);
        assert!(t[0][1] < t[2][1] && t[2][1] < t[3][1]);
        // Symmetric about the vertical centre line.
        for (a, b) in [(0, 1), (3, 4)] {
            assert!((t[a][0] + t[b][0] - ALIGNED_SIZE as f32).abs() < 1e-3);
        }
        assert_eq!(template(128)[2], [64.0, 74.0]);
    }
}
