//! Intake: Alertmanager's webhook and feedback events (JSON or NDJSON), recorded before they are
//! answered, refused lines answered with where and recorded.

use super::*;

/// In a feedback batch, refused lines recorded one by one (each deduplicated by its hash); past
/// this many, the rest is recorded once, as the whole body, with their count.
pub(super) const MAX_RECORDED_LINES: usize = 16;

/// Refused lines listed in a batch's answer; past this many, `refused_omitted` counts the rest.
pub(super) const MAX_LISTED_LINES: usize = 100;

/// `POST /v1/feedback`: one feedback event (JSON, or a CloudEvent in structured mode, or in
/// binary mode with `ce-` headers), or many as newline-delimited JSON
/// (`application/x-ndjson`, one event per line). Each event is recorded before the answer;
/// in a batch, a bad line is refused (and recorded) with its line number and the others are
/// taken. The answer lists the actions feedback rules took.
pub(super) async fn feedback_intake(
    state: State<AppState>,
    limits: Limits,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("intake", source = "http", http.route = "/v1/feedback", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_feedback(state, limits, headers, body), span).await
}

/// The non-blank lines of an NDJSON body, with their 1-based line numbers.
pub fn ndjson_lines(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// One feedback payload (a line of a batch, or the whole body): the event, or why not and where.
pub(super) fn feedback_event(
    ce: &[(&str, &[u8])],
    line: usize,
    payload: &[u8],
) -> Result<crate::event::Feedback, ApiError> {
    match message::parse(message::Expect::Feedback, ce, payload) {
        Ok(message::Message::Feedback(f)) => Ok(f),
        Ok(message::Message::Alerts(_)) => Err(ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this is an alert: send alerts to /v1/alertmanager",
            json!({ "line": line }),
        )),
        Err(e) => Err(ApiError::at(
            if e.path.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY },
            e.to_string(),
            json!({ "line": line, "path": e.path }),
        )),
    }
}

pub(super) async fn receive_feedback(
    State(state): State<AppState>,
    limits: Limits,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = read_body(body, state.max_body_bytes, limits).await;
    let ndjson = is_ndjson(&headers);
    let send = "application/json, application/cloudevents+json or application/x-ndjson";
    if let Some(err) = precheck(&state, &headers, &mut body, ndjson || is_json(&headers), send) {
        if let Err(unavailable) = record_rejection(&state, "http", &err, body.size, &body.bytes, body.sha256()).await {
            return unavailable;
        }
        return err.into_response();
    }
    let sha = body.sha256();
    let BodyRead { bytes, size, .. } = body;
    // The HTTP binding's `ce-` headers are the Kafka binding's `ce_` ones.
    let ce: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter_map(|(k, v)| k.as_str().strip_prefix("ce-").map(|rest| (format!("ce_{rest}"), v.as_bytes().to_vec())))
        .collect();
    let ce: Vec<(&str, &[u8])> = ce.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    if !ndjson {
        let event = match feedback_event(&ce, 1, &bytes) {
            Ok(f) => f,
            Err(error) => {
                if let Err(unavailable) = record_rejection(&state, "http", &error, size, &bytes, sha).await {
                    return unavailable;
                }
                return error.into_response();
            }
        };
        return feedback_answer(
            &state,
            vec![(event, json!({ "http": { "line": 1, "sha256": sha } }))],
            1,
            Vec::new(),
            0,
        )
        .await;
    }
    let lines = ndjson_lines(&bytes);
    let (mut events, mut refused, mut omitted) = (Vec::new(), Vec::new(), 0usize);
    // Refused lines past the first MAX_RECORDED_LINES: how many, the first few, the first reason.
    let (mut recorded, mut beyond, mut beyond_lines, mut beyond_reason) = (0usize, 0usize, Vec::new(), None);
    for (line, payload) in &lines {
        let error = match feedback_event(&[], *line, payload) {
            Ok(f) => {
                events.push((f, json!({ "http": { "line": line, "sha256": sha } })));
                continue;
            }
            Err(error) => error,
        };
        if recorded < MAX_RECORDED_LINES {
            recorded += 1;
            let line_sha = crate::digest::sha256_hex(payload);
            if let Err(unavailable) = record_rejection(&state, "http", &error, payload.len(), payload, line_sha).await {
                return unavailable;
            }
        } else {
            beyond += 1;
            if beyond_lines.len() < 8 {
                beyond_lines.push(json!({ "line": line, "status": error.status.as_u16() }));
            }
            beyond_reason.get_or_insert_with(|| format!("line {line}: {}", error.message));
        }
        if refused.len() < MAX_LISTED_LINES {
            refused.push(json!({ "line": line, "status": error.status.as_u16(), "error": error.message }));
        } else {
            omitted += 1;
        }
    }
    if let Some(first) = beyond_reason {
        let summary = ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{beyond} more lines refused (past the first {MAX_RECORDED_LINES}, recorded one by one); {first}"),
            json!({ "lines": beyond_lines, "refused_lines": beyond }),
        );
        if let Err(unavailable) = record_rejection(&state, "http", &summary, size, &bytes, sha).await {
            return unavailable;
        }
    }
    feedback_answer(&state, events, lines.len(), refused, omitted).await
}

