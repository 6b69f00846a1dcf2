//! VirtualService transformations, each changed object validated against the Istio CRD schema.

use std::{path::Path, sync::LazyLock};

use serde_json::json;

use super::testing;
use super::*;

/// The VirtualService `v1` schema of the Istio CRDs vendored in the repository's `crds/`.
/// Unknown keywords such as `x-kubernetes-*` and `nullable` are ignored by the validator.
static CRD: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/istio-networking.yaml");
    let text = std::fs::read_to_string(path).expect("readable CRD file");
    let schema = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("CRD YAML"))
        .find(|crd| crd["metadata"]["name"] == "virtualservices.networking.istio.io")
        .and_then(|crd| {
            let versions = crd["spec"]["versions"].as_array()?;
            versions.iter().find(|v| v["name"] == "v1")?.pointer("/schema/openAPIV3Schema").cloned()
        })
        .expect("VirtualService v1 schema in the CRD file");
    jsonschema::validator_for(&schema).expect("CRD schema compiles")
});

/// Unpacks a `Changed` outcome, checking its object against the CRD schema: every changed
/// object of these tests goes through here.
fn changed(outcome: Result<Transformed, VsError>) -> (Value, Vec<RouteState>, Vec<RouteState>) {
    match outcome {
        Ok(Transformed::Changed { object, before, after }) => {
            let errors: Vec<String> = CRD.iter_errors(&object).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "not a valid VirtualService: {errors:?}\n{object:#}");
            (object, before, after)
        }
        other => panic!("expected a change, got {other:?}"),
    }
}

fn assert_unchanged(vs: &Value, plan: &Plan) {
    assert!(matches!(apply(vs, plan), Ok(Transformed::Unchanged { .. })), "{:?}", apply(vs, plan));
}

fn error(outcome: Result<Transformed, VsError>) -> String {
    outcome.expect_err("expected an error").to_string()
}

fn subset(name: &str) -> Dest {
    Dest::Subset(name.to_owned())
}

fn host(name: &str) -> Dest {
    Dest::Host(name.to_owned())
}

fn weight(w: u64) -> Weight {
    Weight::try_from(w).expect("weight in range")
}

fn everywhere(change: Change) -> Plan {
    Plan { change, routes: None }
}

fn rollback_v2() -> Plan {
    everywhere(Change::Rollback { stable: subset("v1"), canary: vec![subset("v2")] })
}

/// Effective weights of each HTTP route.
fn weights(vs: &Value) -> Vec<Vec<u32>> {
    let routes = routes(vs).expect("routes");
    routes.iter().map(|r| r.destinations.iter().map(|d| d.weight).collect()).collect()
}

const MS: &str = "model-service";

#[test]
fn rollback_turns_90_10_into_100_0() {
    let vs = testing::test().weights(90, 10).build();
    let (object, before, after) = changed(apply(&vs, &rollback_v2()));
    assert_eq!(object, testing::test().weights(100, 0).build());
    assert_eq!(weights(&vs), [[90, 10]]);
    assert_eq!(before, routes(&vs).unwrap());
    assert_eq!(after, routes(&object).unwrap());
}

#[test]
fn rollback_of_a_rolled_back_object_is_unchanged() {
    let (object, _, _) = changed(apply(&testing::test().weights(90, 10).build(), &rollback_v2()));
    let outcome = apply(&object, &rollback_v2());
    assert_eq!(outcome, Ok(Transformed::Unchanged { state: routes(&object).unwrap() }));
}

#[test]
fn rollback_changes_only_routes_carrying_the_canary() {
    let vs = testing::test()
        .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
        .route(Some("b"), &[(MS, Some("v1"), None)])
        .route(Some("c"), &[(MS, Some("v1"), Some(50)), (MS, Some("v3"), Some(50))])
        .build();
    let (object, before, after) = changed(apply(&vs, &rollback_v2()));
    assert_eq!(weights(&object), [vec![100, 0], vec![100], vec![50, 50]]);
    assert_eq!(object["spec"]["http"][1], vs["spec"]["http"][1]);
    assert_eq!(object["spec"]["http"][2], vs["spec"]["http"][2]);
    assert_eq!(before.iter().map(|r| &r.route).collect::<Vec<_>>(), ["a"]);
    assert_eq!(after.iter().map(|r| &r.route).collect::<Vec<_>>(), ["a"]);
}

