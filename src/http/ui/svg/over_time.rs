//! A feedback decision's comparison over time (the evidence's `series`, see
//! [`feedback::series`](crate::feedback::series)): both rates with their 95% Wilson intervals as
//! bands and the sequential p-value against alpha on a log scale, or both p95s with the limit.
//! Only numbers from the record are drawn; the one text from it (the measure) is escaped.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::super::html::esc;
use super::{LEFT, RIGHT, W, num};
use crate::feedback::series::{Series, SeriesArm, SeriesPoint};
use crate::feedback::stats::wilson_interval;
use crate::feedback::window::Z95;

const CANARY: &str = "#b3261e";
const BASELINE: &str = "#1f5fa8";
const ALPHA: &str = "#9a6700";
/// The top and height of the rates' (or p95s') plot.
const TOP: f64 = 24.0;
const PLOT: f64 = 150.0;
/// The top and height of the p-values' plot.
const P_TOP: f64 = 214.0;
const P_PLOT: f64 = 70.0;
/// The smallest p-value drawn: the log scale runs from 1 down to this.
const P_FLOOR: f64 = 1e-6;

/// The chart over time of a record's `evidence`, if it has a series (a rollback's `series`, or
/// a promotion's first test's).
pub fn chart(evidence: &Value) -> Option<String> {
    let value = evidence.get("series").or_else(|| evidence.pointer("/tests/0/series"))?;
    let series: Series = serde_json::from_value(value.clone()).ok()?;
    let first = series.points.first()?;
    let last = series.points.last()?;
    let time = Time { from: first.at, span: ((last.at - first.at).num_milliseconds() as f64).max(1.0) };
    Some(if series.points.iter().any(|p| p.canary.bad.is_some() || p.baseline.bad.is_some()) {
        rates(&series, &time)
    } else {
        p95s(&series, &time)
    })
}

/// The horizontal scale: from the first point over `span` milliseconds (at least 1).
struct Time {
    from: DateTime<Utc>,
    span: f64,
}

impl Time {
    fn x(&self, at: DateTime<Utc>) -> f64 {
        let ms = (at - self.from).num_milliseconds() as f64;
        LEFT + (W - LEFT - RIGHT) * (ms / self.span).clamp(0.0, 1.0)
    }

    /// The first and last moments, as labels under the plot at `y`.
    fn axis(&self, s: &mut String, y: f64) {
        let to = self.from + chrono::Duration::milliseconds(self.span as i64);
        let _ = write!(
            s,
            "<text x=\"{LEFT}\" y=\"{y}\" font-size=\"10\">{}</text>\
             <text x=\"{:.1}\" y=\"{y}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            esc(&self.from.format("%H:%M:%S").to_string()),
            W - RIGHT,
            esc(&to.format("%H:%M:%S UTC").to_string()),
        );
    }
}

/// A value from 0 to `max` on the plot from `top` down `height`.
fn y(v: f64, max: f64, top: f64, height: f64) -> f64 {
    top + height * (1.0 - (v / max).clamp(0.0, 1.0))
}

fn coords(points: &[(f64, f64)]) -> String {
    let mut out = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        let _ = write!(out, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    out
}

/// An arm's rate and Wilson 95% interval, when it has samples.
fn rate(a: &SeriesArm) -> Option<(f64, f64, f64)> {
    let bad = a.bad?;
    let (lo, hi) = wilson_interval(bad, a.n, Z95)?;
    Some((bad as f64 / a.n as f64, lo, hi))
}

type Arm = fn(&SeriesPoint) -> &SeriesArm;

fn arms() -> [(&'static str, Arm, &'static str); 2] {
    [("canary", |p| &p.canary, CANARY), ("baseline", |p| &p.baseline, BASELINE)]
}

/// The frame of a chart: the svg element, its label and the legend.
fn open(label: &str, height: f64) -> String {
    let mut s = format!(
        "<svg class=\"evidence series\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{}\">",
        esc(label)
    );
    for (i, (name, _, colour)) in arms().into_iter().enumerate() {
        let x = LEFT + 90.0 * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"15\" font-size=\"11\">{}</text>",
            x + 14.0,
            esc(name)
        );
    }
    s
}

/// Both rates over time with their intervals as bands, then p against alpha.
fn rates(series: &Series, time: &Time) -> String {
    // On the decision's scale: its rates and intervals; earlier ones, on fewer samples, may
    // reach above it and are clipped (said under the plot).
    let top = series
        .points
        .last()
        .map_or(0.0, |p| [rate(&p.canary), rate(&p.baseline)].into_iter().flatten().fold(0.0, |m: f64, r| m.max(r.2)));
    let max = (top * 1.1).clamp(1e-6, 1.0);
    let clipped = series.points.iter().flat_map(|p| [rate(&p.canary), rate(&p.baseline)]).flatten().any(|r| r.0 > max);
    let measure = format!("{} rate", series.measure);
    let mut s = open(&format!("canary and baseline {measure} over time with 95% intervals"), 320.0);
    axes(&mut s, &measure, &num(max));
    for (name, arm, colour) in arms() {
        let points: Vec<(f64, (f64, f64, f64))> =
            series.points.iter().filter_map(|p| Some((time.x(p.at), rate(arm(p))?))).collect();
        if points.is_empty() {
            continue;
        }
        let ys = |v: f64| y(v, max, TOP, PLOT);
        let mut band: Vec<(f64, f64)> = points.iter().map(|(x, r)| (*x, ys(r.2))).collect();
        band.extend(points.iter().rev().map(|(x, r)| (*x, ys(r.1))));
        let line: Vec<(f64, f64)> = points.iter().map(|(x, r)| (*x, ys(r.0))).collect();
        let _ = write!(
            s,
            "<polygon class=\"band\" points=\"{}\" fill=\"{colour}\" fill-opacity=\"0.15\" stroke=\"none\">\
             <title>{} 95% interval</title></polygon>\
             <polyline class=\"arm\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\">\
             <title>{} {}</title></polyline>",
            coords(&band),
            esc(name),
            coords(&line),
            esc(name),
            esc(&measure),
        );
    }
    time.axis(&mut s, TOP + PLOT + 14.0);
    if clipped {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">earlier rates above the top are clipped</text>",
            (LEFT + W - RIGHT) / 2.0,
            TOP + PLOT + 14.0,
        );
    }
    p_values(&mut s, series, time);
    s.push_str("</svg>");
    s
}

