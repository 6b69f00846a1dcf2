//! The Kubernetes API emulator's own tests: what a client sees over HTTP, as kube-rs sends it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::kube::KubeEmulator;

const VS: &str = "/apis/networking.istio.io/v1/namespaces/sms-app/virtualservices/model-service";
const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY: &str = "application/apply-patch+yaml";

/// The demo's canary: 90% to v1, 10% to v2.
fn virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "model-service", "namespace": "sms-app"},
        "spec": {
            "hosts": ["model-service"],
            "http": [{
                "name": "primary",
                "route": [
                    {"destination": {"host": "model-service", "subset": "v1"}, "weight": 90},
                    {"destination": {"host": "model-service", "subset": "v2"}, "weight": 10},
                ],
            }],
        },
    })
}

fn weights(patch_to: (i64, i64)) -> Value {
    json!({"spec": {"http": [{
        "name": "primary",
        "route": [
            {"destination": {"host": "model-service", "subset": "v1"}, "weight": patch_to.0},
            {"destination": {"host": "model-service", "subset": "v2"}, "weight": patch_to.1},
        ],
    }]}})
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send_as(
    kube: &KubeEmulator,
    token: Option<&str>,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = reqwest::Client::new().request(method, format!("{}{path_and_query}", kube.url()));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(body) = body {
        req = req.body(serde_json::to_vec(body).expect("JSON"));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Answer { status, headers, body }
}

async fn send(
    kube: &KubeEmulator,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    send_as(kube, Some(kube.token()), method, path, content_type, body).await
}

async fn get(kube: &KubeEmulator, path: &str) -> Answer {
    send(kube, "GET", path, None, None).await
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().expect("resourceVersion").parse().expect("numeric")
}

fn stored(kube: &KubeEmulator) -> Value {
    kube.get("networking.istio.io/v1", "VirtualService", "sms-app", "model-service").expect("stored")
}

fn route_weights(obj: &Value) -> Vec<i64> {
    obj["spec"]["http"][0]["route"].as_array().expect("route").iter().map(|d| d["weight"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn discovery_lists_the_istio_group_with_v1_preferred() {
    let kube = KubeEmulator::start().await;
    let apis = get(&kube, "/apis").await;
    assert_eq!((apis.status, apis.body["kind"].as_str()), (200, Some("APIGroupList")));
    let istio = apis.body["groups"].as_array().unwrap().iter().find(|g| g["name"] == "networking.istio.io").unwrap();
    let versions: Vec<&str> =
        istio["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert!(versions.starts_with(&["v1", "v1beta1"]), "{versions:?}");
    assert_eq!(istio["preferredVersion"], json!({"groupVersion": "networking.istio.io/v1", "version": "v1"}));
    assert!(apis.body["groups"].as_array().unwrap().iter().any(|g| g["name"] == "events.k8s.io"));

    for version in ["v1", "v1beta1"] {
        let list = get(&kube, &format!("/apis/networking.istio.io/{version}")).await;
        assert_eq!(list.body["groupVersion"], format!("networking.istio.io/{version}"));
        let vs = list.body["resources"].as_array().unwrap().iter().find(|r| r["name"] == "virtualservices").unwrap();
        assert_eq!((vs["kind"].as_str(), vs["namespaced"].as_bool()), (Some("VirtualService"), Some(true)));
        assert_eq!(vs["shortNames"], json!(["vs"]));
        assert!(vs["verbs"].as_array().unwrap().contains(&json!("patch")));
        let names: Vec<&str> =
            list.body["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"destinationrules") && names.contains(&"virtualservices/status"), "{names:?}");
    }
    let core = get(&kube, "/api/v1").await;
    let names: Vec<&str> =
        core.body["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"services") && names.contains(&"events"), "{names:?}");
    assert_eq!(get(&kube, "/api").await.body["versions"], json!(["v1"]));
    assert_eq!(get(&kube, "/version").await.body["major"], "1");
    let missing = get(&kube, "/apis/apps/v1").await;
    assert_eq!((missing.status, missing.body["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test]
async fn get_and_list_return_what_was_seeded_with_server_fields() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());
    let mut other = virtual_service();
    other["metadata"]["namespace"] = "shop".into();
    kube.seed(other);

    let one = get(&kube, VS).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body, seeded);
    let meta = &one.body["metadata"];
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36), "{meta}");
    assert!(meta["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["managedFields"][0]["manager"], "kubectl-client-side-apply");
    assert!(meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    let list = get(&kube, "/apis/networking.istio.io/v1/namespaces/sms-app/virtualservices").await;
    assert_eq!(list.body["kind"], "VirtualServiceList");
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["items"][0], seeded);
    assert!(rv(&list.body) >= rv(&seeded));
    let all = get(&kube, "/apis/networking.istio.io/v1/virtualservices").await;
    let namespaces: Vec<&str> =
        all.body["items"].as_array().unwrap().iter().map(|i| i["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["shop", "sms-app"]);

    let missing = get(&kube, "/apis/networking.istio.io/v1/namespaces/sms-app/virtualservices/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "virtualservices.networking.istio.io \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "group": "networking.istio.io", "kind": "virtualservices"}, "code": 404,
        })
    );
}

#[tokio::test]
async fn merge_patch_bumps_resource_version_and_generation_but_a_no_op_does_not() {
    let kube = KubeEmulator::start().await;
    let before = kube.seed(virtual_service());

    let patched =
        send(&kube, "PATCH", &format!("{VS}?fieldManager=backstop"), Some(MERGE), Some(&weights((100, 0)))).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(route_weights(&patched.body), [100, 0]);
    assert!(rv(&patched.body) > rv(&before));
    assert_eq!(patched.body["metadata"]["generation"], 2);
    assert_eq!(patched.body, stored(&kube));
    let backstop =
        patched.body["metadata"]["managedFields"].as_array().unwrap().iter().find(|m| m["manager"] == "backstop");
    assert_eq!(backstop.unwrap()["fieldsV1"], json!({"f:spec": {"f:http": {}}}));

    let note = json!({"metadata": {"annotations": {"backstop.io/rule": "canary-high-error-rate"}}});
    let annotated = send(&kube, "PATCH", VS, Some(MERGE), Some(&note)).await;
    assert!(rv(&annotated.body) > rv(&patched.body));
    assert_eq!(annotated.body["metadata"]["generation"], 2, "metadata changes leave generation alone");

    let again = send(&kube, "PATCH", VS, Some(MERGE), Some(&note)).await;
    assert_eq!((again.status, rv(&again.body)), (200, rv(&annotated.body)), "a no-op write stores nothing");
}

#[tokio::test]
async fn stale_resource_version_in_a_patch_or_put_is_409_with_the_real_status() {
    let kube = KubeEmulator::start().await;
    let read = kube.seed(virtual_service());
    let stale = read["metadata"]["resourceVersion"].clone();
    kube.mutate("networking.istio.io/v1", "VirtualService", "sms-app", "model-service", |vs| {
        vs["spec"]["http"][0]["route"][0]["weight"] = 80.into();
        vs["spec"]["http"][0]["route"][1]["weight"] = 20.into();
    });

    let mut patch = weights((100, 0));
    patch["metadata"] = json!({"resourceVersion": stale});
    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await;
    let conflict = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Operation cannot be fulfilled on virtualservices.networking.istio.io \"model-service\": the object has been modified; please apply your changes to the latest version and try again",
        "reason": "Conflict",
        "details": {"name": "model-service", "group": "networking.istio.io", "kind": "virtualservices"}, "code": 409,
    });
    assert_eq!((answer.status, &answer.body), (409, &conflict));

    let mut replacement = read.clone();
    replacement["spec"]["http"][0]["route"][0]["weight"] = 100.into();
    replacement["spec"]["http"][0]["route"][1]["weight"] = 0.into();
    let answer = send(&kube, "PUT", VS, Some("application/json"), Some(&replacement)).await;
    assert_eq!((answer.status, &answer.body), (409, &conflict));
    assert_eq!(route_weights(&stored(&kube)), [80, 20]);

    // A custom resource is only replaced conditionally.
    replacement["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let answer = send(&kube, "PUT", VS, Some("application/json"), Some(&replacement)).await;
    assert_eq!((answer.status, answer.body["reason"].as_str()), (422, Some("Invalid")));
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
    );

    replacement["metadata"]["resourceVersion"] = stored(&kube)["metadata"]["resourceVersion"].clone();
    let answer = send(&kube, "PUT", VS, Some("application/json"), Some(&replacement)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(route_weights(&stored(&kube)), [100, 0]);
}

#[tokio::test]
async fn json_patch_with_a_failing_test_is_422_and_changes_nothing() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());
    let ops = |expected_rv: &Value| {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": expected_rv},
            {"op": "test", "path": "/spec/http/0/route/0/weight", "value": 90},
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 100},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 0},
        ])
    };
    kube.mutate("networking.istio.io/v1", "VirtualService", "sms-app", "model-service", |vs| {
        vs["metadata"]["labels"] = json!({"edited": "by-hand"});
    });
    let current = stored(&kube);
    let answer = send(&kube, "PATCH", VS, Some(JSON_PATCH), Some(&ops(&seeded["metadata"]["resourceVersion"]))).await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server rejected our request due to an error in our request", "reason": "Invalid",
            "details": {}, "code": 422,
        })
    );
    assert_eq!(stored(&kube), current);

    let answer = send(&kube, "PATCH", VS, Some(JSON_PATCH), Some(&ops(&current["metadata"]["resourceVersion"]))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(route_weights(&stored(&kube)), [100, 0]);
}

