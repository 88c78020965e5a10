//! `dmue-serve`: serve an exported DMUE model over HTTP, or classify files from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::error::Error;
use dmue_deploy::image_io::{decode, DecodeLimits};
use dmue_deploy::pipeline::Classifier;
use dmue_deploy::server::{self, AppState, Batcher, ServeConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = EngineKind::Tract, env = "DMUE_ENGINE", global = true)]
    engine: EngineKind,
    /// Threads per inference (tract: matrix products; ort: intra-op threads).
    #[arg(long, default_value_t = 1, env = "DMUE_THREADS", global = true)]
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
    /// Per-request timeout in milliseconds (504 beyond).
    #[arg(long, default_value_t = 10_000, env = "DMUE_TIMEOUT_MS")]
    timeout_ms: u64,
    /// Largest request body in MiB (413 beyond).
    #[arg(long, default_value_t = 20, env = "DMUE_MAX_BODY_MB")]
    max_body_mb: usize,
    /// Largest image width or height accepted by the decoder (413 beyond).
    #[arg(long, default_value_t = 8192, env = "DMUE_MAX_SIDE", global = true)]
    max_side: u32,
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

fn run(cli: Cli) -> Result<i32, Error> {
    let model = cli
        .model
        .clone()
        .ok_or_else(|| Error::BadInput("--model FILE.onnx is required (or DMUE_MODEL)".into()))?;
    let classifier = Classifier::load(&model, cli.engine, cli.threads)?;
    let limits = DecodeLimits {
        max_side: cli.max_side,
        ..Default::default()
    };
    match cli.command {
        Some(Command::Predict {
            paths,
            format,
            batch,
        }) => predict(classifier, &paths, format, batch.max(1), &limits),
        Some(Command::Bench {
            batch,
            iters,
            warmup,
        }) => bench(classifier, batch.max(1), iters.max(1), warmup, cli.threads),
        None => {
            let config = ServeConfig {
                max_batch: cli.max_batch,
                queue: cli.queue,
                timeout: Duration::from_millis(cli.timeout_ms),
                max_body: cli.max_body_mb << 20,
                limits,
            };
            serve(classifier, cli.addr, config)?;
            Ok(0)
        }
    }
}

fn serve(classifier: Classifier, addr: SocketAddr, config: ServeConfig) -> Result<(), Error> {
    let card = classifier.card.clone();
    let engine = classifier.engine_name();
    let (batcher, worker) = Batcher::start(classifier, config.max_batch, config.queue);
    let state = Arc::new(AppState {
        card,
        engine,
        batcher,
        config,
        ready: AtomicBool::new(true),
        metrics: server::metrics_handle(),
    });
    let rt = tokio::runtime::Runtime::new()
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
        tracing::info!(classes = ?state.card.classes, engine, "dmue-serve ready");
        let app = server::router(state.clone());
        let shutdown_state = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                server::shutdown_signal().await;
                shutdown_state.ready.store(false, Ordering::Relaxed);
                tracing::info!("shutting down: finishing requests in flight");
            })
            .await
            .map_err(|e| Error::Engine(format!("server error: {e}")))
    })?;
    drop(state);
    let _ = worker.join();
    Ok(())
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

fn collect_images(paths: &[PathBuf]) -> Vec<PathBuf> {
    const EXT: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = walk(p);
            entries.retain(|f| {
                f.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXT.contains(&e.to_lowercase().as_str()))
            });
            entries.sort();
            out.extend(entries);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// Classifies files in batches; a file that cannot be read is reported, not fatal.
/// Exit code 0 when every file was classified, 2 when some were not.
fn predict(
    mut classifier: Classifier,
    paths: &[PathBuf],
    format: Format,
    batch: usize,
    limits: &DecodeLimits,
) -> Result<i32, Error> {
    let files = collect_images(paths);
    if files.is_empty() {
        return Err(Error::BadInput(
            "no image files found in the given paths".into(),
        ));
    }
    let mut failures = 0;
    if format == Format::Table {
        println!("{:<48} {:>10} {:>7}  top-3", "image", "label", "score");
    }
    for chunk in files.chunks(batch) {
        let mut ok = Vec::new();
        let mut inputs = Vec::new();
        for f in chunk {
            let loaded = std::fs::read(f)
                .map_err(|e| Error::BadInput(format!("cannot read: {e}")))
                .and_then(|b| decode(&b, limits))
                .and_then(|img| classifier.preprocess(&img).map(|t| (t, img.dimensions())));
            match loaded {
                Ok((t, dims)) => {
                    inputs.extend(t);
                    ok.push((f, dims));
                }
                Err(e) => {
                    failures += 1;
                    match format {
                        Format::Table => println!("{:<48} error ({}): {e}", f.display(), e.kind()),
                        Format::Jsonl => println!(
                            "{}",
                            serde_json::json!({"image": f, "error": e.to_string(), "kind": e.kind()})
                        ),
                    }
                }
            }
        }
        if ok.is_empty() {
            continue;
        }
        let classes = classifier.card.classes.len();
        let logits = classifier.logits(&inputs, ok.len())?;
        for ((f, (w, h)), row) in ok.into_iter().zip(logits.chunks(classes)) {
            let p = classifier.prediction(row);
            match format {
                Format::Table => {
                    let mut top: Vec<(&String, f64)> = p
                        .probabilities
                        .iter()
                        .map(|(k, v)| (k, v.as_f64().unwrap_or(0.0)))
                        .collect();
                    top.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top3: Vec<String> = top
                        .iter()
                        .take(3)
                        .map(|(k, v)| format!("{k} {v:.2}"))
                        .collect();
                    println!(
                        "{:<48} {:>10} {:>7.3}  {}",
                        f.display(),
                        p.label,
                        p.score,
                        top3.join(", ")
                    );
                }
                Format::Jsonl => println!(
                    "{}",
                    serde_json::json!({"image": f, "faces": [{"box": [0, 0, w, h], "landmarks": null, "detection_score": null,
                        "label": p.label, "class_index": p.class_index, "score": p.score, "probabilities": p.probabilities}]})
                ),
            }
        }
    }
    Ok(if failures > 0 { 2 } else { 0 })
}
