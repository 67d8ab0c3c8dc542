//! The outputs: the JSON report, the summary table on the terminal, the SVG report.

use crate::stats::{distribution, round3, Summary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub hostname: String,
    pub os: &'static str,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            os: std::env::consts::OS,
        }
    }
}

/// The first `model name` (x86) or `Model`/`Hardware` (ARM) of a /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        for line in cpuinfo.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return Some(v.trim().to_owned());
                }
            }
        }
    }
    None
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    /// Payments the schedule intended in this second (open loop only).
    pub offered: Option<f64>,
    pub sent: u64,
    /// Payments answered as expected in this second.
    pub ok: u64,
    pub errors: u64,
    /// Payment POST latency of the payments intended in this second.
    pub pay_p50_ms: Option<f64>,
    pub pay_p99_ms: Option<f64>,
    /// Server-side finalization latency of the payments created in this second.
    pub finalize_p50_ms: Option<f64>,
    pub finalize_p99_ms: Option<f64>,
    pub outbox_backlog: Option<f64>,
    pub processor_in_flight: Option<f64>,
}

/// Percentile distributions for the plot, by name.
pub struct Distributions(pub Vec<(&'static str, Vec<(f64, f64)>)>);

impl Distributions {
    pub fn of(list: Vec<(&'static str, &hdrhistogram::Histogram<u64>)>) -> Self {
        Self(
            list.into_iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(n, h)| (n, distribution(h)))
                .collect(),
        )
    }
}

fn fmt_ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The terminal summary of a finished report (JSON as built by main).
pub fn table(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        s,
        "\nloadtest {}  seed {}  {}  wallets {}  on {} x {}",
        r["run_id"].as_str().unwrap_or(""),
        r["seed"],
        r["config"]["mode_text"].as_str().unwrap_or(""),
        r["config"]["wallets"],
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "\n{:<26}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}   (ms)",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let row = |s: &mut String, name: &str, v: &Value| {
        let Ok(sum) = Summary::deserialize(v) else {
            return;
        };
        if sum.count == 0 {
            return;
        }
        let _ = writeln!(
            s,
            "{:<26}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}",
            name,
            sum.count,
            fmt_ms(sum.p50),
            fmt_ms(sum.p90),
            fmt_ms(sum.p99),
            fmt_ms(sum.p999),
            fmt_ms(sum.max)
        );
    };
    let by_kind = &r["api_latency_ms"]["by_kind"];
    for (kind, name) in [
        ("pay", "api pay (POST payment)"),
        ("pay_service", "  from actual send"),
        ("read", "api read (GET)"),
        ("read_balance", "  balance reads"),
        ("read_payment", "  payment reads"),
        ("replay", "api client retry"),
        ("retry", "api retry after loss"),
        ("poll", "api poll (GET payment)"),
        ("wallet", "api wallet (setup)"),
        ("deposit", "api deposit (setup)"),
    ] {
        row(&mut s, name, &by_kind[kind]);
    }
    row(&mut s, "finalize (server)", &r["finalize_latency_ms"]);
    if let Some(o) = r["finalize_latency_ms"]["by_outcome"].as_object() {
        for (k, v) in o {
            row(&mut s, &format!("  {k}"), v);
        }
    }
    row(
        &mut s,
        "finalize (client poll)",
        &r["finalize_latency_ms"]["observed"],
    );
    row(&mut s, "generator lag", &r["generator_lag_ms"]);

    let p = &r["payments"];
    let _ = writeln!(
        s,
        "\nrate       offered {}  achieved {:.1}/s  (sent {}, answered as expected {}, load phase {:.1} s)",
        r["offered_rate"]
            .as_f64()
            .map_or("- (closed loop)".into(), |o| format!("{o:.1}/s")),
        r["achieved_rate"].as_f64().unwrap_or(0.0),
        p["sent"],
        p["ok"],
        r["load_seconds"].as_f64().unwrap_or(0.0),
    );
    let _ = writeln!(
        s,
        "payments   accepted {}  succeeded {}  declined {}  failed otherwise {}  refused {}  pending {}",
        p["accepted"], p["succeeded"], p["declined"], p["failed_other"], p["refused"], p["pending"]
    );
    let _ = writeln!(
        s,
        "           client retries {}  reads {}  drain {:.1} s",
        r["replays_checked"],
        r["reads"],
        r["drain_seconds"].as_f64().unwrap_or(0.0)
    );
    let q = &r["queues"];
    let g = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |x| format!("{x:.1}").replace(".0", ""))
    };
    let _ = writeln!(
        s,
        "queues     outbox backlog max {} mean {}  processor in flight max {} mean {}",
        g(&q["outbox_backlog"]["max"]),
        g(&q["outbox_backlog"]["mean"]),
        g(&q["processor_in_flight"]["max"]),
        g(&q["processor_in_flight"]["mean"]),
    );
    let _ = writeln!(
        s,
        "errors     {} of {} calls ({:.3}%)",
        r["errors_total"],
        r["calls_total"],
        r["error_rate"].as_f64().unwrap_or(0.0) * 100.0
    );
    if let Some(e) = r["errors"].as_object() {
        for (k, v) in e {
            let _ = writeln!(s, "           {v:>7}  {k}");
        }
    }
    if let Some(steps) = r["steps"].as_array().filter(|s| s.len() > 1) {
        let _ = writeln!(
            s,
            "\n{:<12}{:>10}{:>10}{:>10}{:>10}",
            "ramp step", "offered", "achieved", "p50 ms", "p99 ms"
        );
        for st in steps {
            let _ = writeln!(
                s,
                "{:<12}{:>10.1}{:>10.1}{:>10}{:>10}",
                format!("{}s", st["duration_s"]),
                st["rate"].as_f64().unwrap_or(0.0),
                st["achieved_rate"].as_f64().unwrap_or(0.0),
                fmt_ms(st["pay_latency_ms"]["p50"].as_f64().unwrap_or(0.0)),
                fmt_ms(st["pay_latency_ms"]["p99"].as_f64().unwrap_or(0.0)),
            );
        }
    }
    let _ = writeln!(s, "\nchecks");
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    for c in r["checks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {}  {}: {}",
            mark(c["ok"].as_bool().unwrap_or(false)),
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        );
    }
    if let Some(t) = r["targets"].as_array().filter(|t| !t.is_empty()) {
        let _ = writeln!(s, "targets");
        for t in t {
            let _ = writeln!(
                s,
                "  {}  {}: {} (target {})",
                mark(t["ok"].as_bool().unwrap_or(false)),
                t["name"].as_str().unwrap_or(""),
                t["actual"],
                t["target"]
            );
        }
    }
    let _ = writeln!(
        s,
        "\nverdict: {}",
        if r["verdict"] == "pass" {
            "PASS"
        } else {
            "FAIL"
        }
    );
    s
}

// ---------------------------------------------------------------- SVG

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
    fn cpu_models() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm =
            "processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("Raspberry Pi 4"));
        assert_eq!(cpu_model(""), None);
    }

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