#[tokio::test]
async fn apply_patch_requires_a_field_manager_and_reports_ownership_conflicts_unless_forced() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    let mut config = weights((100, 0));
    config["apiVersion"] = "networking.istio.io/v1".into();
    config["kind"] = "VirtualService".into();
    config["metadata"] = json!({"name": "model-service", "namespace": "sms-app"});

    let answer = send(&kube, "PATCH", VS, Some(APPLY), Some(&config)).await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    let answer = send(&kube, "PATCH", &format!("{VS}?fieldManager=backstop"), Some(APPLY), Some(&config)).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.body["message"],
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using networking.istio.io/v1: .spec.http"
    );
    assert_eq!(answer.body["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(route_weights(&stored(&kube)), [90, 10]);

    let answer =
        send(&kube, "PATCH", &format!("{VS}?fieldManager=backstop&force=true"), Some(APPLY), Some(&config)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(route_weights(&stored(&kube)), [100, 0]);
    let managers = answer.body["metadata"]["managedFields"].as_array().unwrap();
    let backstop = managers.iter().find(|m| m["manager"] == "backstop").unwrap();
    assert_eq!(
        (backstop["operation"].as_str(), &backstop["fieldsV1"]),
        (Some("Apply"), &json!({"f:spec": {"f:http": {}}}))
    );
    let kubectl = managers.iter().find(|m| m["manager"] == "kubectl-client-side-apply").unwrap();
    assert!(kubectl["fieldsV1"]["f:spec"].get("f:http").is_none(), "forcing takes the field over: {kubectl}");
    assert_eq!(kube.requests().last().unwrap().field_manager.as_deref(), Some("backstop"));

    // The same manager applying again owns the field: no conflict, and a no-op.
    let again = send(&kube, "PATCH", &format!("{VS}?fieldManager=backstop"), Some(APPLY), Some(&config)).await;
    assert_eq!((again.status, rv(&again.body)), (200, rv(&answer.body)));
}

#[tokio::test]
async fn an_invalid_virtual_service_is_422_naming_the_field_and_nothing_is_stored() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());

    let mut patch = weights((100, 0));
    patch["spec"]["http"][0]["route"][0]["weight"] = "100".into();
    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await;
    assert_eq!((answer.status, answer.body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        answer.body["message"],
        "VirtualService.networking.istio.io \"model-service\" is invalid: spec.http[0].route[0].weight: Invalid value: \"string\": spec.http[0].route[0].weight in body must be of type integer: \"string\""
    );
    assert_eq!(
        answer.body["details"],
        json!({"name": "model-service", "group": "networking.istio.io", "kind": "VirtualService", "causes": [{
            "reason": "FieldValueTypeInvalid",
            "message": "Invalid value: \"string\": spec.http[0].route[0].weight in body must be of type integer: \"string\"",
            "field": "spec.http[0].route[0].weight",
        }]})
    );

    let no_host = json!({"spec": {"http": [{"route": [{"destination": {"subset": "v1"}, "weight": 100}]}]}});
    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&no_host)).await;
    assert_eq!(answer.status, 422);
    assert!(
        answer.body["message"].as_str().unwrap().ends_with("spec.http[0].route[0].destination.host: Required value"),
        "{}",
        answer.body["message"]
    );
    assert_eq!(stored(&kube), seeded, "nothing stored");

    // The schema has no bound on a weight (Istio's own webhook is not emulated): 150 is stored.
    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&weights((150, 0)))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn unknown_fields_are_pruned_with_a_warning_or_rejected_when_strict() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    let mut patch = weights((100, 0));
    patch["spec"]["http"][0]["route"][0]["wieght"] = 100.into();

    let strict = send(&kube, "PATCH", &format!("{VS}?fieldValidation=Strict"), Some(MERGE), Some(&patch)).await;
    assert_eq!(strict.status, 400);
    assert_eq!(strict.body["message"], "strict decoding error: unknown field \"spec.http[0].route[0].wieght\"");

    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["warning"], "299 - \"unknown field \\\"spec.http[0].route[0].wieght\\\"\"");
    assert!(stored(&kube)["spec"]["http"][0]["route"][0].get("wieght").is_none());
}

