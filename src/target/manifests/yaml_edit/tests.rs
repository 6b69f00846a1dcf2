//! The byte-preserving YAML editor: round trips, edits that touch only their values, awkward values everywhere.

use super::*;
use serde_json::json;

/// A DestinationRule and the VirtualService routing 90/10 between its subsets.
const MANIFEST: &str = r#"# Managed by GitOps: every change is reviewed.
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: model-service
  namespace: sms-app
spec:
  host: model-service
  subsets:
    - name: v1
      labels:
        version: v1
    - name: v2
      labels:
        version: v2
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: model-service
  namespace: sms-app
  labels:
    app.kubernetes.io/name: "model-service"

spec:
  hosts:
  - model-service
  http:
  # Testers force the canary with a header — see runbook §4.
  - name: "canary-header"
    match:
    - headers:
        x-canary:
          exact: 'always'
    route:
    - destination:
        host: model-service
        subset: v2
  - name: primary
    route:
    - destination:
        host: model-service
        subset: v1
      weight: 90  # stable
    - destination:
        host: model-service
        subset: v2
      weight: 10  # canary
"#;

fn virtual_service() -> Value {
    parse_documents(MANIFEST).unwrap().remove(1).value
}

/// Edit document 1 of MANIFEST with `change` applied to its value.
fn edit_vs(change: impl FnOnce(&mut Value)) -> Result<String, YamlEditError> {
    let mut vs = virtual_service();
    change(&mut vs);
    edit_document(MANIFEST, 1, &vs)
}

fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    assert_eq!(before.lines().count(), after.lines().count(), "line count changed");
    before.lines().zip(after.lines()).filter(|(a, b)| a != b).map(|(a, b)| (a.to_owned(), b.to_owned())).collect()
}

#[test]
fn parses_the_manifest_into_json() {
    let docs = parse_documents(MANIFEST).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].index, 0);
    assert_eq!(docs[0].value["spec"]["subsets"][1]["labels"], json!({"version": "v2"}));
    let vs = &docs[1].value;
    assert_eq!(docs[1].index, 1);
    assert_eq!(vs["metadata"]["labels"]["app.kubernetes.io/name"], "model-service");
    assert_eq!(vs["spec"]["http"][0]["match"][0]["headers"]["x-canary"]["exact"], "always");
    assert_eq!(vs["spec"]["http"][1]["route"][0]["weight"], 90);
    assert_eq!(vs["spec"]["http"][1]["route"][1]["weight"], 10);
}

#[test]
fn parses_core_schema_scalars() {
    let text = "a: ~\nb: null\nc:\nd: true\ne: False\nf: 10\ng: -3\nh: 0x1F\ni: 0o17\nj: 1.5\nk: 1e3\n\
                    l: '10'\nm: \"true\"\nn: plain text\no: !!str 5\np: 18446744073709551615\nq: .5\nr: !!int \"7\"\n";
    let value = &parse_documents(text).unwrap()[0].value;
    assert_eq!(
        *value,
        json!({"a": null, "b": null, "c": null, "d": true, "e": false, "f": 10, "g": -3, "h": 31, "i": 15,
                   "j": 1.5, "k": 1000.0, "l": "10", "m": "true", "n": "plain text", "o": "5",
                   "p": 18446744073709551615u64, "q": 0.5, "r": 7})
    );
}

#[test]
fn parses_documents_with_and_without_leading_marker_and_resolves_aliases() {
    let docs = parse_documents("a: 1\n---\nb: &x [1, 2]\nc: *x\n...\n--- x\n").unwrap();
    let values: Vec<_> = docs.into_iter().map(|d| d.value).collect();
    assert_eq!(values, [json!({"a": 1}), json!({"b": [1, 2], "c": [1, 2]}), json!("x")]);
    assert_eq!(parse_documents("# nothing\n").unwrap(), []);
    assert_eq!(parse_documents("").unwrap(), []);
}

