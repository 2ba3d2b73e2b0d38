//! Subject erasure (GDPR art. 17, LGPD art. 18): `attribd privacy delete --customer-id ID`.
//!
//! What goes: every version of the customer's conversions (rows removed from Parquet
//! `conversions/` and ClickHouse `conversions`), and on the clicks those conversions were
//! attributed to, the fields that describe the visitor (`ip`, `user_agent`, `referrer`,
//! `sub1`–`sub5`; the click row stays, see docs/operations.md for why). Aggregates stay.
//!
//! The steps, each safe to repeat, and where a crash leaves them:
//!
//! 1. **Queued**: `STATE/privacy/requests/<id>.json` (the command line writes it).
//! 2. **Decided**: a line in the ledger `STATE/privacy/erasures.ndjson` (appended, fsynced) with
//!    a hash of the customer id. From then on the sinks never receive a row of the customer
//!    (the [`Shared`] filter the state stage applies to every batch, and which a restart loads
//!    before the first batch), so neither new data nor a replay from an older checkpoint can
//!    write one again; a postback still waiting for its click loses its personal fields at the
//!    next checkpoint.
//! 3. **Settled** (daemon only): two checkpoints after the decision every row sent before it
//!    is in a closed file.
//! 4. **Erased**: the customer's conversions are found in the Parquet files; the keys of those
//!    conversions and their clicks (and the clicks' hours) join the ledger, so a status change
//!    without `customer_id` or a replayed click is filtered by key and a rerun still knows
//!    them once the rows are gone. ClickHouse first (`ALTER TABLE … DELETE`, waited for: its
//!    condition names the conversions found in Parquet), then each Parquet file holding them is
//!    rewritten (`scan::replace`: temporary file, fsync, rename), its count noted in
//!    `progress/<id>.ndjson` just before the rename.
//! 5. **Done**: a line in the audit log `STATE/privacy/audit.ndjson` (time, request, tenant,
//!    SHA-256 of the id, rows per table — no personal data), `done/<id>.json`, the request file
//!    removed.
//!
//! Who performs it: the process that holds the output directory. A running daemon does, from
//! its lifecycle thread after its checkpoints; with none running, the command line takes the
//! directory's lock and does it itself.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, BooleanArray, RecordBatch, TimestampMillisecondArray};
use arrow::compute::filter_record_batch;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scan;
use crate::config::PipelineConfig;
use crate::event::keys;
use crate::rows::{ConversionRow, SinkBatch};
use crate::sink::clickhouse::ClickHouseConfig;
use crate::telemetry::Metrics;

/// What a postback still waiting for its click keeps as `customer_id` once its customer is
/// erased: the filter drops every row that carries it.
pub const ERASED_CUSTOMER: &str = "\u{1}erased";

/// The click fields that describe the visitor: nulled on the clicks of an erased customer.
pub const CLICK_PERSONAL_FIELDS: [&str; 8] = [
    "ip",
    "user_agent",
    "referrer",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
];

/// Whose data a request is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub customer_id: String,
    /// `None`: every tenant.
    pub tenant: Option<String>,
}

impl Subject {
    pub fn matches(&self, tenant: &str, customer: Option<&str>) -> bool {
        customer == Some(self.customer_id.as_str())
            && self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// SHA-256 of the customer id, hex: what the ledger and the audit log keep.
    pub fn hash(&self) -> String {
        customer_hash(&self.customer_id)
    }
}

pub fn customer_hash(customer_id: &str) -> String {
    hex::encode(Sha256::digest(customer_id.as_bytes()))
}

/// A queued request (`requests/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub requested_at_ms: i64,
}

/// One ledger line: the decision (customer hash) or, later, the keys found for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LedgerLine {
    request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    customer_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conversion_keys: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    click_keys: Vec<u64>,
    /// The hour partitions (`dt=…/hour=…`) holding those clicks: where a rerun looks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    click_hours: Vec<String>,
}

impl LedgerLine {
    /// The keys (conversion, click) of waiting postbacks the state stage forgot.
    fn waiting(keys: &[(u64, u64)]) -> LedgerLine {
        LedgerLine {
            request: "waiting".into(),
            conversion_keys: keys.iter().map(|k| k.0).collect(),
            click_keys: keys.iter().map(|k| k.1).collect(),
            ..LedgerLine::default()
        }
    }
}