#[tokio::test]
async fn v1beta1_and_v1_see_the_same_object() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());
    let beta = VS.replace("/v1/", "/v1beta1/");

    let read = get(&kube, &beta).await;
    assert_eq!(read.body["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(read.body["metadata"], seeded["metadata"]);

    let answer = send(&kube, "PATCH", &beta, Some(MERGE), Some(&weights((100, 0)))).await;
    assert_eq!((answer.status, answer.body["apiVersion"].as_str()), (200, Some("networking.istio.io/v1beta1")));
    let v1 = get(&kube, VS).await.body;
    assert_eq!((v1["apiVersion"].as_str(), route_weights(&v1)), (Some("networking.istio.io/v1"), vec![100, 0]));
    assert_eq!(v1["metadata"]["resourceVersion"], answer.body["metadata"]["resourceVersion"]);
}

#[tokio::test]
async fn fail_next_429_answers_too_many_requests_then_the_request_succeeds() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    kube.fail_next("GET", Some("virtualservices"), 429, 1);

    let first = get(&kube, VS).await;
    assert_eq!((first.status, first.body["reason"].as_str()), (429, Some("TooManyRequests")));
    assert_eq!(first.headers["retry-after"], "1");
    assert_eq!(first.body["details"]["retryAfterSeconds"], 1);
    assert_eq!(get(&kube, VS).await.status, 200);

    kube.fail_next("PATCH", None, 503, 1);
    let busy = send(&kube, "PATCH", VS, Some(MERGE), Some(&weights((100, 0)))).await;
    assert_eq!((busy.status, busy.body["reason"].as_str()), (503, Some("ServiceUnavailable")));
    assert_eq!(route_weights(&stored(&kube)), [90, 10], "a failed request changes nothing");
    let statuses: Vec<u16> = kube.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 503]);
}

