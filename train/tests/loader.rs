//! The three ways of holding a split (memory, packed cache, stream) give the same batches, the
//! packed cache is reused until the manifest changes, and the optional augmentations do what
//! they say.

use dmue_deploy::preprocess::Preprocess;
use dmue_train::data::loader::{eval_batch, train_batch, Augment, LoaderKind, SplitImages};
use dmue_train::data::manifest::{Dataset, Split};
use dmue_train::synth::{self, SynthOptions};
use rand::SeedableRng;

fn dataset(dir: &std::path::Path) -> Dataset {
    let opts = SynthOptions {
        train: 30,
        test: 6,
        size: 48,
        seed: 4,
        ..Default::default()
    };
    synth::generate(&opts, dir).unwrap();
    // One unreadable image: every loader must skip it the same way.
    std::fs::write(dir.join("images/train/000007.png"), b"not a png").unwrap();
    Dataset::open(dir).unwrap()
}

fn pre() -> Preprocess {
    Preprocess {
        resize: 40,
        crop: 32,
        ..Default::default()
    }
}

fn batch(data: &SplitImages, aug: &Augment) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let idx: Vec<usize> = (0..data.len()).rev().collect();
    train_batch(data, &idx, &pre(), aug, &mut rng).images
}

#[test]
fn memory_packed_and_stream_give_identical_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let aug = Augment {
        hflip: true,
        ..Default::default()
    };
    let memory = SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Memory).unwrap();
    assert_eq!(memory.len(), 29);
    assert_eq!(memory.skipped.len(), 1);
    let want = batch(&memory, &aug);
    let want_eval = eval_batch(&memory, &[0, 5, 9], &pre()).images;
    for kind in [LoaderKind::Packed, LoaderKind::Packed, LoaderKind::Stream] {
        let other = SplitImages::open(&ds, Split::Train, &pre(), kind).unwrap();
        assert_eq!(other.kind, kind);
        assert_eq!(other.rows, memory.rows, "{kind:?}");
        assert_eq!(other.labels, memory.labels);
        assert_eq!(other.skipped, memory.skipped);
        assert!(batch(&other, &aug) == want, "{kind:?} batch differs");
        assert!(eval_batch(&other, &[0, 5, 9], &pre()).images == want_eval);
    }
    // Small data under `auto` stays in memory.
    let auto = SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Auto).unwrap();
    assert_eq!(auto.kind, LoaderKind::Memory);
}

#[test]
fn the_packed_cache_is_reused_until_the_manifest_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let bin = SplitImages::packed_path(&ds, Split::Train, 40);
    SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Packed).unwrap();
    let built = std::fs::metadata(&bin).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Packed).unwrap();
    assert_eq!(
        std::fs::metadata(&bin).unwrap().modified().unwrap(),
        built,
        "rebuilt without cause"
    );
    // A rewritten manifest (one row fewer) invalidates it.
    let manifest = tmp.path().join("manifest.jsonl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let fewer: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&manifest, fewer.join("\n") + "\n").unwrap();
    let ds = Dataset::open(tmp.path()).unwrap();
    let again = SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Packed).unwrap();
    assert_eq!(again.len(), 28);
    assert_ne!(std::fs::metadata(&bin).unwrap().modified().unwrap(), built);
}

#[test]
fn noise_and_erasing_do_what_they_say() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let data = SplitImages::open(&ds, Split::Train, &pre(), LoaderKind::Memory).unwrap();
    let plain = batch(&data, &Augment::default());
    // Noise with std 0.1: the differences have that standard deviation and mean about 0.
    let noisy = batch(
        &data,
        &Augment {
            gaussian_noise: 0.1,
            ..Default::default()
        },
    );
    let d: Vec<f64> = noisy
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(
        mean.abs() < 0.005 && (std - 0.1).abs() < 0.005,
        "mean {mean}, std {std}"
    );
    // Erasing with p = 1: each image gets one zeroed rectangle of 2-33 % of its area, the
    // same in all three channels, and the rest is untouched.
    let erased = batch(
        &data,
        &Augment {
            random_erasing: 1.0,
            ..Default::default()
        },
    );
    let per = 3 * 32 * 32;
    for (e, p) in erased.chunks(per).zip(plain.chunks(per)) {
        let changed: Vec<usize> = (0..32 * 32).filter(|&k| e[k] != p[k]).collect();
        let zeroed = (0..32 * 32)
            .filter(|&k| e[k] == 0.0 && e[k + 1024] == 0.0 && e[k + 2048] == 0.0)
            .count();
        assert!(changed.iter().all(|&k| e[k] == 0.0));
        let share = zeroed as f64 / 1024.0;
        assert!((0.015..=0.34).contains(&share), "erased share {share}");
    }
    // Both draw from the batch's seed: the same call gives the same batch.
    assert!(
        batch(
            &data,
            &Augment {
                random_erasing: 1.0,
                gaussian_noise: 0.1,
                hflip: true,
                erasing_max_area: None,
            }
        ) == batch(
            &data,
            &Augment {
                random_erasing: 1.0,
                gaussian_noise: 0.1,
                hflip: true,
                erasing_max_area: None,
            }
        )
    );
}
