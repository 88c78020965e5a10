//! `dmue-serve`: serve an exported DMUE model over HTTP, or classify files from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::error::Error;
use dmue_deploy::face::detect::{Detector, DetectorConfig};
use dmue_deploy::image_io::{decode, DecodeLimits};
use dmue_deploy::pipeline::{face_crops, Classifier};
use dmue_deploy::server::{self, AppState, ServeConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dmue-serve",
    version,
    about = "Serve an exported DMUE model (HTTP), or classify image files"
)]
struct Cli {
    /// Exported model (`dmue-train export`); its model card gives classes and preprocessing.
    #[arg(long, env = "DMUE_MODEL", global = true)]
    model: Option<PathBuf>,
    /// Inference engine (the detector's and the classifier's).
    #[arg(long, value_enum, default_value_t = EngineKind::Auto, env = "DMUE_ENGINE", global = true)]
    engine: EngineKind,
    /// Threads per inference (tract: matrix products; ort: intra-op threads); 0: one per core.
    #[arg(long, default_value_t = 0, env = "DMUE_THREADS", global = true)]
    threads: usize,
    /// Address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", env = "DMUE_ADDR")]
    addr: SocketAddr,
    /// Largest batch the inference worker forms from queued requests.
    #[arg(long, default_value_t = 8, env = "DMUE_MAX_BATCH")]
    max_batch: usize,
    /// Images that may wait for inference before new requests get 429.
    #[arg(long, default_value_t = 64, env = "DMUE_QUEUE")]
    queue: usize,
    /// Requests served at once; more get 429 before their body is read.
    #[arg(long, default_value_t = ServeConfig::default().max_in_flight, env = "DMUE_MAX_IN_FLIGHT")]
    max_in_flight: usize,
    /// Images (multipart file parts or JSON images) per request (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_images, env = "DMUE_MAX_IMAGES")]
    max_images: usize,
    /// Decoded pixels per request, all images together, in megapixels (413 beyond; read from
    /// the image headers before decoding). The default admits one 8192x8192 image.
    #[arg(long, default_value_t = ServeConfig::default().max_pixels as f64 / 1e6, env = "DMUE_MAX_MEGAPIXELS")]
    max_megapixels: f64,
    /// Face detectors in the pool (images detected in parallel); 0: cores / --threads.
    #[arg(long, default_value_t = 0, env = "DMUE_DETECTORS")]
    detectors: usize,
    /// Per-request timeout in milliseconds (504 beyond).
    #[arg(long, default_value_t = 10_000, env = "DMUE_TIMEOUT_MS")]
    timeout_ms: u64,
    /// Largest request body in MiB (413 beyond).
    #[arg(long, default_value_t = 20, env = "DMUE_MAX_BODY_MB")]
    max_body_mb: usize,
    /// Largest image width or height accepted by the decoder (413 beyond).
    #[arg(long, default_value_t = 8192, env = "DMUE_MAX_SIDE", global = true)]
    max_side: u32,
    /// Face detector (RetinaFace, from scripts/fetch-models.sh); every face found is aligned
    /// and classified.
    #[arg(long, default_value = dmue_deploy::face::detect::DEFAULT_MODEL, env = "DMUE_DETECTOR", global = true)]
    detector: PathBuf,
    /// Take every input image as one already aligned face crop (no detection).
    #[arg(long, env = "DMUE_NO_DETECT", global = true)]
    no_detect: bool,
    /// Lowest detection score kept.
    #[arg(long, default_value_t = 0.6, env = "DMUE_DET_THRESHOLD", global = true)]
    det_threshold: f32,
    /// Detector input size (longer side) for photos up to this size; larger photos run nearer
    /// their own size, up to --det-max-size (small faces in big group photos stay findable).
    #[arg(long, default_value_t = DetectorConfig::default().input_size, env = "DMUE_DET_SIZE", global = true)]
    det_size: u32,
    /// Cap of the detector input size for large photos (the cost grows with its square: 3200 is
    /// 25x the work of 640). Set it to --det-size for one fixed size.
    #[arg(long, default_value_t = DetectorConfig::default().max_input_size, env = "DMUE_DET_MAX_SIZE", global = true)]
    det_max_size: u32,
    /// Write every aligned crop the classifier sees into this directory.
    #[arg(long, env = "DMUE_SAVE_CROPS", global = true)]
    save_crops: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files (or every image in the given directories) without a server.
    Predict {
        /// Image files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Images per inference batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// Time the engine on random inputs of the model's size: one JSON line with latency
    /// percentiles and throughput (used by scripts/bench-infer.sh).
    Bench {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed runs (after the warm-up runs).
        #[arg(long, default_value_t = 200)]
        iters: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Time the whole photo path instead: decode, detect, align, preprocess and classify
        /// every face of this image (uses the detector unless --no-detect).
        #[arg(long)]
        photo: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One aligned row per image.
    Table,
    /// One JSON object per line.
    Jsonl,
}

fn main() {
    dmue_deploy::logging::init(true);
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(mut cli: Cli) -> Result<i32, Error> {
    if cli.threads == 0 {
        cli.threads = dmue_deploy::engine::cores();
    }
    let classifier = load_classifier(&cli)?;
    let limits = DecodeLimits {
        max_side: cli.max_side,
        ..Default::default()
    };
    let detector = if cli.no_detect {
        None
    } else {
        Some(load_detector(&cli, &classifier)?)
    };
    if let Some(dir) = &cli.save_crops {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::BadInput(format!("cannot create {}: {e}", dir.display())))?;
    }
    match cli.command.take() {
        Some(Command::Predict {
            paths,
            format,
            batch,
        }) => predict(
            classifier,
            detector,
            &paths,
            format,
            batch.max(1),
            &limits,
            cli.save_crops.as_deref(),
        ),
        Some(Command::Bench {
            iters,
            warmup,
            photo: Some(photo),
            ..
        }) => bench_photo(
            classifier,
            detector,
            &photo,
            iters.max(1),
            warmup,
            cli.threads,
            &limits,
        ),
        Some(Command::Bench {
            batch,
            iters,
            warmup,
            photo: None,
        }) => bench(classifier, batch.max(1), iters.max(1), warmup, cli.threads),
        None => {
            let pool = detector_pool(&cli, detector)?;
            let config = ServeConfig {
                max_batch: cli.max_batch,
                queue: cli.queue,
                timeout: Duration::from_millis(cli.timeout_ms),
                max_body: cli.max_body_mb << 20,
                limits,
                max_in_flight: cli.max_in_flight,
                max_images: cli.max_images.max(1),
                max_pixels: (cli.max_megapixels * 1e6) as u64,
                workers: 0,
            };
            serve(classifier, pool, cli.save_crops, cli.addr, config)?;
            Ok(0)
        }
    }
}

/// The classifier of `--model`, with a warning when an int8 file would run on tract.
fn load_classifier(cli: &Cli) -> Result<Classifier, Error> {
    let model = cli
        .model
        .clone()
        .ok_or_else(|| Error::BadInput("--model FILE.onnx is required (or DMUE_MODEL)".into()))?;
    let classifier = Classifier::load(&model, cli.engine, cli.threads)?;
    if classifier.card.int8.is_some() && classifier.engine_name() == "tract" {
        // tract computes int8 (QDQ) files correctly but through float kernels: measured 1.2-1.7x
        // slower than the float32 file on tract (scripts/bench-int8.sh).
        tracing::warn!(
            "{} is an int8 model: tract runs it, but slower than the float32 model; \
             serve it with ONNX Runtime's integer kernels (--engine ort; run scripts/setup.sh \
             or set ORT_DYLIB_PATH)",
            model.display()
        );
    }
    Ok(classifier)
}

/// The face detector, after checking that it aligns faces the way the model was trained.
fn load_detector(cli: &Cli, classifier: &Classifier) -> Result<Detector, Error> {
    if classifier.card.template_id != dmue_deploy::face::TEMPLATE_ID {
        return Err(Error::Model(format!(
            "the model was trained on crops cut with template {:?}, this dmue-serve aligns with {:?}",
            classifier.card.template_id,
            dmue_deploy::face::TEMPLATE_ID
        )));
    }
    if cli.det_size < 32 || cli.det_max_size < cli.det_size {
        return Err(Error::BadInput(format!(
            "--det-size must be at least 32 and --det-max-size at least --det-size (got {} and {})",
            cli.det_size, cli.det_max_size
        )));
    }
    let config = DetectorConfig {
        score_threshold: cli.det_threshold,
        input_size: cli.det_size,
        max_input_size: cli.det_max_size,
        ..Default::default()
    };
    Detector::load(&cli.detector, cli.engine, cli.threads, config).map_err(|e| {
        Error::Model(format!(
            "{e} (or pass --no-detect to classify aligned face crops as they are)"
        ))
    })
}

/// The server's detectors: one per `--threads` cores (`--detectors`), so that parallel
/// detections do not oversubscribe the cores, each warmed up.
fn detector_pool(cli: &Cli, first: Option<Detector>) -> Result<Vec<Detector>, Error> {
    let mut pool = Vec::new();
    if let Some(first) = first {
        let n = match cli.detectors {
            0 => (dmue_deploy::engine::cores() / cli.threads.max(1)).max(1),
            n => n,
        };
        pool.push(first);
        for _ in 1..n {
            pool.push(Detector::load(
                &cli.detector,
                cli.engine,
                cli.threads,
                pool[0].config,
            )?);
        }
    }
    for d in &mut pool {
        // The first photo of each input shape pays for tract's plan (about 0.1 s): pay it
        // now for the usual 4:3 landscape and portrait photos.
        d.warm_up(&[(640, 480), (480, 640)])?;
    }
    Ok(pool)
}

fn serve(
    classifier: Classifier,
    detector: Vec<Detector>,
    save_crops: Option<PathBuf>,
    addr: SocketAddr,
    config: ServeConfig,
) -> Result<(), Error> {
    let (state, worker) = AppState::start(classifier, detector, config, save_crops);
    limit_malloc_arenas();
    // Blocking work (decoding, detection, crop encoding) is gated by the detector pool; a
    // small blocking pool keeps the thread count, and with it glibc's per-thread heaps, small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4 * dmue_deploy::engine::cores())
        .build()
        .map_err(|e| Error::Model(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::BadInput(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::BadInput(e.to_string()))?;
        // The first line on stdout is the address, so scripts and tests can find a port-0 server.
        println!("listening on http://{bound}");
        // Nothing else goes to stdout: a reader may close it after that first line.
        tracing::info!(classes = ?state.card.classes, engine = state.engine, "dmue-serve ready");
        tracing::info!("open http://{bound}/ in a browser to try the model on a photo");
        // A dead inference worker or detector pool cannot be restarted in process: stop
        // (finishing what is in flight) and exit non-zero, for the supervisor to restart us.
        let watched = state.clone();
        let broken = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some(why) = watched.broken() {
                    tracing::error!("{why}: shutting down");
                    return;
                }
            }
        };
        // Freed memory goes back to the system in the gaps between requests (none in flight
        // for 200 ms), at most every 5 s: after a burst of large photos the RSS would
        // otherwise stay at the burst's peak, even under a trickle of small requests.
        // A weak reference: the state must drop at shutdown, which ends the inference worker.
        let quiet = std::sync::Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(s) = quiet.upgrade() else { return };
                if s.went_idle(Duration::from_millis(200)) {
                    drop(s);
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        });
        let stop = async move {
            tokio::select! { _ = server::shutdown_signal() => {}, _ = broken => {} }
        };
        server::serve_on(listener, state.clone(), stop)
            .await
            .map_err(|e| Error::Engine(format!("server error: {e}")))
    })?;
    let broken = state.broken().is_some();
    drop(state);
    if worker.join().is_err() || broken {
        return Err(Error::Engine(
            "the inference worker or every face detector failed (see the log above); exiting"
                .into(),
        ));
    }
    Ok(())
}