#[test]
fn named_routes_limit_the_change() {
    let vs = testing::test()
        .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
        .route(Some("b"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
        .build();
    let plan = Plan { routes: Some(vec!["b".to_owned()]), ..rollback_v2() };
    let (object, _, _) = changed(apply(&vs, &plan));
    assert_eq!(weights(&object), [[90, 10], [100, 0]]);
}

#[test]
fn unknown_named_route_is_an_error() {
    let vs = testing::test().route(Some("a"), &[(MS, Some("v1"), None)]).weights(90, 10).build();
    let plan = Plan { routes: Some(vec!["a".to_owned(), "c".to_owned()]), ..rollback_v2() };
    assert_eq!(
        error(apply(&vs, &plan)),
        r#"sms-app/model-service has no HTTP route named "c"; its HTTP routes are: a, http[1]"#
    );
}

#[test]
fn rollback_with_three_destinations_stable_absorbs_and_third_is_untouched() {
    let vs = testing::test()
        .route(None, &[(MS, Some("v1"), Some(80)), (MS, Some("v2"), Some(15)), (MS, Some("v3"), Some(5))])
        .build();
    let (object, _, _) = changed(apply(&vs, &rollback_v2()));
    assert_eq!(weights(&object), [[95, 0, 5]]);
    assert_eq!(object["spec"]["http"][0]["route"][2], vs["spec"]["http"][0]["route"][2]);
}

#[test]
fn rollback_of_canaries_by_host() {
    let vs = testing::test()
        .route(
            None,
            &[("reviews", None, Some(70)), ("reviews-canary", None, Some(20)), ("reviews-exp", None, Some(10))],
        )
        .build();
    let plan = everywhere(Change::Rollback {
        stable: host("reviews"),
        canary: vec![host("reviews-canary"), host("reviews-exp")],
    });
    let (object, _, _) = changed(apply(&vs, &plan));
    assert_eq!(weights(&object), [[100, 0, 0]]);
    assert_unchanged(&object, &plan);
}

#[test]
fn rollback_without_the_stable_destination_in_the_route_is_an_error() {
    let vs = testing::test().weights(90, 10).route(Some("beta"), &[(MS, Some("v2"), None)]).build();
    assert_eq!(
        error(apply(&vs, &rollback_v2())),
        "route beta of sms-app/model-service carries canary subset v2 but not stable subset v1; \
         refusing to roll back"
    );
}

#[test]
fn switch_rewrites_the_subset_of_a_single_destination() {
    let vs = testing::test().route(Some("main"), &[(MS, Some("blue"), None)]).build();
    let plan = everywhere(Change::Switch { from: subset("blue"), to: subset("green") });
    let (object, _, after) = changed(apply(&vs, &plan));
    assert_eq!(object, testing::test().route(Some("main"), &[(MS, Some("green"), None)]).build());
    assert_eq!(
        after,
        [RouteState {
            route: "main".to_owned(),
            destinations: vec![DestState { host: MS.to_owned(), subset: Some("green".to_owned()), weight: 100 }],
        }]
    );
    assert_unchanged(&object, &plan);
}

#[test]
fn switch_rewrites_the_host_of_a_single_destination() {
    let vs = testing::test().route(None, &[("model-blue", None, Some(100))]).build();
    let plan = everywhere(Change::Switch { from: host("model-blue"), to: host("model-green") });
    let (object, _, _) = changed(apply(&vs, &plan));
    assert_eq!(object, testing::test().route(None, &[("model-green", None, Some(100))]).build());
    assert_unchanged(&object, &plan);
}

#[test]
fn switch_moves_all_weight_between_two_weighted_destinations() {
    let vs = testing::test().route(None, &[(MS, Some("blue"), Some(100)), (MS, Some("green"), Some(0))]).build();
    let plan = everywhere(Change::Switch { from: subset("blue"), to: subset("green") });
    let (object, _, _) = changed(apply(&vs, &plan));
    assert_eq!(weights(&object), [[0, 100]]);
    assert_unchanged(&object, &plan);
}

#[test]
fn set_weights_writes_the_named_weights() {
    let vs = testing::test().weights(90, 10).build();
    let plan = everywhere(Change::SetWeights { weights: vec![(subset("v1"), weight(50)), (subset("v2"), weight(50))] });
    let (object, _, _) = changed(apply(&vs, &plan));
    assert_eq!(object, testing::test().weights(50, 50).build());
    assert_unchanged(&object, &plan);
}

#[test]
fn set_weights_not_summing_to_100_names_route_and_sum() {
    let vs = testing::test().weights(90, 10).build();
    let plan = everywhere(Change::SetWeights { weights: vec![(subset("v2"), weight(20))] });
    assert_eq!(
        error(apply(&vs, &plan)),
        "route http[0] of sms-app/model-service: weights would sum to 110 after the change; \
         they must sum to 100"
    );
}

#[test]
fn missing_subset_error_lists_the_carried_subsets() {
    let vs = testing::test().weights(90, 10).build();
    let plan = everywhere(Change::Rollback { stable: subset("v1"), canary: vec![subset("v3")] });
    assert_eq!(
        error(apply(&vs, &plan)),
        "subset v3 is not a destination of any HTTP route of sms-app/model-service; \
         routes carry: subset v1, subset v2"
    );
    let plan = everywhere(Change::Switch { from: host("blue"), to: host("green") });
    assert_eq!(
        error(apply(&vs, &plan)),
        "host blue is not a destination of any HTTP route of sms-app/model-service; \
         routes carry: host model-service"
    );
}

#[test]
fn omitted_weights_are_100_alone_and_0_among_several_and_written_when_changed() {
    let vs = testing::test()
        .route(None, &[(MS, Some("v1"), None)])
        .route(None, &[(MS, Some("v1"), None), (MS, Some("v2"), Some(100))])
        .build();
    assert_eq!(weights(&vs), [vec![100], vec![0, 100]]);
    let (object, _, _) = changed(apply(&vs, &rollback_v2()));
    let expected = testing::test()
        .route(None, &[(MS, Some("v1"), None)])
        .route(None, &[(MS, Some("v1"), Some(100)), (MS, Some("v2"), Some(0))])
        .build();
    assert_eq!(object, expected);
}

#[test]
fn malformed_weights_are_errors_with_their_json_path() {
    for bad in [json!("10"), json!(10.5), json!(-1), json!(101), json!(null)] {
        let mut vs = testing::test().weights(90, 10).build();
        vs["spec"]["http"][0]["route"][1]["weight"] = bad.clone();
        assert_eq!(
            error(apply(&vs, &rollback_v2())),
            format!("sms-app/model-service: spec.http[0].route[1].weight is {bad}, expected an integer 0..=100")
        );
    }
}

#[test]
fn malformed_destination_is_an_error_with_its_json_path() {
    let mut vs = testing::test().weights(90, 10).build();
    vs["spec"]["http"][0]["route"][0]["destination"] = json!({ "subset": "v1" });
    assert_eq!(
        error(apply(&vs, &rollback_v2())),
        "sms-app/model-service: spec.http[0].route[0].destination.host is missing, expected a string"
    );
}

#[test]
fn objects_that_are_not_http_virtualservices_are_errors() {
    let mut vs = testing::test().weights(90, 10).build();
    vs["kind"] = json!("DestinationRule");
    assert_eq!(
        error(apply(&vs, &rollback_v2())),
        r#"sms-app/model-service is not a VirtualService with HTTP routes: kind is "DestinationRule""#
    );
    let tcp_only = json!({
        "kind": "VirtualService",
        "metadata": { "namespace": "sms-app", "name": "db" },
        "spec": { "tcp": [{ "route": [{ "destination": { "host": "db" } }] }] },
    });
    assert_eq!(
        routes(&tcp_only).unwrap_err().to_string(),
        "sms-app/db is not a VirtualService with HTTP routes: it has no spec.http"
    );
}

#[test]
fn every_other_field_is_preserved() {
    let vs = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "namespace": "sms-app",
            "name": "model-service",
            "labels": { "app": "model-service" },
            "annotations": { "argocd.argoproj.io/sync-wave": "2" },
            "resourceVersion": "4711",
        },
        "spec": {
            "hosts": ["model-service", "model.example.com"],
            "gateways": ["mesh", "sms-app/public"],
            "http": [
                {
                    "name": "api",
                    "match": [{ "uri": { "prefix": "/api" }, "headers": { "x-beta": { "exact": "1" } } }],
                    "route": [{ "destination": { "host": MS, "subset": "v1", "port": { "number": 8080 } } }],
                    "mirror": { "host": MS, "subset": "v2" },
                    "mirrorPercentage": { "value": 5.0 },
                },
                {
                    "name": "primary",
                    "retries": { "attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx" },
                    "timeout": "10s",
                    "headers": { "response": { "set": { "x-served-by": "backstop-test" } } },
                    "route": [
                        {
                            "destination": { "host": MS, "subset": "v1", "port": { "number": 8080 } },
                            "weight": 90,
                            "headers": { "request": { "set": { "x-version": "v1" } } },
                        },
                        { "destination": { "host": MS, "subset": "v2", "port": { "number": 8080 } }, "weight": 10 },
                    ],
                },
                { "match": [{ "uri": { "prefix": "/old" } }], "redirect": { "uri": "/api" } },
            ],
            "tcp": [{ "match": [{ "port": 9000 }], "route": [{ "destination": { "host": MS, "subset": "v2" }, "weight": 100 }] }],
            "tls": [{
                "match": [{ "port": 443, "sniHosts": ["model.example.com"] }],
                "route": [{ "destination": { "host": MS, "subset": "v2" } }],
            }],
        },
    });
    let (object, _, _) = changed(apply(&vs, &rollback_v2()));
    assert_eq!(weights(&object), [vec![100], vec![100, 0], vec![]]);
    let masked = |mut vs: Value| {
        for http in vs["spec"]["http"].as_array_mut().unwrap() {
            for entry in http["route"].as_array_mut().into_iter().flatten() {
                entry.as_object_mut().unwrap().remove("weight");
            }
        }
        vs
    };
    assert_eq!(masked(object), masked(vs));
}

