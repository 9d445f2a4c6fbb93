//! The training trace: `trace.csv` (one row per batch), `epochs.csv` (one per epoch), written
//! with the csv crate, and `trace.svg`, drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::train::{BatchMetrics, EpochMetrics};

/// One row of `trace.csv`.
#[derive(Serialize)]
struct BatchRow {
    step: usize,
    epoch: usize,
    batch: usize,
    samples: usize,
    /// Samples coded in the run up to and including this batch.
    samples_seen: u64,
    fvu: f64,
    relative_residual: f64,
    l0: f64,
    unused_atoms: usize,
    gemm_s: f64,
    coding_s: f64,
    update_s: f64,
    host_s: f64,
}

/// One row of `epochs.csv` (held-out columns empty without an evaluation set).
#[derive(Serialize)]
struct EpochRow {
    epoch: usize,
    batches: usize,
    samples: usize,
    samples_seen: u64,
    fvu: f64,
    relative_residual: f64,
    l0: f64,
    dead_atoms: usize,
    rare_atoms: usize,
    reseeded: usize,
    duplicates: usize,
    purged: usize,
    coherence: f64,
    eval_fvu: Option<f64>,
    eval_l0: Option<f64>,
    seconds: f64,
}

/// Writes `dir/trace.csv` and `dir/epochs.csv`, header first, atomically.
pub fn write_trace_csv(
    dir: &Path,
    batches: &[BatchMetrics],
    epochs: &[EpochMetrics],
) -> Result<()> {
    let seen = samples_seen(batches);
    let rows = batches
        .iter()
        .zip(&seen)
        .map(|(b, &samples_seen)| BatchRow {
            step: b.step,
            epoch: b.epoch,
            batch: b.batch,
            samples: b.samples,
            samples_seen,
            fvu: b.fvu,
            relative_residual: b.relative_residual,
            l0: b.l0,
            unused_atoms: b.unused_atoms,
            gemm_s: b.gemm_s,
            coding_s: b.coding_s,
            update_s: b.update_s,
            host_s: b.host_s,
        });
    write_csv(&dir.join("trace.csv"), rows)?;
    let ends = epoch_ends(batches, &seen, epochs);
    let rows = epochs.iter().zip(ends).map(|(e, samples_seen)| EpochRow {
        epoch: e.epoch,
        batches: e.batches,
        samples: e.samples,
        samples_seen,
        fvu: e.fvu,
        relative_residual: e.relative_residual,
        l0: e.l0,
        dead_atoms: e.dead_atoms,
        rare_atoms: e.rare_atoms,
        reseeded: e.reseeded,
        duplicates: e.duplicates,
        purged: e.purged,
        coherence: e.coherence,
        eval_fvu: e.eval.map(|s| s.fvu),
        eval_l0: e.eval.map(|s| s.l0),
        seconds: e.seconds,
    });
    write_csv(&dir.join("epochs.csv"), rows)
}

fn write_csv<R: Serialize>(path: &Path, rows: impl Iterator<Item = R>) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::Internal(format!("{}: writing CSV: {e}", path.display()))
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(|e| failed(&e))?;
    }
    let bytes = writer.into_inner().map_err(|e| failed(&e))?;
    write_atomic(path, &bytes)
}

/// Samples coded in the run after each batch.
fn samples_seen(batches: &[BatchMetrics]) -> Vec<u64> {
    batches
        .iter()
        .scan(0u64, |seen, b| {
            *seen += b.samples as u64;
            Some(*seen)
        })
        .collect()
}

