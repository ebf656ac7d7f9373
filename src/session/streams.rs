//! The document streams one socket runs (`handlers::documents::stream` runs them).

use std::sync::Mutex;

/// The streams of one socket (in its `Conn`): aborted on cancel, replacement,
/// disconnect, and when the socket is dropped.
#[derive(Default)]
pub struct Streams(Mutex<Vec<StreamEntry>>);

/// One running stream.
pub struct StreamEntry {
    /// The document it sends.
    pub document: String,
    /// Tells it from a later stream of the same document.
    pub token: u64,
    /// The task that sends it.
    pub task: tokio::task::AbortHandle,
}

impl Streams {
    /// The streams, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StreamEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the stream of `document`, if any; returns whether there was one.
    pub fn cancel(&self, document: &str) -> bool {
        let mut streams = self.lock();
        let before = streams.len();
        streams.retain(|s| {
            let keep = s.document != document;
            if !keep {
                s.task.abort();
            }
            keep
        });
        streams.len() != before
    }

    /// Stops every stream.
    pub fn cancel_all(&self) {
        for s in self.lock().drain(..) {
            s.task.abort();
        }
    }

    /// How many streams run.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    /// Forgets the stream `token`, which ended.
    pub fn finished(&self, token: u64) {
        self.lock().retain(|s| s.token != token);
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.cancel_all();
    }
}
