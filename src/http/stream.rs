//! `GET /v1/audit/stream`: the audit trail as server-sent events, live. Each record is one event
//! (`id`: its seq, `event`: its kind, `data`: the record as `audit query --format json` prints
//! it). A client that reconnects with `Last-Event-ID` (browsers' `EventSource` do) or `?after=SEQ`
//! gets what it missed first; without either, records from now on (or since `since`).
//!
//! The stream reads the log's segments after the last seq it sent, woken when the log's last seq
//! moves (checked every [`POLL`]), so it works the same on a cluster's follower, whose records
//! come from the replicated log, and costs nothing while the log is idle.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};

use super::*;

/// How often an idle stream looks at the log's last seq.
pub const POLL: Duration = Duration::from_millis(200);
/// At most this many records are read from disk at a time.
const BATCH: usize = 1000;

/// Query parameters of the stream: where to start, and which records to send (as `audit query`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamParams {
    /// Send the records after this seq first.
    after: Option<u64>,
    /// Or the records since this time (RFC 3339 or a duration back from now).
    since: Option<String>,
    rule: Option<String>,
    target: Option<String>,
    event: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
}

pub(super) async fn audit_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = AuditParams {
        since: None,
        until: None,
        rule: p.rule,
        target: p.target,
        event: p.event,
        action: p.action,
        outcome: p.outcome,
        limit: None,
    }
    .to_filter()
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let since = AuditParams { since: p.since, ..Default::default() }
        .to_filter()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?
        .since;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let log = state.pipeline.audit().clone();
    let cursor = match (resume.or(p.after), since) {
        (Some(after), _) => Cursor::After(after),
        (None, Some(since)) => Cursor::Since(since),
        (None, None) => Cursor::After(log.last().0),
    };
    let stream =
        futures::stream::unfold((cursor, log, filter, Vec::new()), |(mut cursor, log, filter, mut ready)| async move {
            loop {
                if let Some(event) = ready.pop() {
                    return Some((Ok::<Event, Infallible>(event), (cursor, log, filter, ready)));
                }
                let after = match cursor {
                    Cursor::After(seq) if log.last().0 <= seq => {
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    Cursor::After(seq) => Some(seq),
                    Cursor::Since(_) => None,
                };
                let since = match cursor {
                    Cursor::Since(t) => Some(t),
                    Cursor::After(_) => None,
                };
                let dir = log.dir().to_path_buf();
                let records = tokio::task::spawn_blocking(move || audit::first_after(&dir, after, since, BATCH)).await;
                let Ok(Ok(records)) = records else {
                    // The log could not be read just now (a segment being sealed, say): try again.
                    tokio::time::sleep(POLL).await;
                    continue;
                };
                match records.last() {
                    Some(last) => cursor = Cursor::After(last.seq),
                    None => {
                        if let Cursor::Since(_) = cursor {
                            cursor = Cursor::After(log.last().0);
                        }
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                }
                // Sent oldest first: `ready` is popped from its end.
                ready = records
                    .iter()
                    .rev()
                    .filter(|r| filter.matches(r))
                    .map(|r| {
                        Event::default()
                            .id(r.seq.to_string())
                            .event(r.entry.kind.as_str())
                            .data(serde_json::to_string(r).unwrap_or_default())
                    })
                    .collect();
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

#[derive(Debug, Clone, Copy)]
enum Cursor {
    After(u64),
    Since(chrono::DateTime<chrono::Utc>),
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::testing::{FIRING, harness};

    /// Open the stream at `uri` (with `last_event_id`, if any) and read events until `n` arrive
    /// (or a few seconds pass): `(id, event, data)` each.
    async fn events(
        h: &crate::testing::Harness,
        uri: &str,
        last_event_id: Option<&str>,
        n: usize,
        during: impl std::future::Future<Output = ()>,
    ) -> Vec<(u64, String, Value)> {
        let mut req = Request::get(uri);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = router(h.state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        during.await;
        let mut text = String::new();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while out.len() < n {
            let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await else { break };
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field =
                    |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()));
                if let (Some(id), Some(event), Some(data)) = (field("id:"), field("event:"), field("data:")) {
                    out.push((id.parse().unwrap(), event, serde_json::from_str(&data).unwrap()));
                }
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_stream_sends_what_is_recorded_after_it_opens_in_order() {
        let h = harness();
        let got = events(&h, "/v1/audit/stream", None, 4, async {
            h.webhook(FIRING).await;
        })
        .await;
        let kinds: Vec<&str> = got.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(kinds, ["received", "matched", "decided", "applied"], "{got:?}");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids are seqs, ascending");
        assert_eq!(got[3].2["target"], "sms-app/model-service");
        assert_eq!(got[3].2["seq"], got[3].0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reconnect_resumes_after_its_last_event_id_and_filters_apply() {
        let h = harness();
        h.webhook(FIRING).await;
        h.webhook(FIRING).await; // a redelivery: a duplicate's noop
        let all = events(&h, "/v1/audit/stream?after=0", None, 7, async {}).await;
        assert_eq!(all.len(), 7, "{all:?}");
        let rest = events(&h, "/v1/audit/stream", Some(&all[3].0.to_string()), 3, async {}).await;
        assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), all[4..].iter().map(|r| r.0).collect::<Vec<_>>());
        let noop = events(&h, "/v1/audit/stream?after=0&outcome=noop,applied", None, 2, async {}).await;
        assert_eq!(noop.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), ["applied", "noop"]);
        let resp = router(h.state.clone())
            .oneshot(Request::get("/v1/audit/stream?outcome=bogus").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
