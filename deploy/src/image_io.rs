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
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        jpeg_reaches_its_end(bytes).map_err(Error::Undecodable)?;
    }
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

/// Checks that a JPEG stream reaches its end-of-image marker. JPEG decoders fill a scan cut
/// short with grey and report success, so a truncated upload would otherwise be classified as a
/// photo (usually one without a face) instead of being reported as damaged.
///
/// Walks the marker segments: each has a big-endian length; after a start-of-scan the
/// entropy-coded data runs to the next marker that is not a stuffed `FF 00`, a restart marker
/// or fill. Bytes between segments that are not a marker are skipped, as decoders do.
fn jpeg_reaches_its_end(b: &[u8]) -> std::result::Result<(), String> {
    let cut = |at: usize| {
        format!(
            "the JPEG is cut short: its data ends after {at} bytes, before its end-of-image \
             marker (an incomplete upload or a truncated file)"
        )
    };
    let mut i = 2; // after start-of-image
    loop {
        // The next marker: 0xFF (any fill bytes) then the marker code.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return Err(cut(b.len()));
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: restart markers, TEM, and a stray SOI.
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return Err(cut(b.len()));
        };
        i += len;
        if i > b.len() {
            return Err(cut(b.len()));
        }
        if marker == 0xDA {
            // Entropy-coded data up to the next real marker.
            loop {
                match b
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
                {
                    None => return Err(cut(b.len())),
                    Some(k) => i += k,
                }
                match b.get(i + 1) {
                    None => return Err(cut(b.len())),
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
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

    /// A JPEG cut anywhere, even just before its end-of-image marker, is reported as damaged
    /// (decoders alone fill the missing rows with grey and succeed); complete JPEGs decode,
    /// baseline or progressive, with restart markers, and with bytes after their end.
    #[test]
    fn a_cut_jpeg_is_undecodable_and_complete_ones_decode() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let mut variants = Vec::new();
        for (progressive, restart) in [(false, 0), (true, 0), (false, 2)] {
            let mut jpeg = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 90);
            enc.set_progressive(progressive);
            if restart > 0 {
                enc.set_restart_interval(restart);
            }
            enc.encode(img.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            variants.push(jpeg);
        }
        for jpeg in &variants {
            let whole = decode(jpeg, &DecodeLimits::default()).unwrap();
            assert_eq!(whole.dimensions(), (64, 48));
            let mut padded = jpeg.clone();
            padded.extend_from_slice(b"trailing bytes some cameras write");
            decode(&padded, &DecodeLimits::default()).unwrap();
            for keep in [jpeg.len() - 2, jpeg.len() * 3 / 4, jpeg.len() / 2, 200] {
                let err = decode(&jpeg[..keep], &DecodeLimits::default()).unwrap_err();
                assert_eq!(err.kind(), "undecodable", "cut at {keep}: {err}");
                assert!(err.to_string().contains("cut short"), "{err}");
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
