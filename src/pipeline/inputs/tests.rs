//! Unit tests of `pipeline/inputs.rs`.

use super::*;
use crate::event::{Arena, Click, Span};

fn click(ts: i64, offset: u64) -> Click {
    Click {
        click_id: Span::NONE,
        ts_ms: ts,
        tenant_id: Span::NONE,
        offer_id: Span::NONE,
        affiliate_id: Span::NONE,
        country: Span::NONE,
        device: Span::NONE,
        os: Span::NONE,
        ip: Span::NONE,
        user_agent: Span::NONE,
        referrer: Span::NONE,
        subs: [Span::NONE; 5],
        click_key: offset,
        dims_hash: 0,
        extras_hash: 0,
        visitor_hash: None,
        position: Position {
            line: offset,
            offset,
        },
    }
}

/// A click batch of `partition` with records (ts, offset).
fn batch(partition: Option<u32>, recs: &[(i64, u64)]) -> Decoded {
    let clicks: Vec<Click> = recs.iter().map(|&(ts, o)| click(ts, o)).collect();
    let end = recs.last().map_or(0, |r| r.1 + 1);
    Decoded {
        first_ts: clicks.iter().map(|c| c.ts_ms).min().unwrap_or(i64::MIN),
        kind: DecodedKind::Clicks(Arc::new(ClickBatch {
            arena: Arena::default(),
            clicks,
        })),
        dead: Vec::new(),
        end: Position {
            line: end,
            offset: end,
        },
        partition,
        arrived: None,
        signal: None,
        credit: None,
    }
}

fn signal(s: Signal, partition: Option<u32>) -> Decoded {
    Decoded {
        signal: Some(s),
        partition,
        ..batch(partition, &[])
    }
}

/// Drains everything that is ready into (partition, offset) order.
fn drain(input: &mut StreamInput) -> Vec<(u32, u64)> {
    let mut order = Vec::new();
    while let Readiness::Ready(_) = input.readiness() {
        let run = input.next_run().unwrap();
        let view = input.view(run).unwrap();
        for i in view.range.clone() {
            let DecodedKind::Clicks(b) = &view.batch.kind else {
                unreachable!()
            };
            order.push((view.batch.partition.unwrap_or(0), b.clicks[i].position.line));
        }
        input.complete(run);
    }
    order
}

#[test]
fn partitions_merge_by_event_time_whatever_the_batch_cuts() {
    // p0: ts 10, 30, 50 at offsets 0..3; p1: ts 20, 40 at offsets 0..2.
    let cut_a = [
        batch(Some(0), &[(10, 0), (30, 1), (50, 2)]),
        batch(Some(1), &[(20, 0)]),
        batch(Some(1), &[(40, 1)]),
    ];
    let cut_b = [
        batch(Some(1), &[(20, 0), (40, 1)]),
        batch(Some(0), &[(10, 0)]),
        batch(Some(0), &[(30, 1), (50, 2)]),
    ];
    let mut orders = Vec::new();
    for cut in [cut_a, cut_b] {
        let mut input = StreamInput::new(Stream::Clicks, true);
        input.push(signal(Signal::Partitions(vec![0, 1]), None));
        for b in cut {
            input.push(b);
        }
        input.open = false;
        orders.push(drain(&mut input));
    }
    let want = vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)];
    assert_eq!(orders[0], want);
    assert_eq!(orders[1], want);
}

