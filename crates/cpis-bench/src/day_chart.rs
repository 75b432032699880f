//! (12)'s chart: CheckIn p99 per minute of the national day at the factor
//! charted, flagged and not, the p99 of each window the verdict judged,
//! twice the idle p99 of each, and the nightly upload window shaded.

use super::headroom::NationalDay;
use super::verdict::Window;
use plotters::prelude::*;
use std::path::Path;

/// Draws `d`'s charted replay into `path`; `tag` marks a quick or debug run.
pub fn draw(path: &Path, d: &NationalDay, tag: &str) -> Result<(), Box<dyn std::error::Error>> {
    let Some(r) = d.charted() else { return Ok(()) };
    let not_flagged: Vec<(f64, f64)> =
        r.minutes.iter().filter_map(|m| Some((f64::from(m.minute) / 60.0, m.not_flagged_ms?))).collect();
    let flagged: Vec<(f64, f64)> =
        r.minutes.iter().filter_map(|m| Some((f64::from(m.minute) / 60.0, m.flagged_ms?))).collect();
    let bounds = [r.not_flagged.bound_ms, r.flagged.bound_ms];
    let y_max = not_flagged.iter().chain(&flagged).map(|p| p.1).chain(bounds).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (980, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let verdict = if r.passed { "held" } else { "missed" };
    let volume = d.spec.as_ref().map_or(1.0, |s| s.volume);
    let load = if volume < 1.0 {
        format!("{:.0}x compressed at {volume} of the volume = {:.0}x national load", r.factor, r.factor * volume)
    } else {
        format!("{:.0}x national load", r.factor)
    };
    let title = format!("A national day at {load} ({verdict}): CheckIn p99 by minute of the day{tag}");
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..24.0, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hour of the day (replayed compressed)")
        .y_desc("p99, ms")
        .x_labels(13)
        .x_label_formatter(&|v| format!("{v:02.0}:00"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let grey = BLACK.mix(0.08);
    chart
        .draw_series(std::iter::once(Rectangle::new([(1.0, 0.0), (3.0, y_max)], grey.filled())))?
        .label("nightly uploads (01:00-03:00)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], grey.filled()));
    let blue = BLUE.stroke_width(1);
    chart
        .draw_series(LineSeries::new(not_flagged, blue))?
        .label("not flagged")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    let orange = RGBColor(230, 120, 0);
    chart
        .draw_series(flagged.iter().map(|&p| Circle::new(p, 3, orange.filled())))?
        .label("flagged (few a minute: near the largest)")
        .legend(move |(x, y)| Circle::new((x + 10, y), 3, orange.filled()));
    let steps = |windows: &[Window]| -> Vec<(f64, f64)> {
        windows
            .iter()
            .flat_map(|w| {
                let (from, to) = (f64::from(w.from_minute) / 60.0, f64::from(w.to_minute + 1) / 60.0);
                [(from, w.p99_ms), (to, w.p99_ms)]
            })
            .collect()
    };
    for (windows, color, label) in [
        (&r.not_flagged.all, RGBColor(0, 0, 120), "judged windows (100+ check-ins), not flagged"),
        (&r.flagged.all, RGBColor(150, 60, 0), "judged windows, flagged"),
    ] {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(steps(windows), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (bound, color, label) in
        [(bounds[0], BLUE, "2x idle p99, not flagged"), (bounds[1], orange, "2x idle p99, flagged")]
    {
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, bound), (24.0, bound)], 8, 6, style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
