//! Plots people would rather look at than read, as SVG (text needs no fonts there):
//! agents and queue over time, one panel per run; the wait distribution of every run on
//! one chart; and idle agent-hours beside p95 wait as bars.

use crate::report::Report;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];
const QUEUE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const BUSY: RGBColor = RGBColor(0x9e, 0xc9, 0xe8);
const AGENTS: RGBColor = RGBColor(0x1f, 0x4e, 0x79);
const ONE_SHOT: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;
/// A bar chart's metric: caption, unit, and how to read it from a report.
type Metric = (&'static str, &'static str, fn(&Report) -> f64);

/// Draw every plot into `dir`; `title` names the workload. Returns the files written.
pub fn write_plots(dir: &Path, title: &str, reports: &[Report]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        (
            "agents-over-time.svg",
            over_time as fn(&Path, &str, &[Report]) -> PlotResult,
        ),
        ("wait-cdf.svg", wait_cdf),
        ("idle-and-wait.svg", idle_and_wait),
    ];
    let mut written = Vec::new();
    for (name, draw) in files {
        let path = dir.join(name);
        draw(&path, title, reports).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn over_time(path: &Path, title: &str, reports: &[Report]) -> PlotResult {
    let height = 80 + 260 * reports.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Agents and queued jobs over time — {title}"),
        ("sans-serif", 26),
    )?;
    let hours = reports
        .iter()
        .flat_map(|r| r.samples.last())
        .map(|s| s.t_s / 3600.0)
        .fold(1.0, f64::max);
    let top = reports
        .iter()
        .flat_map(|r| &r.samples)
        .map(|s| s.queued.max(s.pool_agents + s.booting + s.one_shot))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    for (panel, report) in root
        .split_evenly((reports.len().max(1), 1))
        .iter()
        .zip(reports)
    {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: p95 wait {:.0}s, idle {:.1} agent-h, ${:.2}",
                    report.label,
                    report.wait.p95_s,
                    report.idle_agent_seconds / 3600.0,
                    report.cost
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..hours, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("time (hours since start)")
            .y_desc("agents / jobs")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let points = |f: &dyn Fn(&crate::Sample) -> u32| -> Vec<(f64, f64)> {
            report
                .samples
                .iter()
                .map(|s| (s.t_s / 3600.0, f(s) as f64))
                .collect()
        };
        chart
            .draw_series(AreaSeries::new(points(&|s| s.busy), 0.0, BUSY.mix(0.8)))?
            .label("busy agents")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BUSY.filled()));
        chart
            .draw_series(LineSeries::new(
                points(&|s| s.pool_agents + s.booting),
                AGENTS.stroke_width(2),
            ))?
            .label("pool agents (incl. booting)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], AGENTS.stroke_width(2)));
        if report.samples.iter().any(|s| s.one_shot > 0) {
            chart
                .draw_series(LineSeries::new(
                    points(&|s| s.one_shot),
                    ONE_SHOT.stroke_width(2),
                ))?
                .label("one-shot launches")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], ONE_SHOT.stroke_width(2)));
        }
        chart
            .draw_series(LineSeries::new(
                points(&|s| s.queued),
                QUEUE.stroke_width(1),
            ))?
            .label("queued jobs")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], QUEUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn wait_cdf(path: &Path, title: &str, reports: &[Report]) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let limit = reports.iter().map(|r| r.wait.p99_s).fold(10.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Wait from runnable to started — {title}"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..limit, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("wait (seconds)")
        .y_desc("jobs started within (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(BLACK.mix(0.05))
        .draw()?;
    for (i, report) in reports.iter().enumerate() {
        let c = colour(i);
        let mut points: Vec<(f64, f64)> = report
            .wait_cdf
            .iter()
            .map(|&(w, f)| (w.min(limit), f * 100.0))
            .collect();
        points.insert(0, (0.0, 0.0));
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(3)))?
            .label(format!("{} (p95 {:.0}s)", report.label, report.wait.p95_s))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart.draw_series(LineSeries::new(
        [(0.0, 95.0), (limit, 95.0)],
        BLACK.mix(0.3),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

fn idle_and_wait(path: &Path, title: &str, reports: &[Report]) -> PlotResult {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Idle time and p95 wait per run — {title}"),
        ("sans-serif", 24),
    )?;
    let panels = root.split_evenly((1, 2));
    let metrics: [Metric; 2] = [
        ("idle agent-hours", "agent-hours", |r| {
            r.idle_agent_seconds / 3600.0
        }),
        ("p95 wait", "seconds", |r| r.wait.p95_s),
    ];
    for (panel, (caption, unit, value)) in panels.iter().zip(metrics) {
        let top = reports.iter().map(value).fold(1.0, f64::max) * 1.15;
        let n = reports.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(unit)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    reports.get(*i).map_or(String::new(), |r| r.label.clone())
                }
                _ => String::new(),
            })
            .draw()?;
        for (i, report) in reports.iter().enumerate() {
            let v = value(report);
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                colour(i).mix(0.85).filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.1}"),
                (SegmentValue::CenterOf(i), v + top * 0.02),
                ("sans-serif", 15).into_font().color(&BLACK),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}
