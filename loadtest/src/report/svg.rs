//! The SVG report, hand-written: latency over time, rates, queues and the latency by
//! percentile on a "nines" axis.

use super::{Distributions, Second};
use crate::stats::round3;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const PANEL_H: f64 = 230.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const GAP: f64 = 70.0;
const TOP: f64 = 70.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

struct Panel<'a> {
    title: &'a str,
    y_label: &'a str,
    /// Logarithmic y axis (decades).
    log_y: bool,
    x_label: &'a str,
    /// x range and its ticks (position, label).
    x_max: f64,
    x_ticks: Vec<(f64, String)>,
    series: Vec<Series<'a>>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Round tick spacing (1, 2, 5 × 10^k) giving about `n` ticks up to `max`.
pub fn nice_step(max: f64, n: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{}", round3(v))
    }
}

fn time_ticks(x_max: f64) -> Vec<(f64, String)> {
    let step = nice_step(x_max, 8.0);
    let mut v = Vec::new();
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        v.push((x, format!("{}s", fmt_tick(x))));
        x += step;
    }
    v
}

fn panel(out: &mut String, top: f64, p: &Panel) {
    let (x0, y0, w, h) = (LEFT, top, WIDTH - LEFT - RIGHT, PANEL_H);
    let y_max_data = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|pt| pt.1))
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_max_data.max(1e-3), 5.0);
    let y_max = (y_max_data / y_step).ceil().max(1.0) * y_step;
    // Logarithmic panels span whole decades around the data.
    let y_min_data = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|pt| pt.1))
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min);
    let (lo, hi) = if y_min_data.is_finite() {
        (
            y_min_data.log10().floor().max(-3.0),
            y_max_data
                .log10()
                .ceil()
                .max(y_min_data.log10().floor() + 1.0),
        )
    } else {
        (0.0, 1.0)
    };
    let x_max = if p.x_max > 0.0 { p.x_max } else { 1.0 };
    let sx = |x: f64| x0 + x / x_max * w;
    let sy = |y: f64| {
        if p.log_y {
            let l = if y > 0.0 { y.log10().clamp(lo, hi) } else { lo };
            y0 + h - (l - lo) / (hi - lo) * h
        } else {
            y0 + h - y / y_max * h
        }
    };
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" class="title">{}</text>"#,
        y0 - 12.0,
        esc(p.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fafafa" stroke="#999"/>"##
    );
    let ticks: Vec<f64> = if p.log_y {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..)
            .map(|i| i as f64 * y_step)
            .take_while(|y| *y <= y_max + 1e-9)
            .collect()
    };
    for y in ticks {
        let py = sy(y);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
    }
    for (x, label) in &p.x_ticks {
        let px = sx(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#999"/><text x="{px:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"##,
            y0 + h,
            y0 + h + 5.0,
            y0 + h + 18.0,
            esc(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" class="label" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        y0 + h + 36.0,
        esc(p.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" class="label" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        y0 + h / 2.0,
        y0 + h / 2.0,
        esc(p.y_label)
    );
    for (i, s) in p.series.iter().enumerate() {
        if !s.points.is_empty() {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(x.min(x_max)), sy(*y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{} points="{}"/>"#,
                s.color,
                if s.dashed {
                    r#" stroke-dasharray="5,3""#
                } else {
                    ""
                },
                pts.join(" ")
            );
        }
        let ly = y0 + 14.0 + i as f64 * 18.0;
        let lx = x0 + w + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2.5"{}/><text x="{}" y="{}" class="tick">{}</text>"#,
            lx + 22.0,
            s.color,
            if s.dashed {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            },
            lx + 28.0,
            ly + 4.0,
            esc(s.name)
        );
    }
    if p.series.iter().all(|s| s.points.is_empty()) {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" class="label" text-anchor="middle" fill="#888">no data</text>"##,
            x0 + w / 2.0,
            y0 + h / 2.0
        );
    }
}

fn series_of<'a>(
    timeline: &[Second],
    name: &'a str,
    color: &'a str,
    dashed: bool,
    f: impl Fn(&Second) -> Option<f64>,
) -> Series<'a> {
    Series {
        name,
        color,
        dashed,
        // Plotted at the middle of each second.
        points: timeline
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t as f64 + 0.5, v)))
            .collect(),
    }
}

