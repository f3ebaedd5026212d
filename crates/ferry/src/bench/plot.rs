//! `--plot FILE.svg`: a run drawn as a standalone SVG, written by hand (two
//! line charts need no plotting library): throughput over time from the
//! progress loop's once-a-second samples, and the latency distribution
//! (latency by percentile, the percentile axis in "nines" so that the tail
//! gets the room) from the run's histogram.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use super::stats::Timeline;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 880.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// The percentile axis: 0 to 99.999 % ("five nines").
const NINES: f64 = 5.0;

/// Writes the SVG to `path`; `latency` in microseconds (as `stats` keeps it).
pub fn write_svg(
    path: &Path,
    title: &str,
    timeline: &Timeline,
    latency: &Histogram<u64>,
) -> Result<()> {
    let mut svg = String::new();
    let height = 700.0;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Throughput over time.
    let (top, bottom) = (60.0, 320.0);
    let max_t = timeline.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let max_rate = timeline
        .samples
        .iter()
        .flat_map(|s| s.rates.iter().copied())
        .fold(0.0, f64::max);
    let y_step = nice_step(max_rate.max(1.0));
    let y_max = (max_rate / y_step).ceil().max(1.0) * y_step;
    let x_step = nice_step(max_t);
    axes(
        &mut svg,
        top,
        bottom,
        "msgs/s",
        "seconds",
        (0..=((max_t / x_step) as usize))
            .map(|i| (i as f64 * x_step / max_t, fmt_num(i as f64 * x_step)))
            .collect(),
        (0..=((y_max / y_step).round() as usize))
            .map(|i| (i as f64 * y_step / y_max, fmt_num(i as f64 * y_step)))
            .collect(),
    );
    for (k, name) in timeline.names.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points: Vec<(f64, f64)> = timeline
            .samples
            .iter()
            .map(|s| {
                (
                    s.t_s / max_t,
                    s.rates.get(k).copied().unwrap_or(0.0) / y_max,
                )
            })
            .collect();
        polyline(&mut svg, top, bottom, &points, color);
        legend(&mut svg, top, k, name, color);
    }

    // Latency by percentile.
    let (top, bottom) = (400.0, 650.0);
    let points: Vec<(f64, f64)> = (0..=100)
        .map(|i| {
            let nines = NINES * f64::from(i) / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, latency.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let max_ms = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001);
    let y_step = nice_step(max_ms);
    let y_max = (max_ms / y_step).ceil().max(1.0) * y_step;
    axes(
        &mut svg,
        top,
        bottom,
        "end-to-end latency, ms",
        "percentile",
        ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64 / NINES, l.to_string()))
            .collect(),
        (0..=((y_max / y_step).round() as usize))
            .map(|i| (i as f64 * y_step / y_max, fmt_num(i as f64 * y_step)))
            .collect(),
    );
    if !latency.is_empty() {
        let scaled: Vec<(f64, f64)> = points.iter().map(|(x, y)| (x / NINES, y / y_max)).collect();
        polyline(&mut svg, top, bottom, &scaled, COLORS[0]);
        legend(
            &mut svg,
            top,
            0,
            &format!(
                "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                latency.value_at_quantile(0.5) as f64 / 1000.0,
                latency.value_at_quantile(0.99) as f64 / 1000.0,
                latency.value_at_quantile(0.999) as f64 / 1000.0,
                latency.max() as f64 / 1000.0
            ),
            COLORS[0],
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// A frame between `top` and `bottom` with ticks at fractions of the axes.
fn axes(
    svg: &mut String,
    top: f64,
    bottom: f64,
    y_label: &str,
    x_label: &str,
    x_ticks: Vec<(f64, String)>,
    y_ticks: Vec<(f64, String)>,
) {
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        RIGHT - LEFT,
        bottom - top
    );
    for (f, label) in x_ticks {
        let x = LEFT + f * (RIGHT - LEFT);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 16.0
        );
    }
    for (f, label) in y_ticks {
        let y = bottom - f * (bottom - top);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (LEFT + RIGHT) / 2.0,
        bottom + 34.0
    );
    let mid = (top + bottom) / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{mid}" text-anchor="middle" transform="rotate(-90 20 {mid})">{}</text>"#,
        escape(y_label)
    );
}

/// `points` as fractions of the frame's width and height.
fn polyline(svg: &mut String, top: f64, bottom: f64, points: &[(f64, f64)], color: &str) {
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                LEFT + x.clamp(0.0, 1.0) * (RIGHT - LEFT),
                bottom - y.clamp(0.0, 1.0) * (bottom - top)
            )
        })
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
        coords.join(" ")
    );
}

fn legend(svg: &mut String, top: f64, k: usize, name: &str, color: &str) {
    let y = top + 16.0 + 16.0 * k as f64;
    let _ = writeln!(
        svg,
        r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{y}">{}</text>"#,
        LEFT + 10.0,
        y - 5.0,
        LEFT + 28.0,
        escape(name)
    );
}

/// A round tick spacing (1, 2 or 5 times a power of ten) giving about five
/// ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    match raw / mag {
        r if r <= 1.0 => mag,
        r if r <= 2.0 => 2.0 * mag,
        r if r <= 5.0 => 5.0 * mag,
        _ => 10.0 * mag,
    }
}

/// 25000 -> "25k", 0.5 -> "0.5".
fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::stats::Sample;
    use super::*;

    #[test]
    fn steps_and_labels() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(37_000.0), 10_000.0);
        assert_eq!(nice_step(0.9), 0.2);
        assert_eq!(fmt_num(25_000.0), "25k");
        assert_eq!(fmt_num(2_000_000.0), "2M");
        assert_eq!(fmt_num(0.2), "0.2");
    }

    #[test]
    fn writes_both_charts() {
        let timeline = Timeline {
            names: vec!["published", "consumed"],
            samples: (1..=3)
                .map(|t| Sample {
                    t_s: f64::from(t),
                    rates: vec![1000.0 * f64::from(t), 900.0],
                })
                .collect(),
        };
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        write_svg(&path, "a <test> run", &timeline, &h).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a &lt;test&gt; run"));
        assert!(svg.contains(">published<") && svg.contains(">consumed<"));
        assert!(svg.contains("p50 0.50 ms"), "{svg}");
    }
}
