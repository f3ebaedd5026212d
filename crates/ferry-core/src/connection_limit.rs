//! A listener's cap on open connections, shared by every front end's accept
//! loop: each accepted socket takes a slot for as long as it is open, and a
//! socket accepted when every slot is taken is closed at once, before
//! anything is read from it or allocated for it. Without the cap, clients
//! that open connections and abandon them would use up the process's file
//! descriptors, and then every listener (and every new segment file) fails.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals are logged at most this often per listener, so a flood of
/// connections does not become a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ConnectionLimit {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    last_logged: Mutex<Option<Instant>>,
}

/// An open connection's slot; dropping it frees the slot.
pub type ConnectionSlot = OwnedSemaphorePermit;

impl ConnectionLimit {
    /// At most `max` open connections on `listener` (a name for the log).
    pub fn new(listener: &'static str, max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        ConnectionLimit {
            listener,
            max,
            slots: Arc::new(Semaphore::new(max)),
            last_logged: Mutex::new(None),
        }
    }

    /// A slot for a connection just accepted, or `None` when `max` are open
    /// (the caller closes the socket, or answers with its protocol's "busy"
    /// if that costs nothing).
    pub fn admit(&self) -> Option<ConnectionSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.log_refusal();
                None
            }
        }
    }

    fn log_refusal(&self) {
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(
                listener = self.listener,
                connections_max = self.max,
                "refusing new {} connections: {} are open (raise {}.connections_max to allow more)",
                self.listener,
                self.max,
                self.listener
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_until_a_slot_is_freed() {
        let limit = ConnectionLimit::new("test", 2);
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none());
        drop(a);
        assert!(limit.admit().is_some());
    }
}