/// Samples seen at the end of each epoch (its last batch's count), `seen` being
/// [`samples_seen`] of `batches`.
fn epoch_ends(batches: &[BatchMetrics], seen: &[u64], epochs: &[EpochMetrics]) -> Vec<u64> {
    epochs
        .iter()
        .map(|e| {
            batches
                .iter()
                .zip(seen)
                .filter(|(b, _)| b.epoch == e.epoch)
                .map(|(_, &s)| s)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// The trace as an SVG chart against samples seen: the training FVU of each batch (each coded
/// by the dictionary of its time) and, when the run was scored on held-out data, the held-out
/// FVU at each epoch's end (top); atoms unused per batch, and per epoch the dead atoms and the
/// atoms re-seeded at its end (bottom, out of K = `atoms`). Epoch ends are dashed lines.
pub fn trace_svg(
    batches: &[BatchMetrics],
    epochs: &[EpochMetrics],
    atoms: usize,
) -> Result<String> {
    let mut svg = String::new();
    draw(&mut svg, batches, epochs, atoms)
        .map_err(|e| Error::Internal(format!("drawing trace.svg: {e}")))?;
    Ok(svg)
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

const TRAINING: RGBColor = RGBColor(31, 119, 180);
const HELD_OUT: RGBColor = RGBColor(255, 127, 14);
const UNUSED: RGBColor = RGBColor(214, 39, 40);
const RESEEDED: RGBColor = RGBColor(44, 160, 44);
const EPOCH: RGBColor = RGBColor(150, 150, 150);

fn draw(
    svg: &mut String,
    batches: &[BatchMetrics],
    epochs: &[EpochMetrics],
    atoms: usize,
) -> Drawn {
    let seen = samples_seen(batches);
    let ends = epoch_ends(batches, &seen, epochs);
    // A little room right of the last epoch's markers.
    let x_max = seen.last().copied().unwrap_or(1).max(1) as f64 * 1.02;
    let root = SVGBackend::with_string(svg, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let trace = Trace {
        batches,
        epochs,
        seen: &seen,
        ends: &ends,
        x_max,
    };
    trace.fvu_panel(&top)?;
    trace.atoms_panel(&bottom, atoms)?;
    root.present()?;
    Ok(())
}

/// A run's metrics placed on the samples-seen axis.
struct Trace<'a> {
    batches: &'a [BatchMetrics],
    epochs: &'a [EpochMetrics],
    /// Samples seen after each batch, and at each epoch's end.
    seen: &'a [u64],
    ends: &'a [u64],
    x_max: f64,
}

type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;

impl Trace<'_> {
    /// FVU: training per batch, held-out per epoch.
    fn fvu_panel(&self, area: &Area<'_>) -> Drawn {
        let held_out: Vec<(f64, f64)> = self
            .epochs
            .iter()
            .zip(self.ends)
            .filter_map(|(e, &x)| e.eval.map(|s| (x as f64, s.fvu)))
            .collect();
        let fvu_max = self
            .batches
            .iter()
            .map(|b| b.fvu)
            .chain(held_out.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let mut chart = panel(area, "FVU", self.x_max, nice_max(fvu_max), true)?;
        let training = self
            .seen
            .iter()
            .zip(self.batches)
            .map(|(&x, b)| (x as f64, b.fvu));
        chart
            .draw_series(LineSeries::new(training, TRAINING.stroke_width(2)))?
            .label("training FVU (each batch)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAINING.stroke_width(2)));
        if !held_out.is_empty() {
            chart
                .draw_series(LineSeries::new(held_out.clone(), HELD_OUT.stroke_width(2)))?
                .label("held-out FVU (epoch end)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], HELD_OUT.stroke_width(2)));
            chart.draw_series(
                held_out
                    .iter()
                    .map(|&p| Circle::new(p, 4, HELD_OUT.filled())),
            )?;
        }
        epoch_lines(&mut chart, self.ends, nice_max(fvu_max))?;
        legend(&mut chart)
    }

    /// Atoms: unused per batch; dead and re-seeded per epoch, out of K = `atoms`.
    fn atoms_panel(&self, area: &Area<'_>, atoms: usize) -> Drawn {
        let at_ends = |count: fn(&EpochMetrics) -> usize| -> Vec<(f64, f64)> {
            self.epochs
                .iter()
                .zip(self.ends)
                .map(|(e, &x)| (x as f64, count(e) as f64))
                .collect()
        };
        let dead = at_ends(|e| e.dead_atoms);
        let reseeded = at_ends(|e| e.reseeded + e.purged);
        let atoms_max = self
            .batches
            .iter()
            .map(|b| b.unused_atoms as f64)
            .chain(dead.iter().chain(&reseeded).map(|p| p.1))
            .fold(4.0f64, f64::max);
        let title = format!("atoms (of K = {atoms})");
        let mut chart = panel(area, &title, self.x_max, nice_max(atoms_max), false)?;
        let unused = self
            .seen
            .iter()
            .zip(self.batches)
            .map(|(&x, b)| (x as f64, b.unused_atoms as f64));
        chart
            .draw_series(LineSeries::new(unused, UNUSED.stroke_width(2)))?
            .label("unused in the batch")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], UNUSED.stroke_width(2)));
        chart
            .draw_series(
                dead.iter()
                    .map(|&p| Cross::new(p, 5, UNUSED.stroke_width(2))),
            )?
            .label("dead in the epoch")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, UNUSED.stroke_width(2)));
        chart
            .draw_series(
                reseeded
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 5, RESEEDED.filled())),
            )?
            .label("re-seeded at its end (rare, dead, duplicates)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, RESEEDED.filled()));
        epoch_lines(&mut chart, self.ends, nice_max(atoms_max))?;
        legend(&mut chart)
    }
}

type Panel<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel with its title, axes from 0 and a light grid; x in samples seen, y a fraction (two
/// decimals) or a count.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x_max: f64,
    y_max: f64,
    fraction: bool,
) -> std::result::Result<Panel<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("samples seen")
        .x_label_formatter(&|x| count(*x))
        .y_label_formatter(&|y| {
            if fraction {
                format!("{y:.2}")
            } else {
                count(*y)
            }
        })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    Ok(chart)
}

/// A dashed line at the end of every epoch but the last, labelled (at the foot, clear of the
/// legend) with the epoch that starts there, counted from 0 as in the CSV files.
fn epoch_lines(chart: &mut Panel<'_, '_>, ends: &[u64], y_max: f64) -> Drawn {
    for (epoch, &x) in ends.iter().enumerate().take(ends.len().saturating_sub(1)) {
        let x = x as f64;
        chart.draw_series(DashedLineSeries::new(
            [(x, 0.0), (x, y_max)],
            4,
            3,
            EPOCH.into(),
        ))?;
        let label = format!("epoch {}", epoch + 1);
        chart.draw_series(std::iter::once(Text::new(
            label,
            (x, y_max * 0.06),
            ("sans-serif", 12).into_font().color(&EPOCH),
        )))?;
    }
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Panel<'a, 'b>) -> Drawn {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

/// A y range above `max` with room for the legend in the top quarter (1 when there is
/// nothing to show).
fn nice_max(max: f64) -> f64 {
    if max > 0.0 && max.is_finite() {
        max * 1.4
    } else {
        1.0
    }
}

/// 1234567 as "1.23M", 45600 as "45.6k".
fn count(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => {
            let millions = format!("{:.3}", v / 1e6);
            format!("{}M", millions.trim_end_matches('0').trim_end_matches('.'))
        }
        a if a >= 1e3 => format!("{:.1}k", v / 1e3).replace(".0k", "k"),
        _ => format!("{v:.0}"),
    }
}
