//! Unit tests of `pipeline/sources.rs`.

use super::*;
use crate::source::BATCH_LINES;
use crate::source::generator::GeneratorConfig;
use crate::telemetry::{Metrics, Queue};

/// A batch of lines `first..=last`, each `l<n>`.
fn lines(first: u64, last: u64) -> RawBatch {
    let mut b = RawBatch::default();
    for n in first..=last {
        b.push_line(
            format!("l{n}").as_bytes(),
            Position {
                line: n,
                offset: n * 10,
            },
        );
    }
    b
}

/// The lines of a batch as (line number, text).
fn contents(b: &RawBatch) -> Vec<(u64, String)> {
    b.records
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(b.line(r)).into_owned();
            (r.position.line, text)
        })
        .collect()
}

fn numbered(first: u64, last: u64) -> Vec<(u64, String)> {
    (first..=last).map(|n| (n, format!("l{n}"))).collect()
}

#[test]
fn a_batch_wholly_before_the_restore_point_is_dropped() {
    assert!(after_restore_point(lines(1, 10), 10).is_none());
    assert!(after_restore_point(lines(1, 10), 25).is_none());
    // Also one without records, whose end is before the point.
    let mut empty = RawBatch::default();
    empty.end.line = 7;
    assert!(after_restore_point(empty, 10).is_none());
}

#[test]
fn a_batch_straddling_the_restore_point_keeps_exactly_its_later_lines() {
    let b = after_restore_point(lines(11, 20), 15).unwrap();
    assert_eq!(contents(&b), numbered(16, 20));
    // Where the stream stands after it is unchanged.
    assert_eq!(b.end.line, 20);
    assert_eq!(b.end.offset, 200 + 4);
    // Only its last line left.
    let b = after_restore_point(lines(11, 20), 19).unwrap();
    assert_eq!(contents(&b), numbered(20, 20));
}

#[test]
fn a_batch_after_the_restore_point_and_any_batch_without_one_is_sent_whole() {
    let b = after_restore_point(lines(21, 30), 20).unwrap();
    assert_eq!(contents(&b), numbered(21, 30));
    let b = after_restore_point(lines(1, 10), 0).unwrap();
    assert_eq!(contents(&b), numbered(1, 10));
}

#[test]
fn forward_after_sends_what_is_after_the_restore_point_and_drops_the_rest() {
    let metrics = Metrics::new();
    let (tx, rx) = crossbeam_channel::unbounded();
    let tx = Metered::new(tx, &metrics, Queue::RawClicks);
    assert!(forward_after(&tx, lines(1, 10), 15));
    assert!(forward_after(&tx, lines(11, 20), 15));
    assert!(forward_after(&tx, lines(21, 30), 15));
    let sent: Vec<_> = rx.try_iter().map(|b| contents(&b)).collect();
    assert_eq!(sent, [numbered(16, 20), numbered(21, 30)]);
    // The queue's depth counts the lines sent, not those dropped.
    assert_eq!(metrics.queue(Queue::RawClicks).get(), 15);
    drop(rx);
    // A dropped batch needs no receiver; one to send finds it gone.
    assert!(forward_after(&tx, lines(1, 10), 15));
    assert!(!forward_after(&tx, lines(21, 30), 15));
}

/// A generator of `clicks` click lines exactly (no duplicates, nothing malformed) whose
/// conversions arrive over hours, so many come after the last click.
fn generator(clicks: u64) -> GeneratorConfig {
    GeneratorConfig {
        clicks,
        duplicate_click_rate: 0.0,
        malformed_rate: 0.0,
        conversion_rate: 0.2,
        ..GeneratorConfig::default()
    }
}

/// The pairs the generator source should send, by the rule: pair `i` holds click lines
/// `i·B+1 ..= (i+1)·B` and the conversions generated while the clicks before them were
/// `i·B ..< (i+1)·B` (B = `BATCH_LINES`); after the last click, the conversions still to
/// come join the last pair (or, after a full click batch, one of their own).
fn expected_pairs(cfg: &GeneratorConfig) -> Vec<[Vec<Vec<u8>>; 2]> {
    let mut pairs: Vec<[Vec<Vec<u8>>; 2]> = Vec::new();
    let mut clicks_so_far = 0usize;
    crate::source::generator::generate(cfg, |stream, line| {
        let i = match stream {
            Stream::Clicks => {
                clicks_so_far += 1;
                (clicks_so_far - 1) / BATCH_LINES
            }
            Stream::Conversions => clicks_so_far / BATCH_LINES,
        };
        if pairs.len() <= i {
            pairs.resize_with(i + 1, Default::default);
        }
        pairs[i][usize::from(stream == Stream::Conversions)].push(line.to_vec());
        true
    })
    .unwrap();
    pairs
}