#[test]
fn restore_puts_back_the_recorded_state() {
    let vs = testing::test()
        .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
        .route(Some("b"), &[("model-blue", None, None)])
        .build();
    let (rolled, before, _) = changed(apply(&vs, &rollback_v2()));
    let switch = everywhere(Change::Switch { from: host("model-blue"), to: host("model-green") });
    let (switched, before_switch, _) = changed(apply(&rolled, &switch));
    // As the audit log stores and reads it back.
    let recorded: Vec<RouteState> =
        serde_json::from_str(&serde_json::to_string(&[before, before_switch].concat()).unwrap()).unwrap();
    let (restored, _, after) = changed(restore(&switched, &recorded));
    assert_eq!(restored, vs);
    assert_eq!(after, recorded);
    assert!(matches!(restore(&restored, &recorded), Ok(Transformed::Unchanged { .. })));
}

#[test]
fn restore_refuses_when_the_object_changed_since() {
    let vs = testing::test().route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))]).build();
    let (_, before, _) = changed(apply(&vs, &rollback_v2()));
    let reshaped = testing::test().route(Some("a"), &[(MS, Some("v1"), None)]).build();
    assert_eq!(
        error(restore(&reshaped, &before)),
        "cannot undo on sms-app/model-service: route a has 1 destinations, 2 were recorded; \
         the object changed since, undo is not safe"
    );
    let renamed = testing::test().route(Some("z"), &[(MS, Some("v1"), None)]).build();
    assert_eq!(
        error(restore(&renamed, &before)),
        "cannot undo on sms-app/model-service: route a no longer exists; the object changed since, \
         undo is not safe"
    );
}

