use serde_json::{Value, json};

use super::super::evidence;
use super::chart;

fn point(at: &str, c: (u64, u64), b: (u64, u64), p: Option<f64>) -> Value {
    json!({"at": at, "canary": {"n": c.1, "bad": c.0}, "baseline": {"n": b.1, "bad": b.0}, "p_value": p})
}

fn rates() -> Value {
    json!({"measure": "errors", "alpha": 0.0375, "dispersion": 1.2, "step_seconds": 8, "points": [
        point("2026-11-24T20:00:00Z", (0, 0), (0, 0), None),
        point("2026-11-24T20:00:08Z", (3, 40), (4, 400), Some(0.4)),
        point("2026-11-24T20:00:16Z", (9, 90), (9, 900), Some(0.02)),
        point("2026-11-24T20:00:21.5Z", (14, 120), (12, 1200), Some(0.001)),
    ]})
}

/// No number that is not one: every coordinate is finite.
fn finite(svg: &str) {
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
}

#[test]
fn a_rate_series_draws_a_line_and_a_band_per_arm_and_p_against_alpha() {
    let svg = chart(&json!({"series": rates()})).unwrap();
    assert_eq!(svg.matches("<polyline class=\"arm\"").count(), 2, "{svg}");
    assert_eq!(svg.matches("<polygon class=\"band\"").count(), 2, "{svg}");
    assert_eq!(svg.matches("<line class=\"alpha\"").count(), 1, "{svg}");
    assert_eq!(svg.matches("<polyline class=\"p\"").count(), 1, "{svg}");
    assert!(svg.contains("alpha 0.0375") && svg.contains("p = 0.0010 at the decision"), "{svg}");
    assert!(svg.contains(">20:00:00<") && svg.contains(">20:00:21 UTC<"), "{svg}");
    assert!(!svg.contains("<script") && !svg.contains("href"), "{svg}");
    finite(&svg);
    // A point without samples is left out of its arm's line: three of four.
    let canary = svg.split("<polyline class=\"arm\" points=\"").nth(1).unwrap();
    assert_eq!(canary[..canary.find('"').unwrap()].split(' ').count(), 3, "{svg}");
    // The canary's rate ends above the baseline's (lower y).
    let last_y = |i: usize| -> f64 {
        let pts = svg.split("<polyline class=\"arm\" points=\"").nth(i).unwrap();
        let pts = &pts[..pts.find('"').unwrap()];
        pts.rsplit(' ').next().unwrap().split(',').nth(1).unwrap().parse().unwrap()
    };
    assert!(last_y(1) < last_y(2), "{svg}");
    // The p-values go down to the line of alpha and below it.
    let alpha_y: f64 = {
        let t = svg.split("<line class=\"alpha\"").nth(1).unwrap();
        let t = &t[t.find("y1=\"").unwrap() + 4..];
        t[..t.find('"').unwrap()].parse().unwrap()
    };
    let p_last: f64 = {
        let t = svg.split("<polyline class=\"p\" points=\"").nth(1).unwrap();
        let t = &t[..t.find('"').unwrap()];
        t.rsplit(' ').next().unwrap().split(',').nth(1).unwrap().parse().unwrap()
    };
    assert!(p_last > alpha_y, "p 0.001 is drawn below alpha 0.0375: {svg}");
}

#[test]
fn the_page_draws_the_chart_at_the_decision_then_over_time_for_rollbacks_and_promotions() {
    let detail = json!({
        "canary": {"n": 120, "rate": 0.1167, "wilson95": [0.07, 0.19]},
        "baseline": {"n": 1200, "rate": 0.01, "wilson95": [0.0057, 0.0174]},
        "sequential": {"p_value": 0.001, "alpha": 0.0375}});
    let both = evidence(&json!({"detail": detail, "series": rates()})).unwrap();
    assert_eq!(both.matches("<svg ").count(), 2, "{both}");
    assert!(both.find("class=\"interval\"").unwrap() < both.find("class=\"evidence series\"").unwrap());
    let promotion = evidence(&json!({"tests": [{"detail": detail, "series": rates()}]})).unwrap();
    assert_eq!(promotion.matches("<polygon class=\"band\"").count(), 2, "{promotion}");
    // Without a series, the chart at the decision alone; a series that does not read, none.
    assert_eq!(evidence(&json!({"detail": detail})).unwrap().matches("<svg ").count(), 1);
    assert_eq!(chart(&json!({"series": {"measure": "errors", "points": "x"}})), None);
    assert_eq!(chart(&json!({"series": {"measure": "errors", "step_seconds": 1, "points": []}})), None);
}

