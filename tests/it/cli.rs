//! The command line: validate and simulate.

use crate::support::backstop::Workdir;

#[test]
fn validate_accepts_the_shipped_config_and_rules() {
    let wd = Workdir::new();
    let out = wd.cli(&["validate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: rule canary-high-error-rate"), "{stdout}");
}

#[test]
fn validate_reports_every_problem_with_file_rule_and_field_and_fails() {
    let wd = Workdir::new();
    std::fs::write(
        wd.path("bad.yaml"),
        "rules:\n  - name: one\n    match: ['alertname=~\"(\"']\n    target: {namespace: a, virtualservice: b}\n    action: {rollback: {stable: v1, canary: v2}}\n    colldown: 5m\n  - name: two\n    match: ['alertname=X']\n    target: {namespace: a, virtualservice: b}\n    action: {rollback: {stable: v1, canary: v2}}\n    cooldown: forever\n  - name: one\n    match: ['alertname=X']\n    target: {namespace: a, virtualservice: b}\n    action: {rollback: {stable: v1, canary: v2}}\n",
    )
    .unwrap();
    let out = wd.cli(&["validate", wd.path("bad.yaml").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each at the line of its field, in the order of the file; the typo does not hide the regex.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("bad.yaml:")).collect();
    let expected = [
        "bad.yaml:3: rule `one`: field `match`: `alertname=~\"(\"`: invalid regex",
        "bad.yaml:6: rule `one`: field `colldown`: unknown field `colldown`",
        "bad.yaml:11: rule `two`: field `cooldown`: `forever` is not a duration",
        "bad.yaml:12: rule `one`: field `name`: duplicate rule name (first at ",
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.contains(expected), "{line}\nexpected: {expected}\n{stderr}");
    }
    assert!(stderr.lines().any(|l| l == "4 problems"), "{stderr}");
}

/// A config with several problems: all of them, each at its line, and a count; nothing runs.
#[test]
fn validate_reports_every_problem_of_the_config_at_its_line() {
    let wd = Workdir::new();
    let config = wd.read("backstop.yaml");
    let bad = config
        .replacen("data_dir: data", "data_dir: data\nlistne: 0.0.0.0:80", 1)
        .replacen("  window: 1h", "  window: soon", 1)
        .replacen("shutdown_grace: 20s", "shutdown_grace: never", 1);
    assert!(bad.contains("window: soon") && bad.contains("shutdown_grace: never"), "{bad}");
    std::fs::write(wd.config(), &bad).unwrap();
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let out = wd.cli(&["validate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (needle, field) in
        [("listne:", "listne"), ("window: soon", "guards.window"), ("grace: never", "shutdown_grace")]
    {
        let expected = format!("backstop.yaml:{}: field `{field}`: ", line_of(needle));
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
    // The rules it names are checked too, and counted with its own problems.
    std::fs::write(
        wd.path("rules/canary.yaml"),
        wd.read("rules/canary.yaml").replacen("cooldown: 15m", "cooldown: forever", 1),
    )
    .unwrap();
    let out = wd.cli(&["validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canary.yaml:") && stderr.contains("field `cooldown`: `forever` is not a duration"),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l == "4 problems"), "{stderr}");
}

#[test]
fn simulate_shows_what_would_happen_and_touches_nothing() {
    let wd = Workdir::new();
    let before = wd.read("deploy/local/model-service.yaml");
    let out =
        wd.cli(&["simulate", crate::support::backstop::repo("fixtures/alertmanager/grouped.json").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("rule canary-high-error-rate: rollback subset v2 -> subset v1 on sms-app/model-service"),
        "{stdout}"
    );
    assert!(stdout.contains("would change"), "{stdout}");
    assert!(stdout.contains("would refuse"), "checkout has no subset v2: {stdout}");
    assert_eq!(wd.read("deploy/local/model-service.yaml"), before);
    assert!(!wd.path("data").exists(), "simulate opens no audit log");
}

#[test]
fn simulate_runs_confirmations_with_a_given_value() {
    let wd = Workdir::new();
    std::fs::copy(
        crate::support::backstop::repo("deploy/prometheus/backstop-rules.yaml"),
        wd.path("rules/confirmed.yaml"),
    )
    .unwrap();
    std::fs::write(
        wd.config(),
        std::fs::read_to_string(wd.config()).unwrap() + "\nprometheus:\n  url: http://127.0.0.1:9\n",
    )
    .unwrap();
    let firing = crate::support::backstop::repo("fixtures/alertmanager/firing.json");
    let out = wd.cli(&["simulate", "--value", "0.2", firing.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("confirmed by a given value"), "{stdout}");
    let out = wd.cli(&["simulate", "--value", "0.01", firing.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("would hold: not confirmed: Prometheus says 0.01 now"), "{stdout}");
}

#[test]
fn the_chain_by_hand_config_is_valid() {
    let out = std::process::Command::new(crate::support::backstop::BIN)
        .args([
            "--config",
            crate::support::backstop::repo("deploy/local/backstop-prometheus.yaml").to_str().unwrap(),
            "validate",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: rule canary-high-error-rate-confirmed"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "1 rule valid"), "only the confirming rule: {stdout}");
}
