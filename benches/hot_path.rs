//! Per-stage throughput of the hot path: decode, state, Parquet encoding.
//!
//! `cargo bench --bench hot_path`. Each benchmark processes one batch of generated events and
//! reports elements (events) per second; multiply by the cores a stage gets to size a machine.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use attribd::event::Stream;
use attribd::event::decode::{DecodeLimits, Decoder};
use attribd::rows::SinkBatch;
use attribd::sink::parquet::{ParquetConfig, PartitionedTable};
use attribd::source::RawBatch;
use attribd::source::generator::{GeneratorConfig, generate};
use attribd::state::{Engine, EngineConfig};

/// Generated click and conversion lines as raw batches of `attribd::source::BATCH_LINES`.
fn batches(clicks: u64) -> (Vec<RawBatch>, Vec<RawBatch>) {
    let cfg = GeneratorConfig {
        clicks,
        malformed_rate: 0.0,
        ..GeneratorConfig::default()
    };
    let mut out = (vec![RawBatch::default()], vec![RawBatch::default()]);
    generate(&cfg, |s, line| {
        let list = match s {
            Stream::Clicks => &mut out.0,
            Stream::Conversions => &mut out.1,
        };
        if list
            .last()
            .is_some_and(|b| b.len() >= attribd::source::BATCH_LINES)
        {
            list.push(RawBatch::default());
        }
        if let Some(b) = list.last_mut() {
            b.push_line(line, Default::default());
        }
        true
    })
    .expect("generator");
    out
}

fn decode(c: &mut Criterion) {
    let (clicks, convs) = batches(20_000);
    let d = Decoder::new(Arc::from("bench"), DecodeLimits::default());
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(clicks[0].len() as u64));
    g.bench_function("clicks_batch", |b| b.iter(|| d.decode_clicks(&clicks[0])));
    g.throughput(Throughput::Elements(convs[0].len() as u64));
    g.bench_function("conversions_batch", |b| {
        b.iter(|| d.decode_conversions(&convs[0]))
    });
    g.finish();
}

fn state(c: &mut Criterion) {
    let (clicks, convs) = batches(200_000);
    let d = Decoder::new(Arc::from("bench"), DecodeLimits::default());
    let click_batches: Vec<_> = clicks.iter().map(|b| d.decode_clicks(b).0).collect();
    let conv_batches: Vec<_> = convs.iter().map(|b| d.decode_conversions(b).0).collect();
    let events: usize = click_batches.iter().map(|b| b.clicks.len()).sum::<usize>()
        + conv_batches
            .iter()
            .map(|b| b.conversions.len())
            .sum::<usize>();
    let mut g = c.benchmark_group("state");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events as u64));
    g.bench_function("engine_200k_clicks_with_conversions", |b| {
        b.iter_batched(
            || (click_batches.clone(), conv_batches.clone()),
            |(cb, vb)| {
                let mut e = Engine::new(EngineConfig::default());
                let mut out = SinkBatch::default();
                for b in cb {
                    e.on_clicks(b, &mut out);
                }
                for b in vb {
                    e.on_conversions(b, &mut out);
                }
                e.finish(&mut out);
                out
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let (clicks, _) = batches(20_000);
    let d = Decoder::new(Arc::from("bench"), DecodeLimits::default());
    let batch = d.decode_clicks(&clicks[0]).0;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ParquetConfig {
        out: dir.path().to_path_buf(),
        ..ParquetConfig::default()
    };
    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(batch.clicks.len() as u64));
    g.bench_function("clicks_batch_zstd3", |b| {
        b.iter(|| {
            let mut t = PartitionedTable::<attribd::sink::parquet::ClickBuilders>::new(
                dir.path(),
                "clicks",
                "bench",
                &cfg,
            )
            .expect("table");
            for (i, c) in batch.clicks.iter().enumerate() {
                let (builders, hour) = t.builders(c.ts_ms);
                builders.append(&batch, i as u32, true, false);
                t.after_append(hour).expect("append");
            }
            t.close_all().expect("close");
        })
    });
    g.finish();
}

criterion_group!(benches, decode, state, parquet);
criterion_main!(benches);
