//! Training's evaluation batches and deployment's `Preprocess::eval_tensor` produce the same
//! tensor for the same crop: the two sides share one implementation, and this proves it.
//! That implementation is checked against Pillow and NumPy in
//! deploy/tests/preprocess_golden.rs.

use dmue_deploy::preprocess::Preprocess;
use dmue_train::data::loader::{eval_batch, SplitImages};
use dmue_train::data::manifest::{Dataset, Split};
use dmue_train::synth::{generate, SynthOptions};

#[test]
fn train_eval_batches_equal_deploy_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        train: 3,
        test: 4,
        size: 96,
        seed: 11,
        ..Default::default()
    };
    generate(&opts, dir.path()).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    for pre in [
        Preprocess {
            resize: 80,
            crop: 64,
            ..Default::default()
        },
        Preprocess {
            resize: 96,
            crop: 90,
            mean: [0.4, 0.5, 0.6],
            std: [0.2, 0.3, 0.25],
        },
    ] {
        let split = SplitImages::load(&ds, Split::Test, &pre).unwrap();
        let batch = eval_batch(&split, &[0, 1, 2, 3], &pre);
        let per = (3 * pre.crop * pre.crop) as usize;
        for (k, &row) in split.rows.iter().enumerate() {
            let img = image::open(dir.path().join(&ds.rows[row].path))
                .unwrap()
                .to_rgb8();
            let deployed = pre.eval_tensor(&img).unwrap();
            assert_eq!(
                &batch.images[k * per..(k + 1) * per],
                deployed.as_slice(),
                "image {k}"
            );
        }
    }
}
