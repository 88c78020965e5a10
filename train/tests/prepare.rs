//! `dmue-train prepare` on tiny fixtures in each supported format, generated here from
//! rendered synthetic photos (whose true landmarks and labels are known): every format
//! prepares and then trains; the no-face / several-faces / unreadable rules, resume, label
//! flips and the landmark sources behave as documented.

mod common;

use common::{ok, run, text};
use dmue_train::data::manifest::{Dataset, Split};
use dmue_train::synth::expr::CLASSES;
use dmue_train::synth::PhotoRow;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

const DETECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/retinaface-mnet025.onnx"
);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Synthetic photos rendered once per test binary: (directory, rows).
fn photos(max_faces: usize) -> &'static (PathBuf, Vec<PhotoRow>) {
    static ONE: OnceLock<(PathBuf, Vec<PhotoRow>)> = OnceLock::new();
    static MANY: OnceLock<(PathBuf, Vec<PhotoRow>)> = OnceLock::new();
    let cell = if max_faces == 1 { &ONE } else { &MANY };
    cell.get_or_init(|| {
        let dir = common::fixture_dir(&format!("prepare-test-{max_faces}"));
        ok(&[
            "synth",
            "--mode",
            "photo",
            "--out",
            s(&dir),
            "--train",
            "35",
            "--test",
            "14",
            "--seed",
            "5",
            "--max-faces",
            &max_faces.to_string(),
        ]);
        let rows = std::fs::read_to_string(dir.join("photos.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (dir, rows)
    })
}

fn prepare(format: &str, root: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "prepare",
        "--format",
        format,
        "--root",
        s(root),
        "--out",
        s(out),
        "--size",
        "64",
        "--detector",
        DETECTOR,
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("prepare-report.json")).unwrap())
        .unwrap()
}

fn count(report: &Value, kind: &str) -> u64 {
    report["counts"][kind].as_u64().unwrap_or(0)
}