/// Rows removed (or, for clicks, scrubbed) per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub parquet_conversions: u64,
    pub parquet_clicks_scrubbed: u64,
    pub clickhouse_conversions: u64,
}

/// Everything erased so far, as the sinks' filter needs it.
#[derive(Debug, Default)]
pub struct Erased {
    /// Customer hash → (tenant or every tenant, decided at).
    customers: FxHashMap<String, Vec<(Option<String>, i64)>>,
    conversions: FxHashSet<u64>,
    clicks: FxHashSet<u64>,
}

impl Erased {
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty() && self.conversions.is_empty() && self.clicks.is_empty()
    }

    fn add(&mut self, line: &LedgerLine) {
        if let (Some(h), Some(at)) = (&line.customer_sha256, line.at_ms) {
            self.customers
                .entry(h.clone())
                .or_default()
                .push((line.tenant.clone(), at));
        }
        self.conversions.extend(&line.conversion_keys);
        self.clicks.extend(&line.click_keys);
    }

    fn customer_erased(&self, tenant: &str, customer: &str, ts_ms: i64) -> bool {
        if customer == ERASED_CUSTOMER {
            return true;
        }
        self.customers
            .get(&customer_hash(customer))
            .is_some_and(|v| {
                v.iter()
                    .any(|(t, at)| t.as_deref().is_none_or(|t| t == tenant) && ts_ms <= *at)
            })
    }

    /// Whether a conversion row belongs to an erased customer (or is a version of an erased
    /// conversion).
    pub fn drops(&self, r: &ConversionRow) -> bool {
        r.customer_id
            .as_deref()
            .is_some_and(|c| self.customer_erased(&r.tenant_id, c, r.ts_ms))
            || (!self.conversions.is_empty()
                && self
                    .conversions
                    .contains(&keys::conversion_key(&r.tenant_id, &r.external_id)))
    }

    /// Drops erased conversions and marks the clicks whose visitor fields are withheld.
    pub fn filter(&self, batch: &mut SinkBatch) {
        if self.is_empty() {
            return;
        }
        batch.conversions.retain(|r| !self.drops(r));
        if self.clicks.is_empty() {
            return;
        }
        for rows in &mut batch.clicks {
            let b = &rows.batch;
            for &(i, _) in &rows.accepted {
                let c = &b.clicks[i as usize];
                if self
                    .clicks
                    .contains(&keys::click_key(b.arena.get(c.click_id)))
                {
                    rows.scrubbed.push(i);
                }
            }
            rows.scrubbed.sort_unstable();
        }
    }
}

