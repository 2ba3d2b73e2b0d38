//! The change log: what the three big state structures did since the last checkpoint, so a
//! checkpoint hands over what changed instead of copying what exists.
//!
//! The click index (with its extras), the unique-visitor sets and the dedup map hold millions
//! of entries at the operators' tier; everything else the engine holds (interned strings and
//! dimensions, pending conversions, open aggregate minutes, watermarks, counters) is small and
//! still goes into every checkpoint whole. When the log is on ([`super::Engine::track_changes`],
//! the pipeline's runs), each structure appends its mutations here as they happen — a click
//! seen (inserted or a duplicate that only touched its extras), a visitor added to a day, a
//! dedup entry written — and every eviction sweep appends a marker at its place in that order.
//! At a checkpoint the state stage takes the logs ([`ChangeLog::take`]: a few pointer swaps,
//! whatever the state's size) and the checkpoint writer puts them in a delta file.
//!
//! Restoring replays the deltas in order on top of a full snapshot ([`super::Engine::apply`]).
//! Replaying each sweep where it happened would scan the whole index once per event-time
//! hour; instead the replay folds all sweeps of a chain into its last one, which gives the
//! same state (see [`Split`]): watermarks only grow, so an entry that a sweep at horizon `h`
//! removed is one that the last sweep (horizon `h_last ≥ h`) would remove as well, unless it
//! was written again after that last sweep.

use rkyv::{Archive, Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// A click record the index saw: inserted (new `click_id`) or a duplicate, which only marked
/// its extras used.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickOp {
    pub key: u64,
    pub ts_ms: i64,
    pub extras_hash: u64,
    pub dims: u32,
    pub inserted: bool,
}

/// A visitor key added to a day's set (a first visit).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorOp {
    pub day: i64,
    pub key: u64,
}

/// A dedup entry as written (new or updated), in its snapshot form.
pub type DedupOp = crate::checkpoint::snapshot::DedupSnap;

/// An eviction sweep of one structure: it ran after the first `after` operations of its log
/// and removed what lay before `horizon` (event time; for visitors a day number).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub after: u64,
    pub horizon: i64,
}

/// One structure's operations and sweeps, in the order they happened (a delta file keeps the
/// two vectors as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log<T> {
    pub ops: Vec<T>,
    pub sweeps: Vec<Sweep>,
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log {
            ops: Vec::new(),
            sweeps: Vec::new(),
        }
    }
}

impl<T> Log<T> {
    pub fn push(&mut self, op: T) {
        self.ops.push(op);
    }

