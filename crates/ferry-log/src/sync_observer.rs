//! A hook for the broker's metrics: every group-commit fsync of any log in
//! the process is reported to one observer, with how long it took and how
//! many records it made durable. This crate keeps no numbers itself and
//! knows no metrics library; without an observer nothing is reported.

use std::sync::OnceLock;
use std::time::Duration;

/// One group-commit fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncObservation {
    pub elapsed: Duration,
    /// Records (offsets) the fsync made durable: every append it covered.
    pub records: u64,
}

type Observer = Box<dyn Fn(SyncObservation) + Send + Sync>;

static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Sets the process's observer; the first one set stays (a process serves
/// one broker).
pub fn observe_syncs(observer: impl Fn(SyncObservation) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

pub(crate) fn report(observation: SyncObservation) {
    if let Some(observer) = OBSERVER.get() {
        observer(observation);
    }
}