/// p50/p99 of the full photo path: bytes -> decode -> detect -> align -> classify every face.
fn bench_photo(
    mut classifier: Classifier,
    mut detector: Option<Detector>,
    photo: &Path,
    iters: usize,
    warmup: usize,
    threads: usize,
    limits: &DecodeLimits,
) -> Result<i32, Error> {
    let bytes = std::fs::read(photo)
        .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", photo.display())))?;
    let mut run = || -> Result<(usize, f64, f64), Error> {
        let t = std::time::Instant::now();
        let img = decode(&bytes, limits)?;
        let faces = face_crops(&img, detector.as_mut(), classifier.card.aligned_size)?;
        let detect_ms = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(classifier.classify(&faces, faces.len())?);
        Ok((faces.len(), detect_ms, t.elapsed().as_secs_f64() * 1e3))
    };
    for _ in 0..warmup {
        run()?;
    }
    let mut total = Vec::with_capacity(iters);
    let mut detect = Vec::with_capacity(iters);
    let mut faces = 0;
    for _ in 0..iters {
        let (n, d, t) = run()?;
        faces = n;
        detect.push(d);
        total.push(t);
    }
    total.sort_by(f64::total_cmp);
    detect.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({"engine": classifier.engine_name(), "threads": threads, "photo": photo, "faces": faces, "iters": iters,
            "p50_ms": pct(&total, 0.5), "p99_ms": pct(&total, 0.99), "decode_detect_align_p50_ms": pct(&detect, 0.5)})
    );
    Ok(0)
}

