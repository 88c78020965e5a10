//! dlib's face-recognition ResNet, converted by `dmue_train::model::dlib` and run as our
//! `face-resnet` trunk, against dlib itself: on every reference chip (each face of the test
//! photos and its mirror image, cut by dlib's own `get_face_chip`), our 128-d descriptor equals
//! dlib-bin's to 1e-4, and a face is closer to its own mirror image than to anyone else.
//! Also: a truncated or corrupt file is an error that names the file, and leaves nothing
//! behind.
//!
//! Needs `models/dlib_face_recognition_resnet_model_v1.dat` (scripts/fetch-face-trunk.sh) and
//! `target/test-data/dlib-reference` (scripts/fetch-test-data.sh); scripts/test.sh runs both.

mod common;

use common::root;
use dmue_train::model::dlib;
use dmue_train::model::face_resnet::{Tail, Trunk};
use dmue_train::model::{Backbone, ModelConfig};
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

fn dat() -> PathBuf {
    root().join("models/dlib_face_recognition_resnet_model_v1.dat")
}

fn reference_dir() -> PathBuf {
    root().join("target/test-data/dlib-reference")
}

/// The files, or a panic that says how to get them (the suite fetches them first).
fn require(p: &Path) {
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-face-trunk.sh and scripts/fetch-test-data.sh",
        p.display()
    );
}

#[derive(serde::Deserialize)]
struct Entry {
    chip: String,
    photo: String,
    face: usize,
    mirror: bool,
    descriptor: Vec<f32>,
}

/// Our network from the converted file: trunk, `layer5`, and dlib's 128-d projection.
struct Net {
    _vs: nn::VarStore,
    trunk: Trunk,
    tail: Tail,
    descriptor: Tensor,
}

fn load(converted: &Path) -> Net {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone: Backbone::FaceResnet,
        ..Default::default()
    };
    let trunk = Trunk::new(&vs.root(), &cfg);
    let tail = Tail::new(&vs.root(), cfg.width());
    let mut file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(converted)
        .unwrap()
        .into_iter()
        .collect();
    let descriptor = file.remove("descriptor.weight").expect("descriptor.weight");
    let mut vars = vs.variables();
    assert_eq!(vars.len(), file.len(), "every converted tensor has a place");
    tch::no_grad(|| {
        for (name, t) in &file {
            let v = vars
                .get_mut(name)
                .unwrap_or_else(|| panic!("no variable {name}"));
            assert_eq!(v.size(), t.size(), "{name}");
            v.copy_(t);
        }
    });
    vs.freeze();
    Net {
        _vs: vs,
        trunk,
        tail,
        descriptor,
    }
}

impl Net {
    /// 150x150 chips `[N, 3, 150, 150]` (normalised) -> descriptors `[N, 128]`.
    fn describe(&self, xs: &Tensor) -> Tensor {
        let map = self.tail.forward_t(&self.trunk.forward_t(xs, false), false);
        map.mean_dim(&[2i64, 3][..], false, Kind::Float)
            .matmul(&self.descriptor.tr())
    }
}

fn convert_to_temp() -> (tempfile::TempDir, PathBuf) {
    require(&dat());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("face-resnet.safetensors");
    let report = dlib::convert(&dat(), &out).unwrap();
    assert_eq!(report.input_mean, dlib::INPUT_MEAN);
    assert_eq!(report.input_size, [150, 150]);
    (dir, out)
}

#[test]
fn descriptors_equal_dlibs_and_mirror_images_are_nearest() {
    let (_dir, converted) = convert_to_temp();
    require(&reference_dir().join("reference.json"));
    let entries: Vec<Entry> = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    assert!(entries.len() >= 20, "{} reference chips", entries.len());
    let net = load(&converted);
    // dlib's (pixel - mean) / 256 through the project's one input transform.
    let pre = dlib::preprocess(150, 150);
    let chips: Vec<Tensor> = entries
        .iter()
        .map(|e| {
            let img = image::open(reference_dir().join("chips").join(&e.chip))
                .unwrap()
                .to_rgb8();
            assert_eq!(img.dimensions(), (150, 150));
            Tensor::from_slice(&pre.eval_tensor(&img).unwrap()).view([3, 150, 150])
        })
        .collect();
    let ours = net.describe(&Tensor::stack(&chips, 0));
    let theirs = Tensor::from_slice(
        &entries
            .iter()
            .flat_map(|e| e.descriptor.clone())
            .collect::<Vec<f32>>(),
    )
    .view([entries.len() as i64, 128]);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    println!(
        "{} chips: max |ours - dlib| = {diff:.2e} (descriptor entries up to {:.3})",
        entries.len(),
        theirs.abs().max().double_value(&[])
    );
    assert!(diff <= 1e-4, "max abs diff {diff} > 1e-4");

    // Identity: every face's pair (itself, its mirror) is closer than any two people.
    let d = |i: usize, j: usize| {
        (ours.get(i as i64) - ours.get(j as i64))
            .norm()
            .double_value(&[])
    };
    let (mut same, mut other) = (0f64, f64::INFINITY);
    for i in 0..entries.len() {
        for j in i + 1..entries.len() {
            let (a, b) = (&entries[i], &entries[j]);
            if (&a.photo, a.face) == (&b.photo, b.face) {
                assert_ne!(a.mirror, b.mirror);
                same = same.max(d(i, j));
            } else {
                other = other.min(d(i, j));
            }
        }
    }
    println!("mirror pairs <= {same:.3} apart, different people >= {other:.3}");
    assert!(
        same < other,
        "a mirror pair {same} is farther than two people {other}"
    );
}

#[test]
fn truncated_or_corrupt_files_are_named_errors_that_leave_nothing() {
    require(&dat());
    let data = std::fs::read(dat()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.dat",
            data[..data.len() / 2].to_vec(),
            "truncated",
        ),
        ("empty.dat", vec![], "truncated"),
        ("extra.dat", [&data[..], b"x"].concat(), "1 bytes left"),
        (
            "not-dlib.dat",
            b"\x01\x01\x01\x05hello".to_vec(),
            "expected one of",
        ),
        {
            // The first convolution's version string, "con_4", made "cox_4".
            let mut d = data.clone();
            let at = d.windows(5).position(|w| w == b"con_4").unwrap();
            d[at + 2] = b'x';
            ("corrupt-version.dat", d, "found 'cox_4'")
        },
        {
            // A weight of the first convolution made NaN: its floats start 16 bytes after the
            // version string (tensor version 2 bytes, dimensions 3 + 3 x 2), this is the 7th.
            let mut d = data.clone();
            let at = d.windows(5).position(|w| w == b"con_4").unwrap() + 16 + 4 * 6;
            d[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            ("nan.dat", d, "NaN")
        },
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", dlib::convert(&path, &out).unwrap_err());
        assert!(e.contains(name), "{name}: {e}");
        assert!(e.contains(want), "{name}: wanted '{want}' in: {e}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.starts_with("out"))
            .collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}
