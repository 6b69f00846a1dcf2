//! Traces over OTLP, and W3C trace context from incoming HTTP and Kafka headers.
//!
//! Nothing is exported unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then backstop's spans (`intake`, `alerts`,
//! `decided`, `confirm`, `action`, `feedback_batch`) go to that collector over OTLP/HTTP, in
//! batches, as protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, the default) or JSON
//! (`http/json`). See docs/observability.md.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// Whether an OTLP exporter was set up: without one, trace context is not even parsed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "backstop";

/// An OTLP trace pipeline built from the environment.
pub struct Traces {
    provider: SdkTracerProvider,
    /// Where the spans go, for the start-up log line.
    pub endpoint: String,
    /// `http/protobuf` or `http/json`.
    pub protocol: &'static str,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl Traces {
    /// Build the exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `Ok(None)` when neither is (no exporter,
    /// no cost). The OTLP exporter itself reads the endpoint, `OTEL_EXPORTER_OTLP_HEADERS`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` and their `_TRACES_` forms; the batch processor reads
    /// `OTEL_BSP_*`; the resource reads `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn from_env() -> Result<Option<Traces>, String> {
        let endpoint = match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(e), _) => e,
            (None, Some(e)) => format!("{}/v1/traces", e.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let requested = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let (protocol, name) = match requested.as_deref() {
            None | Some("http/protobuf") => (Protocol::HttpBinary, "http/protobuf"),
            Some("http/json") => (Protocol::HttpJson, "http/json"),
            Some("grpc") => {
                return Err("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported by this build: use http/protobuf \
                            (the collector's port 4318)"
                    .into());
            }
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: expected http/protobuf (the default) or http/json"
                ));
            }
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
        let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        let resource = Resource::builder().with_service_name(service).build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        EXPORTING.store(true, Ordering::Relaxed);
        // Shown in the log: without credentials the endpoint may carry.
        let endpoint = crate::secret::url_without_userinfo(&endpoint).0;
        Ok(Some(Traces { provider, endpoint, protocol: name }))
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans for this exporter.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        // No `target` attribute for the module (`code.namespace` has it): `target` is the object
        // an action changes.
        tracing_opentelemetry::layer().with_target(false).with_tracer(self.provider.tracer("backstop"))
    }

    /// The guard that flushes the spans still queued when it is dropped (or shut down).
    pub fn guard(&self) -> TraceGuard {
        TraceGuard(Some(self.provider.clone()))
    }
}

/// The spans opened for every request or message taken in (see docs/design.md, "Traces").
pub const PER_REQUEST_SPANS: [&str; 2] = ["intake", "alerts"];

/// The process's subscriber: the log to `writer` (text, or JSON when `json`) at what `filter`
/// lets through, and `traces`' spans (backstop's own at info and above) when they are exported.
///
/// The spans every request opens (`intake`, `alerts`) are for traces: in the log they would
/// only prefix the few lines written inside them, which carry their own fields, and formatting
/// them cost a twentieth of a 1-alert request's CPU. Without traces they are not even created:
/// no layer is added for absent traces (an absent layer still took every span, so each request
/// built and dropped its spans: a fiftieth of a 1-alert request).
pub fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    json: bool,
    ansi: bool,
    writer: W,
    traces: Option<&Traces>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let filter = tracing_subscriber::filter::FilterExt::and(
        filter,
        tracing_subscriber::filter::filter_fn(|meta| !(meta.is_span() && PER_REQUEST_SPANS.contains(&meta.name()))),
    );
    let logs = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match traces {
        Some(t) => {
            Box::new(logs.with(
                t.layer().with_filter(
                    tracing_subscriber::filter::Targets::new().with_target("backstop", tracing::Level::INFO),
                ),
            ))
        }
        None => Box::new(logs),
    }
}

/// Flushes and stops the exporter on [`TraceGuard::shutdown`] or drop; holds nothing when
/// traces are off.
#[must_use = "dropping the guard stops the exporter"]
#[derive(Default)]
pub struct TraceGuard(Option<SdkTracerProvider>);