fn bench(
    mut classifier: Classifier,
    batch: usize,
    iters: usize,
    warmup: usize,
    threads: usize,
) -> Result<i32, Error> {
    let crop = classifier.card.preprocess.crop as usize;
    // Deterministic pseudo-random inputs in the normalised range.
    let input: Vec<f32> = (0..batch * 3 * crop * crop)
        .map(|i| ((i as u64 * 2_654_435_761 % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    for _ in 0..warmup {
        classifier.logits(&input, batch)?;
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = std::time::Instant::now();
        classifier.logits(&input, batch)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{}",
        serde_json::json!({"engine": classifier.engine_name(), "threads": threads, "batch": batch, "input": crop, "iters": iters,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "mean_ms": mean, "images_per_s": batch as f64 * 1e3 / mean})
    );
    Ok(0)
}

/// The image files of `paths`: files as given, directories walked (symlinks followed, in name
/// order). A symlink loop or an unreadable directory becomes an entry with its error, reported
/// like an unreadable file instead of being skipped silently.
fn collect_images(paths: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    let is_image = |f: &Path| {
        f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            dmue_deploy::image_io::SUPPORTED_EXTENSIONS.contains(&e.to_lowercase().as_str())
        })
    };
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push((p.clone(), None));
            continue;
        }
        for entry in walkdir::WalkDir::new(p)
            .follow_links(true)
            .sort_by_file_name()
        {
            match entry {
                Ok(e) if e.file_type().is_file() && is_image(e.path()) => {
                    out.push((e.into_path(), None))
                }
                Ok(_) => {}
                Err(err) => {
                    out.push((err.path().unwrap_or(p).to_path_buf(), Some(err.to_string())))
                }
            }
        }
    }
    out
}

