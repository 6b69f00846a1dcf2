//! deploy/prometheus and deploy/alertmanager: the canary alerts and the Alertmanager config that
//! sends them to backstop pass the real tools (Debian's `promtool` and `amtool`) and agree with
//! each other and with backstop's shipped rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const ALERTS: [&str; 3] = ["CanaryHighErrorRate", "CanaryHighLatency", "CanaryNegativeFeedback"];

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn yaml(p: &str) -> Value {
    let text = std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {p}: {e}"))
}

/// Runs `tool` in `dir`; a missing tool fails the test naming the Debian package to install.
fn run(tool: &str, package: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{tool}` not found on PATH: install Debian's package `{package}` (apt-get install {package})")
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

fn assert_success(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// The PrometheusRule's `spec.groups` as the plain rule file `canary-rules.rules.yml` that
/// `canary-rules.test.yml` names, in a temporary directory, with a copy of the test file beside it.
fn rules_dir() -> tempfile::TempDir {
    let rule = yaml("deploy/prometheus/canary-rules.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let dir = tempfile::Builder::new().prefix("backstop-promtool-").tempdir().unwrap();
    let groups = serde_yaml_ng::to_string(&json!({ "groups": rule["spec"]["groups"] })).unwrap();
    std::fs::write(dir.path().join("canary-rules.rules.yml"), groups).unwrap();
    std::fs::copy(repo("deploy/prometheus/canary-rules.test.yml"), dir.path().join("canary-rules.test.yml")).unwrap();
    dir
}

#[test]
fn prometheus_rule_passes_promtool_check_with_three_alerts_labelled_for_backstop() {
    let dir = rules_dir();
    let out = run("promtool", "prometheus", &["check", "rules", "canary-rules.rules.yml"], dir.path());
    let stdout = assert_success(&out, "promtool check rules");
    assert!(stdout.contains("SUCCESS: 3 rules found"), "{stdout}");

    let groups = &yaml("deploy/prometheus/canary-rules.yaml")["spec"]["groups"];
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["name"], "backstop-canary");
    assert_eq!(groups[0]["interval"], "30s");
    let rules = groups[0]["rules"].as_array().unwrap();
    for (name, hold) in ALERTS.iter().zip(["1m", "2m", "2m"]) {
        let r = rules.iter().find(|r| r["alert"] == *name).unwrap_or_else(|| panic!("no alert {name}"));
        assert_eq!(r["for"], hold, "{name}");
        let l = &r["labels"];
        assert_eq!(
            (&l["severity"], &l["canary"], &l["baseline"]),
            (&json!("critical"), &json!("v2"), &json!("v1")),
            "{name}"
        );
        assert_eq!(l["namespace"], "{{ $labels.namespace }}", "{name}");
        assert_eq!(l["virtualservice"], "{{ $labels.service }}", "{name}");
        // The result keeps the labels the templates read.
        let expr = r["expr"].as_str().unwrap();
        assert!(expr.contains("by (namespace, service)") || expr.contains("by (le, namespace, service)"), "{name}");
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| s.contains("{{ $value")),
                "{name}: {a} shows the value"
            );
        }
    }

    // backstop's shipped rules for Canary* alerts name these alerts and read only labels they carry.
    let shipped = yaml("rules/canary.yaml");
    for rule in shipped["rules"].as_array().unwrap() {
        let alert = rule["match"].as_array().unwrap().iter().find_map(|m| {
            m.as_str()?.strip_prefix("alertname=\"").and_then(|s| s.strip_suffix('"')).map(str::to_owned)
        });
        let Some(alert) = alert.filter(|a| a.starts_with("Canary")) else { continue };
        assert!(ALERTS.contains(&alert.as_str()), "rules/canary.yaml matches {alert}, which canary-rules.yaml lacks");
        assert_eq!(rule["target"]["namespace"], "{{ $labels.namespace }}");
        assert_eq!(rule["target"]["virtualservice"], "{{ $labels.virtualservice }}");
    }
}

#[test]
fn promtool_unit_tests_prove_each_alert_fires_on_a_bad_canary_and_not_on_a_healthy_one() {
    let tests = yaml("deploy/prometheus/canary-rules.test.yml");
    assert_eq!(tests["rule_files"], json!(["canary-rules.rules.yml"]));
    let tested: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .map(|a| &a["alertname"])
        .collect();
    for name in ALERTS {
        assert!(tested.contains(&&json!(name)), "canary-rules.test.yml does not test {name}");
    }

    let dir = rules_dir();
    let out = run("promtool", "prometheus", &["test", "rules", "canary-rules.test.yml"], dir.path());
    assert_success(&out, "promtool test rules");
}

#[test]
fn alertmanager_yml_passes_amtool_and_routes_canary_alerts_to_backstop_and_on_call() {
    // amtool does not read http_config's credentials_file (Alertmanager reads it at each
    // delivery), so the repository's file is checked as is: no temporary copy needed.
    let config = repo("deploy/alertmanager/alertmanager.yml");
    let config = config.to_str().unwrap();
    let out = run("amtool", "prometheus-alertmanager", &["check-config", config], &repo(""));
    assert_success(&out, "amtool check-config");

    // `continue: true` and the catch-all route: backstop gets the alert and people are paged.
    let file = format!("--config.file={config}");
    for (alert, receivers) in [
        ("CanaryHighErrorRate", "backstop,on-call"),
        ("CanaryNegativeFeedback", "backstop,on-call"),
        ("BlueGreenUnhealthy", "backstop,on-call"),
        ("CanaryWhatever", "on-call"),
        ("NodeDown", "on-call"),
    ] {
        let label = format!("alertname={alert}");
        let args = ["config", "routes", "test", file.as_str(), label.as_str(), "namespace=sms-app"];
        let out = run("amtool", "prometheus-alertmanager", &args, &repo(""));
        assert_eq!(assert_success(&out, "amtool config routes test").trim(), receivers, "{alert}");
    }
}

#[test]
fn alertmanagerconfig_resource_carries_the_same_route_and_receiver_as_alertmanager_yml() {
    let am = yaml("deploy/alertmanager/alertmanager.yml");
    let route = am["route"]["routes"].as_array().unwrap().iter().find(|r| r["receiver"] == "backstop").unwrap();
    let receiver = am["receivers"].as_array().unwrap().iter().find(|r| r["name"] == "backstop").unwrap();
    let hook = &receiver["webhook_configs"][0];

    let cr = yaml("deploy/alertmanager/alertmanagerconfig.yaml");
    assert_eq!(cr["apiVersion"], "monitoring.coreos.com/v1alpha1");
    assert_eq!(cr["kind"], "AlertmanagerConfig");
    let spec = &cr["spec"];
    assert_eq!(spec["route"]["receiver"], "backstop");
    let cr_hook =
        &spec["receivers"].as_array().unwrap().iter().find(|r| r["name"] == "backstop").unwrap()["webhookConfigs"][0];

    assert_eq!(hook["url"], "http://backstop.backstop.svc:8080/v1/alertmanager");
    assert_eq!(cr_hook["url"], hook["url"]);
    assert_eq!((&hook["send_resolved"], &hook["max_alerts"]), (&json!(true), &json!(50)));
    assert_eq!(cr_hook["sendResolved"], hook["send_resolved"]);
    assert_eq!(cr_hook["maxAlerts"], hook["max_alerts"]);

    assert_eq!(route["group_by"], json!(["namespace", "virtualservice"]));
    assert_eq!(spec["route"]["groupBy"], route["group_by"]);
    assert_eq!(route["group_wait"], "10s");
    assert_eq!(spec["route"]["groupWait"], route["group_wait"]);
    assert_eq!(spec["route"]["groupInterval"], route["group_interval"]);
    assert_eq!((&route["continue"], &spec["route"]["continue"]), (&json!(true), &json!(true)));
    let m = &spec["route"]["matchers"][0];
    assert_eq!(
        route["matchers"][0].as_str().unwrap(),
        format!(
            "{}{}\"{}\"",
            m["name"].as_str().unwrap(),
            m["matchType"].as_str().unwrap(),
            m["value"].as_str().unwrap()
        )
    );

    // The file the operator mounts for Secret `backstop-token`, key `token`.
    let file = &hook["http_config"]["authorization"]["credentials_file"];
    assert_eq!(file, "/etc/alertmanager/secrets/backstop-token/token");
    let auth = &cr_hook["httpConfig"]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert_eq!(
        format!(
            "/etc/alertmanager/secrets/{}/{}",
            auth["credentials"]["name"].as_str().unwrap(),
            auth["credentials"]["key"].as_str().unwrap()
        ),
        file.as_str().unwrap()
    );
}

/// The files of README's "The chain by hand" are what their tools accept: the canary app's
/// metrics, Prometheus's config (with the extracted rules beside it) and Alertmanager's.
#[test]
fn the_chain_by_hand_files_pass_their_tools() {
    let dir = rules_dir();
    std::fs::rename(dir.path().join("canary-rules.rules.yml"), dir.path().join("canary.rules.yml")).unwrap();
    std::fs::copy(repo("deploy/local/prometheus.yml"), dir.path().join("prometheus.yml")).unwrap();
    assert_success(
        &run("promtool", "prometheus", &["check", "config", "prometheus.yml"], dir.path()),
        "promtool check config",
    );
    assert_success(
        &run(
            "amtool",
            "prometheus-alertmanager",
            &["check-config", repo("deploy/local/alertmanager.yml").to_str().unwrap()],
            dir.path(),
        ),
        "amtool check-config",
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let script = repo("deploy/local/canary_app.py");
    let mut app = Command::new("python3")
        .args([script.to_str().unwrap(), "--port", &port, "--v2-error-ratio", "0.4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = || -> Option<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let body = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        resp.starts_with(b"HTTP/1.0 200").then(|| resp[body..].to_vec())
    };
    let metrics = (0..50).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        get()
    });
    let _ = app.kill();
    let _ = app.wait();
    let metrics = metrics.expect("the canary app answers /metrics");
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains(
            r#"app_predictions_total{namespace="sms-app",service="model-service",version="v2",status="error"}"#
        )
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), &metrics).unwrap();
    assert_success(&check.wait_with_output().unwrap(), "promtool check metrics");
}