impl TraceGuard {
    /// Export what is queued and stop, within 5 s (a collector that does not answer must not
    /// hold up a pod's termination).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        {
            // The subscriber may be gone by now: say it on stderr.
            eprintln!("warning: exporting the last spans: {e}");
        }
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `traceparent` and `tracestate`, the only headers the W3C propagator reads.
struct Carrier(Vec<(&'static str, String)>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) in these headers (names compared
/// without regard to case); an empty context when there is none or it is malformed.
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> opentelemetry::Context {
    let mut carrier = Carrier(Vec::new());
    for (key, value) in headers {
        let name = ["traceparent", "tracestate"].into_iter().find(|n| key.eq_ignore_ascii_case(n));
        if let (Some(name), Ok(value)) = (name, std::str::from_utf8(value)) {
            carrier.0.push((name, value.trim().to_string()));
        }
    }
    // The propagator accepts ids of any length ("00-abc-def-01"); W3C says 32 and 16 hex digits.
    let lengths = |tp: &str| tp.split('-').map(str::len).take(4).eq([2, 32, 16, 2]);
    if !carrier.get("traceparent").is_some_and(lengths) {
        return opentelemetry::Context::new();
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Whether spans go to a collector (OTLP configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Make the trace context found in `headers` (HTTP or Kafka) the parent of `span`, which must
/// not have been entered yet. Does nothing when traces are off or there is no valid context.
pub fn set_parent_from<'a>(span: &tracing::Span, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, or for a span already started.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn traceparent() -> String {
        format!("00-{TRACE}-{PARENT}-01")
    }

    #[test]
    fn extracts_traceparent_and_tracestate_from_headers() {
        let tp = traceparent();
        let headers = [
            ("content-type", &b"application/json"[..]),
            ("TraceParent", tp.as_bytes()),
            ("tracestate", &b"vendor=opaque"[..]),
        ];
        let cx = extract(headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(sc.span_id(), SpanId::from_hex(PARENT).unwrap());
        assert_eq!(sc.trace_state().get("vendor"), Some("opaque"));
    }

    #[test]
    fn no_or_malformed_traceparent_gives_an_empty_context() {
        assert!(!extract([]).span().span_context().is_valid());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-abc-def-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            let cx = extract([("traceparent", bad.as_bytes())]);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
        // Not UTF-8: ignored.
        assert!(!extract([("traceparent", &[0xff, 0xfe][..])]).span().span_context().is_valid());
    }

    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn the_span_gets_the_remote_parent_and_its_children_follow() {
        let collected = Collect::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(collected.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            let tp = traceparent();
            let span = tracing::info_span!("intake", source = "test");
            set_parent_from(&span, [("traceparent", tp.as_bytes())]);
            span.in_scope(|| {
                let _child = tracing::info_span!("decided", rule = "r").entered();
            });
        });
        provider.force_flush().unwrap();
        let spans = collected.0.lock().unwrap().clone();
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no {n} in {spans:?}"));
        let (intake, decided) = (by_name("intake"), by_name("decided"));
        assert_eq!(intake.span_context.trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(intake.parent_span_id, SpanId::from_hex(PARENT).unwrap());
        assert_eq!(decided.span_context.trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(decided.parent_span_id, intake.span_context.span_id());
    }

    /// The log's writer in these tests: what was written, shared.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_traces_the_per_request_spans_are_not_created_and_the_others_are_logged() {
        let written = Written::default();
        let out = written.clone();
        let filter = tracing_subscriber::EnvFilter::new("info");
        let sub = super::subscriber(filter, false, false, move || out.clone(), None);
        tracing::subscriber::with_default(sub, || {
            assert!(tracing::info_span!("intake", source = "alertmanager").is_disabled());
            assert!(tracing::info_span!("alerts", alerts = 50).is_disabled());
            let decided = tracing::info_span!("decided", rule = "canary");
            assert!(!decided.is_disabled(), "a decision's span is still made (its lines carry it)");
            let _in = decided.enter();
            tracing::info!(target = "v1", "rolled back");
        });
        let log = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("decided{rule=\"canary\"}") && log.contains("rolled back"), "{log}");
    }
}