/// Record and count the events taken, run the feedback rules, and answer.
pub(super) async fn feedback_answer(
    state: &AppState,
    events: Vec<(crate::event::Feedback, Value)>,
    lines: usize,
    refused: Vec<Value>,
    omitted: usize,
) -> Response {
    let taken = events.len();
    let batch: Vec<(&crate::event::Feedback, &Value)> = events.iter().map(|(f, o)| (f, o)).collect();
    let reports = match state.pipeline.feedback_batch(&batch, SourceKind::Http).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let duplicates = reports.iter().filter(|r| r.duplicate).count();
    let results: Vec<_> = reports.into_iter().flat_map(|r| r.reports).collect();
    let status = if taken > 0 || lines == 0 { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut body = json!({
        "received": taken,
        "duplicates": duplicates,
        "refused": refused,
        "results": results,
    });
    if omitted > 0 {
        body["refused_omitted"] = json!(omitted);
    }
    (status, Json(body)).into_response()
}

/// `POST /v1/alertmanager`, in an `intake` span whose parent is the request's W3C trace context.
pub(super) async fn alertmanager_webhook(
    state: State<AppState>,
    limits: Limits,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span =
        tracing::info_span!("intake", source = "alertmanager", http.route = "/v1/alertmanager", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_alerts(state, limits, headers, body), span).await
}

pub(super) async fn receive_alerts(
    State(state): State<AppState>,
    limits: Limits,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = read_body(body, state.max_body_bytes, limits).await;
    let rejection = precheck(&state, &headers, &mut body, is_json(&headers), "application/json");
    let parsed = match rejection {
        Some(e) => Err(e),
        None => alertmanager::parse(&body.bytes).map_err(|e| {
            let (status, location) = match &e {
                ParseError::Syntax { line, column, .. } => {
                    (StatusCode::BAD_REQUEST, json!({ "line": line, "column": column }))
                }
                ParseError::Invalid { path, .. } => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "path": path })),
            };
            ApiError::at(status, e.to_string(), location)
        }),
    };
    let webhook = match parsed {
        Ok(w) => w,
        Err(err) => {
            if let Err(unavailable) =
                record_rejection(&state, "alertmanager", &err, body.size, &body.bytes, body.sha256()).await
            {
                return unavailable;
            }
            return err.into_response();
        }
    };
    let context = json!({
        "receiver": webhook.receiver,
        "groupKey": webhook.group_key,
        "truncatedAlerts": webhook.truncated_alerts,
        "externalURL": webhook.external_url,
    });
    if webhook.truncated_alerts > 0 {
        warn!(truncated = webhook.truncated_alerts, group = %webhook.group_key, "Alertmanager truncated this group (max_alerts)");
    }
    let (received, truncated) = (webhook.alerts.len(), webhook.truncated_alerts);
    // Read while the delivery is fresh in the cache, then dropped: what waits for the durable
    // write is only what goes on (see `PreparedAlerts`).
    let prepared = match state.pipeline.prepare_alerts(&webhook.alerts, &context) {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    drop(webhook);
    drop((context, body));
    match state.pipeline.record_alerts(prepared).await {
        Ok(results) => {
            // An action that failed (the target could not be read or written in time) is worth
            // another try: 503 makes Alertmanager send the group again, with its backoff. The
            // failure freed the alert's key, so the retry acts; the others are duplicates.
            let failed = results.iter().any(|r| r.outcome == Kind::Failed);
            let status = if failed { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            // Serialised straight from the reports (no JSON tree built per alert first).
            #[derive(serde::Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Answer {
                received: usize,
                results: Vec<crate::pipeline::Report>,
                retry: bool,
                truncated_alerts: u64,
            }
            let body = Answer { received, results, retry: failed, truncated_alerts: truncated };
            (status, Json(body)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v1/flagger/rollback`: Flagger's `rollback` webhook. Flagger posts `{name, namespace,
/// phase, checksum, type, metadata}` during analysis; 200 tells it to roll back (a rule decided
/// against that canary and the decision is still in force), 412 to go on. No credentials:
/// Flagger's webhooks cannot send them, and the answer reveals only yes or no (restrict who can
/// reach it with a NetworkPolicy).
pub(super) async fn flagger_rollback(State(state): State<AppState>, limits: Limits, body: Body) -> Response {
    let mut body = read_body(body, state.max_body_bytes, limits).await;
    let (size, over, failed) = (body.size, body.over, body.failed.take());
    let bytes = &body.bytes;
    let parsed: Result<Value, ApiError> = if let Some(failed) = failed {
        Err(failed)
    } else if over {
        Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {size} bytes exceeds the limit")))
    } else {
        serde_json::from_slice::<Value>(bytes).map_err(|e| {
            ApiError::at(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e}"),
                json!({ "line": e.line(), "column": e.column() }),
            )
        })
    };
    let fields = parsed.and_then(|v| match (v["namespace"].as_str(), v["name"].as_str()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string(), v)),
        _ => Err(ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Flagger's payload needs `name` and `namespace`",
            json!({ "path": if v["namespace"].as_str().is_none() { "namespace" } else { "name" } }),
        )),
    });
    let (namespace, name, payload) = match fields {
        Ok(f) => f,
        Err(err) => {
            if let Err(unavailable) = record_rejection(&state, "flagger", &err, size, bytes, body.sha256()).await {
                return unavailable;
            }
            return err.into_response();
        }
    };
    match state.pipeline.flagger_rollback(&namespace, &name, &payload).await {
        Ok(Some(v)) => Json(json!({
            "rollback": true,
            "canary": format!("{namespace}/{name}"),
            "rule": v.rule,
            "action_id": v.action_id,
            "since": v.since,
            "until": v.until,
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::PRECONDITION_FAILED,
            Json(json!({
                "rollback": false,
                "canary": format!("{namespace}/{name}"),
                "reason": "no decision against this canary is in force",
            })),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