#[test]
fn reports_syntax_errors_with_line_and_column() {
    let err = parse_documents("a: 1\n---\nb: [1, 2\nc: 3\n").unwrap_err();
    assert!(matches!(err, YamlEditError::Syntax { index: 1, line: 4, column: 2, .. }), "{err:?}");
    let err = edit_document("a: 1\n b: 2\n", 0, &json!({})).unwrap_err();
    assert!(matches!(err, YamlEditError::Syntax { index: 0, line: 2, column: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("line 2, column 3"), "{err}");
}

#[test]
fn refuses_yaml_without_a_json_value() {
    for (text, what) in [("a: 1\na: 2\n", "duplicate"), ("? [a]\n: 1\n", "key"), ("a: .inf\n", "NaN")] {
        let err = parse_documents(text).unwrap_err();
        assert!(matches!(&err, YamlEditError::Unrepresentable { what: w, .. } if w.contains(what)), "{err:?}");
    }
}

#[test]
fn shifting_90_10_to_100_0_changes_exactly_the_two_weights() {
    let edited = edit_vs(|vs| {
        vs["spec"]["http"][1]["route"][0]["weight"] = json!(100);
        vs["spec"]["http"][1]["route"][1]["weight"] = json!(0);
    })
    .unwrap();
    let expected = MANIFEST
        .replace("weight: 90  # stable", "weight: 100  # stable")
        .replace("weight: 10  # canary", "weight: 0  # canary");
    assert_eq!(edited, expected);
    assert_eq!(
        changed_lines(MANIFEST, &edited),
        [
            ("      weight: 90  # stable".into(), "      weight: 100  # stable".into()),
            ("      weight: 10  # canary".into(), "      weight: 0  # canary".into()),
        ]
    );
}

#[test]
fn unchanged_value_returns_the_text_unchanged() {
    assert_eq!(edit_document(MANIFEST, 1, &virtual_service()).unwrap(), MANIFEST);
}

#[test]
fn adds_annotations_to_metadata_without_annotations() {
    let edited = edit_vs(|vs| {
        vs["metadata"]["annotations"] = json!({"backstop.io/previous": r#"[{"route":"x"}]"#});
    })
    .unwrap();
    let expected = MANIFEST.replace(
            "    app.kubernetes.io/name: \"model-service\"\n",
            "    app.kubernetes.io/name: \"model-service\"\n  annotations:\n    backstop.io/previous: '[{\"route\":\"x\"}]'\n",
        );
    assert_eq!(edited, expected);
}

#[test]
fn adds_an_annotation_to_existing_annotations() {
    let text = "metadata:\n  name: vs\n  annotations:\n    owner: team-a   # who to page\n  # next: labels\n  labels: {app: vs}\n";
    let mut value = parse_documents(text).unwrap()[0].value.clone();
    value["metadata"]["annotations"]["backstop.io/previous"] = json!("50/50");
    value["metadata"]["annotations"]["backstop.io/reason"] = json!("error rate: 5%");
    let edited = edit_document(text, 0, &value).unwrap();
    assert_eq!(
        edited,
        "metadata:\n  name: vs\n  annotations:\n    owner: team-a   # who to page\n    backstop.io/previous: 50/50\n    \
             backstop.io/reason: 'error rate: 5%'\n  # next: labels\n  labels: {app: vs}\n"
    );
}

#[test]
fn adds_weight_to_a_destination_that_had_none() {
    let edited = edit_vs(|vs| vs["spec"]["http"][0]["route"][0]["weight"] = json!(100)).unwrap();
    let expected = MANIFEST.replacen(
        "        subset: v2\n  - name: primary",
        "        subset: v2\n      weight: 100\n  - name: primary",
        1,
    );
    assert_eq!(edited, expected);
}

#[test]
fn adds_nested_collections_in_the_files_sequence_style() {
    let new_route = json!([{"destination": {"host": "model-service", "subset": "v1"}, "weight": 100}]);
    let edited = edit_vs(|vs| vs["spec"]["http"][1]["mirror"] = json!({"empty": [], "route": new_route})).unwrap();
    // This document writes `- ` level with its key, so the new sequence does too.
    let expected = MANIFEST.replace(
        "      weight: 10  # canary\n",
        "      weight: 10  # canary\n    mirror:\n      empty: []\n      route:\n      - destination:\n          \
             host: model-service\n          subset: v1\n        weight: 100\n",
    );
    assert_eq!(edited, expected);

    // The DestinationRule indents its sequences by two.
    let mut rule = parse_documents(MANIFEST).unwrap()[0].value.clone();
    rule["spec"]["exportTo"] = json!(["."]);
    let edited = edit_document(MANIFEST, 0, &rule).unwrap();
    assert!(edited.contains("        version: v2\n  exportTo:\n    - .\n---\n"), "{edited}");
}

#[test]
fn creates_a_missing_parent_mapping() {
    let text = "kind: VirtualService\nspec:\n  hosts: [a]\n";
    let new = json!({"kind": "VirtualService", "spec": {"hosts": ["a"]},
                         "metadata": {"annotations": {"10": "x", "backstop.io/previous": "1", "x: y": null}}});
    let edited = edit_document(text, 0, &new).unwrap();
    let added = "metadata:\n  annotations:\n    '10': x\n    backstop.io/previous: '1'\n    'x: y': null\n";
    assert_eq!(edited, format!("{text}{added}"));
}

#[test]
fn keeps_quoting_styles() {
    let edited = edit_vs(|vs| {
        vs["spec"]["http"][0]["name"] = json!("canary \"x\"");
        vs["spec"]["http"][0]["match"][0]["headers"]["x-canary"]["exact"] = json!("it's");
        vs["spec"]["http"][1]["name"] = json!("true");
        vs["metadata"]["namespace"] = json!("sms-app-2");
    })
    .unwrap();
    assert_eq!(
        changed_lines(MANIFEST, &edited),
        [
            ("  namespace: sms-app".into(), "  namespace: sms-app-2".into()),
            ("  - name: \"canary-header\"".into(), "  - name: \"canary \\\"x\\\"\"".into()),
            ("          exact: 'always'".into(), "          exact: 'it''s'".into()),
            ("  - name: primary".into(), "  - name: 'true'".into()),
        ]
    );
}

#[test]
fn plain_scalars_that_would_change_type_or_syntax_get_quoted() {
    for (s, written) in
        [("10", "'10'"), ("a: b", "'a: b'"), ("null", "'null'"), ("-x", "'-x'"), ("a\nb", "\"a\\nb\""), ("ok", "ok")]
    {
        let edited = edit_document("k: v # c\n", 0, &json!({"k": s})).unwrap();
        assert_eq!(edited, format!("k: {written} # c\n"));
    }
    // Numbers and booleans are written plain, even where a string was quoted.
    assert_eq!(edit_document("k: '5'\n", 0, &json!({"k": 6})).unwrap(), "k: 6\n");
    assert_eq!(edit_document("k: \"5\"\n", 0, &json!({"k": false})).unwrap(), "k: false\n");
}

#[test]
fn keeps_comments_blank_lines_and_indentation() {
    let edited = edit_vs(|vs| {
        vs["spec"]["http"][1]["route"][0]["weight"] = json!(0);
        vs["metadata"]["annotations"] = json!({"a": "b"});
    })
    .unwrap();
    for line in MANIFEST.lines().filter(|l| l.trim_start().starts_with('#') || l.is_empty() || l.contains("  # ")) {
        assert!(edited.lines().any(|l| l == line || l == line.replace("90", "0")), "lost {line:?}");
    }
    assert!(edited.contains("      weight: 0  # stable\n"));
    assert!(edited.contains("\"model-service\"\n  annotations:\n    a: b\n\nspec:\n"));
}

#[test]
fn keeps_crlf_line_endings() {
    let crlf = MANIFEST.replace('\n', "\r\n");
    let mut vs = parse_documents(&crlf).unwrap()[1].value.clone();
    vs["spec"]["http"][1]["route"][0]["weight"] = json!(100);
    vs["metadata"]["annotations"] = json!({"backstop.io/previous": "90/10"});
    let edited = edit_document(&crlf, 1, &vs).unwrap();
    let expected = MANIFEST
        .replace("weight: 90", "weight: 100")
        .replace("\"model-service\"\n\n", "\"model-service\"\n  annotations:\n    backstop.io/previous: 90/10\n\n")
        .replace('\n', "\r\n");
    assert_eq!(edited, expected);
}

#[test]
fn handles_a_file_without_trailing_newline() {
    let text = "metadata:\n  name: vs\nspec:\n  weight: 5";
    let edited =
        edit_document(text, 0, &json!({"metadata": {"name": "vs"}, "spec": {"weight": 6, "tag": "b"}})).unwrap();
    assert_eq!(edited, "metadata:\n  name: vs\nspec:\n  weight: 6\n  tag: b");
    let crlf = "a: 1\r\nb: 2";
    assert_eq!(edit_document(crlf, 0, &json!({"a": 1, "b": 2, "c": 3})).unwrap(), "a: 1\r\nb: 2\r\nc: 3");
}

#[test]
fn other_documents_stay_byte_identical() {
    let text = format!("---\nfirst: {{a: 1}}  # one\n...\n{MANIFEST}---\nlast: [x]\n");
    let mut vs = parse_documents(&text).unwrap()[2].value.clone();
    vs["spec"]["http"][1]["route"][1]["weight"] = json!(50);
    vs["metadata"]["annotations"] = json!({"k": "v"});
    let edited = edit_document(&text, 2, &vs).unwrap();
    let vs_start = text.find("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService").unwrap();
    assert_eq!(edited[..vs_start], text[..vs_start]);
    assert!(edited.ends_with("      weight: 50  # canary\n---\nlast: [x]\n"));
    let before = parse_documents(&text).unwrap();
    let after = parse_documents(&edited).unwrap();
    assert_eq!(
        (after[0].clone(), after[1].clone(), after[3].clone()),
        (before[0].clone(), before[1].clone(), before[3].clone())
    );
}

#[test]
fn edits_flow_mappings_in_place() {
    let text = "metadata:\n  labels: {app: vs, 'tier': \"web\"}  # flow\n  annotations: {}\nspec: {hosts: [a, b]}\n";
    let new = json!({
        "metadata": {"labels": {"app": "vs", "tier": "api", "version": "a,b"}, "annotations": {"x": 1}},
        "spec": {"hosts": ["a", "c"], "extra": {"k": null}, "gateways": ["mesh"]},
    });
    let edited = edit_document(text, 0, &new).unwrap();
    assert_eq!(
        edited,
        "metadata:\n  labels: {app: vs, 'tier': \"api\", version: 'a,b'}  # flow\n  annotations: {x: 1}\n\
             spec: {hosts: [a, c], extra: {k: null}, gateways: [mesh]}\n"
    );
}

#[test]
fn fills_in_an_empty_value() {
    let edited = edit_document("a:   # c\nb:\n", 0, &json!({"a": 1, "b": "x"})).unwrap();
    assert_eq!(edited, "a: 1   # c\nb: x\n");
}

#[test]
fn refuses_unsupported_changes_with_their_path() {
    type Change = fn(&mut Value);
    let cases: [(Change, &str); 5] = [
        (|vs| vs["spec"]["http"][1]["route"][1]["weight"] = json!({"x": 1}), "spec.http[1].route[1].weight"),
        (|vs| drop(vs["spec"]["http"][1]["route"].as_array_mut().unwrap().pop()), "spec.http[1].route"),
        (
            |vs| drop(vs["metadata"]["labels"].as_object_mut().unwrap().remove("app.kubernetes.io/name")),
            "metadata.labels[\"app.kubernetes.io/name\"]",
        ),
        (|vs| vs["spec"]["hosts"] = json!("model-service"), "spec.hosts"),
        (|vs| *vs = json!([]), "$"),
    ];
    for (change, path) in cases {
        match edit_vs(change) {
            Err(YamlEditError::Unsupported { index: 1, path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected refusal at {path}, got {other:?}"),
        }
    }
}

#[test]
fn refuses_edits_under_anchors_aliases_tags_and_block_scalars() {
    let text = "base: &b {w: 1}\ncopy: *b\ntagged: !!str 5\nnote: |\n  text\n";
    let value = parse_documents(text).unwrap()[0].value.clone();
    for (path, new) in
        [("base", json!({"w": 2})), ("copy", json!({"w": 2})), ("tagged", json!("6")), ("note", json!("x"))]
    {
        let mut changed = value.clone();
        changed[path] = new;
        let err = edit_document(text, 0, &changed).unwrap_err();
        assert!(matches!(&err, YamlEditError::Unsupported { path: p, .. } if p == path), "{err:?}");
    }
    let err = edit_document(text, 3, &value).unwrap_err();
    assert_eq!(err, YamlEditError::NoSuchDocument { index: 3, count: 1 });
}

#[test]
fn refuses_an_edit_that_would_read_back_differently() {
    // Lines are added after the last content line, which here would land inside a
    // keep-chomped block scalar's trailing blank lines and change it.
    let text = "a:\n  b: |+\n    text\n\nc: 1\n";
    let err = edit_document(text, 0, &json!({"a": {"b": "text\n\n", "n": 1}, "c": 1})).unwrap_err();
    assert!(matches!(err, YamlEditError::Verification { index: 0, .. }), "{err:?}");
}

/// Every leaf of every style gets every awkward value, also as a new key and a new flow entry.
#[test]
fn awkward_values_round_trip_everywhere() {
    const TEXT: &str =
        "a: plain  # c\nb: 'single'\nc: \"double\"\nd: {x: 1, y: 'q'}\ne: [1, \"two\"]\nf:\n- g: 1\n  h: ~\ni:\n";
    let awkward = [
        "", " lead", "trail ", "a#b", "a #b", "#x", "- x", "-", "?", ":", "a:", "a:b", "[x]", "{x}", "x,y", "'", "\"",
        "\\", "ü", "\n", "a\r\nb", "\t", "~", "NULL", "True", "0x10", "0o7", "1e5", ".5", ".inf", "@x", "*x", "&x",
        "!x", "|", ">", "---", "...", "a\u{85}b", "\u{feff}",
    ];
    let others = [json!(null), json!(true), json!(-1), json!(1.5), json!(1e300), json!(u64::MAX)];
    let values = awkward.iter().map(|s| json!(s)).chain(others);
    for text in [TEXT.to_owned(), TEXT.replace('\n', "\r\n"), TEXT.trim_end().to_owned()] {
        let original = parse_documents(&text).unwrap().remove(0).value;
        let leaves = ["/a", "/b", "/c", "/d/x", "/d/y", "/e/0", "/e/1", "/f/0/g", "/f/0/h", "/i"];
        for (leaf, value) in leaves.iter().flat_map(|l| values.clone().map(move |v| (l, v))) {
            let mut new = original.clone();
            *new.pointer_mut(leaf).unwrap() = value.clone();
            if let Value::String(s) = &value {
                new["new"] = json!({ s.clone(): value.clone() });
                new["d"][s.as_str()] = value.clone();
            }
            let edited = edit_document(&text, 0, &new).unwrap_or_else(|e| panic!("{leaf} = {value}: {e}"));
            assert_eq!(parse_documents(&edited).unwrap()[0].value, new, "{leaf} = {value}");
        }
    }
}

#[test]
fn round_trips_generated_variations() {
    let variants = [
        MANIFEST.to_owned(),
        MANIFEST.replace('\n', "\r\n"),
        MANIFEST.trim_end().to_owned(),
        MANIFEST
            .replace("\n    - destination:", "\n      - destination:")
            .replace("\n        ", "\n          ")
            .replace("\n      weight", "\n        weight"),
        MANIFEST.replace(
            "    - destination:\n        host: model-service\n        subset: v1\n      weight: 90  # stable",
            "    - {destination: {host: model-service, subset: v1}, weight: 90}  # stable",
        ),
    ];
    for (v, text) in variants.iter().enumerate() {
        let original = parse_documents(text).unwrap_or_else(|e| panic!("variant {v}: {e}"));
        for stable in (0..=100).step_by(25) {
            let mut vs = original[1].value.clone();
            vs["spec"]["http"][1]["route"][0]["weight"] = json!(stable);
            vs["spec"]["http"][1]["route"][1]["weight"] = json!(100 - stable);
            if stable % 50 == 0 {
                vs["spec"]["http"][0]["route"][0]["weight"] = json!(stable);
                vs["metadata"]["annotations"] = json!({"backstop.io/previous": format!("[{{\"stable\":{stable}}}]")});
                vs["spec"]["http"][1]["route"][0]["headers"] = json!({"set": {"x-rollback": "true"}});
            }
            let edited = edit_document(text, 1, &vs).unwrap_or_else(|e| panic!("variant {v}, {stable}: {e}"));
            let docs = parse_documents(&edited).unwrap();
            assert_eq!(docs[1].value, vs, "variant {v}, {stable}");
            assert_eq!(docs[0].value, original[0].value);
            assert_eq!(edited.contains("\r\n"), text.contains("\r\n"));
            if stable % 50 != 0 {
                assert_eq!(edit_document(&edited, 1, &original[1].value).unwrap(), *text, "variant {v}, {stable}");
            }
        }
    }
}