#[test]
fn weights_and_destinations_round_trip_through_json() {
    assert_eq!(serde_json::to_value(subset("v2")).unwrap(), json!({ "subset": "v2" }));
    assert_eq!(serde_json::from_value::<Dest>(json!({ "host": "reviews-canary" })).unwrap(), host("reviews-canary"));
    assert_eq!(subset("v2").to_string(), "subset v2");
    assert_eq!(host("reviews-canary").to_string(), "host reviews-canary");
    assert_eq!(serde_json::to_value(weight(40)).unwrap(), json!(40));
    assert_eq!(serde_json::from_value::<Weight>(json!(100)).unwrap().get(), 100);
    assert!(serde_json::from_value::<Weight>(json!(101)).is_err());
    assert!(serde_json::from_value::<Weight>(json!(-1)).is_err());
    assert_eq!(Weight::try_from(300), Err(VsError::WeightOutOfRange(300)));
    let state = routes(&testing::test().route(None, &[("reviews", None, None)]).weights(90, 10).build()).unwrap();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<Vec<RouteState>>(&json).unwrap(), state);
}

#[test]
fn crd_schema_rejects_a_string_weight() {
    let mut vs = testing::test().weights(90, 10).build();
    assert!(CRD.is_valid(&vs));
    vs["spec"]["http"][0]["route"][1]["weight"] = json!("10");
    assert!(!CRD.is_valid(&vs));
}

