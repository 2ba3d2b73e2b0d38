//! Offset bookkeeping of one partition: is the next record the one we expect?
//!
//! Fluvio offsets in a partition are consecutive, so a reader always knows which offset comes
//! next. The `fluvio` 0.50.1 client sometimes continues a stream past records it never
//! delivered (at fetch boundaries), and a stream opened in the middle of a stored batch starts
//! with records before the requested offset. [`OffsetTracker`] turns both into decisions the
//! reader acts on: take the record, drop a repeat, or re-open at the first missing offset.
//! Pure logic, tested here; the reader in `reader.rs` applies it to the real client.

/// What to do with a record at a given offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The expected record: hand it on.
    Take,
    /// Already handed on (a batch that starts before the requested offset): drop it.
    Repeat,
    /// Records `expected..got` were skipped: re-read from `expected`.
    Gap { expected: i64, got: i64 },
}

/// The next offset a partition reader expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetTracker {
    /// `None` until the first record when the reader starts at `beginning`/`end` without a
    /// known position: the first record then fixes it.
    next: Option<i64>,
}

impl OffsetTracker {
    pub fn new(next: Option<i64>) -> OffsetTracker {
        OffsetTracker { next }
    }

    /// The offset the reader expects next (where a re-opened stream starts).
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Decides about the record at `offset`; a taken record moves the expectation past it.
    pub fn check(&mut self, offset: i64) -> Check {
        match self.next {
            Some(next) if offset < next => Check::Repeat,
            Some(next) if offset > next => Check::Gap {
                expected: next,
                got: offset,
            },
            _ => {
                self.next = Some(offset + 1);
                Check::Take
            }
        }
    }

    /// Records between the expected offset and the log end `end` (the consumer lag); `None`
    /// while either is unknown.
    pub fn behind(&self, end: Option<i64>) -> Option<i64> {
        Some((end? - self.next?).max(0))
    }

    /// The records before `next_available` are gone (retention removed them): continue there.
    pub fn skip_to(&mut self, next_available: i64) {
        self.next = Some(next_available);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_offsets_are_taken_and_move_the_expectation() {
        let mut t = OffsetTracker::new(Some(10));
        assert_eq!(t.check(10), Check::Take);
        assert_eq!(t.check(11), Check::Take);
        assert_eq!(t.next(), Some(12));
        assert_eq!(t.behind(Some(20)), Some(8));
        assert_eq!(t.behind(Some(12)), Some(0));
        assert_eq!(t.behind(None), None);
    }

    #[test]
    fn a_skipped_offset_is_a_gap_and_the_expectation_stays_at_the_first_missing_one() {
        let mut t = OffsetTracker::new(Some(5));
        assert_eq!(t.check(5), Check::Take);
        assert_eq!(
            t.check(9),
            Check::Gap {
                expected: 6,
                got: 9
            }
        );
        // Not taken: the reader re-opens at 6 and must see 6 next.
        assert_eq!(t.next(), Some(6));
        assert_eq!(t.check(6), Check::Take);
    }

    #[test]
    fn records_before_the_expected_offset_are_repeats() {
        // A stream opened at 7 starts with the stored batch that holds 7, from its base 4.
        let mut t = OffsetTracker::new(Some(7));
        for o in 4..7 {
            assert_eq!(t.check(o), Check::Repeat);
        }
        assert_eq!(t.check(7), Check::Take);
        assert_eq!(t.next(), Some(8));
    }

    #[test]
    fn without_a_position_the_first_record_fixes_it() {
        let mut t = OffsetTracker::new(None);
        assert_eq!(t.behind(Some(3)), None);
        assert_eq!(t.check(42), Check::Take);
        assert_eq!(t.check(43), Check::Take);
        assert_eq!(
            t.check(45),
            Check::Gap {
                expected: 44,
                got: 45
            }
        );
        t.skip_to(100);
        assert_eq!(t.check(100), Check::Take);
    }
}