/// The sequential p-values on a log scale from 1 to [`P_FLOOR`], with alpha as a line.
fn p_values(s: &mut String, series: &Series, time: &Time) {
    let py = |p: f64| P_TOP + P_PLOT * (-p.clamp(P_FLOOR, 1.0).log10() / -P_FLOOR.log10());
    let points: Vec<(f64, f64)> = series.points.iter().filter_map(|p| Some((time.x(p.at), py(p.p_value?)))).collect();
    let _ = write!(
        s,
        "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">p-value</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">1</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        P_TOP + P_PLOT / 2.0,
        LEFT - 4.0,
        P_TOP + 4.0,
        LEFT - 4.0,
        P_TOP + P_PLOT,
        esc(&num(P_FLOOR)),
        W - RIGHT,
        P_TOP + P_PLOT,
        P_TOP + P_PLOT,
    );
    if !points.is_empty() {
        let _ = write!(
            s,
            "<polyline class=\"p\" points=\"{}\" fill=\"none\" stroke=\"#1b1f24\" stroke-width=\"1.5\">\
             <title>sequential p-value</title></polyline>",
            coords(&points)
        );
    }
    if let Some(alpha) = series.alpha {
        let _ = write!(
            s,
            "<line class=\"alpha\" x1=\"{LEFT}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"{ALPHA}\" \
             stroke-width=\"1.5\" stroke-dasharray=\"4 3\"><title>alpha</title></line>\
             <text x=\"{0:.1}\" y=\"{2:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"{ALPHA}\">{3}</text>",
            W - RIGHT,
            py(alpha),
            py(alpha) - 3.0,
            esc(&format!("alpha {}", num(alpha))),
        );
    }
    let last = series.points.last().and_then(|p| p.p_value);
    let caption = match (last, series.alpha) {
        (Some(p), Some(alpha)) => format!("p = {} at the decision; alpha {} (log scale)", num(p), num(alpha)),
        (Some(p), None) => format!("p = {} at the decision (log scale)", num(p)),
        (None, _) => "no p-value (log scale)".to_string(),
    };
    let _ =
        write!(s, "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"11\">{}</text>", P_TOP + P_PLOT + 16.0, esc(&caption));
}

/// Both p95s over time, with the limit (the baseline's times `max_ratio`) dashed.
fn p95s(series: &Series, time: &Time) -> String {
    let limit = |p: &SeriesPoint| Some(p.baseline.p95? * series.max_ratio?);
    let max = series
        .points
        .iter()
        .flat_map(|p| [p.canary.p95, p.baseline.p95, limit(p)])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.15;
    let max = max.max(1e-9);
    let mut s = open("canary and baseline p95 latencies over time", 220.0);
    axes(&mut s, "p95 (s)", &format!("{}s", num(max)));
    let ys = |v: f64| y(v, max, TOP, PLOT);
    for (name, arm, colour) in arms() {
        let line: Vec<(f64, f64)> =
            series.points.iter().filter_map(|p| Some((time.x(p.at), ys(arm(p).p95?)))).collect();
        if !line.is_empty() {
            let _ = write!(
                s,
                "<polyline class=\"arm\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\">\
                 <title>{} p95</title></polyline>",
                coords(&line),
                esc(name),
            );
        }
    }
    let limits: Vec<(f64, f64)> = series.points.iter().filter_map(|p| Some((time.x(p.at), ys(limit(p)?)))).collect();
    if !limits.is_empty() {
        let _ = write!(
            s,
            "<polyline class=\"limit\" points=\"{}\" fill=\"none\" stroke=\"{ALPHA}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"4 3\"><title>limit: max_ratio × the baseline's p95</title></polyline>",
            coords(&limits),
        );
    }
    time.axis(&mut s, TOP + PLOT + 14.0);
    if let Some(r) = series.max_ratio {
        let _ = write!(
            s,
            "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            TOP + PLOT + 32.0,
            esc(&format!("limit (dashed): {}× the baseline's p95", num(r)))
        );
    }
    s.push_str("</svg>");
    s
}

/// The plot's label on the left, its top value and 0 on the value axis, and the time axis.
fn axes(s: &mut String, label: &str, top: &str) {
    let _ = write!(
        s,
        "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{}</text>\
         <text x=\"{:.1}\" y=\"{TOP}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">0</text>\
         <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        TOP + PLOT / 2.0,
        esc(label),
        LEFT - 4.0,
        esc(top),
        LEFT - 4.0,
        TOP + PLOT,
        W - RIGHT,
        TOP + PLOT,
        TOP + PLOT,
    );
}

#[cfg(test)]
mod tests;
