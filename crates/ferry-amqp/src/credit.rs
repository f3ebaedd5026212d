//! Prefetch credit (basic.qos): how many unacknowledged deliveries a consumer
//! (or, with `global`, a whole channel) may hold. A consumer's task takes one
//! unit before it asks the queue for a message, and the connection gives the
//! unit back when the delivery is settled, so the queue never hands out more
//! than the client allowed.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug)]
struct State {
    /// 0 = unlimited.
    limit: u32,
    used: u32,
}

#[derive(Debug)]
pub struct Credit {
    state: Mutex<State>,
    notify: Notify,
}

impl Credit {
    pub fn new(limit: u32) -> Self {
        Credit {
            state: Mutex::new(State { limit, used: 0 }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another holder panicked mid-update of
        // two integers; the counts are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one unit, waiting while the limit is reached. Cancel-safe: the
    /// unit is taken in the same poll that returns.
    pub async fn acquire(&self) {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.limit == 0 || s.used < s.limit {
                    s.used += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes up to `n` more units without waiting; returns how many.
    pub fn try_acquire_up_to(&self, n: u32) -> u32 {
        let mut s = self.lock();
        let took = if s.limit == 0 {
            n
        } else {
            n.min(s.limit.saturating_sub(s.used))
        };
        s.used += took;
        took
    }

    /// No limit (prefetch 0).
    pub fn is_unlimited(&self) -> bool {
        self.lock().limit == 0
    }

    pub fn release(&self, n: u32) {
        if n == 0 {
            return;
        }
        {
            let mut s = self.lock();
            s.used = s.used.saturating_sub(n);
        }
        self.notify.notify_waiters();
    }

    pub fn set_limit(&self, limit: u32) {
        self.lock().limit = limit;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_at_the_limit_until_released() {
        let c = Arc::new(Credit::new(2));
        c.acquire().await;
        c.acquire().await;
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.acquire().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        c.release(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released credit wakes the waiter")
            .expect("task");
    }

    #[tokio::test]
    async fn raising_the_limit_wakes_waiters() {
        let c = Arc::new(Credit::new(1));
        c.acquire().await;
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.acquire().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.set_limit(0);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("unlimited now")
            .expect("task");
    }
}