#[test]
fn hostile_text_in_a_series_is_escaped() {
    let mut s = rates();
    s["measure"] = json!("<script>alert('x')</script>\"><a href=x>");
    let svg = chart(&json!({"series": s})).unwrap();
    assert!(!svg.contains("<script") && !svg.contains("<a ") && !svg.contains("'x'"), "{svg}");
    assert!(svg.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;a href=x&gt; rate"), "{svg}");
    // A time that is not one, or a count that is not a number: no chart, nothing echoed.
    let mut bad = rates();
    bad["points"][1]["at"] = json!("<b>now</b>");
    assert_eq!(chart(&json!({"series": bad})), None);
    let mut bad = rates();
    bad["points"][1]["canary"]["n"] = json!("<b>");
    assert_eq!(chart(&json!({"series": bad})), None);
}

#[test]
fn a_single_point_or_arms_without_samples_draw_without_dividing_by_zero() {
    let one = json!({"measure": "errors", "alpha": 0.05, "step_seconds": 1,
        "points": [point("2026-11-24T20:00:00Z", (1, 1), (0, 0), Some(1.0))]});
    let svg = chart(&json!({"series": one})).unwrap();
    finite(&svg);
    assert_eq!(svg.matches("<polyline class=\"arm\"").count(), 1, "the baseline has no sample: {svg}");
    let empty = json!({"measure": "negative", "step_seconds": 1, "points": [
        point("2026-11-24T20:00:00Z", (0, 0), (0, 0), None),
        point("2026-11-24T20:00:00Z", (0, 0), (0, 0), None)]});
    let svg = chart(&json!({"series": empty})).unwrap();
    finite(&svg);
    assert!(svg.contains("no p-value"), "{svg}");
    // More bad than samples: not a rate, left out.
    let odd = json!({"measure": "errors", "step_seconds": 1,
        "points": [point("2026-11-24T20:00:00Z", (5, 2), (0, 3), None)]});
    let svg = chart(&json!({"series": odd})).unwrap();
    finite(&svg);
    assert_eq!(svg.matches("<polyline class=\"arm\"").count(), 1, "{svg}");
    let latency = json!({"measure": "latency_p95", "max_ratio": 1.5, "step_seconds": 1,
        "points": [{"at": "2026-11-24T20:00:00Z", "canary": {"n": 0}, "baseline": {"n": 0}}]});
    let svg = chart(&json!({"series": latency})).unwrap();
    finite(&svg);
    assert_eq!(svg.matches("<polyline").count(), 0, "{svg}");
}

#[test]
fn a_latency_series_draws_both_p95s_and_the_limit() {
    let p =
        |at: &str, c: f64, b: f64| json!({"at": at, "canary": {"n": 100, "p95": c}, "baseline": {"n": 900, "p95": b}});
    let series = json!({"measure": "latency_p95", "max_ratio": 1.5, "step_seconds": 4, "points": [
        p("2026-11-24T20:00:00Z", 0.1, 0.1), p("2026-11-24T20:00:04Z", 0.2, 0.1), p("2026-11-24T20:00:06Z", 0.3, 0.11)]});
    let svg = chart(&json!({"series": series})).unwrap();
    assert_eq!(svg.matches("<polyline class=\"arm\"").count(), 2, "{svg}");
    assert_eq!(svg.matches("<polyline class=\"limit\"").count(), 1, "{svg}");
    assert!(!svg.contains("class=\"band\"") && !svg.contains("class=\"alpha\""), "{svg}");
    assert!(svg.contains("limit (dashed): 1.5000× the baseline&#39;s p95"), "{svg}");
    finite(&svg);
}