    pub fn sweep(&mut self, horizon: i64) {
        self.sweeps.push(Sweep {
            after: self.ops.len() as u64,
            horizon,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.sweeps.is_empty()
    }
}

/// Whether the structures record their changes (off for benches and one-shot engines, whose
/// logs nobody would take).
#[derive(Debug)]
pub struct ChangeLog<T> {
    pub on: bool,
    pub log: Log<T>,
}

impl<T> Default for ChangeLog<T> {
    fn default() -> Self {
        ChangeLog {
            on: false,
            log: Log::default(),
        }
    }
}

impl<T> ChangeLog<T> {
    pub fn push(&mut self, op: impl FnOnce() -> T) {
        if self.on {
            self.log.push(op());
        }
    }

    pub fn sweep(&mut self, horizon: i64) {
        if self.on {
            self.log.sweep(horizon);
        }
    }

    /// The log so far; the structure starts a new one.
    pub fn take(&mut self) -> Log<T> {
        std::mem::take(&mut self.log)
    }

    pub fn len(&self) -> usize {
        self.log.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

/// Where a chain of logs (one per delta, oldest first) splits around its last sweep.
///
/// Why folding the sweeps into the last one is exact: an eviction horizon never goes back
/// (watermarks only grow). An operation before the last sweep whose entry that sweep would
/// remove (time before `horizon`) was removed by it in the live run — or by an earlier sweep,
/// in which case it would also be gone — so the replay skips it (`keep_before`); the last
/// sweep then runs once over the rebuilt structure; operations after it are applied as they
/// came. Entries of the base snapshot see the one sweep instead of all of them, which removes
/// exactly what the sequence removed, for the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The last sweep: its log (index in the chain), its place in that log, its horizon.
    pub last: Option<(usize, u64, i64)>,
}

impl Split {
    /// `sweeps`: each log's sweeps, the chain's oldest delta first.
    pub fn of(sweeps: &[&[ArchivedSweep]]) -> Split {
        let last = sweeps.iter().enumerate().rev().find_map(|(i, sweeps)| {
            sweeps
                .last()
                .map(|s| (i, s.after.to_native(), s.horizon.to_native()))
        });
        Split { last }
    }

    /// The operation `op` of log `log` came before the last sweep.
    pub fn before(&self, log: usize, op: usize) -> bool {
        match self.last {
            Some((l, after, _)) => log < l || (log == l && (op as u64) < after),
            None => false,
        }
    }

    /// The last sweep's horizon, if the chain has one.
    pub fn horizon(&self) -> Option<i64> {
        self.last.map(|l| l.2)
    }
}

/// A step of [`replay`].
pub enum Step<'a, T> {
    /// Apply this operation.
    Op(&'a T),
    /// Run the one sweep, at this horizon.
    Sweep(i64),
}

/// Walks a chain of logs (oldest first) the way a restore applies them: every operation in
/// order, the chain's sweeps folded into one at the last sweep's place ([`Split`]). An
/// operation before that sweep for which `stale(op, horizon)` holds is skipped — the sweep
/// would remove what it wrote anyway. Returns `false`, part done, once `stop` is set (checked
/// every [`STOP_CHECK`] operations: a compaction given up at the end of a run stops within
/// milliseconds instead of rebuilding the whole state first).
pub fn replay<T>(
    logs: &[(&[T], &[ArchivedSweep])],
    stop: &AtomicBool,
    stale: impl Fn(&T, i64) -> bool,
    mut step: impl FnMut(Step<'_, T>),
) -> bool {
    let sweeps: Vec<&[ArchivedSweep]> = logs.iter().map(|l| l.1).collect();
    let split = Split::of(&sweeps);
    let mut swept = false;
    for (i, (ops, _)) in logs.iter().enumerate() {
        for (j, op) in ops.iter().enumerate() {
            if j % STOP_CHECK == 0 && stop.load(Ordering::Relaxed) {
                return false;
            }
            if let Some(horizon) = split.horizon() {
                let before = split.before(i, j);
                if before && stale(op, horizon) {
                    continue;
                }
                if !before && !swept {
                    step(Step::Sweep(horizon));
                    swept = true;
                }
            }
            step(Step::Op(op));
        }
    }
    if let (false, Some(horizon)) = (swept, split.horizon()) {
        step(Step::Sweep(horizon));
    }
    true
}

/// How many operations [`replay`] applies between two looks at its stop flag.
const STOP_CHECK: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_records_only_when_on_and_take_starts_a_new_one() {
        let mut c = ChangeLog::<u32>::default();
        c.push(|| 1);
        c.sweep(5);
        assert!(c.is_empty());
        c.on = true;
        c.push(|| 1);
        c.push(|| 2);
        c.sweep(5);
        c.push(|| 3);
        let log = c.take();
        assert_eq!(log.ops, [1, 2, 3]);
        assert_eq!(
            log.sweeps,
            [Sweep {
                after: 2,
                horizon: 5
            }]
        );
        assert!(c.is_empty());
        assert!(c.on);
    }

    #[test]
    fn a_replay_stops_between_operations_once_its_flag_is_set() {
        let ops: Vec<u32> = (0..3 * STOP_CHECK as u32).collect();
        let no_sweeps: &[ArchivedSweep] = &[];
        let logs = [(ops.as_slice(), no_sweeps)];
        let stop = AtomicBool::new(false);
        let mut applied = 0;
        let done = replay(
            &logs,
            &stop,
            |_, _| false,
            |step| {
                if let Step::Op(_) = step {
                    applied += 1;
                    if applied == STOP_CHECK + 10 {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            },
        );
        // Set within the second stretch: the replay ends at the next look.
        assert!(!done);
        assert_eq!(applied, 2 * STOP_CHECK);
        let never = AtomicBool::new(false);
        let mut applied = 0;
        assert!(replay(&logs, &never, |_, _| false, |_| applied += 1));
        assert_eq!(applied, ops.len());
    }

    #[test]
    fn the_split_is_at_the_last_sweep_of_the_chain() {
        let sweeps = |s: &[(u64, i64)]| {
            let v: Vec<Sweep> = s
                .iter()
                .map(|&(after, horizon)| Sweep { after, horizon })
                .collect();
            rkyv::to_bytes::<rkyv::rancor::Error>(&v).unwrap()
        };
        let a = sweeps(&[(1, 10), (3, 20)]);
        let b = sweeps(&[]);
        fn view(bytes: &rkyv::util::AlignedVec) -> &rkyv::vec::ArchivedVec<ArchivedSweep> {
            rkyv::access::<rkyv::vec::ArchivedVec<ArchivedSweep>, rkyv::rancor::Error>(bytes)
                .unwrap()
        }
        let (va, vb) = (view(&a), view(&b));
        let split = Split::of(&[va.as_slice(), vb.as_slice()]);
        assert_eq!(split.last, Some((0, 3, 20)));
        assert!(split.before(0, 2));
        assert!(!split.before(0, 3));
        assert!(!split.before(1, 0));
        assert_eq!(split.horizon(), Some(20));
        let none = Split::of(&[vb.as_slice()]);
        assert_eq!(none.horizon(), None);
        assert!(!none.before(0, 0));
    }
}
