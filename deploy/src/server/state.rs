//! The service's settings and shared state: admission permits, readiness, the face
//! detector pool, the inference queue.

use super::batcher::Batcher;
use super::metrics::metrics_handle;
use crate::error::Error;
use crate::image_io::DecodeLimits;
use crate::model_card::ModelCard;
use crate::pipeline::Classifier;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub max_batch: usize,
    /// Requests (images) that may wait for the worker before 429.
    pub queue: usize,
    /// Longest a request may take end to end before 504.
    pub timeout: Duration,
    /// Largest accepted request body in bytes (413 beyond).
    pub max_body: usize,
    pub limits: DecodeLimits,
    /// Requests served at once; more get 429 before their body is read.
    pub max_in_flight: usize,
    /// Images (multipart file parts or JSON images) per request; more: 413.
    pub max_images: usize,
    /// Decoded pixels per request, all its images together, read from the image headers before
    /// anything is decoded; more: 413. One image at the side limit (8192 x 8192) fits.
    pub max_pixels: u64,
    /// Images decoded and detected at once (one detector each when detecting). 0: one per
    /// detector in the pool, or one per core without detection.
    pub workers: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue: 64,
            timeout: Duration::from_secs(10),
            max_body: 20 << 20,
            limits: DecodeLimits::default(),
            max_in_flight: 64,
            max_images: 16,
            max_pixels: 8192 * 8192,
            workers: 0,
        }
    }
}

/// Face detectors shared by the request handlers: each image takes one for its detection, so
/// images are detected in parallel up to the pool's size. A detector whose run panicked is
/// dropped; the service is ready while at least one is left.
pub struct DetectorPool {
    free: std::sync::Mutex<Vec<crate::face::detect::Detector>>,
    pub size: usize,
    lost: std::sync::atomic::AtomicUsize,
    pub config: crate::face::detect::DetectorConfig,
}

impl DetectorPool {
    pub fn new(detectors: Vec<crate::face::detect::Detector>) -> Option<Self> {
        let config = detectors.first()?.config;
        Some(Self {
            size: detectors.len(),
            free: std::sync::Mutex::new(detectors),
            lost: Default::default(),
            config,
        })
    }

    /// Detectors still working.
    pub fn alive(&self) -> usize {
        self.size - self.lost.load(Ordering::Relaxed)
    }

    /// Runs `f` with a free detector. The caller holds one of the `workers` permits, of which
    /// there are as many as working detectors, so one is free.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut crate::face::detect::Detector) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let taken = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(mut d) = taken else {
            return Err(Error::Unavailable("no face detector is free".into()));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut d))) {
            Ok(r) => {
                self.free.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                r
            }
            Err(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "a face detector panicked and was dropped ({} of {} left)",
                    self.alive(),
                    self.size
                );
                Err(Error::Engine(
                    "the face detector failed on this image".into(),
                ))
            }
        }
    }
}

pub struct AppState {
    pub card: ModelCard,
    pub engine: &'static str,
    pub batcher: Batcher,
    pub config: ServeConfig,
    pub ready: AtomicBool,
    pub metrics: PrometheusHandle,
    /// Face detectors; `None` takes every image as one aligned face crop (`--no-detect`).
    pub detectors: Option<DetectorPool>,
    /// Where to write every aligned crop the classifier saw (`--save-crops`).
    pub save_crops: Option<std::path::PathBuf>,
    /// Permits for requests being served (`max_in_flight`).
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// Permits for images being decoded and detected (`workers`).
    pub(super) workers: Arc<tokio::sync::Semaphore>,
    /// When a request last started or ended (ms after `born`), and whether one has since the
    /// last time [`AppState::went_idle`] said so.
    last_activity_ms: AtomicU64,
    active_since_idle: AtomicBool,
    born: Instant,
}

impl AppState {
    /// Starts the inference worker for `classifier` and builds the service's state around it;
    /// `detectors` form the detection pool (none: `--no-detect`). The worker thread ends once
    /// the state (and every clone of its queue) is dropped.
    pub fn start(
        classifier: Classifier,
        detectors: impl IntoIterator<Item = crate::face::detect::Detector>,
        config: ServeConfig,
        save_crops: Option<std::path::PathBuf>,
    ) -> (Arc<Self>, std::thread::JoinHandle<()>) {
        let card = classifier.card.clone();
        let engine = classifier.engine_name();
        let (batcher, worker) = Batcher::start(classifier, config.max_batch, config.queue);
        let detectors = DetectorPool::new(detectors.into_iter().collect());
        let workers = match (config.workers, &detectors) {
            (0, Some(p)) => p.size,
            (0, None) => crate::engine::cores(),
            (n, Some(p)) => n.min(p.size),
            (n, None) => n,
        };
        let state = Arc::new(AppState {
            card,
            engine,
            batcher,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            workers: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            config,
            ready: AtomicBool::new(true),
            metrics: metrics_handle(),
            detectors,
            save_crops,
            last_activity_ms: AtomicU64::new(0),
            active_since_idle: AtomicBool::new(false),
            born: Instant::now(),
        });
        (state, worker)
    }

    pub(super) fn touch(&self) {
        self.last_activity_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.active_since_idle.store(true, Ordering::Relaxed);
    }

    /// True once per quiet spell: no request in flight, none started or ended for `quiet`, and
    /// at least one served since the last time this returned true. dmue-serve gives freed
    /// memory back to the system then (a large photo's buffers would otherwise stay in the
    /// allocator's heaps), in a gap between requests rather than while they are served.
    pub fn went_idle(&self, quiet: Duration) -> bool {
        let none_in_flight = self.in_flight.available_permits() == self.config.max_in_flight.max(1);
        let now = self.born.elapsed().as_millis() as u64;
        let quiet_for = now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
        none_in_flight
            && quiet_for >= quiet.as_millis() as u64
            && self.active_since_idle.swap(false, Ordering::Relaxed)
    }

    /// Why the service cannot serve, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Relaxed) {
            Some("shutting down")
        } else {
            self.broken()
        }
    }

    /// What failed beyond recovery in this process, if anything: the inference worker, or every
    /// face detector.
    pub fn broken(&self) -> Option<&'static str> {
        if self.batcher.is_closed() {
            Some("the inference worker has stopped")
        } else if self.detectors.as_ref().is_some_and(|d| d.alive() == 0) {
            Some("every face detector failed (panicked)")
        } else {
            None
        }
    }
}
