//! Alignment on synthetic photos with known landmarks and pose: aligning a rotated, scaled,
//! shifted face gives the crop that aligning the same face rendered in canonical pose gives
//! (landmarks within 1 px at 256x256), and undoes the in-plane rotation.

use dmue_deploy::face::align::{align, Similarity};
use dmue_deploy::face::ALIGNED_SIZE;
use dmue_train::synth::{generate, Mode, PhotoRow, SynthOptions, PHOTOS_FILE};

#[test]
fn photo_faces_align_to_the_canonical_crop() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        train: 0,
        test: 6,
        mode: Mode::Photo,
        seed: 4,
        ..Default::default()
    };
    generate(&opts, dir.path()).unwrap();
    let rows: Vec<PhotoRow> = std::fs::read_to_string(dir.path().join(PHOTOS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut faces = 0;
    for row in &rows {
        let photo = image::open(dir.path().join(&row.path)).unwrap().to_rgb8();
        for face in &row.faces {
            faces += 1;
            let t = face.truth.pose.transform();
            let pose = Similarity {
                a: t.sx as f64,
                b: t.ky as f64,
                tx: t.tx as f64,
                ty: t.ty as f64,
            };
            // The same face's landmarks in canonical pose (256-pixel frame, centre 128, 128).
            let canonical = face.landmarks.map(|p| pose.inverse().unwrap().apply(p));
            let reference =
                Similarity::fit(&canonical, &dmue_deploy::face::template(ALIGNED_SIZE)).unwrap();
            let (crop, fitted) = align(&photo, &face.landmarks, ALIGNED_SIZE).unwrap();
            for (p, c) in face.landmarks.iter().zip(&canonical) {
                let (got, want) = (fitted.apply(*p), reference.apply(*c));
                let d = (got[0] - want[0]).hypot(got[1] - want[1]);
                assert!(d < 1.0, "{}: landmark off by {d} px", row.path);
            }
            // fitted = reference o pose^-1: the photo's rotation is undone.
            let expected = reference.angle_deg() - face.truth.pose.angle_deg as f64;
            assert!(
                (fitted.angle_deg() - expected).abs() < 0.5,
                "{} vs {expected}",
                fitted.angle_deg()
            );
            assert_eq!((crop.width(), crop.height()), (256, 256));
        }
    }
    assert!(faces >= 6, "{faces}");
}

/// Pixels, against independent math: on an image whose channels are linear functions of the
/// pixel-centre position, bilinear sampling is exact, so every crop pixel must equal the
/// function at `T^-1(crop pixel centre)` (to within u8 rounding, 1 unit). The slope (4 units
/// per pixel) makes a half-pixel convention error (2 units), a transposed or inverted transform
/// or a swapped channel fail.
#[test]
fn aligned_crop_pixels_sample_the_photo_where_the_transform_says() {
    let f = |x: f64, y: f64| [4.0 * x, 4.0 * y, 128.0 + 2.0 * (x - y)];
    let side = 62u32;
    let photo = image::RgbImage::from_fn(side, side, |i, j| {
        let v = f(i as f64 + 0.5, j as f64 + 0.5);
        image::Rgb(v.map(|c| c.round() as u8))
    });
    // A face rotated by 20 degrees: the crop's template landmarks mapped into the photo.
    let size = 40u32;
    let (s, th) = (0.9f64, 20f64.to_radians());
    let to_photo = Similarity {
        a: s * th.cos(),
        b: s * th.sin(),
        tx: 12.0,
        ty: 5.0,
    };
    let landmarks = dmue_deploy::face::template(size).map(|p| to_photo.apply(p));
    let (crop, t) = align(&photo, &landmarks, size).unwrap();
    let inv = t.inverse().unwrap();
    let mut checked = 0;
    for (qx, qy, px) in crop.enumerate_pixels() {
        let p = inv.apply([qx as f32 + 0.5, qy as f32 + 0.5]);
        let (x, y) = (p[0] as f64, p[1] as f64);
        // Only where all four bilinear neighbours lie inside the photo.
        if x < 1.0 || y < 1.0 || x > side as f64 - 1.0 || y > side as f64 - 1.0 {
            continue;
        }
        let want = f(x, y);
        for k in 0..3 {
            assert!(
                (px[k] as f64 - want[k]).abs() <= 1.0,
                "crop ({qx}, {qy}) channel {k}: {} vs {:.2} at photo ({x:.2}, {y:.2})",
                px[k],
                want[k]
            );
        }
        checked += 1;
    }
    assert!(checked > 1000, "{checked}");
    // The fitted transform is the inverse of the one that placed the face.
    let back = t.apply(to_photo.apply([7.0, 30.0]));
    assert!((back[0] - 7.0).abs() < 1e-3 && (back[1] - 30.0).abs() < 1e-3);
}