/// One epoch of a width-4 ResNet-18 on the prepared data: `fit` reads every prepared crop
/// (its evaluation counts each image of the split it evaluates, none skipped) and the loss is
/// finite.
fn trains(data: &Path) {
    let run_dir = data.with_extension("run");
    let mut args = vec![
        "fit",
        "--data",
        s(data),
        "--out",
        s(&run_dir),
        "--device",
        "cpu",
        "--epochs",
        "1",
    ];
    args.extend_from_slice(&common::TINY);
    ok(&args);
    assert!(run_dir.join("checkpoints/latest").exists());
    let ds = Dataset::open(data).unwrap();
    let mut evaluated = 0;
    for (split, name) in [(Split::Test, "test"), (Split::Val, "val")] {
        let Ok(text) = std::fs::read_to_string(run_dir.join(format!("eval-{name}.json"))) else {
            continue;
        };
        let eval: Value = serde_json::from_str(&text).unwrap();
        let rows = ds.rows.iter().filter(|r| r.split == split).count();
        assert_eq!(eval["images"], rows, "{name} split of {}", data.display());
        assert_eq!(eval["skipped"], 0, "{name} split of {}", data.display());
        evaluated += 1;
    }
    assert!(
        evaluated > 0,
        "no evaluation written for {}",
        data.display()
    );
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert!(
        first["loss"].as_f64().is_some_and(f64::is_finite),
        "{first}"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// The single-face photos as (split, class index, path, true landmarks).
fn single_faces() -> Vec<(Split, usize, PathBuf, [[f32; 2]; 5])> {
    let (dir, rows) = photos(1);
    rows.iter()
        .map(|r| {
            assert_eq!(r.faces.len(), 1);
            (
                r.split,
                r.faces[0].label,
                dir.join(&r.path),
                r.faces[0].landmarks,
            )
        })
        .collect()
}

fn manifest(out: &Path) -> Dataset {
    Dataset::open(out).unwrap()
}

#[test]
fn folder_format_applies_the_no_face_multi_face_and_unreadable_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raw");
    let faces = single_faces();
    for (i, (split, label, path, _)) in faces.iter().enumerate() {
        copy(
            path,
            &root.join(format!("{split}/{}/{i:03}.png", CLASSES[*label])),
        );
    }
    std::fs::write(root.join("train/happy/broken.jpg"), b"not an image").unwrap();
    image::RgbImage::from_pixel(320, 240, image::Rgb([190, 190, 190]))
        .save(root.join("train/neutral/blank.png"))
        .unwrap();
    let (many_dir, many) = photos(3);
    let group = many
        .iter()
        .find(|r| r.faces.len() >= 2)
        .expect("a group photo");
    copy(
        &many_dir.join(&group.path),
        &root.join("train/anger/group.png"),
    );

    let out = tmp.path().join("aligned");
    let o = prepare("folder", &root, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(count(&r, "unreadable"), 1, "{r}");
    assert!(count(&r, "no_face") >= 1, "{r}");
    assert!(count(&r, "multi_face") >= 1, "{r}");
    let ds = manifest(&out);
    let mut sorted = CLASSES.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(ds.info.classes, sorted, "folder names, sorted");
    assert_eq!(ds.info.template_id, dmue_deploy::face::TEMPLATE_ID);
    assert_eq!(ds.info.image_size, 64);
    // The detector finds most rendered faces; every row has a crop of the requested size.
    assert!(
        ds.rows.len() * 10 >= faces.len() * 7,
        "{} of {}",
        ds.rows.len(),
        faces.len()
    );
    for row in &ds.rows {
        let img = image::open(out.join(&row.path)).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        let class = &ds.info.classes[row.label];
        assert!(row.source.as_ref().unwrap().contains(&format!("/{class}/")));
    }
    assert!(ds.rows.iter().any(|r| r.split == Split::Test));
    assert!(ds
        .rows
        .iter()
        .any(|r| r.source.as_deref() == Some("train/anger/group.png")));

    // --multi-face skip drops the group photo instead.
    let out2 = tmp.path().join("aligned-skip");
    let o = prepare(
        "folder",
        &root,
        &out2,
        &["--multi-face", "skip", "--no-face", "whole"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ds2 = manifest(&out2);
    assert!(!ds2
        .rows
        .iter()
        .any(|r| r.source.as_deref() == Some("train/anger/group.png")));
    assert!(ds2
        .rows
        .iter()
        .any(|r| r.source.as_deref() == Some("train/neutral/blank.png")));
    assert!(count(&report(&out2), "whole_image") >= 1);
    trains(&out);
}

/// --group-by keeps every image of one person in one split: file names carry the subject
/// (CK+-style `S003_...`), and no subject may appear in both train and test.
#[test]
fn group_by_keeps_each_subject_in_one_split() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raw");
    let faces = single_faces();
    let n = faces.len().min(48);
    for (i, (_, label, path, _)) in faces.iter().take(n).enumerate() {
        // 8 subjects, each with images in several classes.
        copy(
            path,
            &root.join(format!("{}/S{:03}_{i:03}.png", CLASSES[*label], i % 8)),
        );
    }
    let subject = |source: &str| source.split('/').nth(1).unwrap()[..4].to_string();
    let out = tmp.path().join("aligned");
    let args = ["--test-share", "0.3", "--group-by", "(S[0-9]+)_"];
    let o = prepare("folder", &root, &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    let mut split_of: std::collections::BTreeMap<String, Split> = Default::default();
    for row in &ds.rows {
        let s = subject(row.source.as_deref().unwrap());
        let first = *split_of.entry(s.clone()).or_insert(row.split);
        assert_eq!(first, row.split, "subject {s} is in two splits");
    }
    let test = split_of.values().filter(|s| **s == Split::Test).count();
    assert!((1..8).contains(&test), "{test} of 8 subjects in test");

    // A name the expression does not match is an error that names it.
    std::fs::copy(&faces[0].2, root.join("happy/nobody.png")).unwrap();
    let o = prepare("folder", &root, &tmp.path().join("bad"), &args);
    assert!(!o.status.success());
    assert!(text(&o).contains("nobody.png"), "{}", text(&o));
}

#[test]
fn synth_photos_with_given_landmarks_resume_and_flip_labels() {
    let (dir, rows) = photos(3);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("given");
    let args = ["--landmarks", "given", "--flip-rate", "0.25", "--seed", "7"];
    let o = prepare("synth", dir, &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    let n_faces: usize = rows.iter().map(|r| r.faces.len()).sum();
    assert_eq!(ds.rows.len(), n_faces, "given landmarks lose no face");
    // Crops are cut so that the true landmarks land near the template (expressions move the
    // mouth, so not exactly on it).
    let template = dmue_deploy::face::template(64);
    for row in &ds.rows {
        for (p, t) in row.landmarks.unwrap().iter().zip(template) {
            assert!((p[0] - t[0]).hypot(p[1] - t[1]) < 5.0, "{p:?} vs {t:?}");
        }
    }
    // The flips: a quarter of the training faces, each recorded in the row and the list.
    let flips: Vec<Value> = std::fs::read_to_string(out.join("label-flips.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train = ds.split(Split::Train).count();
    assert_eq!(flips.len(), (train as f32 * 0.25).round() as usize);
    for f in &flips {
        let row = ds.rows.iter().find(|r| r.path == f["path"]).unwrap();
        assert_eq!(
            row.original_label,
            Some(f["from"].as_u64().unwrap() as usize)
        );
        assert_eq!(row.label, f["to"].as_u64().unwrap() as usize);
        assert_ne!(row.label, row.original_label.unwrap());
    }
    assert!(ds.split(Split::Test).all(|r| r.original_label.is_none()));
    let manifest_bytes = std::fs::read(out.join("manifest.jsonl")).unwrap();

    // Interrupt: keep the journal's header and 10 images plus a torn line, lose the manifest.
    let journal = out.join("prepare-journal.jsonl");
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(&journal).unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    let mut kept = lines[..11].join("\n");
    kept.push_str("\n{\"key\":\"train/0000");
    std::fs::write(&journal, kept).unwrap();
    std::fs::remove_file(out.join("manifest.jsonl")).unwrap();
    let o = prepare("synth", dir, &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&out)["resumed"], 10);
    assert_eq!(
        std::fs::read(out.join("manifest.jsonl")).unwrap(),
        manifest_bytes
    );

    // Other options on the same output are refused, naming what differs.
    let o = prepare("synth", dir, &out, &["--landmarks", "given", "--seed", "8"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("flip_rate"), "{}", text(&o));
}

#[test]
fn synth_photos_through_the_detector_match_every_face_to_its_label() {
    let (dir, rows) = photos(3);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("detected");
    let o = prepare("synth", dir, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    let n_faces: usize = rows.iter().map(|r| r.faces.len()).sum();
    let ds = manifest(&out);
    assert_eq!(
        ds.rows.len() as u64 + count(&r, "missed"),
        n_faces as u64,
        "{r}"
    );
    assert!(
        ds.rows.len() * 10 >= n_faces * 7,
        "{} of {n_faces}",
        ds.rows.len()
    );
    // Detected landmarks sit near the true ones (mean error under 20 % of the eye distance),
    // so each crop carries the label of the face it shows.
    assert!(r["landmark_nme_mean"].as_f64().unwrap() < 0.2, "{r}");
    trains(&out);
}

#[test]
fn csv_format_names_classes_and_rejects_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raw");
    let mut csv = String::from("path,label,split\n");
    for (i, (split, label, path, _)) in single_faces().iter().enumerate() {
        copy(path, &root.join(format!("img/{i}.png")));
        csv += &format!("img/{i}.png,{},{split}\n", CLASSES[*label]);
    }
    csv += "img/0.png,bored,train\n";
    std::fs::write(root.join("labels.csv"), &csv).unwrap();
    let out = tmp.path().join("aligned");
    let classes = CLASSES.join(",");
    let o = prepare("csv", &root, &out, &["--classes", &classes]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count(&report(&out), "rejected"), 1);
    assert_eq!(
        manifest(&out).info.classes,
        CLASSES.map(String::from).to_vec()
    );
    trains(&out);

    // Numeric labels need the class names.
    let numeric = root.join("numeric.csv");
    std::fs::write(&numeric, "path,label\nimg/0.png,3\nimg/1.png,1\n").unwrap();
    let o = prepare("csv", &numeric, &tmp.path().join("n"), &[]);
    assert!(
        !o.status.success() && text(&o).contains("--classes"),
        "{}",
        text(&o)
    );
}

/// Index of our synthetic class in another dataset's label list, by meaning (the first
/// three letters agree in every dataset here).
fn same_class(ours: usize, theirs: &[&str]) -> usize {
    let stem = &CLASSES[ours][..3];
    theirs
        .iter()
        .position(|t| t.to_ascii_lowercase().starts_with(stem))
        .unwrap_or_else(|| panic!("{} not in {theirs:?}", CLASSES[ours]))
}

#[test]
fn rafdb_original_with_its_landmarks_and_aligned_crops() {
    use dmue_train::prepare::formats::RAFDB_CLASSES;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("basic");
    let mut list = String::new();
    for (i, (split, label, path, lm)) in single_faces().iter().enumerate() {
        let stem = format!("{split}_{:05}", i + 1);
        let img = image::open(path).unwrap().to_rgb8();
        let p = root.join(format!("Image/original/{stem}.jpg"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(&p).unwrap();
        let (crop, _) = dmue_deploy::face::align::align(&img, lm, 100).unwrap();
        let a = root.join(format!("Image/aligned/{stem}_aligned.jpg"));
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        crop.save(&a).unwrap();
        let mut attri: String = lm.iter().map(|p| format!("{}\t{}\n", p[0], p[1])).collect();
        attri += "0\n0\n2\n";
        let m = root.join(format!("Annotation/manual/{stem}_manu_attri.txt"));
        std::fs::create_dir_all(m.parent().unwrap()).unwrap();
        std::fs::write(m, attri).unwrap();
        list += &format!("{stem}.jpg {}\n", same_class(*label, &RAFDB_CLASSES) + 1);
    }
    list += "train_99999.jpg 9\n";
    std::fs::create_dir_all(root.join("EmoLabel")).unwrap();
    std::fs::write(root.join("EmoLabel/list_patition_label.txt"), list).unwrap();

    let out = tmp.path().join("original");
    let o = prepare("rafdb", &root, &out, &["--landmarks", "given"]);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    assert_eq!(ds.info.classes, RAFDB_CLASSES.map(String::from).to_vec());
    assert_eq!(ds.rows.len(), single_faces().len());
    assert_eq!(count(&report(&out), "rejected"), 1);
    trains(&out);

    let out = tmp.path().join("aligned");
    let o = prepare("rafdb", &root, &out, &["--rafdb-images", "aligned"]);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    assert_eq!(ds.info.template_id, "rafdb-aligned-100");
    assert_eq!(ds.rows.len(), single_faces().len());
}

#[test]
fn affectnet_uses_its_boxes_and_landmarks_and_drops_codes_8_to_10() {
    use dmue_train::prepare::formats::AFFECTNET_CLASSES;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("AffectNet");
    let header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n";
    let (mut train, mut val) = (header.to_string(), String::new());
    for (i, (split, label, path, lm)) in single_faces().iter().enumerate() {
        let rel = format!("{}/{i}.jpg", i % 3);
        let p = root.join("Manually_Annotated_Images").join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::open(path).unwrap().to_rgb8().save(&p).unwrap();
        // 68 points whose eye groups, nose tip and mouth corners are the true 5.
        let mut pts = vec![lm[2]; 68];
        pts[36..42].fill(lm[0]);
        pts[42..48].fill(lm[1]);
        pts[48] = lm[3];
        pts[54] = lm[4];
        let xs: Vec<f32> = lm.iter().map(|p| p[0]).collect();
        let ys: Vec<f32> = lm.iter().map(|p| p[1]).collect();
        let (x0, x1) = (
            xs.iter().cloned().fold(f32::MAX, f32::min),
            xs.iter().cloned().fold(0.0, f32::max),
        );
        let (y0, y1) = (
            ys.iter().cloned().fold(f32::MAX, f32::min),
            ys.iter().cloned().fold(0.0, f32::max),
        );
        let (w, h) = (x1 - x0, y1 - y0);
        let flat: Vec<String> = pts
            .iter()
            .flat_map(|p| [p[0].to_string(), p[1].to_string()])
            .collect();
        let line = format!(
            "{rel},{},{},{},{},{},{},0.1,0.2\n",
            x0 - 0.6 * w,
            y0 - 1.2 * h,
            2.2 * w,
            2.6 * h,
            flat.join(";"),
            same_class(*label, &AFFECTNET_CLASSES)
        );
        if *split == Split::Train {
            train += &line;
        } else {
            val += &line;
        }
    }
    train += "0/0.jpg,1,1,10,10,,9,0,0\n0/0.jpg,1,1,10,10,,7,0,0\n";
    std::fs::write(root.join("training.csv"), train).unwrap();
    std::fs::write(root.join("validation.csv"), val).unwrap();

    let out = tmp.path().join("aligned");
    let o = prepare("affectnet", &root, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    let ds = manifest(&out);
    assert_eq!(ds.info.classes.len(), 7);
    assert!(r["notes"].to_string().contains("code 9 (Uncertain)"), "{r}");
    assert!(r["notes"].to_string().contains("code 7 (Contempt"), "{r}");
    assert!(ds.rows.len() * 10 >= single_faces().len() * 7, "{r}");
    assert!(r["landmark_nme_mean"].as_f64().unwrap() < 0.2);
    trains(&out);

    let out8 = tmp.path().join("given8");
    let o = prepare(
        "affectnet",
        &root,
        &out8,
        &["--landmarks", "given", "--affectnet-classes", "8"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ds8 = manifest(&out8);
    assert_eq!(ds8.info.classes.len(), 8);
    // The Contempt row is kept (its image is prepared, with no landmarks it is reported).
    assert_eq!(count(&report(&out8), "no_landmarks"), 1);
}

#[test]
fn ferplus_takes_the_majority_vote_and_keeps_the_votes() {
    use dmue_train::prepare::formats::FERPLUS_CLASSES;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fer");
    std::fs::create_dir_all(&root).unwrap();
    let mut old = String::from("emotion,pixels,Usage\n");
    let mut new = String::from(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n",
    );
    let faces = single_faces();
    for (i, (split, label, path, lm)) in faces.iter().enumerate() {
        let img = image::open(path).unwrap().to_rgb8();
        let (crop, _) = dmue_deploy::face::align::align(&img, lm, 48).unwrap();
        let grey = image::DynamicImage::ImageRgb8(crop).to_luma8();
        let px: Vec<String> = grey.as_raw().iter().map(|v| v.to_string()).collect();
        let usage = if *split == Split::Train {
            "Training"
        } else {
            "PrivateTest"
        };
        old += &format!("0,{},{usage}\n", px.join(" "));
        let mut votes = [0u32; 10];
        votes[same_class(*label, &FERPLUS_CLASSES)] = 7;
        votes[(same_class(*label, &FERPLUS_CLASSES) + 1) % 8] = 3;
        if i == 0 {
            votes = [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]; // a tie: dropped
        }
        let name = if i == 1 {
            String::new()
        } else {
            format!("fer{i:07}.png")
        };
        let v: Vec<String> = votes.iter().map(|v| v.to_string()).collect();
        new += &format!("{usage},{name},{}\n", v.join(","));
    }
    std::fs::write(root.join("fer2013.csv"), old).unwrap();
    std::fs::write(root.join("fer2013new.csv"), new).unwrap();

    let out = tmp.path().join("aligned");
    let o = prepare("ferplus", &root, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    assert_eq!(ds.info.classes, FERPLUS_CLASSES.map(String::from).to_vec());
    assert_eq!(ds.info.template_id, "fer2013-48");
    assert_eq!(ds.rows.len(), faces.len() - 2);
    for row in &ds.rows {
        let v = row.votes.as_ref().unwrap();
        assert!((v[row.label] - 0.7).abs() < 1e-6 && (v.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let notes = report(&out)["notes"].to_string();
    assert!(
        notes.contains("tie") && notes.contains("removed by FERPlus"),
        "{notes}"
    );
    trains(&out);
}

#[test]
fn sfew_reads_train_and_val_folders() {
    use dmue_train::prepare::formats::SFEW_CLASSES;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("SFEW_2");
    for (i, (split, label, path, _)) in single_faces().iter().enumerate() {
        let dir = if *split == Split::Train {
            "Train"
        } else {
            "Val"
        };
        let class = SFEW_CLASSES[same_class(*label, &SFEW_CLASSES)];
        copy(path, &root.join(format!("{dir}/{class}/{i}.png")));
    }
    let out = tmp.path().join("aligned");
    let o = prepare("sfew", &root, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ds = manifest(&out);
    assert_eq!(ds.info.classes, SFEW_CLASSES.map(String::from).to_vec());
    assert!(ds.split(Split::Test).count() > 0);
    trains(&out);
}

/// Training and serving cut a face the same way: a crop `prepare` wrote and the crop
/// dmue-serve's pipeline cuts from the same photo, at the size the exported model card
/// records, are the same pixels, so the classifier sees in production what it saw in training.
#[test]
fn prepared_and_served_crops_of_a_face_are_identical() {
    let (dir, _) = photos(1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("detected");
    let o = prepare("synth", dir, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    trains(&out);
    let run_dir = out.with_extension("run");
    ok(&["export", s(&run_dir)]);
    let card = dmue_deploy::model_card::ModelCard::from_onnx(&run_dir.join("target.onnx")).unwrap();
    assert_eq!(card.aligned_size, 64, "prepare --size 64");
    let mut detector = dmue_deploy::face::detect::Detector::load(
        Path::new(DETECTOR),
        dmue_deploy::engine::EngineKind::Tract,
        1,
        Default::default(),
    )
    .unwrap();
    let ds = manifest(&out);
    assert!(ds.rows.len() >= 20, "{} crops", ds.rows.len());
    for row in &ds.rows {
        let trained = image::open(out.join(&row.path)).unwrap().to_rgb8();
        let bytes = std::fs::read(dir.join(row.source.as_ref().unwrap())).unwrap();
        let photo = dmue_deploy::image_io::decode(&bytes, &Default::default()).unwrap();
        let served =
            dmue_deploy::pipeline::face_crops(&photo, Some(&mut detector), card.aligned_size)
                .unwrap();
        let same = served.iter().find(|f| f.crop == trained);
        assert!(
            same.is_some(),
            "{}: none of the {} served crops has the prepared crop's pixels",
            row.path,
            served.len()
        );
        // And so the classifier's input tensors are equal too.
        assert_eq!(
            card.preprocess.eval_tensor(&same.unwrap().crop).unwrap(),
            card.preprocess.eval_tensor(&trained).unwrap()
        );
    }
}

/// Three parts cut separately (`--shard I/3`, as an array job's tasks would) and merged give
/// byte for byte the dataset of one run: the manifest, the flips and every crop. The merge
/// refuses a missing part, a part given twice, an incomplete part and a part made with other
/// options.
#[test]
fn shards_merged_equal_one_run_and_bad_part_sets_are_refused() {
    let (dir, _) = photos(3);
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--landmarks", "given", "--flip-rate", "0.25", "--seed", "7"];
    let whole = tmp.path().join("whole");
    let o = prepare("synth", dir, &whole, &args);
    assert!(o.status.success(), "{}", text(&o));

    let parts: Vec<PathBuf> = (0..3)
        .map(|i| tmp.path().join(format!("part{i}")))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let shard = format!("{i}/3");
        let mut a = args.to_vec();
        a.extend(["--shard", shard.as_str()]);
        let o = prepare("synth", dir, part, &a);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(&format!("part {i}/3")), "{}", text(&o));
        assert!(
            !part.join("manifest.jsonl").exists(),
            "a part has no manifest"
        );
    }
    let merge = |out: &Path, dirs: &[&PathBuf], extra: &[&str]| {
        let mut a = args.to_vec();
        a.extend(extra);
        a.push("--merge");
        a.extend(dirs.iter().map(|p| s(p)));
        prepare("synth", dir, out, &a)
    };
    let merged = tmp.path().join("merged");
    let o = merge(&merged, &[&parts[2], &parts[0], &parts[1]], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for file in ["manifest.jsonl", "label-flips.jsonl", "dataset.json"] {
        assert_eq!(
            std::fs::read(whole.join(file)).unwrap(),
            std::fs::read(merged.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let ds = manifest(&whole);
    for row in &ds.rows {
        assert_eq!(
            std::fs::read(whole.join(&row.path)).unwrap(),
            std::fs::read(merged.join(&row.path)).unwrap(),
            "{} differs",
            row.path
        );
    }

    let refused = |o: Output, want: &str| {
        assert!(!o.status.success(), "accepted; wanted {want:?}");
        assert!(text(&o).contains(want), "wanted {want:?} in:\n{}", text(&o));
    };
    let bad = tmp.path().join("bad");
    refused(
        merge(&bad, &[&parts[0], &parts[2]], &[]),
        "part(s) 1/3 missing",
    );
    refused(
        merge(&bad, &[&parts[0], &parts[1], &parts[1], &parts[2]], &[]),
        "part 1/3 is given twice",
    );
    // Other options than the parts were made with.
    let mut other = vec!["--landmarks", "given", "--flip-rate", "0.25", "--seed", "8"];
    other.push("--merge");
    other.extend(parts.iter().map(|p| s(p)));
    refused(
        prepare("synth", dir, &bad, &other),
        "prepared with other options",
    );
    // A part whose journal lost its last images (its task was killed).
    let journal = parts[1].join("prepare-journal.jsonl");
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(&journal).unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    std::fs::write(&journal, lines[..lines.len() - 2].join("\n")).unwrap();
    refused(
        merge(&bad, &[&parts[0], &parts[1], &parts[2]], &[]),
        "part 1/3",
    );
    // Rerunning the killed part finishes it, and the merge goes through.
    let mut a = args.to_vec();
    a.extend(["--shard", "1/3"]);
    assert!(prepare("synth", dir, &parts[1], &a).status.success());
    let o = merge(
        &tmp.path().join("again"),
        &[&parts[0], &parts[1], &parts[2]],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    refused(
        prepare(
            "synth",
            dir,
            &parts[1],
            &["--landmarks", "given", "--shard", "0/3"],
        ),
        "holds part 1/3 already",
    );
}
