//! The fixed label values stages report under: [`Queue`], the bounded queues between stages
//! in flow order (`attribd_queue_depth_events{queue=…}`), and [`SinkKind`], the sinks
//! (`attribd_sink_*{sink=…}`). Sources, decoders, the state stage and the sinks name their
//! metric handles with these.

use crate::event::Stream;

/// The queues between stages, in flow order; `attribd_queue_depth_events{queue=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    RawClicks,
    RawConversions,
    DecodedClicks,
    DecodedConversions,
    SinkClicks,
    SinkRest,
    SinkClickHouse,
}

impl Queue {
    pub const ALL: [Queue; 7] = [
        Queue::RawClicks,
        Queue::RawConversions,
        Queue::DecodedClicks,
        Queue::DecodedConversions,
        Queue::SinkClicks,
        Queue::SinkRest,
        Queue::SinkClickHouse,
    ];

    /// The queue of raw batches of `stream`, in front of its decoder.
    pub fn raw(stream: Stream) -> Queue {
        match stream {
            Stream::Clicks => Queue::RawClicks,
            Stream::Conversions => Queue::RawConversions,
        }
    }

    /// The queue of decoded batches of `stream`, in front of the state stage.
    pub fn decoded(stream: Stream) -> Queue {
        match stream {
            Stream::Clicks => Queue::DecodedClicks,
            Stream::Conversions => Queue::DecodedConversions,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::RawClicks => "raw_clicks",
            Queue::RawConversions => "raw_conversions",
            Queue::DecodedClicks => "decoded_clicks",
            Queue::DecodedConversions => "decoded_conversions",
            Queue::SinkClicks => "sink_clicks",
            Queue::SinkRest => "sink_rest",
            Queue::SinkClickHouse => "sink_clickhouse",
        }
    }
}

/// Where a sink failure or row count is reported: `attribd_sink_*{sink=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Parquet,
    DeadLetters,
    ClickHouse,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Parquet => "parquet",
            SinkKind::DeadLetters => "dead_letters",
            SinkKind::ClickHouse => "clickhouse",
        }
    }
}
