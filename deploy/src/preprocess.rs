//! The classifier's input transform, defined once.
//!
//! Aligned face crops are resized to `resize x resize` (256 in the paper); evaluation and
//! deployment take the centre `crop x crop` (224) and normalise each channel with `mean`/`std`.
//! Training draws random crops of the same resized image and normalises with
//! [`Preprocess::normalise_into`]; it never re-implements any of this.

use fast_image_resize as fr;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Per-channel mean used by the authors' code (images scaled to [0,1] first).
pub const DEFAULT_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// Per-channel standard deviation used by the authors' code.
pub const DEFAULT_STD: [f32; 3] = [0.5, 0.5, 0.5];
pub const DEFAULT_RESIZE: u32 = 256;
pub const DEFAULT_CROP: u32 = 224;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("crop {crop} is larger than the resized image {resize}")]
    CropTooLarge { crop: u32, resize: u32 },
    #[error("image of {width}x{height} has no pixels")]
    Empty { width: u32, height: u32 },
    #[error("resize failed: {0}")]
    Resize(String),
}

/// The one image resizer of dmue: any RGB image to `side x side`, bilinear (torchvision's
/// default). The classifier transform and `prepare` (pre-aligned crops, `--no-face whole`)
/// both use it, so a face is resized the same way in training and in serving.
pub fn resize_square(img: &RgbImage, side: u32) -> Result<RgbImage, PreprocessError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Empty {
            width: img.width(),
            height: img.height(),
        });
    }
    if img.width() == side && img.height() == side {
        return Ok(img.clone());
    }
    let src =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let mut dst = fr::images::Image::new(side, side, fr::PixelType::U8x3);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    RgbImage::from_raw(side, side, dst.into_vec())
        .ok_or_else(|| PreprocessError::Resize("buffer size mismatch".into()))
}

/// Geometry and normalisation of the classifier input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side the aligned crop is resized to before cropping.
    pub resize: u32,
    /// Side of the square network input.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            resize: DEFAULT_RESIZE,
            crop: DEFAULT_CROP,
            mean: DEFAULT_MEAN,
            std: DEFAULT_STD,
        }
    }
}

impl Preprocess {
    pub fn validate(&self) -> Result<(), PreprocessError> {
        if self.crop > self.resize || self.crop == 0 {
            return Err(PreprocessError::CropTooLarge {
                crop: self.crop,
                resize: self.resize,
            });
        }
        Ok(())
    }

    /// Resizes an aligned face crop to `resize x resize` (bilinear, as torchvision's default).
    pub fn resize_rgb(&self, img: &RgbImage) -> Result<RgbImage, PreprocessError> {
        resize_square(img, self.resize)
    }

    /// Top-left corner of the centre crop inside the resized image.
    pub fn centre_offset(&self) -> u32 {
        (self.resize - self.crop) / 2
    }

    /// Writes the `crop x crop` window at (`x0`, `y0`) of an interleaved RGB `resize x resize`
    /// buffer into `out` as normalised planar CHW floats, mirrored horizontally if `flip`.
    pub fn normalise_into(&self, rgb: &[u8], x0: u32, y0: u32, flip: bool, out: &mut [f32]) {
        let (r, c) = (self.resize as usize, self.crop as usize);
        debug_assert_eq!(rgb.len(), r * r * 3);
        debug_assert_eq!(out.len(), 3 * c * c);
        let scale: [f32; 3] = std::array::from_fn(|k| 1.0 / (255.0 * self.std[k]));
        let shift: [f32; 3] = std::array::from_fn(|k| self.mean[k] / self.std[k]);
        for y in 0..c {
            let row = &rgb[((y0 as usize + y) * r + x0 as usize) * 3..][..c * 3];
            for x in 0..c {
                let sx = if flip { c - 1 - x } else { x };
                for k in 0..3 {
                    out[k * c * c + y * c + x] = row[sx * 3 + k] as f32 * scale[k] - shift[k];
                }
            }
        }
    }

    /// The evaluation / deployment transform of one aligned face crop: resize, centre crop,
    /// normalise. Returns planar CHW floats of length `3 * crop * crop`.
    pub fn eval_tensor(&self, img: &RgbImage) -> Result<Vec<f32>, PreprocessError> {
        self.validate()?;
        let resized = self.resize_rgb(img)?;
        let mut out = vec![0.0; 3 * (self.crop * self.crop) as usize];
        let o = self.centre_offset();
        self.normalise_into(resized.as_raw(), o, o, false, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_matches_the_formula_and_flip_mirrors() {
        let p = Preprocess {
            resize: 4,
            crop: 2,
            mean: [0.5, 0.4, 0.3],
            std: [0.5, 0.2, 0.1],
        };
        let mut rgb = vec![0u8; 4 * 4 * 3];
        for (i, v) in rgb.iter_mut().enumerate() {
            *v = (i * 7 % 256) as u8;
        }
        let mut out = vec![0.0; 12];
        p.normalise_into(&rgb, 1, 1, false, &mut out);
        // Pixel (x=2, y=1) of the source is (x=1, y=0) of the crop; channel 1.
        let src = rgb[(4 + 2) * 3 + 1] as f32 / 255.0;
        assert!((out[4 + 1] - (src - 0.4) / 0.2).abs() < 1e-5);
        let mut flipped = vec![0.0; 12];
        p.normalise_into(&rgb, 1, 1, true, &mut flipped);
        assert_eq!(flipped[0], out[1]);
        assert_eq!(flipped[4 + 2 + 1], out[4 + 2]);
    }

    #[test]
    fn eval_tensor_has_crop_shape_and_rejects_bad_geometry() {
        let img = RgbImage::from_pixel(300, 280, image::Rgb([255, 0, 128]));
        let t = Preprocess::default().eval_tensor(&img).unwrap();
        assert_eq!(t.len(), 3 * 224 * 224);
        assert!((t[0] - 1.0).abs() < 1e-5 && (t[224 * 224] + 1.0).abs() < 1e-5);
        let bad = Preprocess {
            resize: 64,
            crop: 72,
            ..Default::default()
        };
        assert!(bad.eval_tensor(&img).is_err());
    }
}
