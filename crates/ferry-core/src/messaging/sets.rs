//! A set of u64 kept as disjoint half-open ranges: settled offsets above a
//! queue's low-water mark. Acks mostly arrive in order, so the set is a few
//! ranges whatever the number of messages.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive); ranges neither overlap nor touch.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, x: u64) -> bool {
        self.ranges
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    pub fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x + 1);
        true
    }

    /// Adds `[start, end)`; returns how many values were new.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut added = end - start;
        // Merge with a range that starts before and reaches `start`.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            added -= e.min(end) - start;
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        // Merge every range starting within `[start, end]`.
        let inside: Vec<(u64, u64)> = self
            .ranges
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in inside {
            added -= e.min(end) - s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        self.len += added;
        added
    }

    /// Forgets every value below `x`.
    pub fn remove_below(&mut self, x: u64) {
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if s >= x {
                break;
            }
            self.ranges.remove(&s);
            if e > x {
                self.ranges.insert(x, e);
                self.len -= x - s;
                break;
            }
            self.len -= e - s;
        }
    }

    /// Forgets every value at or above `x`.
    pub fn truncate_from(&mut self, x: u64) {
        let doomed: Vec<(u64, u64)> = self
            .ranges
            .range(..)
            .rev()
            .take_while(|(_, e)| **e > x)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in doomed {
            self.ranges.remove(&s);
            if s < x {
                self.ranges.insert(s, x);
                self.len -= e - x;
            } else {
                self.len -= e - s;
            }
        }
    }

    /// The smallest value at or above `x` not in the set.
    pub fn first_absent_from(&self, x: u64) -> u64 {
        match self.ranges.range(..=x).next_back() {
            Some((_, &e)) if x < e => e,
            _ => x,
        }
    }

    /// How many values of `[start, end)` are in the set.
    pub fn count_in(&self, start: u64, end: u64) -> u64 {
        let mut n = 0;
        for (&s, &e) in self.ranges.range(..end) {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                n += b - a;
            }
        }
        n
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((0u8..4, 0u64..64, 0u64..8), 0..200)) {
            let mut r = RangeSet::default();
            let mut m = BTreeSet::new();
            for (op, x, w) in ops {
                match op {
                    0 => { prop_assert_eq!(r.insert(x), m.insert(x)); }
                    1 => {
                        let added = r.insert_range(x, x + w);
                        let before = m.len();
                        m.extend(x..x + w);
                        prop_assert_eq!(added as usize, m.len() - before);
                    }
                    2 => { r.remove_below(x); m = m.split_off(&x); }
                    3 if w == 0 => { r.truncate_from(x); m.retain(|v| *v < x); }
                    _ => {
                        let mut y = x;
                        while m.contains(&y) { y += 1; }
                        prop_assert_eq!(r.first_absent_from(x), y);
                        prop_assert_eq!(r.count_in(x, x + w) as usize, m.range(x..x + w).count());
                    }
                }
                prop_assert_eq!(r.len() as usize, m.len());
                for v in 0..80 { prop_assert_eq!(r.contains(v), m.contains(&v)); }
            }
        }
    }
}
