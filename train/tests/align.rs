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
