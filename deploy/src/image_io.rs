//! Image decoding with limits (against decompression bombs), EXIF orientation applied, any
//! colour type (grey, RGBA, 16-bit) converted to 8-bit RGB.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::Cursor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width or height.
    pub max_side: u32,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_alloc: 256 << 20,
        }
    }
}

/// The image formats this build decodes (the `image` crate's features in the workspace).
pub const SUPPORTED_FORMATS: &str = "PNG, JPEG";
/// File extensions of [`SUPPORTED_FORMATS`] (lower case), for picking files out of folders.
pub const SUPPORTED_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A reader of `bytes` whose format is known, or why not.
fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::BadInput(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Unsupported(format!(
            "not an image in a supported format ({SUPPORTED_FORMATS})"
        )));
    }
    Ok(reader)
}

/// `(width, height)` from the image's header, without decoding its pixels (admission control
/// reads it before any decoding).
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    reader(bytes)?
        .into_dimensions()
        .map_err(|e| Error::Undecodable(format!("cannot read the image header: {e}")))
}

pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    let mut reader = reader(bytes)?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let classify = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => Error::TooLarge(format!(
            "image exceeds the decode limits ({} px per side): {l}",
            limits.max_side
        )),
        other => Error::Undecodable(format!("cannot decode image: {other}")),
    };
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let orientation = decoder.orientation().map_err(classify)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(5, 4, image::Luma([200])));
        let rgb = decode(&png(grey), &DecodeLimits::default()).unwrap();
        assert_eq!(
            (rgb.width(), rgb.height(), rgb.get_pixel(0, 0).0),
            (5, 4, [200, 200, 200])
        );
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            3,
            3,
            image::Rgba([1, 2, 3, 4]),
        ));
        assert_eq!(
            decode(&png(rgba), &DecodeLimits::default())
                .unwrap()
                .get_pixel(1, 1)
                .0,
            [1, 2, 3]
        );
    }

    /// A phone photo stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to
    /// display") comes out upright: the red top-left block of the stored 16x8 image ends up as
    /// the top half of the displayed 8x16 image.
    #[test]
    fn exif_orientation_is_applied() {
        use image::ImageEncoder;
        let stored = RgbImage::from_fn(16, 8, |x, _| {
            image::Rgb(if x < 8 { [220, 20, 20] } else { [10, 10, 10] })
        });
        // TIFF (little endian) with one IFD entry: Orientation (0x0112), SHORT, 1 value: 6.
        let exif: Vec<u8> = [
            &b"II\x2a\x00\x08\x00\x00\x00"[..],
            &[1, 0],
            &[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0],
            &[0, 0, 0, 0],
        ]
        .concat();
        let mut jpeg = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(stored.as_raw(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let shown = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!(shown.dimensions(), (8, 16));
        assert!(
            shown.get_pixel(4, 3).0[0] > 150,
            "{:?}",
            shown.get_pixel(4, 3)
        );
        assert!(
            shown.get_pixel(4, 12).0[0] < 60,
            "{:?}",
            shown.get_pixel(4, 12)
        );
    }

    /// Print workflows and Photoshop save CMYK JPEGs (plain, and YCCK: Adobe's transform 2).
    /// Both come out as the RGB they stand for: four colour blocks, each converted by hand with
    /// the usual black extraction (K = 255 - max(R, G, B)), survive within JPEG's loss.
    #[test]
    fn cmyk_and_ycck_jpegs_become_their_rgb() {
        let blocks: [[u8; 3]; 4] = [[200, 30, 40], [20, 180, 60], [40, 50, 210], [128, 128, 128]];
        let (w, h) = (64u16, 16u16);
        let rgb_at = |x: u16| blocks[(x / 16) as usize];
        let mut cmyk = Vec::with_capacity(4 * w as usize * h as usize);
        for _ in 0..h {
            for x in 0..w {
                let [r, g, b] = rgb_at(x).map(f32::from);
                let k = 255.0 - r.max(g).max(b);
                let ink = |c: f32| (255.0 * (255.0 - c - k) / (255.0 - k)).round() as u8;
                cmyk.extend([ink(r), ink(g), ink(b), k.round() as u8]);
            }
        }
        for color in [
            jpeg_encoder::ColorType::Cmyk,
            jpeg_encoder::ColorType::CmykAsYcck,
        ] {
            let mut jpeg = Vec::new();
            jpeg_encoder::Encoder::new(&mut jpeg, 100)
                .encode(&cmyk, w, h, color)
                .unwrap();
            let rgb = decode(&jpeg, &DecodeLimits::default()).unwrap();
            assert_eq!(rgb.dimensions(), (w as u32, h as u32));
            for (i, want) in blocks.iter().enumerate() {
                let got = rgb.get_pixel(16 * i as u32 + 8, 8).0;
                let off = (0..3).map(|c| got[c].abs_diff(want[c])).max().unwrap();
                assert!(off <= 12, "{color:?} block {i}: {got:?} for {want:?}");
            }
        }
    }

    #[test]
    fn garbage_is_unsupported_damage_undecodable_and_huge_too_large() {
        assert_eq!(
            decode(b"hello", &DecodeLimits::default())
                .unwrap_err()
                .kind(),
            "unsupported_media_type"
        );
        let big = png(DynamicImage::ImageRgb8(RgbImage::new(300, 10)));
        let err = decode(
            &big,
            &DecodeLimits {
                max_side: 100,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");
        let mut truncated = png(DynamicImage::ImageRgb8(RgbImage::new(30, 30)));
        truncated.truncate(40);
        assert_eq!(
            decode(&truncated, &DecodeLimits::default())
                .unwrap_err()
                .kind(),
            "undecodable"
        );
    }
}
