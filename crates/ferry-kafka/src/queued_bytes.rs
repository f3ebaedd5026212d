//! The bytes of Kafka requests read from every connection and not yet
//! answered (Kafka's `queued.max.request.bytes`): mostly produce data
//! waiting for its append and fsync. Each connection is bounded by its own
//! budget (`request_bytes_max`); this bounds them all together, so that many
//! connections producing at once cannot hold more than the broker can
//! afford. A connection whose next request does not fit is not read until
//! other requests are answered: its client sees a slower broker, no error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Holds are logged at most this often, so a busy broker does not log every
/// request it holds.
const HOLD_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct QueuedBytes {
    max: u32,
    permits: Arc<Semaphore>,
    last_logged: Mutex<Option<Instant>>,
}

impl QueuedBytes {
    pub fn new(max: usize) -> Self {
        let max = u32::try_from(max.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        QueuedBytes {
            max,
            permits: Arc::new(Semaphore::new(max as usize)),
            last_logged: Mutex::new(None),
        }
    }

    /// Takes `size` bytes of the budget for a request about to be read (a
    /// request larger than the whole budget takes all of it), waiting while
    /// other requests hold them. Dropping the permit gives them back.
    pub async fn take(&self, size: usize) -> OwnedSemaphorePermit {
        let n = u32::try_from(size).unwrap_or(u32::MAX).min(self.max);
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(n) {
            return permit;
        }
        self.log_hold(size);
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the semaphore is never closed")
    }

    fn log_hold(&self, size: usize) {
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= HOLD_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(
                queued_request_bytes_max = self.max,
                request_bytes = size,
                "holding kafka requests: requests read and not yet answered hold kafka.queued_request_bytes_max; \
                 the connection is read again once some are answered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_waits_until_the_bytes_are_given_back() {
        let queued = QueuedBytes::new(100);
        let first = queued.take(70).await;
        let second = queued.take(30).await;
        let waiting = tokio::spawn({
            let permits = queued.permits.clone();
            async move { permits.acquire_many_owned(50).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.expect("task").expect("permits");
        drop(second);
        // A request larger than the whole budget takes all of it.
        let all = queued.take(1000).await;
        assert_eq!(queued.permits.available_permits(), 0);
        drop(all);
    }
}
