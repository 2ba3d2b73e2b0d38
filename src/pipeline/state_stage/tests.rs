//! Unit tests of `pipeline/state_stage.rs`.

use super::Readiness::{Closed, Quiet, Ready, Waiting};
use super::*;

const BY_TIME: bool = false;
const ALTERNATE: bool = true;

#[test]
fn by_time_the_run_that_starts_earlier_goes_first_and_clicks_win_a_tie() {
    assert_eq!(pick([Ready(10), Ready(20)], BY_TIME, 0), Some(0));
    assert_eq!(pick([Ready(20), Ready(10)], BY_TIME, 0), Some(1));
    assert_eq!(pick([Ready(10), Ready(10)], BY_TIME, 0), Some(0));
    let empty = Ready(i64::MIN); // a batch without records is taken at once
    assert_eq!(pick([empty, empty], BY_TIME, 0), Some(0));
    // `turn` plays no part outside alternate mode.
    assert_eq!(pick([Ready(10), Ready(20)], BY_TIME, 1), Some(0));
    assert_eq!(pick([Ready(20), Ready(10)], BY_TIME, 1), Some(1));
    assert_eq!(pick([Ready(10), Ready(10)], BY_TIME, 1), Some(0));
}

#[test]
fn by_time_a_quiet_or_closed_stream_does_not_hold_the_other_back() {
    assert_eq!(pick([Ready(10), Quiet], BY_TIME, 0), Some(0));
    assert_eq!(pick([Ready(10), Closed], BY_TIME, 0), Some(0));
    assert_eq!(pick([Quiet, Ready(10)], BY_TIME, 0), Some(1));
    assert_eq!(pick([Closed, Ready(10)], BY_TIME, 0), Some(1));
}

#[test]
fn by_time_a_waiting_stream_holds_the_merge_whatever_the_other_has() {
    // Its next batch may start earlier than the other's run.
    assert_eq!(pick([Ready(10), Waiting], BY_TIME, 0), None);
    assert_eq!(pick([Waiting, Ready(10)], BY_TIME, 0), None);
    for other in [Waiting, Quiet, Closed] {
        assert_eq!(pick([Waiting, other], BY_TIME, 0), None, "{other:?}");
        assert_eq!(pick([other, Waiting], BY_TIME, 0), None, "{other:?}");
    }
}

#[test]
fn by_time_nothing_ready_picks_nothing() {
    for a in [Waiting, Quiet, Closed] {
        for b in [Waiting, Quiet, Closed] {
            assert_eq!(pick([a, b], BY_TIME, 0), None, "{a:?} {b:?}");
        }
    }
}

#[test]
fn alternate_takes_the_stream_whose_turn_it_is_whatever_the_event_times() {
    assert_eq!(pick([Ready(100), Ready(5)], ALTERNATE, 0), Some(0));
    assert_eq!(pick([Ready(5), Ready(100)], ALTERNATE, 1), Some(1));
    // The other stream's readiness does not matter while it is not its turn.
    for other in [Waiting, Quiet, Closed] {
        assert_eq!(pick([Ready(1), other], ALTERNATE, 0), Some(0), "{other:?}");
        assert_eq!(pick([other, Ready(1)], ALTERNATE, 1), Some(1), "{other:?}");
    }
}

#[test]
fn alternate_waits_for_the_stream_whose_turn_it_is_unless_it_is_closed() {
    for mine in [Waiting, Quiet] {
        assert_eq!(pick([mine, Ready(1)], ALTERNATE, 0), None, "{mine:?}");
        assert_eq!(pick([Ready(1), mine], ALTERNATE, 1), None, "{mine:?}");
    }
    assert_eq!(pick([Closed, Ready(1)], ALTERNATE, 0), Some(1));
    assert_eq!(pick([Ready(1), Closed], ALTERNATE, 1), Some(0));
    for other in [Waiting, Quiet, Closed] {
        assert_eq!(pick([Closed, other], ALTERNATE, 0), None, "{other:?}");
        assert_eq!(pick([other, Closed], ALTERNATE, 1), None, "{other:?}");
    }
}

/// The picks of a run of the loop in alternate mode: `turn` starts at 0 and becomes
/// `1 - pick` after every pick, as in `StateStage::run`.
fn alternate_sequence(readiness: [Readiness; 2], steps: usize) -> Vec<usize> {
    let mut turn = 0;
    let mut picks = Vec::new();
    for _ in 0..steps {
        let Some(p) = pick(readiness, ALTERNATE, turn) else {
            break;
        };
        picks.push(p);
        turn = 1 - p;
    }
    picks
}

#[test]
fn alternate_mode_starts_with_clicks_and_goes_on_with_the_open_side_once_one_closes() {
    // Conversions earlier in event time: still clicks first, then strictly by turns.
    assert_eq!(alternate_sequence([Ready(9), Ready(1)], 5), [0, 1, 0, 1, 0]);
    // Conversions ended: clicks after clicks.
    assert_eq!(alternate_sequence([Ready(9), Closed], 3), [0, 0, 0]);
    // Clicks ended: conversions after conversions.
    assert_eq!(alternate_sequence([Closed, Ready(1)], 3), [1, 1, 1]);
    // Conversions not there yet after the first click batch: the merge waits.
    assert_eq!(alternate_sequence([Ready(9), Waiting], 3), [0]);
}
