//! The decoder threads: one per stream, raw batches in, decoded batches out.
//!
//! Decoding (JSON → typed events, validation, dead letters with reasons) is
//! `event::decode`; this is only the thread around it and its queues.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use prometheus_client::metrics::gauge::Gauge;

use super::channel::{Metered, spawn};
use super::inputs::{Decoded, DecodedKind};
use super::sources::source_name;
use crate::config::PipelineConfig;
use crate::event::Stream;
use crate::event::decode::Decoder;
use crate::source::RawBatch;
use crate::telemetry::{Queue, SharedMetrics};

/// Starts both decoder threads: `raw[i]` in, `decoded[i]` out (0 clicks, 1 conversions).
pub(super) fn start(
    cfg: &PipelineConfig,
    raw: [Receiver<RawBatch>; 2],
    decoded: [Sender<Decoded>; 2],
    metrics: &SharedMetrics,
) -> Result<Vec<JoinHandle<Result<()>>>> {
    let limits = cfg.decode_limits();
    let [raw_clicks, raw_conversions] = raw;
    let [clicks, conversions] = decoded;
    [
        (Stream::Clicks, raw_clicks, clicks),
        (Stream::Conversions, raw_conversions, conversions),
    ]
    .into_iter()
    .map(|(stream, rx, tx)| {
        let decoder = Decoder::new(source_name(cfg, stream), limits.clone());
        let raw_depth = metrics.queue(Queue::raw(stream)).clone();
        let tx = Metered::new(tx, metrics, Queue::decoded(stream));
        let name = match stream {
            Stream::Clicks => "decode-clicks",
            Stream::Conversions => "decode-conversions",
        };
        spawn(name, move || {
            decode_loop(stream, &decoder, rx, &raw_depth, &tx)
        })
    })
    .collect()
}

/// One decoder thread: raw batches of `stream` in, decoded batches out, until either side
/// closes.
fn decode_loop(
    stream: Stream,
    decoder: &Decoder,
    rx: Receiver<RawBatch>,
    raw_depth: &Gauge,
    tx: &Metered<Decoded>,
) -> Result<()> {
    for mut raw in rx {
        raw_depth.dec_by(raw.len() as i64);
        // A batch that names its own source (an HTTP request) decodes with that name.
        let named;
        let decoder = match raw.source.take() {
            Some(source) => {
                named = Decoder {
                    source,
                    ..decoder.clone()
                };
                &named
            }
            None => decoder,
        };
        let (kind, dead, first_ts) = match stream {
            Stream::Clicks => {
                let (b, dead) = decoder.decode_clicks(&raw);
                let first = b.clicks.iter().map(|c| c.ts_ms).min();
                (DecodedKind::Clicks(Arc::new(b)), dead, first)
            }
            Stream::Conversions => {
                let (b, dead) = decoder.decode_conversions(&raw);
                let first = b.conversions.iter().map(|c| c.ts_ms).min();
                (DecodedKind::Conversions(b), dead, first)
            }
        };
        let msg = Decoded {
            kind,
            dead,
            end: raw.end,
            partition: raw.partition,
            first_ts: first_ts.unwrap_or(i64::MIN),
            arrived: raw.arrived,
            signal: raw.signal.take(),
            credit: raw.credit.take(),
        };
        let n = msg.records();
        if !tx.send(msg, n) {
            break;
        }
    }
    Ok(())
}
