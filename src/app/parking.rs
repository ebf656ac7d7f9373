//! Work held back for sockets that went away and may come back (connection state
//! recovery): each waits out the recovery window, or runs at once when the server stops.

use std::{future::Future, sync::Mutex};

use tokio::{sync::watch, task::JoinSet};

/// The waits under way, and the signal that ends them early.
pub struct Parking {
    tasks: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl Default for Parking {
    fn default() -> Self {
        Parking {
            tasks: Mutex::new(JoinSet::new()),
            stop: watch::Sender::new(false),
        }
    }
}

impl Parking {
    /// Runs `work(stopping)`, where `stopping` completes when the server begins to stop.
    pub fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = work(Stopping(self.stop.subscribe()));
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Finished waits are collected as new ones start, so the set holds only those
        // under way.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(fut);
    }

    /// How many waits are under way.
    pub fn len(&self) -> usize {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Whether no wait is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every wait early and returns once each has finished its work.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// Completes when the server begins to stop.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Waits for the stop.
    pub async fn wait(mut self) {
        // An error means the sender is gone: the state, and so the server, is gone too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    #[tokio::test]
    async fn stop_ends_the_waits_and_waits_for_their_work() {
        let parking = Parking::default();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let done = done.clone();
            parking.spawn(|stopping| async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stopping.wait() => {}
                }
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(parking.len(), 3);
        parking.stop().await;
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert!(parking.is_empty());
    }
}