#[test]
fn a_partition_without_its_next_batch_holds_the_merge_until_caught_up() {
    let mut input = StreamInput::new(Stream::Clicks, true);
    assert_eq!(input.readiness(), Readiness::Waiting, "partitions unknown");
    input.push(signal(Signal::Partitions(vec![0, 1]), None));
    input.push(batch(Some(0), &[(10, 0), (20, 1)]));
    assert_eq!(
        input.readiness(),
        Readiness::Waiting,
        "p1 may hold older clicks"
    );
    input.push(signal(Signal::CaughtUp(1, None), Some(1)));
    assert_eq!(input.readiness(), Readiness::Ready(10));
    assert_eq!(drain(&mut input), [(0, 0), (0, 1)]);
    // p0 done but not caught up: waiting again.
    assert_eq!(input.readiness(), Readiness::Waiting);
    input.push(signal(Signal::CaughtUp(0, None), Some(0)));
    assert_eq!(input.readiness(), Readiness::Quiet);
    // New data makes p1 a member again.
    input.push(batch(Some(1), &[(5, 0)]));
    assert_eq!(input.readiness(), Readiness::Ready(5));
}

#[test]
fn a_caught_up_signal_applies_only_after_the_batches_before_it() {
    let mut input = StreamInput::new(Stream::Clicks, true);
    input.push(signal(Signal::Partitions(vec![0, 1]), None));
    input.push(batch(Some(1), &[(100, 0)]));
    input.push(signal(Signal::CaughtUp(1, None), Some(1)));
    input.push(batch(Some(0), &[(10, 0)]));
    assert_eq!(drain(&mut input), [(0, 0)]);
    // p0 is not caught up: p1's record (ts 100) must wait for p0's next batch.
    assert_eq!(input.readiness(), Readiness::Waiting);
    input.push(batch(Some(0), &[(200, 1)]));
    assert_eq!(drain(&mut input)[0], (1, 0));
}

#[test]
fn a_batch_after_a_caught_up_signal_makes_the_partition_a_member_again() {
    // Queue [A, CaughtUp, B]: once B is processed the partition is not caught up any
    // more (the reader has said nothing since B), so the merge waits for it.
    let mut input = StreamInput::new(Stream::Clicks, true);
    input.push(signal(Signal::Partitions(vec![0, 1]), None));
    input.push(batch(Some(1), &[(10, 0)]));
    input.push(signal(Signal::CaughtUp(1, Some(1)), Some(1)));
    input.push(batch(Some(1), &[(20, 1)]));
    input.push(batch(Some(0), &[(15, 0)]));
    input.push(batch(Some(0), &[(100, 1)]));
    assert_eq!(drain(&mut input), [(1, 0), (0, 0), (1, 1)]);
    assert_eq!(
        input.readiness(),
        Readiness::Waiting,
        "p1 may send older clicks"
    );
}

#[test]
fn positions_point_at_the_first_unprocessed_record() {
    let mut input = StreamInput::new(Stream::Clicks, true);
    input.push(signal(Signal::Partitions(vec![0, 1]), None));
    input.push(batch(Some(0), &[(10, 7), (30, 8)]));
    input.push(batch(Some(1), &[(20, 3)]));
    input.open = false;
    let run = input.next_run().unwrap();
    let done = input.complete(run);
    assert_eq!(done.partition, Some(0));
    assert_eq!(done.position.map(|p| p.line), Some(8));
    assert!(done.finished.is_none());
    let run = input.next_run().unwrap();
    let done = input.complete(run);
    assert_eq!(done.partition, Some(1));
    assert_eq!(done.position.map(|p| p.line), Some(4));
    assert!(done.finished.is_some());
}

#[test]
fn a_single_sequence_takes_whole_batches_in_order() {
    let mut input = StreamInput::new(Stream::Clicks, false);
    assert_eq!(input.readiness(), Readiness::Waiting);
    input.push(batch(None, &[(50, 1), (10, 2)]));
    // Ordered against the other stream by the batch's earliest time.
    assert_eq!(input.readiness(), Readiness::Ready(10));
    input.push(batch(None, &[(5, 3)]));
    assert_eq!(drain(&mut input), [(0, 1), (0, 2), (0, 3)]);
    assert_eq!(input.readiness(), Readiness::Waiting);
    input.open = false;
    assert_eq!(input.readiness(), Readiness::Closed);
}
