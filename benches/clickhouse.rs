//! Rows per second into ClickHouse through the sink (batched RowBinary INSERTs, lz4, the
//! exactly-once bookkeeping included).
//!
//! `ATTRIBD_CLICKHOUSE_URL=http://127.0.0.1:8123 cargo bench --bench clickhouse`
//! Without the variable it says it was skipped.

use std::sync::Arc;
use std::time::Instant;

use attribd::event::Status;
use attribd::rows::Attribution;
use attribd::rows::{ConversionRow, Dims, Measures, NewNames, StatsRow};
use attribd::sink::clickhouse::{ClickHouseConfig, ClickHouseSink, migrate};

fn main() -> anyhow::Result<()> {
    let Ok(url) = std::env::var("ATTRIBD_CLICKHOUSE_URL") else {
        println!("clickhouse bench SKIPPED: set ATTRIBD_CLICKHOUSE_URL");
        return Ok(());
    };
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cfg = ClickHouseConfig {
        url,
        database: format!("attribd_bench_{}", std::process::id()),
        ..ClickHouseConfig::default()
    };
    migrate(&cfg)?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let dims: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("v{i}"))).collect();
    let usd: Arc<str> = Arc::from("USD");

    // Aggregate rows name their dimensions by interned id: `v{i}` is id i, "" is id 1000.
    let mut names = NewNames {
        first: 0,
        names: dims.clone(),
    };
    names.names.push(Arc::from(""));
    let id = |i: usize| i as u32;
    let stats: Vec<StatsRow> = (0..n)
        .map(|i| StatsRow {
            minute_ms: 1_793_527_200_000 + (i / 500) as i64 * 60_000,
            dims: Dims {
                tenant: id(i % 3),
                offer: id(i % 200),
                affiliate: id((i / 3) % 1000),
                country: id(i % 10),
                currency: id(1000),
            },
            measures: Measures {
                clicks: 3,
                unique_clicks: 2,
                ..Measures::default()
            },
        })
        .collect();
    let mut sink = ClickHouseSink::connect(&cfg, "0000000000bec4e5")?;
    sink.learn_names(&names)?;
    let t = Instant::now();
    for chunk in stats.chunks(4096) {
        sink.write(Vec::new(), chunk.to_vec(), Vec::new())?;
    }
    let totals = sink.close()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "aggregate rows: {} rows in {secs:.2}s = {:.0} rows/s ({cores} cores, server on the same machine)",
        totals.stats_rows,
        totals.stats_rows as f64 / secs
    );

    let conversions: Vec<ConversionRow> = (0..n)
        .map(|i| ConversionRow {
            tenant_id: dims[i % 3].clone(),
            external_id: format!("ord-{i}").into(),
            version: 1,
            status: Status::Approved,
            previous_status: None,
            click_id: format!("{i:024x}").into(),
            ts_ms: 1_793_527_200_000 + i as i64 * 50,
            amount_micros: 12_340_000,
            currency: usd.clone(),
            product_id: Some("p1".into()),
            order_id: Some(format!("ord-{i}").into()),
            customer_id: None,
            metadata: Some(r#"{"campaign":"x"}"#.into()),
            attribution: Attribution::Attributed,
            offer_id: dims[i % 200].clone(),
            affiliate_id: dims[(i / 3) % 1000].clone(),
            country: dims[i % 10].clone(),
            device: Some(dims[i % 3].clone()),
            subs: [Some(dims[i % 7].clone()), None, None, None, None],
            click_ts_ms: Some(1_793_527_200_000),
            seconds_to_convert: Some(600),
            value: None,
            fraud_flags: 0,
        })
        .collect();
    let mut sink = ClickHouseSink::connect(&cfg, "0000000000bec4e5")?;
    let t = Instant::now();
    for chunk in conversions.chunks(4096) {
        sink.write(chunk.to_vec(), Vec::new(), Vec::new())?;
    }
    let totals = sink.close()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "conversion rows: {} rows in {secs:.2}s = {:.0} rows/s ({cores} cores, server on the same machine)",
        totals.conversion_rows,
        totals.conversion_rows as f64 / secs
    );
    Ok(())
}