#[tokio::test]
async fn delay_next_slows_the_answer_and_the_write_still_happens() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    let delay = Duration::from_millis(1500);
    kube.delay_next("PATCH", Some("virtualservices"), delay, 1);

    let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let started = Instant::now();
    let sent = client
        .patch(format!("{}{VS}", kube.url()))
        .bearer_auth(kube.token())
        .header("content-type", MERGE)
        .body(weights((100, 0)).to_string())
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()));
    assert!(started.elapsed() < delay);
    assert_eq!(route_weights(&stored(&kube)), [90, 10], "not yet");
    // The client gave up; the server carries the write out after the delay all the same.
    while route_weights(&stored(&kube)) != [100, 0] {
        assert!(started.elapsed() < delay + Duration::from_secs(10), "the delayed write never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= delay);
    assert_eq!(kube.requests()[0].status, 200, "recorded when answered");
}

#[tokio::test]
async fn deny_answers_403_with_the_real_message() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    kube.deny("patch", "virtualservices", Some("sms-app"));
    kube.deny("list", "virtualservices", None);

    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&weights((100, 0)))).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "virtualservices.networking.istio.io \"model-service\" is forbidden: User \"system:serviceaccount:backstop:backstop\" cannot patch resource \"virtualservices\" in API group \"networking.istio.io\" in the namespace \"sms-app\"",
            "reason": "Forbidden",
            "details": {"name": "model-service", "group": "networking.istio.io", "kind": "virtualservices"}, "code": 403,
        })
    );
    let list = get(&kube, "/apis/networking.istio.io/v1/virtualservices").await;
    assert_eq!(
        list.body["message"],
        "virtualservices.networking.istio.io is forbidden: User \"system:serviceaccount:backstop:backstop\" cannot list resource \"virtualservices\" in API group \"networking.istio.io\" at the cluster scope"
    );
    assert_eq!(get(&kube, VS).await.status, 200, "get is still allowed");
    let elsewhere = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/model-service";
    assert_eq!(send(&kube, "PATCH", elsewhere, Some(MERGE), Some(&weights((100, 0)))).await.status, 404);
}

