//! The run's figures as SVG charts (plotters, SVG backend only: no system
//! fonts or native libraries needed): throughput against concurrency with
//! the ceiling and the goal drawn in, the alert-latency distribution, and
//! (12)'s day.

use super::load::{peak, LevelResult};
use super::report::Report;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type Drawn = Result<(), Box<dyn std::error::Error>>;

const SIZE: (u32, u32) = (820, 460);
const FONT: &str = "sans-serif";

/// One line of a throughput chart.
struct Line<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// Writes every chart the report has data for into `dir`; returns the files.
pub fn write_all(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    // Which run drew it, in every title: a quick or debug run's figures mean little.
    let quick = r.shape.as_ref().is_some_and(|s| s.quick);
    let tag = match (quick, r.build) {
        (true, "debug") => " [--quick, debug build]",
        (true, _) => " [--quick]",
        (false, "debug") => " [debug build]",
        _ => "",
    };
    let per_level = |levels: &[LevelResult]| -> Vec<(f64, f64)> {
        levels.iter().map(|l| (l.concurrency as f64, l.per_second)).collect()
    };
    let svg = |name: &str, drawn: Drawn, written: &mut Vec<PathBuf>| -> anyhow::Result<()> {
        drawn.map_err(|e| anyhow::anyhow!("drawing {name}: {e}"))?;
        written.push(dir.join(name));
        Ok(())
    };
    if !r.check_in_not_flagged.is_empty() && !r.framework_ceiling.is_empty() {
        let name = "throughput-not-flagged.svg";
        let goal = peak(&r.framework_ceiling).map_or(0.0, |l| 0.5 * l.per_second);
        let lines = [
            Line { label: "(1) ceiling: Health/Check", points: per_level(&r.framework_ceiling), color: BLACK },
            Line { label: "(3) CheckIn, not flagged", points: per_level(&r.check_in_not_flagged), color: BLUE },
        ];
        let title = format!("CheckIn not flagged vs the framework ceiling{tag}");
        svg(name, throughput(&dir.join(name), &title, &lines, ("goal: 50% of best (1)", goal)), &mut written)?;
    }
    if !r.check_in_flagged.is_empty() && !r.database_ceiling.is_empty() {
        let name = "throughput-flagged.svg";
        let goal = peak(&r.database_ceiling).map_or(0.0, |l| 0.25 * l.per_second);
        let answers: Vec<LevelResult> = r.check_in_flagged.iter().map(|f| f.level.clone()).collect();
        let end_to_end =
            r.check_in_flagged.iter().map(|f| (f.level.concurrency as f64, f.end_to_end_per_sec)).collect();
        let lines = [
            Line { label: "(2) ceiling: durable INSERT", points: per_level(&r.database_ceiling), color: BLACK },
            Line { label: "(4) CheckIn flagged: answers", points: per_level(&answers), color: CYAN },
            Line { label: "(4) end to end (alerts published)", points: end_to_end, color: BLUE },
        ];
        let title = format!("CheckIn flagged vs the database ceiling{tag}");
        svg(name, throughput(&dir.join(name), &title, &lines, ("goal: 25% of best (2)", goal)), &mut written)?;
    }
    if let Some(a) = r.alerts.as_ref().filter(|a| !a.samples_us.is_empty()) {
        let name = "alert-latency.svg";
        let title = format!(
            "Alert latency: {:.0} check-ins/s, {} subscribers, {} alerts (p50 {:.1} ms, p99 {:.1} ms){tag}",
            a.rate_per_sec, a.subscribers, a.latency.samples, a.latency.p50_ms, a.latency.p99_ms
        );
        svg(name, latency_cdf(&dir.join(name), &title, &a.samples_us, 20.0), &mut written)?;
    }
    if let Some(d) = r.national_day.as_ref().filter(|d| d.charted().is_some()) {
        let name = "national-day.svg";
        svg(name, super::day_chart::draw(&dir.join(name), d, tag), &mut written)?;
    }
    Ok(written)
}

/// Requests per second against concurrency, one line per series, and the
/// goal as a dashed horizontal line.
fn throughput(path: &Path, title: &str, lines: &[Line<'_>], goal: (&str, f64)) -> Drawn {
    let x_max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(goal.1, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("concurrent requests (closed loop)")
        .y_desc("per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    let red = RED.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(vec![(0.0, goal.1), (x_max * 1.05, goal.1)], 8, 6, red))?
        .label(goal.0)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The share of alerts that arrived within x ms (a cumulative
/// distribution), with the goal's bound as a dashed vertical line.
fn latency_cdf(path: &Path, title: &str, samples_us: &[u64], goal_ms: f64) -> Drawn {
    let mut ms: Vec<f64> = samples_us.iter().map(|&u| u as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len() as f64;
    let x_max = ms.last().copied().unwrap_or(0.0).max(goal_ms) * 1.05;
    // At most ~1,000 points: the curve, not every sample.
    let step = (ms.len() / 1000).max(1);
    let mut points: Vec<(f64, f64)> =
        ms.iter().enumerate().step_by(step).map(|(i, &v)| (v, 100.0 * (i + 1) as f64 / n)).collect();
    if let Some(&last) = ms.last() {
        points.push((last, 100.0));
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("CheckIn answered -> alert on the council's stream, ms")
        .y_desc("% of alerts within")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?
        .label("alerts")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    let red = RED.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(vec![(goal_ms, 0.0), (goal_ms, 100.0)], 8, 6, red))?
        .label(format!("goal: p99 < {goal_ms:.0} ms"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
    let grey = BLACK.mix(0.5).stroke_width(1);
    chart
        .draw_series(DashedLineSeries::new(vec![(0.0, 99.0), (x_max, 99.0)], 4, 4, grey))?
        .label("99%")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}
