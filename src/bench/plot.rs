//! The report's two SVG plots (plotters): throughput against cores, memory against keys.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::BenchReport;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// End-to-end events/s on 1..=cores cores, with the linear ideal for reference.
pub fn throughput(r: &BenchReport, path: &Path) -> Result<()> {
    let points: Vec<(f64, f64)> = r
        .end_to_end
        .iter()
        .map(|e| (e.cores as f64, e.events_per_second / 1e3))
        .collect();
    let max_x = r.cores.max(2) as f64;
    let first = points.first().map_or(0.0, |p| p.1);
    let max_y = points
        .iter()
        .map(|p| p.1)
        .fold(first * max_x, f64::max)
        .max(1.0)
        * 1.1;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("attribd end to end: file → Parquet ({})", r.cpu_model),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..max_x + 0.5, 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("cores")
        .y_desc("thousand events/s")
        .x_labels(r.cores.max(2))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            (1..=r.cores.max(1)).map(|k| (k as f64, first * k as f64)),
            BLACK.mix(0.3),
        ))
        .map_err(err)?
        .label("linear from 1 core")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.3)));
    chart
        .draw_series(LineSeries::new(points.iter().copied(), &BLUE))
        .map_err(err)?
        .label("measured")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// RSS growth against keys inserted, for the click index and the dedup map.
pub fn memory(r: &BenchReport, path: &Path) -> Result<()> {
    let mib = |v: &[(u64, u64)]| -> Vec<(f64, f64)> {
        v.iter()
            .map(|&(k, b)| (k as f64 / 1e6, b as f64 / (1024.0 * 1024.0)))
            .collect()
    };
    let (clicks, dedup) = (mib(&r.memory.click_index), mib(&r.memory.dedup));
    let max_x = clicks.iter().chain(&dedup).map(|p| p.0).fold(1.0, f64::max);
    let max_y = clicks.iter().chain(&dedup).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("attribd state memory (RSS growth)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("million keys")
        .y_desc("MiB")
        .draw()
        .map_err(err)?;
    for (points, color, name) in [
        (
            clicks,
            BLUE,
            format!("click index, {:.1} B/click", r.memory.bytes_per_click),
        ),
        (
            dedup,
            RED,
            format!("dedup map, {:.1} B/key", r.memory.bytes_per_dedup_key),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                std::iter::once((0.0, 0.0)).chain(points.iter().copied()),
                color,
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
