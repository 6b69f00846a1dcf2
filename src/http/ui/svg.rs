//! The evidence of a feedback decision drawn as inline SVG by the server (no script, no library):
//! the canary's and the baseline's rates with their 95% intervals and the sequential p-value
//! against alpha; for latency, both p95s; at the decision, and over time when the evidence has a
//! series ([`over_time`]). Only numbers from the record go into the drawing, and every label is
//! escaped.

use std::fmt::Write;

use serde_json::Value;

use super::html::esc;

const W: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;

fn x(v: f64, max: f64) -> f64 {
    LEFT + (W - LEFT - RIGHT) * (v / max).clamp(0.0, 1.0)
}

fn num(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.001 { format!("{v:.2e}") } else { format!("{v:.4}") }
}

mod over_time;

/// The charts for a record's `evidence` (a rollback's test or a promotion's), if it has figures
/// to draw: at the decision, then over time when the evidence has a `series`.
pub fn evidence(evidence: &Value) -> Option<String> {
    match (at_decision(evidence), over_time::chart(evidence)) {
        (None, None) => None,
        (now, over) => Some(now.unwrap_or_default() + &over.unwrap_or_default()),
    }
}

/// The evidence at the decision: both rates with their intervals and p against alpha, or both p95s.
fn at_decision(evidence: &Value) -> Option<String> {
    let detail = evidence.get("detail").or_else(|| evidence.pointer("/tests/0/detail"))?;
    if let (Some(c), Some(b)) = (detail["canary_p95"].as_f64(), detail["baseline_p95"].as_f64()) {
        return Some(p95s(c, b, detail["max_ratio"].as_f64()));
    }
    let arm = |a: &Value| {
        Some((a["rate"].as_f64()?, a["wilson95"][0].as_f64()?, a["wilson95"][1].as_f64()?, a["n"].as_u64()?))
    };
    let (canary, baseline) = (arm(&detail["canary"])?, arm(&detail["baseline"])?);
    let p = detail.pointer("/sequential/p_value").and_then(Value::as_f64);
    let alpha = detail.pointer("/sequential/alpha").and_then(Value::as_f64);
    Some(rates(canary, baseline, p, alpha))
}

/// Two rates with their intervals, on a common scale; then p against alpha.
fn rates(canary: (f64, f64, f64, u64), baseline: (f64, f64, f64, u64), p: Option<f64>, alpha: Option<f64>) -> String {
    let max = (canary.2.max(baseline.2) * 1.15).max(1e-6);
    let mut s = format!(
        "<svg class=\"evidence\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"150\" role=\"img\" \
         aria-label=\"canary and baseline rates with 95% intervals\">"
    );
    for (i, (name, (rate, lo, hi, n), colour)) in
        [("canary", canary, "#b3261e"), ("baseline", baseline, "#1f5fa8")].into_iter().enumerate()
    {
        let y = 30.0 + 40.0 * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{}</text>\
             <line class=\"interval\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
             <circle class=\"rate\" cx=\"{:.1}\" cy=\"{y}\" r=\"5\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{} [{}, {}] n={n}</text>",
            y + 4.0,
            esc(name),
            x(lo, max),
            x(hi, max),
            x(rate, max),
            x(lo, max),
            y - 8.0,
            num(rate),
            num(lo),
            num(hi),
        );
    }
    if let (Some(p), Some(alpha)) = (p, alpha) {
        // p and alpha on a log scale from 1e-6 to 1.
        let lx = |v: f64| LEFT + (W - LEFT - RIGHT) * (1.0 + v.max(1e-6).log10() / 6.0).clamp(0.0, 1.0);
        let verdict = if p <= alpha { "at or below alpha" } else { "above alpha" };
        let _ = write!(
            s,
            "<text x=\"4\" y=\"124\" font-size=\"12\">p-value</text>\
             <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"120\" y2=\"120\" stroke=\"#888\"/>\
             <line class=\"alpha\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"110\" y2=\"130\" stroke=\"#9a6700\" stroke-width=\"2\"/>\
             <circle class=\"p\" cx=\"{:.1}\" cy=\"120\" r=\"5\" fill=\"#1b1f24\"/>\
             <text x=\"{LEFT}\" y=\"145\" font-size=\"11\">p = {} {verdict} {} (log scale)</text>",
            W - RIGHT,
            lx(alpha),
            lx(alpha),
            lx(p),
            num(p),
            num(alpha),
        );
    }
    s.push_str("</svg>");
    s
}

/// Both p95s as bars, with the allowed ratio marked.
fn p95s(canary: f64, baseline: f64, max_ratio: Option<f64>) -> String {
    let limit = max_ratio.map(|r| r * baseline);
    let max = (canary.max(baseline).max(limit.unwrap_or(0.0)) * 1.15).max(1e-9);
    let mut s = format!(
        "<svg class=\"evidence\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"110\" role=\"img\" \
         aria-label=\"canary and baseline p95 latencies\">"
    );
    for (i, (name, v, colour)) in
        [("canary p95", canary, "#b3261e"), ("baseline p95", baseline, "#1f5fa8")].into_iter().enumerate()
    {
        let y = 20.0 + 35.0 * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect class=\"p95\" x=\"{LEFT}\" y=\"{}\" width=\"{:.1}\" height=\"16\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{}s</text>",
            y + 12.0,
            esc(name),
            y,
            x(v, max) - LEFT,
            x(v, max) + 4.0,
            y + 12.0,
            num(v),
        );
    }
    if let Some(l) = limit {
        let _ = write!(
            s,
            "<line class=\"limit\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"10\" y2=\"80\" stroke=\"#9a6700\" stroke-width=\"2\"/>\
             <text x=\"{LEFT}\" y=\"100\" font-size=\"11\">limit: {1}s (max_ratio × the baseline's)</text>",
            x(l, max),
            num(l),
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_comparison_draws_both_intervals_and_p_against_alpha() {
        let e = json!({"detail": {
            "canary": {"n": 487, "rate": 0.0246, "wilson95": [0.0141, 0.0425]},
            "baseline": {"n": 1064, "rate": 0.0047, "wilson95": [0.0020, 0.0109]},
            "sequential": {"p_value": 0.003, "alpha": 0.0375}}});
        let svg = evidence(&e).unwrap();
        assert_eq!(svg.matches("class=\"interval\"").count(), 2, "{svg}");
        assert!(svg.contains("0.0246 [0.0141, 0.0425] n=487"), "{svg}");
        assert!(svg.contains("p = 0.0030 at or below alpha 0.0375"), "{svg}");
        // The canary's interval lies right of the baseline's, on one scale.
        let cx: Vec<f64> =
            svg.split("class=\"rate\" cx=\"").skip(1).map(|t| t[..t.find('"').unwrap()].parse().unwrap()).collect();
        assert!(cx[0] > cx[1], "{cx:?}");
    }

    #[test]
    fn latency_draws_both_p95s_and_the_limit_and_nothing_without_figures() {
        let svg = evidence(&json!({"detail": {"canary_p95": 0.3, "baseline_p95": 0.1, "max_ratio": 1.5}})).unwrap();
        assert_eq!(svg.matches("class=\"p95\"").count(), 2);
        assert!(svg.contains("limit: 0.1500s"), "{svg}");
        assert_eq!(evidence(&json!({"detail": {"mean": 0.2}})), None);
    }
}
