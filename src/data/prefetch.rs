//! Background prefetch: a producer thread fills a bounded channel with ready batches so that
//! decoding and augmentation overlap the training step.
//!
//! ```no_run
//! # use ltrain::data::{prefetch::Prefetch, ImageSet};
//! # use std::sync::Arc;
//! # let set = Arc::new(ImageSet::empty(32, 32, 10));
//! let batches: Vec<Vec<usize>> = vec![vec![0, 1], vec![2, 3]];
//! let source = Arc::clone(&set);
//! let prefetch = Prefetch::spawn(2, batches.into_iter().map(move |idx| source.batch(&idx, None, 0, 0)));
//! for x in prefetch { /* train on x */ let _ = x; }
//! ```

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

/// Items of an iterator produced on a background thread, at most `depth` ahead of the consumer.
/// Dropping it stops the producer after its current item.
pub struct Prefetch<T> {
    receiver: Option<Receiver<T>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    pub fn spawn<I>(depth: usize, items: I) -> Self
    where
        I: Iterator<Item = T> + Send + 'static,
    {
        let (sender, receiver) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("ltrain-prefetch".into())
            .spawn(move || {
                for item in items {
                    if sender.send(item).is_err() {
                        break; // consumer gone
                    }
                }
            })
            .expect("cannot spawn the prefetch thread");
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // closing the channel first makes a blocked producer's `send` fail, so `join` returns
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
