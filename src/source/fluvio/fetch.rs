//! attribd's own read of one Fluvio partition: a stream fetch from the partition's leader SPU
//! that always asks next for the first record it has not received whole.
//!
//! Why not the client's consumer: the SPU cuts each response at `max_bytes`, often inside a
//! batch. The `fluvio` 0.50.1 client keeps the records of that cut batch that arrived whole,
//! but tells the SPU to go on after the batch's *header* count — so the rest of that batch is
//! never sent (fixed upstream, not in a published release). The reader detected those gaps and
//! re-opened at the first missing offset, which cost a reconnect per fetch while behind (docs/
//! capacity.md). Here the same protocol is spoken with the crates the client is built from
//! (`fluvio-socket`, `fluvio-spu-schema`): the SPU's stream fetch sends a response, waits for
//! the consumer's offset update, and sends the next response from the batch at that offset; the
//! update sent is the offset after the last batch received whole, so a batch cut short is
//! dropped and comes again, whole, in the next response.
//!
//! What comes out is the same stream of batches (`Batch` with its base offset) the reader took
//! from the client before, so the reader's checks — consecutive offsets, stalls, re-opens on
//! errors — stay as they were, and a gap, should one still happen, is still caught there.

use std::pin::Pin;

use anyhow::{Context, Result, anyhow};
use fluvio::dataplane::link::ErrorCode;
use fluvio::dataplane::record::Batch;
use fluvio_socket::{
    AsyncResponse, ClientConfig, MultiplexerSocket, StreamSocket, VersionedSerialSocket,
};
use fluvio_spu_schema::server::fetch_offset::FetchOffsetsRequest;
use fluvio_spu_schema::server::stream_fetch::{
    DefaultStreamFetchRequest, DefaultStreamFetchResponse,
};
use fluvio_spu_schema::server::update_offset::{OffsetUpdate, UpdateOffsetsRequest};
use futures_util::{Stream, StreamExt};

use super::StartFrom;

/// Batches of one partition in offset order, as the reader consumes them.
pub type BatchStream = Pin<Box<dyn Stream<Item = std::result::Result<Batch, ErrorCode>> + Send>>;

/// Opens a stream fetch of `topic`/`partition` on the partition's leader SPU, at offset
/// `next`, or where `start` says when there is none.
pub async fn open(
    fluvio: &fluvio::Fluvio,
    cluster: &fluvio::FluvioClusterConfig,
    topic: &str,
    partition: u32,
    (next, start): (Option<i64>, StartFrom),
    max_bytes: i32,
) -> Result<BatchStream> {
    let mut socket = connect_to_leader(fluvio, cluster, topic, partition).await?;
    let serial = socket.create_serial_socket().await;
    let offset = match next {
        Some(o) => o,
        None => {
            let answer = serial
                .send_receive(FetchOffsetsRequest::new(topic.to_string(), partition))
                .await
                .context("asking the SPU for the partition's offsets")?;
            let p = answer
                .topics
                .into_iter()
                .find(|t| t.name == topic)
                .and_then(|t| {
                    t.partitions
                        .into_iter()
                        .find(|p| p.partition_index == partition)
                })
                .ok_or_else(|| anyhow!("the SPU does not hold {topic}/{partition}"))?;
            if p.error_code != ErrorCode::None {
                return Err(anyhow!(
                    "the SPU's offsets of {topic}/{partition}: {:?}",
                    p.error_code
                ));
            }
            match start {
                StartFrom::Beginning => p.start_offset,
                StartFrom::End => p.last_stable_offset,
            }
        }
    };
    let request = DefaultStreamFetchRequest::builder()
        .topic(topic.to_string())
        .partition(partition)
        .fetch_offset(offset)
        .max_bytes(max_bytes)
        .build()
        .map_err(|e| anyhow!("building the stream fetch request: {e}"))?;
    let version = serial
        .versions()
        .lookup_version::<DefaultStreamFetchRequest>()
        .ok_or_else(|| anyhow!("the SPU does not offer stream fetch"))?;
    let responses = socket
        .create_stream_with_version(request, version)
        .await
        .with_context(|| format!("opening a stream fetch of {topic}/{partition} at {offset}"))?;
    let state = Reading {
        responses,
        serial,
        expected: offset,
        max_bytes,
        ended: false,
    };
    Ok(Box::pin(
        futures_util::stream::unfold(state, Reading::next).flat_map(futures_util::stream::iter),
    ))
}

