//! The Prometheus HTTP API as backstop asks it: one instant query, one number (or none). The I/O
//! is here, behind the [`Prometheus`] trait; what the answers mean is decided by the pure checks
//! of [`super::confirm`] and [`super::verification`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;

use crate::secret::Secret;

/// Where confirmation queries go.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusConfig {
    pub url: String,
    pub bearer_token: Option<Secret>,
    pub basic: Option<(String, Secret)>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Per HTTP request; each rule's `confirm.timeout` bounds its retries.
    pub timeout: Duration,
}

/// Something that answers an instant PromQL query with one number (or none).
pub trait Prometheus: Send + Sync {
    fn describe(&self) -> String;
    fn value<'a>(&'a self, promql: &'a str, timeout: Duration) -> BoxFuture<'a, Result<Option<f64>, String>>;
}

/// The Prometheus HTTP API, with the connection settings of the config.
pub struct PrometheusClient {
    client: prometheus_http_query::Client,
    /// The URL as shown: without userinfo (credentials in the URL never reach a message).
    url: String,
    userinfo: Option<String>,
}

impl PrometheusClient {
    pub fn new(c: &PrometheusConfig) -> Result<PrometheusClient, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &c.bearer_token {
            let value = format!("Bearer {}", token.read()?);
            let mut v = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| "bearer token is not a valid header value")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        if let Some((user, pass)) = &c.basic {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", pass.read()?));
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|e| e.to_string())?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder().default_headers(headers).timeout(c.timeout);
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        if c.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let (url, userinfo) = crate::secret::url_without_userinfo(&c.url);
        let scrub = |m: String| match &userinfo {
            Some(u) => m.replace(u.as_str(), ""),
            None => m,
        };
        let client = prometheus_http_query::Client::from(http, &c.url)
            .map_err(|e| scrub(format!("Prometheus URL {url}: {e}")))?;
        Ok(PrometheusClient { client, url, userinfo })
    }

    /// An error message without the URL's userinfo (the HTTP client prints the URL it asked).
    fn scrub(&self, message: String) -> String {
        match &self.userinfo {
            Some(u) => message.replace(u.as_str(), ""),
            None => message,
        }
    }

    async fn once(&self, promql: &str, timeout: Duration) -> Result<Option<f64>, String> {
        use prometheus_http_query::response::Data;
        let result = self
            .client
            .query(promql)
            .timeout(timeout.as_millis() as i64)
            .get()
            .await
            .map_err(|e| self.scrub(e.to_string()))?;
        let values: Vec<f64> = match result.data() {
            Data::Vector(v) => v.iter().map(|s| s.sample().value()).collect(),
            Data::Scalar(s) => vec![s.value()],
            Data::Matrix(_) => {
                return Err("the query returns a range vector; an instant query must give a number".into());
            }
        };
        // 0/0 (no traffic) is NaN: that is no data, not a number to compare.
        let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        // Several series: the largest (the rule compares the worst case).
        Ok(values.into_iter().reduce(f64::max))
    }
}

impl Prometheus for PrometheusClient {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn value<'a>(&'a self, promql: &'a str, timeout: Duration) -> BoxFuture<'a, Result<Option<f64>, String>> {
        Box::pin(async move {
            // Retries with backoff, all inside the rule's timeout.
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(10)
                .with_jitter();
            let last = std::sync::Mutex::new(String::new());
            let attempt = (|| self.once(promql, timeout))
                .retry(backoff)
                .notify(|e, _| *last.lock().unwrap_or_else(|p| p.into_inner()) = e.clone());
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let last = if last.is_empty() { String::new() } else { format!(" (last error: {last})") };
                    Err(format!("no answer from {} within {}{last}", self.url, humantime::format_duration(timeout)))
                }
            }
        })
    }
}

/// A fixed answer, for `backstop simulate --value`.
pub struct FixedValue(pub Option<f64>);

impl Prometheus for FixedValue {
    fn describe(&self) -> String {
        "a given value".into()
    }

    fn value<'a>(&'a self, _promql: &'a str, _timeout: Duration) -> BoxFuture<'a, Result<Option<f64>, String>> {
        let v = self.0;
        Box::pin(async move { Ok(v) })
    }
}

pub type SharedPrometheus = Arc<dyn Prometheus>;

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use axum::http::HeaderMap;

    /// A stand-in for Prometheus's query API that wants a bearer token.
    async fn fake_prometheus(answer: Value) -> String {
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(move |headers: HeaderMap| {
                let answer = answer.clone();
                async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0k") {
                        return (
                            axum::http::StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"status": "error", "errorType": "unauthorized", "error": "no"})),
                        );
                    }
                    (axum::http::StatusCode::OK, axum::Json(json!({"status": "success", "data": answer})))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// A client for `url` whose bearer token file holds `token` (read once, at construction).
    fn client(url: String, token: &str) -> PrometheusClient {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        PrometheusClient::new(&PrometheusConfig {
            url,
            bearer_token: Some(Secret::File(dir.path().join("token"))),
            basic: None,
            ca_file: None,
            insecure_skip_verify: false,
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_client_sends_the_token_and_reads_vectors_scalars_and_empty_results() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"service": "a"}, "value": [1700000000.0, "0.12"]},
            {"metric": {"service": "b"}, "value": [1700000000.0, "0.30"]}]});
        let url = fake_prometheus(vector).await;
        let c = client(url, "t0k");
        assert_eq!(c.value("q", Duration::from_secs(2)).await, Ok(Some(0.30)), "the largest series");
        let url = fake_prometheus(json!({"resultType": "vector", "result": []})).await;
        let c = client(url, "t0k");
        assert_eq!(c.value("q", Duration::from_secs(2)).await, Ok(None));
        let url = fake_prometheus(json!({"resultType": "scalar", "result": [1700000000.0, "NaN"]})).await;
        let c = client(url, "t0k");
        assert_eq!(c.value("q", Duration::from_secs(2)).await, Ok(None), "NaN (0/0) is no data");
    }

    #[tokio::test]
    async fn a_wrong_token_or_a_dead_server_is_an_error_within_the_timeout() {
        let url = fake_prometheus(json!({"resultType": "vector", "result": []})).await;
        let c = client(url, "nope");
        let started = std::time::Instant::now();
        assert!(c.value("q", Duration::from_millis(800)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3), "retries stay inside the timeout");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = client(format!("http://127.0.0.1:{port}"), "t0k");
        let err = c.value("q", Duration::from_millis(500)).await.unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn credentials_in_the_prometheus_url_never_reach_a_message() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = client(format!("http://am:s3cr3t-in-url@127.0.0.1:{port}"), "t0k");
        assert_eq!(c.describe(), format!("http://127.0.0.1:{port}"));
        let err = c.value("q", Duration::from_millis(500)).await.unwrap_err();
        assert!(!err.contains("s3cr3t-in-url"), "{err}");
    }
}