#[tokio::test]
async fn a_request_without_the_token_is_401() {
    let kube = KubeEmulator::start().await;
    let unauthorized = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    });
    for token in [None, Some("wrong")] {
        let answer = send_as(&kube, token, "GET", "/apis", None, None).await;
        assert_eq!((answer.status, &answer.body), (401, &unauthorized));
    }
    assert_eq!(kube.requests().iter().map(|r| r.status).collect::<Vec<_>>(), [401, 401]);
}

#[tokio::test]
async fn conflict_next_makes_exactly_the_next_n_conditional_writes_conflict() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    kube.conflict_next(2);

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let read = get(&kube, VS).await.body;
        let mut patch = weights((100, 0));
        patch["metadata"] = json!({"resourceVersion": read["metadata"]["resourceVersion"]});
        statuses.push(send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await.status);
    }
    assert_eq!(statuses, [409, 409, 200]);
    let vs = stored(&kube);
    assert_eq!(route_weights(&vs), [100, 0]);
    assert_eq!(vs["metadata"]["annotations"]["emulator.backstop.io/concurrent-writes"], "2");
}

#[tokio::test]
async fn before_write_runs_another_writer_before_each_write() {
    let kube = KubeEmulator::start().await;
    kube.seed(virtual_service());
    kube.before_write(|vs| {
        vs["metadata"]["labels"] = json!({"touched": "yes"});
    });
    let read = get(&kube, VS).await.body;
    let mut patch = weights((100, 0));
    patch["metadata"] = json!({"resourceVersion": read["metadata"]["resourceVersion"]});
    assert_eq!(send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await.status, 409);
    let read = get(&kube, VS).await.body;
    assert_eq!(read["metadata"]["labels"]["touched"], "yes");
    patch["metadata"] = json!({"resourceVersion": read["metadata"]["resourceVersion"]});
    assert_eq!(
        send(&kube, "PATCH", VS, Some(MERGE), Some(&patch)).await.status,
        200,
        "an unchanged hook writes nothing"
    );
}

#[tokio::test]
async fn events_are_stored() {
    let kube = KubeEmulator::start().await;
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "model-service.17f0a1b2c3d4e5f6", "namespace": "sms-app"},
        "eventTime": "2026-11-24T20:13:27.303000Z", "reportingController": "backstop.io/backstop",
        "reportingInstance": "backstop-0", "action": "Rollback", "reason": "CanaryRolledBack", "type": "Warning",
        "note": "canary-high-error-rate: 100% to v1",
        "regarding": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "namespace": "sms-app", "name": "model-service"},
    });
    let created = send(
        &kube,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/sms-app/events?",
        Some("application/json"),
        Some(&event),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let core = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "model-service.", "namespace": "sms-app"},
        "involvedObject": {"kind": "VirtualService", "namespace": "sms-app", "name": "model-service"},
        "reason": "CanaryRolledBack", "message": "rolled back", "type": "Normal",
    });
    let created_core =
        send(&kube, "POST", "/api/v1/namespaces/sms-app/events", Some("application/json"), Some(&core)).await;
    assert_eq!(created_core.status, 201, "{}", created_core.body);

    let events = kube.events();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["reason"].as_str(), events[0]["note"].as_str()),
        (Some("CanaryRolledBack"), Some("canary-high-error-rate: 100% to v1"))
    );
    assert!(events[1]["metadata"]["name"].as_str().unwrap().starts_with("model-service."));

    let again =
        send(&kube, "POST", "/apis/events.k8s.io/v1/namespaces/sms-app/events", Some("application/json"), Some(&event))
            .await;
    assert_eq!((again.status, again.body["reason"].as_str()), (409, Some("AlreadyExists")));
    let mut incomplete = event.clone();
    incomplete["metadata"]["name"] = "other".into();
    incomplete.as_object_mut().unwrap().remove("reportingController");
    let rejected = send(
        &kube,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/sms-app/events",
        Some("application/json"),
        Some(&incomplete),
    )
    .await;
    assert_eq!(rejected.status, 422);
    assert_eq!(
        rejected.body["message"],
        "Event.events.k8s.io \"other\" is invalid: reportingController: Required value"
    );
    assert_eq!(kube.events().len(), 2);
}