/// What `generator_source` sends: (click batches, conversion batches).
fn generator_batches(cfg: &GeneratorConfig, resume: [u64; 2]) -> [Vec<RawBatch>; 2] {
    let metrics = Metrics::new();
    let (ctx, crx) = crossbeam_channel::unbounded();
    let (vtx, vrx) = crossbeam_channel::unbounded();
    generator_source(
        cfg,
        Metered::new(ctx, &metrics, Queue::RawClicks),
        Metered::new(vtx, &metrics, Queue::RawConversions),
        resume,
    )
    .unwrap();
    [crx.try_iter().collect(), vrx.try_iter().collect()]
}

fn texts(b: &RawBatch) -> Vec<Vec<u8>> {
    b.records.iter().map(|r| b.line(r).to_vec()).collect()
}

/// Every pair sent equals `expected[first..]`, with consecutive line numbers and each
/// batch's end where its stream stands after the pair.
fn assert_pairs(sent: &[Vec<RawBatch>; 2], expected: &[[Vec<Vec<u8>>; 2]], first: usize) {
    let want = &expected[first..];
    assert_eq!(sent[0].len(), want.len(), "click batches");
    assert_eq!(sent[1].len(), want.len(), "conversion batches");
    for s in 0..2 {
        let mut line: u64 = expected[..first].iter().map(|p| p[s].len() as u64).sum();
        for (i, (batch, pair)) in sent[s].iter().zip(want).enumerate() {
            assert_eq!(texts(batch), pair[s], "stream {s}, pair {}", first + i);
            for r in &batch.records {
                line += 1;
                assert_eq!(r.position.line, line);
            }
            assert_eq!(batch.end.line, line, "stream {s}, pair {}", first + i);
        }
    }
}

#[test]
fn the_generator_sends_clicks_and_conversions_in_pairs_the_last_one_partial() {
    let b = BATCH_LINES as u64;
    let cfg = generator(2 * b + 100);
    let expected = expected_pairs(&cfg);
    // Two full click batches and a partial one, conversions with every pair.
    assert_eq!(expected.len(), 3);
    assert_eq!(expected[2][0].len(), 100);
    assert!(expected.iter().all(|p| !p[1].is_empty()));
    assert_pairs(&generator_batches(&cfg, [0, 0]), &expected, 0);
}

#[test]
fn conversions_after_a_full_last_click_batch_come_as_a_pair_of_their_own() {
    let b = BATCH_LINES as u64;
    let cfg = generator(2 * b);
    let expected = expected_pairs(&cfg);
    assert_eq!(expected.len(), 3);
    assert!(expected[2][0].is_empty());
    assert!(!expected[2][1].is_empty());
    let sent = generator_batches(&cfg, [0, 0]);
    assert_pairs(&sent, &expected, 0);
    // The empty click batch still says where the click stream stands.
    assert_eq!(sent[0][2].end.line, 2 * b);
}

#[test]
fn pairs_at_or_before_the_resume_point_are_not_sent() {
    let b = BATCH_LINES as u64;
    let cfg = generator(2 * b + 100);
    let expected = expected_pairs(&cfg);
    // A checkpoint falls between pairs: the lines per stream after the first `n` pairs.
    let after =
        |n: usize| [0, 1].map(|s| expected[..n].iter().map(|p| p[s].len() as u64).sum::<u64>());
    // Resuming after the first pair: from the second on.
    assert_pairs(&generator_batches(&cfg, after(1)), &expected, 1);
    // After the second.
    assert_pairs(&generator_batches(&cfg, after(2)), &expected, 2);
    // After the end of the input (a finished run): nothing.
    assert_pairs(&generator_batches(&cfg, after(3)), &expected, 3);
}

/// Live pairs are cut by the clock, so after a restart a pair may straddle the point
/// where the checkpoint was taken: each side keeps exactly its lines after it.
#[test]
fn a_pair_straddling_the_restore_point_keeps_only_what_comes_after_it() {
    let b = BATCH_LINES as u64;
    let cfg = generator(2 * b + 100);
    let expected = expected_pairs(&cfg);
    let all = generator_batches(&cfg, [0, 0]);
    let resume = [b + 10, expected[0][1].len() as u64 + 3];
    let sent = generator_batches(&cfg, resume);
    for s in 0..2 {
        let lines = |batches: &[RawBatch]| -> Vec<u64> {
            batches
                .iter()
                .flat_map(|b| b.records.iter().map(|r| r.position.line))
                .collect()
        };
        let want: Vec<u64> = lines(&all[s])
            .into_iter()
            .filter(|l| *l > resume[s])
            .collect();
        assert_eq!(lines(&sent[s]), want, "stream {s}");
    }
    assert_eq!(sent[0].len(), sent[1].len(), "still pairs");
}