fn step_down(steps: &[u64]) -> Plan {
    let steps = steps.iter().map(|w| weight(*w)).collect();
    everywhere(Change::StepDown { stable: subset("v1"), canary: subset("v2"), steps })
}

#[test]
fn step_down_lowers_the_canary_to_the_first_step_at_or_below_it_and_stable_absorbs() {
    let vs = testing::test().weights(50, 50).build();
    let (object, before, after) = changed(apply(&vs, &step_down(&[25, 10, 0])));
    assert_eq!(weights(&object), [[75, 25]]);
    assert_eq!((canary_weight(&before, &subset("v2")), canary_weight(&after, &subset("v2"))), (50, 25));
    let (object, _, _) = changed(apply(&object, &step_down(&[10, 0])));
    assert_eq!(weights(&object), [[90, 10]]);
    let (object, _, _) = changed(apply(&object, &step_down(&[0])));
    assert_eq!(weights(&object), [[100, 0]]);
}

#[test]
fn step_down_applied_twice_changes_nothing_the_second_time() {
    let (object, _, _) = changed(apply(&testing::test().weights(60, 40).build(), &step_down(&[25, 10, 0])));
    assert_eq!(weights(&object), [[75, 25]]);
    assert_unchanged(&object, &step_down(&[25, 10, 0]));
}

#[test]
fn step_down_never_raises_the_canary_and_snaps_a_weight_between_steps_down() {
    assert_unchanged(&testing::test().weights(90, 10).build(), &step_down(&[25, 10, 0]));
    let (object, _, _) = changed(apply(&testing::test().weights(88, 12).build(), &step_down(&[25, 10, 0])));
    assert_eq!(weights(&object), [[90, 10]], "12 is between the steps 25 and 10: it goes to 10, never up to 25");
    assert_unchanged(&testing::test().weights(100, 0).build(), &step_down(&[0]));
}

#[test]
fn step_down_steps_every_route_carrying_the_canary_on_its_own_weight() {
    let vs = testing::test()
        .route(Some("a"), &[(MS, Some("v1"), Some(50)), (MS, Some("v2"), Some(50))])
        .route(Some("b"), &[(MS, Some("v1"), Some(80)), (MS, Some("v2"), Some(20))])
        .route(Some("c"), &[(MS, Some("v1"), None)])
        .build();
    let (object, _, after) = changed(apply(&vs, &step_down(&[25, 10, 0])));
    assert_eq!(weights(&object), [vec![75, 25], vec![90, 10], vec![100]]);
    assert_eq!(canary_weight(&after, &subset("v2")), 25);
}

#[test]
fn step_down_refuses_a_route_without_the_stable_destination() {
    let vs = testing::test().route(Some("a"), &[(MS, Some("v2"), Some(50)), (MS, Some("v3"), Some(50))]).build();
    let msg = error(apply(&vs, &step_down(&[25, 0])));
    assert!(msg.contains("carries canary subset v2 but not stable subset v1"), "{msg}");
    let msg = error(apply(&testing::test().route(None, &[(MS, Some("v1"), None)]).build(), &step_down(&[0])));
    assert!(msg.contains("subset v2 is not a destination"), "{msg}");
}

