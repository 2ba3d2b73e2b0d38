//! The ClickHouse sink: minute aggregates and raw conversion versions, exactly once.
//!
//! Sits after the Parquet sink on the "rest" sink thread's output: it receives the same
//! conversion rows and aggregate deltas, buffers them (aggregate rows of the same bucket are
//! added up first, so ClickHouse gets rows per minute × dimensions, not per event) and flushes
//! one INSERT per table when a buffer reaches `flush_rows` and at every checkpoint (so the
//! checkpoint interval is the age bound). Flush points depend only on the input, never on the
//! clock, so a replay after a crash forms the same batches with the same ids.
//!
//! Exactly once: every flush gets a batch id (checkpoint epoch, flush number, hash of the
//! rows), written in each row's `batch_id` column — part of the aggregate table's sorting key,
//! so rows of different batches are never merged and the id stays visible. Before every retry,
//! and before every insert of a run's first epoch (which may replay what a crashed run already
//! wrote), the sink looks the id up in the data itself, so a batch whose INSERT succeeded but
//! whose answer was lost — or whose server crashed right after writing it — is never written
//! twice. A materialized view also records each batch in `attribd_batches` for operators.
//! Failures are retried with exponential backoff and jitter behind a circuit breaker; while it
//! waits, the bounded channels slow the whole pipeline down — nothing is dropped. Only an error
//! a retry cannot fix (refused credentials, a missing or incompatible table: decided from the
//! server's error code, see `error.rs`) stops the run.
//!
//! Layout (one responsibility per file):
//!
//! * `config.rs` — [`ClickHouseConfig`] (`[sink.clickhouse]`), its defaults and validation,
//!   [`Credentials`], the loggable URL, the HTTP [`client`];
//! * `sink.rs` — [`ClickHouseSink`]: buffers, flush points, barriers, the epoch's batch ids,
//!   taking a previous end back;
//! * `commit.rs` — exactly-once commit of one batch: [`batch_id`], the lookup by id, the retry
//!   loop with backoff and jitter, the circuit breaker;
//! * `error.rs` — [`ClickHouseError`]: every failed request, classified permanent or transient
//!   from the client's error variant and the server's exception code;
//! * `migrations.rs` — DDL per server version, `attribd migrate`, the compatibility check;
//! * `encode.rs` — the RowBinary rows sent to the two data tables.

pub mod commit;
pub mod config;
pub mod encode;
pub mod error;
pub mod migrations;
pub mod sink;

pub use commit::batch_id;
pub use config::{ClickHouseConfig, Credentials, block_on, client, loggable_url};
pub use error::{ClickHouseError, ErrorClass};
pub use migrations::{drop_database, migrate};
pub use sink::{ClickHouseSink, ClickHouseTotals};
