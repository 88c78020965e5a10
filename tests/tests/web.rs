//! dmue-serve's page (`/`) in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/web/page.test.mjs`, installed by `scripts/setup-browser.sh`). The server runs here on
//! a free loopback port with face detection and a 1 MiB body limit; the browser uploads a
//! synthetic 2-face photo and checks the cards, the boxes on the canvas, selection, the errors,
//! the camera path and that no request leaves the server. Screenshots: `target/web-test/`.

use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::Detector;
use dmue_deploy::pipeline::{face_crops, Classifier};
use dmue_deploy::server::{self, AppState, ServeConfig};
use dmue_e2e::{detector, root};
use std::path::Path;
use std::process::Command;

/// Why the browser test cannot run here, if it cannot.
fn missing_browser() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    if !root()
        .join("tests/web/node_modules/playwright-core")
        .exists()
    {
        return Some("tests/web/node_modules/playwright-core is not installed".into());
    }
    None
}

fn save_png(img: &image::RgbImage, path: &Path) {
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// The photos the browser uploads: a rendered photo in which our detector finds exactly 2
/// faces, the same 2.5x larger, a face-free gradient, a noise PNG over the 1 MiB limit, text
/// named .png and a PNG cut short.
fn make_photos(dir: &Path, detector: &mut Detector) {
    let opts = dmue_train::synth::SynthOptions {
        train: 0,
        test: 16,
        seed: 5,
        mode: dmue_train::synth::Mode::Photo,
        max_faces: 2,
        ..Default::default()
    };
    let rendered = dir.join("rendered");
    dmue_train::synth::generate(&opts, &rendered).unwrap();
    let two = (0..opts.test)
        .map(|i| rendered.join(format!("images/test/{i:06}.png")))
        .find(|p| {
            let img = image::open(p).unwrap().to_rgb8();
            face_crops(&img, Some(detector), dmue_deploy::face::ALIGNED_SIZE)
                .unwrap()
                .len()
                == 2
        })
        .expect("a rendered photo with 2 detected faces");
    let photo = image::open(&two).unwrap().to_rgb8();
    save_png(&photo, &dir.join("two-faces.png"));
    let (w, h) = photo.dimensions();
    let big = image::imageops::resize(
        &photo,
        w * 5 / 2,
        h * 5 / 2,
        image::imageops::FilterType::Triangle,
    );
    save_png(&big, &dir.join("big-two-faces.png"));
    let gradient = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x / 3) as u8, (y / 2) as u8, 120])
    });
    save_png(&gradient, &dir.join("no-face.png"));
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise = image::RgbImage::from_fn(1000, 800, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    save_png(&noise, &dir.join("too-large.png"));
    assert!(std::fs::metadata(dir.join("too-large.png")).unwrap().len() > 1 << 20);
    std::fs::write(dir.join("not-an-image.png"), b"this is text, not a PNG").unwrap();
    let mut truncated = std::fs::read(dir.join("no-face.png")).unwrap();
    truncated.truncate(200);
    std::fs::write(dir.join("truncated.png"), truncated).unwrap();
}

#[test]
fn the_page_works_in_a_real_browser() {
    if let Some(why) = missing_browser() {
        println!("SKIPPED the web page test: {why} (scripts/setup-browser.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut det = detector();
    make_photos(dir.path(), &mut det);
    let model = dmue_e2e::exported_model_card(dir.path(), 7, "synth-photo-prepared", 1.3);
    let classifier = Classifier::load(&model.path, EngineKind::Tract, 1).unwrap();
    let config = ServeConfig {
        max_body: 1 << 20,
        ..Default::default()
    };
    let (state, worker) = AppState::start(classifier, Some(det), config, None);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(server::serve_on(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    let out = root().join("target/web-test");
    let run = Command::new("node")
        .arg(root().join("tests/web/page.test.mjs"))
        .args([
            url.as_str(),
            dir.path().to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{report}");

    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    drop(state);
    drop(rt);
    let _ = worker.join();
    assert!(run.status.success(), "the browser test failed:\n{report}");
    assert!(report.contains("PASSED"), "{report}");
    assert!(out.join("02-two-faces.png").exists());
}