#[test]
fn step_at_or_below_picks_the_first_listed_step_not_above_the_weight() {
    let steps: Vec<Weight> = [25, 10, 0].into_iter().map(weight).collect();
    assert_eq!([50, 25, 24, 10, 3, 0].map(|w| step_at_or_below(&steps, w)), [25, 25, 10, 10, 0, 0]);
}

fn step_up(to: u64) -> Plan {
    everywhere(Change::StepUp { stable: subset("v1"), canary: subset("v2"), from: weight(0), to: weight(to) })
}

fn step_up_from(from: u64, to: u64) -> Plan {
    everywhere(Change::StepUp { stable: subset("v1"), canary: subset("v2"), from: weight(from), to: weight(to) })
}

/// A rollback between the step's decision and its write: the canary is below where the step was
/// decided, and the step must not raise it again.
#[test]
fn step_up_refuses_a_canary_lowered_since_the_step_was_decided() {
    let rolled_back = testing::test().weights(100, 0).build();
    let err = apply(&rolled_back, &step_up_from(10, 20)).unwrap_err();
    assert!(matches!(err, VsError::CanaryLowered { from: 10, now: 0, .. }), "{err}");
    assert!(err.to_string().contains("refusing to promote"), "{err}");
    // At the weight decided from: raised; already at the step (a resumed write): unchanged.
    let (object, _, _) = changed(apply(&testing::test().weights(90, 10).build(), &step_up_from(10, 20)));
    assert_unchanged(&object, &step_up_from(10, 20));
}

#[test]
fn step_up_raises_the_canary_to_the_step_and_the_stable_gives_the_difference() {
    let vs = testing::test().weights(90, 10).build();
    let (object, before, after) = changed(apply(&vs, &step_up(20)));
    assert_eq!((before[0].destinations[1].weight, after[0].destinations[1].weight), (10, 20));
    assert_eq!(after[0].destinations[0].weight, 80);
    let (object, _, after) = changed(apply(&object, &step_up(100)));
    assert_eq!((after[0].destinations[0].weight, after[0].destinations[1].weight), (0, 100));
    assert_unchanged(&object, &step_up(100));
}

#[test]
fn step_up_applied_twice_changes_nothing_the_second_time_and_never_lowers_the_canary() {
    let (object, _, _) = changed(apply(&testing::test().weights(90, 10).build(), &step_up(25)));
    assert_unchanged(&object, &step_up(25));
    // A step below where the canary already is (someone raised it by hand): left alone.
    assert_unchanged(&testing::test().weights(40, 60).build(), &step_up(50));
}

#[test]
fn step_up_promotes_every_route_carrying_the_canary_from_its_own_weight() {
    let vs = testing::test()
        .route(Some("a"), &[("model-service", Some("v1"), Some(95)), ("model-service", Some("v2"), Some(5))])
        .route(Some("b"), &[("model-service", Some("v1"), Some(70)), ("model-service", Some("v2"), Some(30))])
        .route(Some("c"), &[("model-service", Some("v1"), None)])
        .build();
    let (_, before, after) = changed(apply(&vs, &step_up(25)));
    assert_eq!(before.iter().map(|r| r.route.as_str()).collect::<Vec<_>>(), ["a"], "b is above 25, c has no canary");
    assert_eq!((after[0].destinations[0].weight, after[0].destinations[1].weight), (75, 25));
}

#[test]
fn step_up_refuses_a_route_whose_stable_cannot_give_enough() {
    let vs = testing::test()
        .route(
            None,
            &[
                ("model-service", Some("v1"), Some(10)),
                ("model-service", Some("v2"), Some(10)),
                ("model-service", Some("v3"), Some(80)),
            ],
        )
        .build();
    let err = apply(&vs, &step_up(50)).unwrap_err();
    assert!(matches!(err, VsError::StableShort { available: 10, to: 50, .. }), "{err}");
    assert!(err.to_string().contains("refusing to promote"), "{err}");
    let missing = testing::test().route(None, &[("model-service", Some("v3"), Some(100))]).build();
    assert!(matches!(apply(&missing, &step_up(50)), Err(VsError::NoSuchDestination { .. })));
}
