//! Typed events: what a click and a conversion postback are once decoded.
//!
//! Sources hand raw NDJSON lines to [`decode`], which turns a batch of lines into a
//! [`ClickBatch`] or a [`ConversionBatch`] plus dead letters. The state stage consumes those
//! batches; the Parquet sink reads click strings straight out of the batch arena, so a click's
//! strings are copied exactly once (from the input line into the arena) on their whole way to disk.
//!
//! Strings live in one `String` arena per batch and events refer to them by [`Span`]; this keeps
//! decoding at one allocation per batch instead of a dozen per event.

pub mod decode;
pub mod fast;
pub mod keys;
pub mod privacy;
pub mod time;

use std::fmt;

pub use crate::raw::Position;

/// Which of the two input streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Clicks,
    Conversions,
}

impl Stream {
    /// Both, in index order (0 clicks, 1 conversions).
    pub const ALL: [Stream; 2] = [Stream::Clicks, Stream::Conversions];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Clicks => "clicks",
            Stream::Conversions => "conversions",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a conversion as reported by the advertiser's postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Approved = 0,
    Pending = 1,
    Rejected = 2,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Approved => "approved",
            Status::Pending => "pending",
            Status::Rejected => "rejected",
        }
    }

    /// Case-insensitive parse of the postback's `status` field.
    pub fn parse(s: &str) -> Option<Status> {
        if s.eq_ignore_ascii_case("approved") {
            Some(Status::Approved)
        } else if s.eq_ignore_ascii_case("pending") {
            Some(Status::Pending)
        } else if s.eq_ignore_ascii_case("rejected") {
            Some(Status::Rejected)
        } else {
            None
        }
    }

    pub fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Approved,
            1 => Status::Pending,
            _ => Status::Rejected,
        }
    }
}

/// A byte range inside a batch's string arena. `len == 0` with `start == u32::MAX` means absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };

    pub fn is_none(self) -> bool {
        self.start == u32::MAX
    }
}

/// Append-only string storage shared by all events of one batch.
#[derive(Debug, Default, Clone)]
pub struct Arena {
    text: String,
}

impl Arena {
    pub fn with_capacity(bytes: usize) -> Arena {
        Arena {
            text: String::with_capacity(bytes),
        }
    }

    pub fn push(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    pub fn push_opt(&mut self, s: Option<&str>) -> Span {
        match s {
            Some(s) => self.push(s),
            None => Span::NONE,
        }
    }

    /// The string a span refers to; absent spans read as `""`.
    pub fn get(&self, span: Span) -> &str {
        if span.is_none() {
            return "";
        }
        let start = span.start as usize;
        &self.text[start..start + span.len as usize]
    }

    pub fn get_opt(&self, span: Span) -> Option<&str> {
        if span.is_none() {
            None
        } else {
            Some(self.get(span))
        }
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// One decoded click. All strings are spans into the batch arena.
#[derive(Debug, Clone, Copy)]
pub struct Click {
    pub click_id: Span,
    pub ts_ms: i64,
    pub tenant_id: Span,
    pub offer_id: Span,
    pub affiliate_id: Span,
    pub country: Span,
    pub device: Span,
    pub os: Span,
    pub ip: Span,
    pub user_agent: Span,
    pub referrer: Span,
    pub subs: [Span; 5],
    /// Precomputed by the decoder (in parallel with the state stage), see [`keys`]:
    /// hash of `click_id`.
    pub click_key: u64,
    /// Hash of the aggregate dimensions `(tenant_id, offer_id, affiliate_id, country)`.
    pub dims_hash: u64,
    /// Hash of the other inherited columns `(device, sub1..sub5)`.
    pub extras_hash: u64,
    /// Hash of `(tenant_id, offer_id, ip)` for unique-click counting; `None` without an ip.
    pub visitor_hash: Option<u64>,
    /// Where the click came from (a Fluvio offset is where a checkpoint resumes).
    pub position: Position,
}

/// One decoded conversion postback. Amount is held in micro-units so sums are exact.
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    pub click_id: Span,
    pub external_id: Span,
    pub amount_micros: i64,
    pub status: Status,
    pub currency: Span,
    pub ts_ms: i64,
    pub tenant_id: Span,
    pub product_id: Span,
    pub order_id: Span,
    pub customer_id: Span,
    pub metadata: Span,
    /// The original line, kept so a refused status change can be dead-lettered verbatim.
    pub raw: Span,
    pub position: Position,
}

/// A batch of decoded clicks with their string arena.
#[derive(Debug, Default, Clone)]
pub struct ClickBatch {
    pub arena: Arena,
    pub clicks: Vec<Click>,
}

/// A batch of decoded conversions with their string arena.
#[derive(Debug, Default, Clone)]
pub struct ConversionBatch {
    pub arena: Arena,
    pub conversions: Vec<Conversion>,
}

/// Why a record was rejected. The string form is the `reason` column of the dead-letter output
/// and the label of the per-reason counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadReason {
    InvalidJson,
    InvalidUtf8,
    Oversize,
    MissingField,
    InvalidField,
    TimestampOutOfRange,
    RefusedStatusChange,
}

impl DeadReason {
    pub const ALL: [DeadReason; 7] = [
        DeadReason::InvalidJson,
        DeadReason::InvalidUtf8,
        DeadReason::Oversize,
        DeadReason::MissingField,
        DeadReason::InvalidField,
        DeadReason::TimestampOutOfRange,
        DeadReason::RefusedStatusChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidJson => "invalid_json",
            DeadReason::InvalidUtf8 => "invalid_utf8",
            DeadReason::Oversize => "oversize",
            DeadReason::MissingField => "missing_field",
            DeadReason::InvalidField => "invalid_field",
            DeadReason::TimestampOutOfRange => "timestamp_out_of_range",
            DeadReason::RefusedStatusChange => "refused_status_change",
        }
    }
}

/// A record that could not be used, with the reason and the original bytes.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub detail: String,
    pub stream: Stream,
    pub source: std::sync::Arc<str>,
    pub position: Position,
    pub raw: Vec<u8>,
}
