//! deploy/kubernetes/: the manifests users copy are valid and say what the README says.

use std::path::Path;

use serde_json::Value;

use crate::support::backstop::repo;

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo("deploy/kubernetes").join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn verbs(rule: &Value) -> Vec<&str> {
    rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

#[test]
fn rbac_is_least_privilege() {
    let rbac = docs("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "virtualservices and events only: {rules:?}");
    let vs = rules.iter().find(|r| r["resources"][0] == "virtualservices").unwrap();
    assert_eq!(vs["apiGroups"][0], "networking.istio.io");
    assert_eq!(verbs(vs), vec!["get", "list", "watch", "patch"]);
    let events = rules.iter().find(|r| r["resources"][0] == "events").unwrap();
    assert_eq!(verbs(events), vec!["create", "patch"]);
    for r in rules {
        assert!(
            !verbs(r).iter().any(|v| matches!(*v, "*" | "delete" | "create") && r["resources"][0] != "events"),
            "{r}"
        );
    }
    let switch = docs("rbac-service-switch.yaml");
    let role = switch.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(role["rules"][0]["resources"][0], "services");
    assert_eq!(verbs(&role["rules"][0]), vec!["get", "patch"]);
}

#[test]
fn the_deployment_runs_locked_down_with_the_configmap_config() {
    let deploy = &docs("deployment.yaml")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "backstop");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string());

    let cm = &docs("configmap.yaml")[0];
    let text = cm["data"]["backstop.yaml"].as_str().unwrap();
    let config = backstop::config::Config::parse(Path::new("/etc/backstop/config/backstop.yaml"), text)
        .unwrap_or_else(|e| panic!("the ConfigMap's backstop.yaml must be valid: {e}"));
    assert!(matches!(config.target, backstop::config::TargetConfig::Kubernetes(_)));
    assert_eq!(config.data_dir, Path::new("/var/lib/backstop"));
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert!(mounts.contains(&"/var/lib/backstop"), "the audit log is on the volume");
    assert!(config.rules.iter().all(|r| mounts.iter().any(|m| r.starts_with(m))), "rules are mounted");
}
