//! Where "reset offsets" moves a group's committed offset on one partition:
//! the one rule shared by `ferry group reset-offsets` (over the Kafka
//! protocol) and the admin HTTP API (in process), so the two cannot drift.

/// What to reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start offset.
    Earliest,
    /// The log end offset (only new records will be read).
    Latest,
    /// An absolute offset, clamped into the log.
    Offset(i64),
    /// The first offset whose timestamp is at or after this many
    /// milliseconds since the epoch; the log end when there is none.
    Timestamp(i64),
    /// The committed offset (the log start if none) moved by N, clamped.
    Shift(i64),
}

/// The new committed offset of a partition whose log holds `[start, end)`,
/// whose committed offset is `current`, and where `at_time` is the answer to
/// the timestamp lookup of a `Timestamp` target (`None` past the last record).
pub fn reset_offset(
    target: ResetTarget,
    start: i64,
    end: i64,
    current: Option<i64>,
    at_time: Option<i64>,
) -> i64 {
    let end = end.max(start);
    match target {
        ResetTarget::Earliest => start,
        ResetTarget::Latest => end,
        ResetTarget::Offset(n) => n.clamp(start, end),
        ResetTarget::Timestamp(_) => match at_time {
            Some(o) if o >= 0 => o,
            _ => end,
        },
        ResetTarget::Shift(n) => current.unwrap_or(start).saturating_add(n).clamp(start, end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_lands_inside_the_log() {
        let r = |t, current, at| reset_offset(t, 10, 50, current, at);
        assert_eq!(r(ResetTarget::Earliest, Some(30), None), 10);
        assert_eq!(r(ResetTarget::Latest, Some(30), None), 50);
        assert_eq!(r(ResetTarget::Offset(5), None, None), 10);
        assert_eq!(r(ResetTarget::Offset(70), None, None), 50);
        assert_eq!(r(ResetTarget::Offset(20), None, None), 20);
        assert_eq!(r(ResetTarget::Timestamp(1), None, Some(17)), 17);
        assert_eq!(r(ResetTarget::Timestamp(1), None, None), 50);
        assert_eq!(r(ResetTarget::Shift(-5), Some(30), None), 25);
        assert_eq!(r(ResetTarget::Shift(-5), None, None), 10);
        assert_eq!(r(ResetTarget::Shift(i64::MAX), Some(30), None), 50);
        // A log whose end is below its start (empty after retention) resets to the start.
        assert_eq!(reset_offset(ResetTarget::Latest, 10, 3, None, None), 10);
    }
}