/// The filter as the state stage reads it and the lifecycle thread extends it.
#[derive(Debug, Default)]
pub struct Shared {
    erased: RwLock<Arc<Erased>>,
    version: AtomicU64,
    /// A request waits for checkpoints: the state stage takes them even when idle.
    wanted: std::sync::atomic::AtomicBool,
    /// Keys of waiting postbacks the state stage gave up (conversion, click), in the filter
    /// already, for the lifecycle thread to make durable in the ledger.
    waiting: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Shared {
    pub fn current(&self) -> Arc<Erased> {
        self.erased
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Bumped with every change, so the state stage notices cheaply.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A copy of the filter with `lines` added, put in place of the current one.
    fn add_lines(&self, lines: &[LedgerLine]) {
        let mut guard = self.erased.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Erased {
            customers: guard.customers.clone(),
            conversions: guard.conversions.clone(),
            clicks: guard.clicks.clone(),
        };
        for l in lines {
            next.add(l);
        }
        *guard = Arc::new(next);
    }

    /// Adds ledger lines to the filter; returns the filter's new version.
    fn extend(&self, lines: &[LedgerLine]) -> u64 {
        self.add_lines(lines);
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The state stage forgot these waiting postbacks (conversion key, click key): their later
    /// versions and their click are filtered by key from now on (without a new version: the
    /// state stage need not look again), and the lifecycle thread puts them in the ledger.
    pub fn add_waiting(&self, keys: Vec<(u64, u64)>) {
        if keys.is_empty() {
            return;
        }
        self.add_lines(&[LedgerLine::waiting(&keys)]);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    fn take_waiting(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether a request waits for checkpoints.
    pub fn checkpoints_wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Filters a batch on its way to the sinks.
    pub fn filter(&self, batch: &mut SinkBatch) {
        if self.version() == 0 {
            return;
        }
        self.current().filter(batch);
    }
}

/// The directory of subject requests and their ledger.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("privacy")
}

fn read_ledger(dir: &Path) -> Result<Vec<LedgerLine>> {
    let path = dir.join("erasures.ndjson");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        // A torn last line (a crash mid-append) was never acknowledged: its step reruns.
        match serde_json::from_str(l) {
            Ok(line) => lines.push(line),
            Err(e) if n + 1 == text.lines().count() => {
                tracing::warn!(error = %e, "ignoring a torn last line of the erasure ledger");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{} line {}", path.display(), n + 1));
            }
        }
    }
    Ok(lines)
}

fn append_line(path: &Path, line: &impl Serialize) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    cut_torn_tail(&mut f).with_context(|| format!("repairing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("appending to {}", path.display()))
}

/// A line a crash (or a full disk) left half-written is cut off before the next append, so
/// the next line does not join it.
fn cut_torn_tail(f: &mut fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the last newline (the files are small: ledgers and logs of requests).
    let mut all = Vec::with_capacity(len as usize);
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut all)?;
    let keep = all.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64)?;
    f.sync_all()
}

/// Queues a request for whoever holds the output directory; returns its id.
pub fn queue(state_dir: &Path, subject: Subject) -> Result<Request> {
    let now = super::retention::now_ms();
    let id = format!(
        "{now}-{}",
        &customer_hash(&format!("{now}{}", std::process::id()))[..8]
    );
    let req = Request {
        id,
        subject,
        requested_at_ms: now,
    };
    let reqs = dir(state_dir).join("requests");
    fs::create_dir_all(&reqs).with_context(|| format!("creating {}", reqs.display()))?;
    let path = reqs.join(format!("{}.json", req.id));
    crate::checkpoint::write_atomic(&reqs, &path, &[&serde_json::to_vec_pretty(&req)?])?;
    Ok(req)
}

/// The result of a finished request, if it is finished.
pub fn done(state_dir: &Path, id: &str) -> Option<Removed> {
    done_in(&dir(state_dir), id)
}

fn done_in(privacy_dir: &Path, id: &str) -> Option<Removed> {
    let text = fs::read_to_string(privacy_dir.join("done").join(format!("{id}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// The pending requests and the ledger of one state directory, and the filter built from it.
pub struct Requests {
    dir: PathBuf,
    out: PathBuf,
    clickhouse: Option<ClickHouseConfig>,
    shared: Arc<Shared>,
    /// Requests waiting to be erased → the filter version that decided them: a checkpoint
    /// whose barrier the state stage sent at that version or later settles them.
    decided: HashMap<String, u64>,
    /// Requests found decided at start (by an earlier process).
    ledger_requests: FxHashSet<String>,
}

impl Requests {
    pub fn new(cfg: &PipelineConfig) -> Requests {
        let dir = dir(&cfg.state_dir());
        let shared = Arc::new(Shared::default());
        let mut ledger_requests = FxHashSet::default();
        match read_ledger(&dir) {
            Ok(lines) if !lines.is_empty() => {
                ledger_requests.extend(lines.iter().map(|l| l.request.clone()));
                shared.extend(&lines);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the erasure ledger")
            }
        }
        Requests {
            dir,
            out: cfg.sink.parquet.out.clone(),
            clickhouse: cfg.sink.clickhouse.clone(),
            shared,
            decided: HashMap::new(),
            ledger_requests,
        }
    }

    /// Fails if the ledger exists but cannot be read: a run must not start without it.
    pub fn check(cfg: &PipelineConfig) -> Result<()> {
        read_ledger(&dir(&cfg.state_dir())).map(|_| ())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn pending(&self) -> Result<Vec<Request>> {
        let reqs = self.dir.join("requests");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&reqs) else {
            return Ok(out);
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for p in paths {
            // One unreadable request (written by hand?) must not hold the others up.
            match fs::read_to_string(&p)
                .map_err(anyhow::Error::from)
                .and_then(|t| serde_json::from_str::<Request>(&t).map_err(Into::into))
            {
                Ok(req) => out.push(req),
                Err(e) => tracing::error!(
                    file = %p.display(),
                    error = %format!("{e:#}"),
                    "skipping an unreadable subject request"
                ),
            }
        }
        Ok(out)
    }

    /// Puts the request in the ledger (and the filter); returns the filter version from which
    /// it is in force.
    fn decide(&mut self, req: &Request) -> Result<u64> {
        if self.ledger_requests.contains(&req.id) {
            // Decided by an earlier process: in force since this one started.
            return Ok(self.shared.version());
        }
        let line = LedgerLine {
            request: req.id.clone(),
            tenant: req.subject.tenant.clone(),
            customer_sha256: Some(req.subject.hash()),
            at_ms: Some(req.requested_at_ms),
            ..LedgerLine::default()
        };
        append_line(&self.dir.join("erasures.ndjson"), &line)?;
        let version = self.shared.extend(std::slice::from_ref(&line));
        self.ledger_requests.insert(req.id.clone());
        Ok(version)
    }

    /// Between checkpoints: new requests are decided at once (the filter is in force from
    /// then), and the state stage is asked for checkpoints even if idle.
    pub fn poll(&mut self) -> Result<()> {
        for req in self.pending()? {
            if !self.decided.contains_key(&req.id) && done_in(&self.dir, &req.id).is_none() {
                let version = self.decide(&req)?;
                self.decided.insert(req.id.clone(), version);
            }
        }
        self.shared
            .wanted
            .store(!self.decided.is_empty(), Ordering::Release);
        Ok(())
    }

    /// The daemon's step after each checkpoint (its barrier sent at filter version
    /// `filter_version`): the keys of forgotten waiting postbacks into the ledger, new requests
    /// decided, settled ones erased.
    pub fn after_checkpoint(&mut self, filter_version: u64, metrics: &Metrics) -> Result<()> {
        let waiting = self.shared.take_waiting();
        if !waiting.is_empty() {
            append_line(
                &self.dir.join("erasures.ndjson"),
                &LedgerLine::waiting(&waiting),
            )?;
        }
        let result = self.settle(filter_version, metrics);
        self.shared
            .wanted
            .store(!self.decided.is_empty(), Ordering::Release);
        result
    }

    fn settle(&mut self, filter_version: u64, metrics: &Metrics) -> Result<()> {
        for req in self.pending()? {
            if done_in(&self.dir, &req.id).is_some() {
                let _ = fs::remove_file(self.dir.join("requests").join(format!("{}.json", req.id)));
                continue;
            }
            match self.decided.get(&req.id).copied() {
                None => {
                    let version = self.decide(&req)?;
                    self.decided.insert(req.id.clone(), version);
                }
                // Every row sent before the decision is behind this checkpoint's barrier: in
                // a closed file, in ClickHouse.
                Some(decided) if filter_version >= decided => match self.erase(&req) {
                    Ok(removed) => {
                        self.decided.remove(&req.id);
                        metrics.erasure_done();
                        tracing::info!(request = %req.id, ?removed, "subject erased");
                    }
                    // One failing request does not hold the others up; retried next time.
                    Err(e) => tracing::error!(
                        request = %req.id,
                        error = %format!("{e:#}"),
                        "subject erasure failed; retried after the next checkpoint"
                    ),
                },
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The command line's path, with the directory locked and no daemon: every step now, for
    /// every request still queued (one a crash interrupted first), `req` last.
    pub fn perform_now(&mut self, req: &Request) -> Result<Removed> {
        for earlier in self.pending()? {
            if earlier.id != req.id && done_in(&self.dir, &earlier.id).is_none() {
                self.decide(&earlier)?;
                let removed = self.erase(&earlier)?;
                tracing::info!(request = %earlier.id, ?removed, "an earlier request finished");
            }
        }
        self.decide(req)?;
        self.erase(req)
    }

    /// Steps 4 and 5 (see the module doc); safe to repeat.
    fn erase(&mut self, req: &Request) -> Result<Removed> {
        let subject = &req.subject;
        for table in ["conversions", "clicks"] {
            scan::remove_stale_rewrites(&self.out, table)?;
        }
        let progress = self.dir.join("progress").join(format!("{}.ndjson", req.id));
        // Find: the customer's conversions, their keys and the hours of their clicks.
        let conv_files = scan::table_files(&self.out, "conversions", None)?;
        let mut conv_keys: FxHashSet<(String, String)> = FxHashSet::default();
        let mut click_ids: FxHashSet<(String, String)> = FxHashSet::default();
        let mut click_hours: Vec<String> = Vec::new();
        for f in &conv_files {
            for b in scan::read(f)? {
                let (tenants, customers, externals, clicks) = (
                    scan::text(&b, "tenant_id")?,
                    scan::text(&b, "customer_id")?,
                    scan::text(&b, "external_id")?,
                    scan::text(&b, "click_id")?,
                );
                let click_ts = b
                    .column_by_name("click_ts")
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
                for r in 0..b.num_rows() {
                    let tenant = tenants.value(r);
                    if !subject.matches(tenant, scan::value(customers, r)) {
                        continue;
                    }
                    conv_keys.insert((tenant.to_string(), externals.value(r).to_string()));
                    if let Some(ts) = click_ts.filter(|c| !c.is_null(r)).map(|c| c.value(r)) {
                        click_ids.insert((tenant.to_string(), clicks.value(r).to_string()));
                        let (dt, hh) = crate::event::time::partition_of(ts);
                        click_hours.push(format!("dt={dt}/hour={hh:02}"));
                    }
                }
            }
        }
        // Versions without customer_id (a status change that did not repeat it) by key; the
        // keys and hours join the ledger before anything is rewritten, so a rerun after a crash
        // still knows them once the rows they were found in are gone.
        click_hours.sort();
        click_hours.dedup();
        let line = LedgerLine {
            request: req.id.clone(),
            conversion_keys: conv_keys
                .iter()
                .map(|(t, e)| keys::conversion_key(t, e))
                .collect(),
            click_keys: click_ids.iter().map(|(_, c)| keys::click_key(c)).collect(),
            click_hours,
            ..LedgerLine::default()
        };
        if !line.conversion_keys.is_empty() || !line.click_keys.is_empty() {
            append_line(&self.dir.join("erasures.ndjson"), &line)?;
            self.shared.extend(std::slice::from_ref(&line));
        }
        let mut conv_set: FxHashSet<u64> = FxHashSet::default();
        let mut click_set: FxHashSet<u64> = FxHashSet::default();
        let mut hours: Vec<String> = Vec::new();
        for l in read_ledger(&self.dir)?
            .iter()
            .filter(|l| l.request == req.id)
        {
            conv_set.extend(&l.conversion_keys);
            click_set.extend(&l.click_keys);
            hours.extend(l.click_hours.iter().cloned());
        }
        hours.sort();
        hours.dedup();
        // ClickHouse first: its condition names the conversions by the keys found in Parquet,
        // which a rerun after a crash in the rewrite below would no longer find there.
        if let Some(ch) = &self.clickhouse {
            clickhouse_delete(ch, subject, &conv_keys, &progress)?;
        }
        // Rewrite: conversions lose the rows, clicks the visitor fields.
        for f in &conv_files {
            let batches = scan::read(f)?;
            let mut kept = Vec::with_capacity(batches.len());
            let mut removed = 0u64;
            for b in &batches {
                let keep = conversion_mask(b, subject, &conv_set)?;
                removed += keep.false_count() as u64;
                kept.push(filter_record_batch(b, &keep)?);
            }
            if removed == 0 {
                continue;
            }
            kept.retain(|b| b.num_rows() > 0);
            note_progress(&progress, "parquet_conversions", f, removed)?;
            scan::replace(f, &kept)?;
        }
        for f in scan::table_files(&self.out, "clicks", Some(&hours))? {
            let batches = scan::read(&f)?;
            let mut out = Vec::with_capacity(batches.len());
            let mut scrubbed = 0u64;
            for b in &batches {
                let mask = click_mask(b, &click_set)?;
                scrubbed += mask.iter().filter(|m| **m).count() as u64;
                out.push(scan::null_out(b, &CLICK_PERSONAL_FIELDS, &mask)?);
            }
            if scrubbed == 0 {
                continue;
            }
            note_progress(&progress, "parquet_clicks_scrubbed", &f, scrubbed)?;
            scan::replace(&f, &out)?;
        }
        let removed = read_progress(&progress)?;
        let audit = AuditLine {
            time: chrono::Utc::now().to_rfc3339(),
            request: req.id.clone(),
            tenant: subject.tenant.clone(),
            customer_sha256: subject.hash(),
            removed: removed.clone(),
        };
        // A crash between this line and `done/` reruns the request: one audit line each.
        let audit_path = self.dir.join("audit.ndjson");
        let logged = fs::read_to_string(&audit_path).is_ok_and(|t| {
            t.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["request"] == req.id.as_str())
            })
        });
        if !logged {
            append_line(&audit_path, &audit)?;
        }
        let done_dir = self.dir.join("done");
        fs::create_dir_all(&done_dir)?;
        crate::checkpoint::write_atomic(
            &done_dir,
            &done_dir.join(format!("{}.json", req.id)),
            &[&serde_json::to_vec_pretty(&removed)?],
        )?;
        let _ = fs::remove_file(self.dir.join("requests").join(format!("{}.json", req.id)));
        let _ = fs::remove_file(&progress);
        Ok(removed)
    }
}

#[derive(Serialize)]
struct AuditLine {
    time: String,
    request: String,
    tenant: Option<String>,
    customer_sha256: String,
    removed: Removed,
}

/// `true` for the conversion rows that stay.
fn conversion_mask(
    b: &RecordBatch,
    subject: &Subject,
    conv_keys: &FxHashSet<u64>,
) -> Result<BooleanArray> {
    let (tenants, customers, externals) = (
        scan::text(b, "tenant_id")?,
        scan::text(b, "customer_id")?,
        scan::text(b, "external_id")?,
    );
    Ok((0..b.num_rows())
        .map(|r| {
            let tenant = tenants.value(r);
            let gone = subject.matches(tenant, scan::value(customers, r))
                || conv_keys.contains(&keys::conversion_key(tenant, externals.value(r)));
            Some(!gone)
        })
        .collect())
}

/// `true` for the click rows whose visitor fields go (and still hold one).
fn click_mask(b: &RecordBatch, click_keys: &FxHashSet<u64>) -> Result<Vec<bool>> {
    let ids = scan::text(b, "click_id")?;
    let personal = CLICK_PERSONAL_FIELDS
        .iter()
        .map(|n| scan::text(b, n))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..b.num_rows())
        .map(|r| {
            click_keys.contains(&keys::click_key(ids.value(r)))
                && personal.iter().any(|c| !c.is_null(r))
        })
        .collect())
}

#[derive(Serialize, Deserialize)]
struct Progress {
    table: String,
    file: String,
    rows: u64,
}

/// Noted before the rename it counts: a rerun after a crash between the two finds nothing
/// left in that file and keeps this count (the last one per file counts).
fn note_progress(path: &Path, table: &str, file: &Path, rows: u64) -> Result<()> {
    append_line(
        path,
        &Progress {
            table: table.into(),
            file: file.display().to_string(),
            rows,
        },
    )
}

fn read_progress(path: &Path) -> Result<Removed> {
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(path) {
        for l in text.lines() {
            if let Ok(p) = serde_json::from_str::<Progress>(l) {
                last.insert((p.table, p.file), p.rows);
            }
        }
    }
    let mut removed = Removed::default();
    for ((table, _), rows) in last {
        match table.as_str() {
            "parquet_conversions" => removed.parquet_conversions += rows,
            "parquet_clicks_scrubbed" => removed.parquet_clicks_scrubbed += rows,
            _ => removed.clickhouse_conversions += rows,
        }
    }
    Ok(removed)
}

/// The ClickHouse condition selecting the customer's conversion rows.
fn clickhouse_condition(subject: &Subject, conv_keys: &FxHashSet<(String, String)>) -> String {
    use crate::sink::clickhouse::migrations::quote_str;
    let mut cond = format!("(customer_id = {}", quote_str(&subject.customer_id));
    if let Some(t) = &subject.tenant {
        cond.push_str(&format!(" AND tenant_id = {}", quote_str(t)));
    }
    cond.push(')');
    if !conv_keys.is_empty() {
        let tuples: Vec<String> = conv_keys
            .iter()
            .map(|(t, e)| format!("({}, {})", quote_str(t), quote_str(e)))
            .collect();
        cond.push_str(&format!(
            " OR (tenant_id, external_id) IN ({})",
            tuples.join(", ")
        ));
    }
    cond
}

/// Deletes the customer's rows from ClickHouse `conversions` and waits for the mutation;
/// returns how many rows it removed.
fn clickhouse_delete(
    ch: &ClickHouseConfig,
    subject: &Subject,
    conv_keys: &FxHashSet<(String, String)>,
    progress: &Path,
) -> Result<u64> {
    use crate::sink::clickhouse::config::{Credentials, block_on, client};
    use crate::sink::clickhouse::migrations::quote_ident;
    let creds = Credentials::load(ch)?;
    let c = client(ch, &creds);
    let table = format!("{}.conversions", quote_ident(&ch.database));
    let cond = clickhouse_condition(subject, conv_keys);
    block_on(async {
        let n: u64 = c
            .query(&format!("SELECT count() FROM {table} WHERE {cond}"))
            .fetch_one()
            .await
            .context("counting the customer's ClickHouse rows")?;
        if n == 0 {
            return Ok(0);
        }
        note_progress(
            progress,
            "clickhouse_conversions",
            Path::new("clickhouse"),
            n,
        )?;
        c.query(&format!("ALTER TABLE {table} DELETE WHERE {cond}"))
            .execute()
            .await
            .context("ALTER TABLE conversions DELETE")?;
        // Mutations run in the background (18.16 has no mutations_sync, and reports a mutation
        // done before its parts are swapped): wait until the rows are gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let left: u64 = c
                .query(&format!("SELECT count() FROM {table} WHERE {cond}"))
                .fetch_one()
                .await
                .context("waiting for the ClickHouse DELETE")?;
            if left == 0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{left} of the customer's rows are still in ClickHouse 10 minutes after \
                     ALTER TABLE … DELETE (see system.mutations); the request is retried"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(n)
    })?
}

/// Gives the personal fields of a waiting postback up (its row is then dropped by the filter).
pub fn scrub_waiting(row: &mut ConversionRow) {
    row.customer_id = Some(ERASED_CUSTOMER.into());
    row.order_id = None;
    row.product_id = None;
    row.metadata = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_matches_customer_and_tenant() {
        let any = Subject {
            customer_id: "u1".into(),
            tenant: None,
        };
        let one = Subject {
            customer_id: "u1".into(),
            tenant: Some("t1".into()),
        };
        assert!(any.matches("t2", Some("u1")));
        assert!(!any.matches("t2", Some("u10")));
        assert!(!any.matches("t2", None));
        assert!(one.matches("t1", Some("u1")));
        assert!(!one.matches("t2", Some("u1")));
    }

    #[test]
    fn progress_keeps_the_last_count_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.ndjson");
        note_progress(&p, "parquet_conversions", Path::new("a"), 3).unwrap();
        note_progress(&p, "parquet_conversions", Path::new("a"), 3).unwrap();
        note_progress(&p, "parquet_conversions", Path::new("b"), 2).unwrap();
        note_progress(&p, "parquet_clicks_scrubbed", Path::new("c"), 4).unwrap();
        assert_eq!(
            read_progress(&p).unwrap(),
            Removed {
                parquet_conversions: 5,
                parquet_clicks_scrubbed: 4,
                clickhouse_conversions: 0
            }
        );
    }

    #[test]
    fn clickhouse_condition_quotes() {
        let s = Subject {
            customer_id: "o'neil".into(),
            tenant: Some("t".into()),
        };
        let mut keys = FxHashSet::default();
        keys.insert(("t".to_string(), "e1".to_string()));
        assert_eq!(
            clickhouse_condition(&s, &keys),
            "(customer_id = 'o\\'neil' AND tenant_id = 't') OR (tenant_id, external_id) IN (('t', 'e1'))"
        );
    }
}
