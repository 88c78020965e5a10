//! The inference worker and its bounded queue: images in, batches of faces through the
//! engine, predictions back.

use crate::error::Error;
use crate::pipeline::{Classifier, Prediction};
use serde::Serialize;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Every face of one image, preprocessed, waiting for the worker as one job: the queue counts
/// images, so a crowded photo takes one place, and its faces are classified together or not
/// at all.
struct Job {
    /// `faces` inputs laid end to end.
    inputs: Vec<f32>,
    faces: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<(Vec<Prediction>, Timing), Error>>,
}

/// Where one image's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub decode_ms: f64,
    /// Face detection and alignment.
    pub detect_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// Faces in the largest engine batch this image's faces ran in.
    pub batch_size: usize,
}

/// The queue in front of the inference worker.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    capacity: usize,
}

impl Batcher {
    /// Moves the classifier into a worker thread; the thread ends when every sender is gone.
    /// The worker takes the images that are waiting until they hold `max_batch` faces, and runs
    /// their faces in engine batches of at most `max_batch`.
    pub fn start(
        mut classifier: Classifier,
        max_batch: usize,
        queue: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let max_batch = max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("dmue-inference".into())
            .spawn(move || {
                let classes = classifier.card.classes.len();
                let crop = classifier.card.preprocess.crop as usize;
                let per_face = 3 * crop * crop;
                while let Some(first) = rx.blocking_recv() {
                    let mut faces = first.faces;
                    let mut jobs = vec![first];
                    while faces < max_batch {
                        match rx.try_recv() {
                            Ok(j) => {
                                faces += j.faces;
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    // Requests that timed out or went away while queued are not worth computing.
                    jobs.retain(|j| !j.reply.is_closed());
                    if jobs.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let inputs: Vec<f32> =
                        jobs.iter().flat_map(|j| j.inputs.iter().copied()).collect();
                    let mut result = Ok(Vec::with_capacity(inputs.len() / per_face * classes));
                    let mut largest = 0;
                    for chunk in inputs.chunks(max_batch * per_face) {
                        let n = chunk.len() / per_face;
                        largest = largest.max(n);
                        match (&mut result, classifier.logits(chunk, n)) {
                            (Ok(all), Ok(l)) => all.extend(l),
                            (_, Err(e)) => {
                                result = Err(e);
                                break;
                            }
                            (Err(_), _) => break,
                        }
                    }
                    let inference_ms = started.elapsed().as_secs_f64() * 1e3;
                    metrics::histogram!("dmue_inference_seconds").record(inference_ms / 1e3);
                    metrics::histogram!("dmue_batch_size").record(largest as f64);
                    match result {
                        Ok(logits) => {
                            let mut rows = logits.chunks(classes);
                            for j in jobs {
                                let predictions: Vec<Prediction> = rows
                                    .by_ref()
                                    .take(j.faces)
                                    .map(|row| classifier.prediction(row))
                                    .collect();
                                let timing = Timing {
                                    queue_ms: (started - j.enqueued).as_secs_f64() * 1e3,
                                    inference_ms,
                                    batch_size: largest,
                                    ..Default::default()
                                };
                                let _ = j.reply.send(Ok((predictions, timing)));
                            }
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            for j in jobs {
                                let _ = j.reply.send(Err(Error::Engine(msg.clone())));
                            }
                        }
                    }
                }
            })
            .expect("spawn the inference thread");
        (
            Self {
                tx,
                capacity: queue.max(1),
            },
            worker,
        )
    }

    /// Whether the inference worker has stopped (its thread ended or panicked).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Images waiting for the worker.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Queues the faces of one image (`faces` preprocessed inputs laid end to end) and waits
    /// for their predictions, in order. 429 when the queue is full: then none of them is queued.
    pub async fn submit(
        &self,
        inputs: Vec<f32>,
        faces: usize,
    ) -> Result<(Vec<Prediction>, Timing), Error> {
        if faces == 0 {
            return Ok((Vec::new(), Timing::default()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                inputs,
                faces,
                enqueued: Instant::now(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Overloaded("the inference queue is full; retry later".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Error::Engine("the inference worker has stopped".into())
                }
            })?;
        metrics::gauge!("dmue_queue_depth").set(self.depth() as f64);
        rx.await
            .map_err(|_| Error::Engine("the inference worker dropped the request".into()))?
    }
}