/// Classifies every face of every file; a file that cannot be read is reported, not fatal.
/// Exit code 0 when every file was read, 2 when some were not.
fn predict(
    mut classifier: Classifier,
    mut detector: Option<Detector>,
    paths: &[PathBuf],
    format: Format,
    batch: usize,
    limits: &DecodeLimits,
    save_crops: Option<&Path>,
) -> Result<i32, Error> {
    let files = collect_images(paths);
    if files.is_empty() {
        return Err(Error::BadInput(
            "no image files found in the given paths".into(),
        ));
    }
    let mut failures = 0;
    if format == Format::Table {
        println!(
            "{:<52} {:>10} {:>7}  top-3",
            "image [face]", "label", "score"
        );
    }
    for (f, walk_error) in &files {
        let faces = match walk_error {
            Some(e) => Err(Error::BadInput(e.clone())),
            None => Ok(f),
        }
        .and_then(|f| std::fs::read(f).map_err(|e| Error::BadInput(format!("cannot read: {e}"))))
        .and_then(|b| decode(&b, limits))
        .and_then(|img| face_crops(&img, detector.as_mut(), classifier.card.aligned_size));
        let faces = match faces {
            Ok(faces) => faces,
            Err(e) => {
                failures += 1;
                match format {
                    Format::Table => println!("{:<52} error ({}): {e}", f.display(), e.kind()),
                    Format::Jsonl => println!(
                        "{}",
                        serde_json::json!({"image": f, "error": e.to_string(), "kind": e.kind()})
                    ),
                }
                continue;
            }
        };
        let predictions = classifier.classify(&faces, batch)?;
        if let Some(dir) = save_crops {
            for (k, face) in faces.iter().enumerate() {
                dmue_deploy::server::save_crop(dir, &f.to_string_lossy(), k, &face.crop);
            }
        }
        match format {
            Format::Table => {
                if faces.is_empty() {
                    println!("{:<52} {:>10}", f.display(), "(no face)");
                }
                for (k, p) in predictions.iter().enumerate() {
                    let mut top: Vec<(&String, f64)> = p
                        .probabilities
                        .iter()
                        .map(|(c, v)| (c, v.as_f64().unwrap_or(0.0)))
                        .collect();
                    top.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top3: Vec<String> = top
                        .iter()
                        .take(3)
                        .map(|(c, v)| format!("{c} {v:.2}"))
                        .collect();
                    let name = if faces.len() > 1 {
                        format!("{} [{k}]", f.display())
                    } else {
                        f.display().to_string()
                    };
                    println!(
                        "{name:<52} {:>10} {:>7.3}  {}",
                        p.label,
                        p.score,
                        top3.join(", ")
                    );
                }
            }
            Format::Jsonl => {
                // The API's face objects (without crops), so both outputs read the same.
                let faces: Vec<server::Face> = faces
                    .iter()
                    .zip(predictions)
                    .map(|(face, p)| server::Face::new(face, p, None))
                    .collect();
                println!("{}", serde_json::json!({"image": f, "faces": faces}));
            }
        }
    }
    Ok(if failures > 0 { 2 } else { 0 })
}

/// Returns the free pages of every glibc heap to the system (`malloc_trim`): after a burst of
/// large photos (docs/reliability.md, "Memory under hostile input").
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only releases free memory; glibc's allocator stays consistent.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// glibc gives threads their own heaps (arenas), up to 8 per core, and keeps the memory each
/// has touched: under steady load, the server's RSS climbed in steps as new blocking threads
/// got new arenas (438 to 459 MiB over 5 minutes, `scripts/load-test.sh`). Two arenas are
/// plenty for a service whose heavy allocations are a few image buffers at a time.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_ARENA_MAX: std::ffi::c_int = -8;
        // SAFETY: mallopt only sets an allocator parameter; called before the runtime's
        // threads exist.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}