/// The open stream fetch and what to tell the SPU after each response.
struct Reading {
    responses: AsyncResponse<DefaultStreamFetchRequest>,
    /// Acknowledges responses (the SPU sends the next one from the offset acknowledged).
    serial: VersionedSerialSocket,
    /// The offset after the last record received whole.
    expected: i64,
    /// The fetch size asked for (for the error when one record is larger).
    max_bytes: i32,
    /// An error was handed out: the stream ends (the reader re-opens where it is).
    ended: bool,
}

impl Reading {
    /// The batches of the next response that arrived whole, decoded, after acknowledging
    /// where the next one must start; `None` when the SPU closed
    /// the stream, a last item with the error when it failed.
    async fn next(mut self) -> Option<(Vec<std::result::Result<Batch, ErrorCode>>, Reading)> {
        if self.ended {
            return None;
        }
        let response: DefaultStreamFetchResponse = match self.responses.next().await? {
            Ok(r) => r,
            Err(e) => return Some((vec![Err(ErrorCode::Other(e.to_string()))], self.closed())),
        };
        let stream_id = response.stream_id;
        let partition = response.partition;
        if partition.error_code != ErrorCode::None {
            return Some((vec![Err(partition.error_code)], self.closed()));
        }
        let before = self.expected;
        let received = partition.records.batches.len();
        let mut out = Vec::with_capacity(received);
        for raw in partition.records.batches {
            // Judged on the bytes, before decoding: a cut batch's records are cut wherever
            // the response ended (mid-record, or mid-stream of a compressed batch).
            if !raw.validate_decoding() {
                // Cut short by the response: the SPU starts the next one at a batch boundary,
                // so asking for the first missing record would skip the rest of this batch.
                // It comes again, whole, from its base offset.
                self.expected = self.expected.max(raw.get_base_offset());
                break;
            }
            match <Batch as TryFrom<_>>::try_from(raw) {
                Ok(batch) => {
                    self.expected = self.expected.max(batch.computed_last_offset());
                    out.push(Ok(batch));
                }
                Err(e) => {
                    out.push(Err(ErrorCode::Other(format!("decoding a batch: {e}"))));
                    return Some((out, self.closed()));
                }
            }
        }
        if received > 0 && out.is_empty() {
            // Not even one batch fitted: asking again would get the same answer.
            out.push(Err(ErrorCode::Other(format!(
                "the record batch at offset {before} does not fit in one fetch of {max} bytes \
                 (raise source.fluvio.max_fetch_bytes)",
                max = self.max_bytes
            ))));
            return Some((out, self.closed()));
        }
        if !out.is_empty() {
            let update = UpdateOffsetsRequest {
                offsets: vec![OffsetUpdate {
                    offset: self.expected,
                    session_id: stream_id,
                }],
            };
            let refused = match self.serial.send_receive(update).await {
                Ok(answer) => answer
                    .status
                    .into_iter()
                    .find(|s| s.error != ErrorCode::None)
                    .map(|s| format!("{:?}", s.error)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = refused {
                out.push(Err(ErrorCode::Other(format!(
                    "acknowledging offset {} to the SPU: {e}",
                    self.expected
                ))));
                return Some((out, self.closed()));
            }
        }
        Some((out, self))
    }

    /// After an error item: nothing more.
    fn closed(mut self) -> Reading {
        self.ended = true;
        self
    }
}

/// A socket to the SPU that leads `topic`/`partition`, through the cluster's TLS settings.
async fn connect_to_leader(
    fluvio: &fluvio::Fluvio,
    cluster: &fluvio::FluvioClusterConfig,
    topic: &str,
    partition: u32,
) -> Result<StreamSocket> {
    let spu = super::admin::leader_spu(fluvio, topic, partition).await?;
    let config = ClientConfig::new(
        spu.spec.public_endpoint.addr(),
        TryFrom::try_from(cluster.tls.clone()).context("the Fluvio TLS settings")?,
        false,
    )
    // As the client does: the SPU's name prefixes the TLS domain (SNI).
    .with_prefix_sni_domain(&spu.name);
    let addr = config.addr().to_string();
    let (socket, config, versions) = config
        .connect()
        .await
        .with_context(|| format!("connecting to SPU {} at {addr}", spu.spec.id))?
        .split();
    Ok(StreamSocket::new(
        config,
        MultiplexerSocket::shared(socket),
        versions,
    ))
}
