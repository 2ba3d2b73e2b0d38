//! `attribd produce`: loads an NDJSON file into a Fluvio topic, keyed by `click_id` — the way
//! test and backfill data gets into the topics the Fluvio source reads. Not part of a running
//! pipeline.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{FluvioSourceConfig, admin};
use crate::source::file::{Input, read_batches};

/// `attribd produce`: loads an NDJSON file into `topic`, each record keyed by its `click_id`
/// (so clicks and conversions of one click share a partition). Lines without a readable
/// `click_id` are sent unkeyed and end up as dead letters of the pipeline, not lost here.
/// Returns the number of records sent.
pub fn produce(endpoint: &str, topic: &str, file: &str) -> Result<u64> {
    use fluvio::RecordKey;
    let input = Input::parse(file);
    let total = match &input {
        Input::Path(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        Input::Stdin => 0,
    };
    let reader = input.open()?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("→ {topic}"));
    let cfg = FluvioSourceConfig::at(endpoint);
    let rt = admin::runtime()?;
    let fluvio = rt.block_on(admin::connect(&cfg, Some(Duration::from_secs(30)), |_| {}))?;
    let producer = rt
        .block_on(fluvio.topic_producer(topic.to_string()))
        .with_context(|| format!("opening a producer for Fluvio topic {topic}"))?;
    let mut sent = 0u64;
    let mut failure = None;
    read_batches(reader, |batch| {
        let result = rt.block_on(async {
            for rec in &batch.records {
                let line = batch.line(rec);
                match partition_key(line) {
                    Some(k) => producer.send(k, line.to_vec()).await?,
                    None => producer.send(RecordKey::NULL, line.to_vec()).await?,
                };
            }
            producer.flush().await
        });
        match result {
            Ok(()) => {
                sent += batch.len() as u64;
                bar.inc(batch.data.len() as u64 + batch.len() as u64);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .with_context(|| format!("reading {file}"))?;
    bar.finish();
    if let Some(e) = failure {
        return Err(anyhow::anyhow!("producing to Fluvio topic {topic}: {e}"));
    }
    Ok(sent)
}

/// A record's partition key: its `click_id`, so a click and its conversions share a
/// partition (the Fluvio source attributes within a partition). `None` when the line has no
/// readable `click_id`; such a record is sent unkeyed and becomes a dead letter downstream.
pub fn partition_key(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyOnly<'a> {
        #[serde(borrow)]
        click_id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<KeyOnly>(line)
        .ok()
        .and_then(|k| k.click_id.map(|c| c.into_owned()))
}