/// The SVG report: latency over time, rates, queues, percentile distribution.
pub fn svg(headline: &str, subtitle: &str, timeline: &[Second], dist: &Distributions) -> String {
    let x_max = timeline.len() as f64;
    let ticks = time_ticks(x_max);
    // The distribution's x axis: in "nines", as far as the largest sample resolves.
    let dist_max = dist
        .0
        .iter()
        .flat_map(|(_, d)| d.iter().filter(|p| p.0 < 100.0).map(|p| nines(p.0)))
        .fold(2.0f64, f64::max)
        .ceil()
        .min(5.0);
    // A panel of the run's timeline (x: seconds since the load started).
    let time_panel = |title, y_label, series| Panel {
        title,
        y_label,
        log_y: false,
        x_label: "time since the load started",
        x_max,
        x_ticks: ticks.clone(),
        series,
    };
    let panels = [
        time_panel(
            "Payment POST latency by second of intended start (ms)",
            "ms",
            vec![
                series_of(timeline, "pay p50", "#1f77b4", false, |s| s.pay_p50_ms),
                series_of(timeline, "pay p99", "#d62728", false, |s| s.pay_p99_ms),
            ],
        ),
        time_panel(
            "Acceptance → finalization (server timestamps) by second of creation (ms)",
            "ms",
            vec![
                series_of(timeline, "finalize p50", "#2ca02c", false, |s| {
                    s.finalize_p50_ms
                }),
                series_of(timeline, "finalize p99", "#9467bd", false, |s| {
                    s.finalize_p99_ms
                }),
            ],
        ),
        time_panel(
            "Payments per second: offered, answered as expected, errors",
            "per second",
            vec![
                series_of(timeline, "offered/s", "#7f7f7f", true, |s| s.offered),
                series_of(timeline, "ok/s", "#1f77b4", false, |s| Some(s.ok as f64)),
                series_of(timeline, "errors/s", "#d62728", false, |s| {
                    Some(s.errors as f64)
                }),
            ],
        ),
        time_panel(
            "Queues, scraped once a second from /metrics",
            "count",
            vec![
                series_of(timeline, "outbox backlog", "#ff7f0e", false, |s| {
                    s.outbox_backlog
                }),
                series_of(timeline, "processor in flight", "#8c564b", true, |s| {
                    s.processor_in_flight
                }),
            ],
        ),
        Panel {
            title: "Latency by percentile (ms, logarithmic)",
            y_label: "ms (log)",
            log_y: true,
            x_label: "percentile",
            x_max: dist_max,
            x_ticks: (0..=dist_max as usize)
                .map(|k| {
                    let label = match k {
                        0 => "0%".to_owned(),
                        1 => "90%".to_owned(),
                        k => format!("99.{}%", "9".repeat(k - 2)).replace("99.%", "99%"),
                    };
                    (k as f64, label)
                })
                .collect(),
            series: dist
                .0
                .iter()
                .zip(["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"])
                .map(|((name, d), color)| Series {
                    name,
                    color,
                    dashed: false,
                    points: d
                        .iter()
                        .filter(|p| p.0 < 100.0)
                        .map(|p| (nines(p.0), p.1))
                        .collect(),
                })
                .collect(),
        },
    ];
    let height = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        "<style>.title{{font-size:14px;font-weight:bold}}.tick{{font-size:11px}}.label{{font-size:12px}}.head{{font-size:18px;font-weight:bold}}.sub{{font-size:12px;fill:#444}}</style>"
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="26" class="head">{}</text>"#,
        esc(headline)
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="46" class="sub">{}</text>"#,
        esc(subtitle)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, TOP + 20.0 + i as f64 * (PANEL_H + GAP), p);
    }
    out.push_str("</svg>\n");
    out
}

/// Percentile → "nines" (90 → 1, 99 → 2, 99.9 → 3).
fn nines(percentile: f64) -> f64 {
    let rest = (100.0 - percentile) / 100.0;
    if rest <= 0.0 {
        6.0
    } else {
        -rest.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(37.0, 5.0), 10.0);
        assert_eq!(nice_step(0.7, 5.0), 0.2);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nines(90.0).round(), 1.0);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let timeline: Vec<Second> = (0..5)
            .map(|t| Second {
                t,
                offered: Some(10.0),
                ok: 10,
                pay_p50_ms: Some(2.0),
                pay_p99_ms: Some(5.0 + t as f64),
                finalize_p50_ms: Some(40.0),
                finalize_p99_ms: Some(90.0),
                outbox_backlog: Some(1.0),
                ..Default::default()
            })
            .collect();
        let mut h = crate::stats::histogram();
        for v in 1..1000 {
            h.record(v * 10).unwrap();
        }
        let svg = svg(
            "a <b> & c",
            "sub",
            &timeline,
            &Distributions::of(vec![("pay", &h)]),
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        // 2 + 2 + 3 + 1 (no in-flight samples) + 1 lines.
        assert_eq!(svg.matches("<polyline").count(), 9);
        assert!(svg.contains("99.9%"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Empty runs still render.
        let empty = svg_empty();
        assert!(empty.contains("no data"));
    }

    fn svg_empty() -> String {
        svg("x", "y", &[], &Distributions(Vec::new()))
    }
}
