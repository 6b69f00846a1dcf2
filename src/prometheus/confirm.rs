//! Confirmation by a live Prometheus query: an alert is a claim made some time ago; before it
//! moves traffic, a rule may ask whether the claim still holds now.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[cfg(test)]
use super::client::FixedValue;
use super::client::Prometheus;
use crate::template::Template;

/// What to do when Prometheus cannot say (unreachable, error, or no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Act as if confirmed.
    Act,
    /// Do not act now (a later delivery asks again). The default.
    #[default]
    Hold,
    /// Record a failure.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    Above(f64),
    Below(f64),
}

impl Comparison {
    fn holds(self, v: f64) -> bool {
        match self {
            Comparison::Above(t) => v > t,
            Comparison::Below(t) => v < t,
        }
    }

    fn describe(self) -> String {
        match self {
            Comparison::Above(t) => format!("> {t}"),
            Comparison::Below(t) => format!("< {t}"),
        }
    }
}

/// A rule's confirmation, validated at load.
#[derive(Debug, Clone)]
pub struct Confirm {
    pub query: Template,
    pub comparison: Comparison,
    pub timeout: Duration,
    pub on_no_data: Fallback,
    pub on_error: Fallback,
}

/// The answer to "does the alert's claim still hold?".
#[derive(Debug, Clone, PartialEq)]
pub enum ConfirmVerdict {
    /// Act.
    Go,
    /// Do not act now.
    Hold(String),
    /// Record a failure.
    Fail(String),
}

/// What was asked and answered, for the audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub query: String,
    pub condition: String,
    pub value: Option<f64>,
    /// confirmed, refuted, no_data, error
    pub result: &'static str,
    pub error: Option<String>,
    pub took_ms: u64,
}

impl Evidence {
    pub fn to_json(&self) -> Value {
        json!(self)
    }
}

impl Confirm {
    /// Ask, and decide. `promql` is the query rendered for the alert.
    pub async fn check(&self, prometheus: &dyn Prometheus, promql: &str) -> (ConfirmVerdict, Evidence) {
        let started = Instant::now();
        let answer = prometheus.value(promql, self.timeout).await;
        let condition = self.comparison.describe();
        let mut evidence = Evidence {
            query: promql.to_string(),
            condition: condition.clone(),
            value: None,
            result: "error",
            error: None,
            took_ms: started.elapsed().as_millis() as u64,
        };
        let fallback = |f: Fallback, why: String| match f {
            Fallback::Act => ConfirmVerdict::Go,
            Fallback::Hold => ConfirmVerdict::Hold(why),
            Fallback::Fail => ConfirmVerdict::Fail(why),
        };
        let verdict = match answer {
            Ok(Some(v)) if self.comparison.holds(v) => {
                evidence.value = Some(v);
                evidence.result = "confirmed";
                ConfirmVerdict::Go
            }
            Ok(Some(v)) => {
                evidence.value = Some(v);
                evidence.result = "refuted";
                ConfirmVerdict::Hold(format!(
                    "not confirmed: Prometheus says {v} now, the rule needs {condition}; the alert's claim no longer holds"
                ))
            }
            Ok(None) => {
                evidence.result = "no_data";
                fallback(
                    self.on_no_data,
                    format!("confirmation query returned no data (on_no_data: {:?})", self.on_no_data),
                )
            }
            Err(e) => {
                evidence.error = Some(e.clone());
                fallback(self.on_error, format!("Prometheus could not confirm: {e} (on_error: {:?})", self.on_error))
            }
        };
        (verdict, evidence)
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;

    struct Fails;
    impl Prometheus for Fails {
        fn describe(&self) -> String {
            "down".into()
        }
        fn value<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Option<f64>, String>> {
            Box::pin(async { Err("connection refused".to_string()) })
        }
    }

    fn confirm(on_no_data: Fallback, on_error: Fallback) -> Confirm {
        Confirm {
            query: Template::parse("x").unwrap(),
            comparison: Comparison::Above(0.05),
            timeout: Duration::from_secs(1),
            on_no_data,
            on_error,
        }
    }

    #[tokio::test]
    async fn a_value_past_the_threshold_confirms_and_one_short_of_it_holds() {
        let c = confirm(Fallback::Hold, Fallback::Hold);
        let (v, e) = c.check(&FixedValue(Some(0.12)), "q").await;
        assert_eq!(v, ConfirmVerdict::Go);
        assert_eq!((e.value, e.result, e.condition.as_str()), (Some(0.12), "confirmed", "> 0.05"));
        let (v, e) = c.check(&FixedValue(Some(0.01)), "q").await;
        assert!(matches!(v, ConfirmVerdict::Hold(ref r) if r.contains("says 0.01 now")), "{v:?}");
        assert_eq!(e.result, "refuted");
    }

    #[tokio::test]
    async fn no_data_and_errors_follow_the_rules_fallbacks() {
        assert!(matches!(
            confirm(Fallback::Hold, Fallback::Hold).check(&FixedValue(None), "q").await.0,
            ConfirmVerdict::Hold(_)
        ));
        assert_eq!(confirm(Fallback::Act, Fallback::Hold).check(&FixedValue(None), "q").await.0, ConfirmVerdict::Go);
        let (v, e) = confirm(Fallback::Hold, Fallback::Fail).check(&Fails, "q").await;
        assert!(matches!(v, ConfirmVerdict::Fail(ref r) if r.contains("connection refused")), "{v:?}");
        assert_eq!(e.error.as_deref(), Some("connection refused"));
        assert_eq!(confirm(Fallback::Hold, Fallback::Act).check(&Fails, "q").await.0, ConfirmVerdict::Go);
    }
}
