//! The instance's budget of document-stream bytes sent and not yet acknowledged.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The instance's budget of streamed bytes sent and not yet acknowledged
/// (`STREAM_BUDGET_BYTES`), shared by every stream: what clients that do not ack can make
/// the server hold is this, whatever the number of sockets and streams.
#[derive(Debug)]
pub struct StreamBudget(Option<(Arc<Semaphore>, u64)>);

impl StreamBudget {
    /// A budget of `bytes` (0: none).
    pub fn new(bytes: u64) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS as u64);
        StreamBudget((total > 0).then(|| (Arc::new(Semaphore::new(total as usize)), total)))
    }

    /// The permits a chunk of `bytes` takes: a chunk larger than the whole budget takes
    /// all of it, so that it can still go out alone.
    fn cost(total: u64, bytes: u64) -> u32 {
        u32::try_from(bytes.min(total)).unwrap_or(u32::MAX)
    }

    /// Whether a chunk of `bytes` would have to wait for room now.
    pub(crate) fn is_full(&self, bytes: u64) -> bool {
        self.0.as_ref().is_some_and(|(sem, total)| {
            (sem.available_permits() as u64) < u64::from(Self::cost(*total, bytes))
        })
    }

    /// Room for a chunk of `bytes` now: `Err` when there is none, `Ok(None)` without a
    /// budget.
    pub(crate) fn try_take(&self, bytes: u64) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.0 {
            None => Ok(None),
            Some((sem, total)) => sem
                .clone()
                .try_acquire_many_owned(Self::cost(*total, bytes))
                .map(Some)
                .map_err(|_| ()),
        }
    }

    /// Room for a chunk of `bytes`, waiting for it (`None` without a budget).
    pub(crate) async fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let (sem, total) = self.0.as_ref()?;
        sem.clone()
            .acquire_many_owned(Self::cost(*total, bytes))
            .await
            .ok()
    }
}