#[tokio::test]
async fn dry_run_validates_and_answers_but_stores_nothing() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());

    let answer = send(&kube, "PATCH", &format!("{VS}?dryRun=All"), Some(MERGE), Some(&weights((100, 0)))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(route_weights(&answer.body), [100, 0]);
    assert_eq!(stored(&kube), seeded);

    let mut bad = weights((100, 0));
    bad["spec"]["http"][0]["route"][1]["weight"] = json!("zero");
    assert_eq!(send(&kube, "PATCH", &format!("{VS}?dryRun=All"), Some(MERGE), Some(&bad)).await.status, 422);

    let mut new = virtual_service();
    new["metadata"]["name"] = "fresh".into();
    let path = "/apis/networking.istio.io/v1/namespaces/sms-app/virtualservices?dryRun=All";
    assert_eq!(send(&kube, "POST", path, Some("application/json"), Some(&new)).await.status, 201);
    assert!(kube.get("networking.istio.io/v1", "VirtualService", "sms-app", "fresh").is_none());
    assert_eq!(stored(&kube), seeded);
}

#[tokio::test]
async fn a_service_selector_switches_by_strategic_merge_patch_which_custom_resources_refuse() {
    let kube = KubeEmulator::start().await;
    kube.seed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {"selector": {"app": "checkout", "slot": "green"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    let svc = "/api/v1/namespaces/shop/services/checkout";
    let switch = json!({"spec": {"selector": {"slot": "blue"}}});
    let answer = send(&kube, "PATCH", svc, Some("application/strategic-merge-patch+json"), Some(&switch)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["spec"]["selector"], json!({"app": "checkout", "slot": "blue"}));
    let list = get(&kube, "/api/v1/namespaces/shop/services").await;
    assert_eq!(list.body["items"][0]["spec"]["selector"]["slot"], "blue");
    assert!(list.body["items"][0].get("kind").is_none(), "built-in lists leave out each item's kind");

    kube.seed(virtual_service());
    let answer =
        send(&kube, "PATCH", VS, Some("application/strategic-merge-patch+json"), Some(&weights((100, 0)))).await;
    assert_eq!((answer.status, answer.body["reason"].as_str()), (415, Some("UnsupportedMediaType")));
}

#[tokio::test]
async fn the_status_subresource_changes_only_status() {
    let kube = KubeEmulator::start().await;
    let seeded = kube.seed(virtual_service());
    let patch = json!({"status": {"observedGeneration": 1}, "spec": {"hosts": ["ignored"]}});
    let answer = send(&kube, "PATCH", &format!("{VS}/status"), Some(MERGE), Some(&patch)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let vs = stored(&kube);
    assert_eq!((vs["status"]["observedGeneration"].as_i64(), &vs["spec"]), (Some(1), &seeded["spec"]));
    assert_eq!(vs["metadata"]["generation"], 1);

    let answer = send(&kube, "PATCH", VS, Some(MERGE), Some(&json!({"status": {"observedGeneration": 7}}))).await;
    assert_eq!((answer.status, rv(&answer.body)), (200, rv(&vs)), "object writes ignore status");
}

#[tokio::test]
async fn the_kubeconfig_points_at_the_emulator_with_its_token() {
    let kube = KubeEmulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = kube.write_kubeconfig(dir.path());
    let config: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(config["current-context"], "emulator");
    let server = |name: &str| {
        let cluster = config["clusters"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        cluster["cluster"]["server"].as_str().unwrap().to_owned()
    };
    assert_eq!(server("emulator"), kube.url());
    assert_ne!(server("other"), kube.url());
    assert_eq!(config["users"][0]["user"]["token"], kube.token());
    let contexts: Vec<&str> =
        config["contexts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(contexts, ["emulator", "other"]);
    assert!(reqwest::get(format!("{}/version", server("other"))).await.is_err(), "nothing listens on other");
}

#[tokio::test]
async fn the_emulator_answers_while_the_test_thread_blocks() {
    use std::io::{Read, Write};
    let kube = KubeEmulator::start().await;
    // A blocking client on the test's own (single) runtime thread, as when a test waits for a
    // child process that talks to the emulator.
    let mut stream = std::net::TcpStream::connect(kube.url().trim_start_matches("http://")).unwrap();
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: emulator\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        kube.token()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn dropping_the_emulator_stops_it() {
    let kube = KubeEmulator::start().await;
    let url = format!("{}/version", kube.url());
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    drop(kube);
    let started = Instant::now();
    while reqwest::get(&url).await.is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "still answering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Argo Rollouts

const RO: &str = "/apis/argoproj.io/v1alpha1/namespaces/sms-app/rollouts/model-service";
const ARGO: &str = "argoproj.io/v1alpha1";

/// A canary Rollout paused at its second step, as the Argo controller leaves it.
fn rollout(kube: &KubeEmulator) -> Value {
    let mut ro = crate::support::kube::canary_rollout();
    // Not stored: status is only written through /status.
    ro["status"] = json!({"abort": true});
    kube.seed_paused_rollout(ro);
    stored_rollout(kube)
}

fn stored_rollout(kube: &KubeEmulator) -> Value {
    kube.get(ARGO, "Rollout", "sms-app", "model-service").expect("stored")
}

#[tokio::test]
async fn rollouts_are_discovered_with_their_status_subresource() {
    let kube = KubeEmulator::start().await;
    let group = get(&kube, "/apis/argoproj.io").await;
    assert_eq!(group.body["preferredVersion"], json!({"groupVersion": ARGO, "version": "v1alpha1"}));
    let list = get(&kube, "/apis/argoproj.io/v1alpha1").await;
    let resources = list.body["resources"].as_array().unwrap();
    let ro = resources.iter().find(|r| r["name"] == "rollouts").unwrap();
    assert_eq!((ro["kind"].as_str(), ro["namespaced"].as_bool()), (Some("Rollout"), Some(true)));
    assert_eq!(ro["shortNames"], json!(["ro"]));
    let status = resources.iter().find(|r| r["name"] == "rollouts/status").unwrap();
    assert_eq!(status["verbs"], json!(["get", "patch", "update"]));

    let aggregated: Value = reqwest::Client::new()
        .get(format!("{}/apis", kube.url()))
        .bearer_auth(kube.token())
        .header("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let argo = aggregated["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "argoproj.io").unwrap();
    assert_eq!(argo["versions"][0]["resources"][0]["resource"], "rollouts");
    assert_eq!(argo["versions"][0]["resources"][0]["subresources"][0]["subresource"], "status");
}

#[tokio::test]
async fn a_rollout_is_aborted_through_its_status_subresource_only() {
    let kube = KubeEmulator::start().await;
    let read = rollout(&kube);
    assert_eq!(read["status"]["phase"], "Paused");
    assert!(read["status"].get("abort").is_none(), "seeding does not write status");
    assert_eq!(get(&kube, RO).await.body, read);
    let list = get(&kube, "/apis/argoproj.io/v1alpha1/namespaces/sms-app/rollouts").await;
    assert_eq!((list.body["kind"].as_str(), &list.body["items"][0]), (Some("RolloutList"), &read));

    // `kubectl argo rollouts abort`'s patch, conditional on the version read; metadata and spec
    // in a status write are ignored, as the API server does for custom resources.
    let patch = json!({
        "metadata": {"resourceVersion": read["metadata"]["resourceVersion"], "annotations": {"ignored": "yes"}},
        "spec": {"replicas": 9},
        "status": {"abort": true},
    });
    let answer = send(&kube, "PATCH", &format!("{RO}/status?fieldManager=backstop"), Some(MERGE), Some(&patch)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ro = stored_rollout(&kube);
    assert_eq!(answer.body, ro);
    assert_eq!(
        ro["status"],
        json!({"phase": "Paused", "message": "CanaryPauseStep", "currentStepIndex": 1, "abort": true})
    );
    assert_eq!((&ro["spec"], ro["metadata"]["generation"].as_i64()), (&read["spec"], Some(1)));
    assert!(ro["metadata"]["annotations"].get("ignored").is_none());
    assert!(rv(&ro) > rv(&read));
    let backstop = ro["metadata"]["managedFields"].as_array().unwrap().iter().find(|m| m["manager"] == "backstop");
    assert_eq!(backstop.unwrap()["subresource"], "status");
    assert_eq!(backstop.unwrap()["fieldsV1"], json!({"f:status": {"f:abort": {}}}));

    // The same version again: stale now.
    let answer = send(&kube, "PATCH", &format!("{RO}/status"), Some(MERGE), Some(&patch)).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.body["message"],
        "Operation cannot be fulfilled on rollouts.argoproj.io \"model-service\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(answer.body["details"], json!({"name": "model-service", "group": "argoproj.io", "kind": "rollouts"}));

    // A write to the Rollout itself ignores status, and changes annotations.
    let undo = json!({"status": {"abort": false}});
    let answer = send(&kube, "PATCH", RO, Some(MERGE), Some(&undo)).await;
    assert_eq!((answer.status, rv(&answer.body)), (200, rv(&ro)), "object writes ignore status");
    let note = json!({"metadata": {"annotations": {"backstop.io/rule": "canary-abort"}}});
    let answer = send(&kube, "PATCH", RO, Some(MERGE), Some(&note)).await;
    assert_eq!(answer.body["metadata"]["annotations"]["backstop.io/rule"], "canary-abort");
    assert_eq!(answer.body["status"]["abort"], true);

    // The CRD's schema: status.abort is a boolean; unknown status fields are pruned.
    let wrong = json!({"status": {"abort": "yes", "bogus": 1}});
    let answer = send(&kube, "PATCH", &format!("{RO}/status"), Some(MERGE), Some(&wrong)).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Rollout.argoproj.io \"model-service\" is invalid: status.abort: Invalid value: \"string\""),
        "{}",
        answer.body
    );
    let pruned = json!({"status": {"bogus": 1}});
    let answer = send(&kube, "PATCH", &format!("{RO}/status"), Some(MERGE), Some(&pruned)).await;
    assert_eq!((answer.status, answer.body["status"].get("bogus")), (200, None));
    assert!(answer.headers["warning"].to_str().unwrap().contains("unknown field \\\"status.bogus\\\""));
}

#[tokio::test]
async fn rollout_status_writes_conflict_404_and_403_like_any_other() {
    let kube = KubeEmulator::start().await;
    let read = rollout(&kube);
    let abort =
        json!({"metadata": {"resourceVersion": read["metadata"]["resourceVersion"]}, "status": {"abort": true}});

    // Another writer first (the Argo controller, say): 409, nothing of ours stored.
    kube.conflict_next(1);
    let answer = send(&kube, "PATCH", &format!("{RO}/status"), Some(MERGE), Some(&abort)).await;
    assert_eq!((answer.status, answer.body["reason"].as_str()), (409, Some("Conflict")));
    assert!(stored_rollout(&kube)["status"].get("abort").is_none());

    let missing = "/apis/argoproj.io/v1alpha1/namespaces/sms-app/rollouts/nope/status";
    let answer = send(&kube, "PATCH", missing, Some(MERGE), Some(&json!({"status": {"abort": true}}))).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["message"], "rollouts.argoproj.io \"nope\" not found");

    kube.deny("patch", "rollouts/status", Some("sms-app"));
    let answer =
        send(&kube, "PATCH", &format!("{RO}/status"), Some(MERGE), Some(&json!({"status": {"abort": true}}))).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.body["message"],
        "rollouts.argoproj.io \"model-service\" is forbidden: User \"system:serviceaccount:backstop:backstop\" cannot patch resource \"rollouts/status\" in API group \"argoproj.io\" in the namespace \"sms-app\""
    );
    let note = json!({"metadata": {"annotations": {"backstop.io/rule": "r"}}});
    assert_eq!(send(&kube, "PATCH", RO, Some(MERGE), Some(&note)).await.status, 200, "the object itself is not denied");
}
