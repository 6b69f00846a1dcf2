//! The config: reading, defaults, every problem at once.

use super::*;

#[test]
fn repository_config_is_valid_and_resolves_paths() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("backstop.yaml");
    let c = Config::load(&file).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert!(matches!(&c.target, TargetConfig::Manifests(d) if d.ends_with("deploy/local")));
    assert!(c.rules[0].ends_with("rules"));
    assert_eq!(c.max_body_bytes, 1 << 20);
}

#[test]
fn kafka_properties_may_come_from_files_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), "s3cr3t\n").unwrap();
    let file = dir.path().join("backstop.yaml");
    let text = "target: {manifests: {dir: x}}\nkafka:\n  brokers: k:9092\n  properties: {sasl.username: bs}\n  property_files: {sasl.password: password}\n";
    let c = Config::parse(&file, text).unwrap();
    let k = c.kafka.unwrap();
    assert_eq!(k.properties["sasl.password"], "s3cr3t", "read, without the trailing newline");
    assert_eq!(k.properties["sasl.username"], "bs");
    let missing = text.replace("password}", "nope}");
    let err = Config::parse(&file, &missing).unwrap_err().to_string();
    assert!(err.contains("kafka.property_files.sasl.password") && err.contains("cannot read"), "{err}");
    let twice = text.replace("{sasl.username: bs}", "{sasl.password: inline}");
    let err = Config::parse(&file, &twice).unwrap_err().to_string();
    assert!(err.contains("also in kafka.properties"), "{err}");
}

#[test]
fn unknown_fields_and_bad_values_name_the_field() {
    let err = Config::parse(Path::new("/etc/b.yaml"), "target: {manifests: {dir: x}}\nlisten: nowhere\n").unwrap_err();
    assert!(err.to_string().contains("field `listen`"), "{err}");
    let err =
        Config::parse(Path::new("/etc/b.yaml"), "target: {manifests: {dir: x}}\nguards: {windoww: 1h}\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `windoww`"), "{err}");
    assert!(err.to_string().starts_with("/etc/b.yaml:2"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once_each_at_its_line_in_file_order() {
    let text = "target: {manifests: {dir: x}}\nlistne: 1.2.3.4:80\nguards:\n  max_actions: 0\n  window: soon\n\
                kafka:\n  brokers: k:9092\n  properties: {linger.ms: 5, acks: all}\n  group: g\nshutdown_grace: never\n";
    let errors = Config::parse(Path::new("/etc/b.yaml"), text).unwrap_err();
    let found: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    let expected = [
        "/etc/b.yaml:2: field `listne`: unknown field `listne`",
        "/etc/b.yaml:4: field `guards.max_actions`: must be at least 1",
        "/etc/b.yaml:5: field `guards.window`: `soon` is not a duration",
        "/etc/b.yaml:9: field `kafka.group`: unknown field `group`",
        "/etc/b.yaml:10: field `shutdown_grace`: `never` is not a duration",
    ];
    // `linger.ms: 5` reads as the string "5", as it does in a config without problems.
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(found.starts_with(expected), "{found}\nexpected: {expected}");
    }
    let without = text.replace("listne", "listen").replace("  group: g\n", "");
    let err = Config::parse(Path::new("/etc/b.yaml"), &without).unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    let fixed = without.replace("max_actions: 0", "max_actions: 1").replace("soon", "1h").replace("never", "5s");
    let c = Config::parse(Path::new("/etc/b.yaml"), &fixed).unwrap();
    assert_eq!(c.kafka.unwrap().properties["linger.ms"], "5");
}

#[test]
fn http_server_limits_come_from_the_config_and_zero_is_refused() {
    let file = Path::new("/etc/b.yaml");
    let c = Config::parse(file, "target: {manifests: {dir: x}}\n").unwrap();
    assert_eq!(c.server_limits, crate::http::ServerLimits::default());
    let text = "target: {manifests: {dir: x}}\nhttp:\n  max_connections: 200\n  max_concurrent_requests: 8\n  \
                header_read_timeout: 5s\n  body_read_timeout: 1m\n  max_headers: 50\n  max_head_bytes: 4096\n";
    let l = Config::parse(file, text).unwrap().server_limits;
    assert_eq!((l.max_connections, l.max_concurrent_requests, l.max_headers, l.max_head_bytes), (200, 8, 50, 4096));
    assert_eq!((l.header_read_timeout, l.body_read_timeout), (Duration::from_secs(5), Duration::from_secs(60)));
    let err = Config::parse(file, "target: {manifests: {dir: x}}\nhttp: {max_concurrent_requests: 0}\n").unwrap_err();
    assert!(
        err.to_string().contains("http.max_concurrent_requests") && err.to_string().contains("at least 1"),
        "{err}"
    );
    let err = Config::parse(file, "target: {manifests: {dir: x}}\nhttp: {body_read_timeout: 0s}\n").unwrap_err();
    assert!(err.to_string().contains("http.body_read_timeout"), "{err}");
}

#[test]
fn kubernetes_target_from_config_and_flag() {
    let c = Config::parse(
        Path::new("/etc/backstop/b.yaml"),
        "target:\n  kubernetes: {kubeconfig: kc.yaml, context: prod, virtualservice_version: v1beta1}\n",
    )
    .unwrap();
    let TargetConfig::Kubernetes(k) = &c.target else { panic!("{:?}", c.target) };
    assert_eq!(k.kubeconfig.as_deref(), Some(Path::new("/etc/backstop/kc.yaml")));
    assert_eq!((k.context.as_deref(), k.virtualservice_version.as_str()), (Some("prod"), "v1beta1"));
    let err = Config::parse(Path::new("b.yaml"), "target: {kubernetes: {virtualservice_version: v2}}\n").unwrap_err();
    assert!(err.to_string().contains("virtualservice_version"), "{err}");
    let m = TargetConfig::Manifests("x".into());
    assert_eq!(TargetConfig::parse_flag("kubernetes", &m), Ok(TargetConfig::Kubernetes(KubernetesOptions::default())));
    assert_eq!(TargetConfig::parse_flag("kubernetes", &c.target), Ok(c.target.clone()), "keeps configured options");
    assert_eq!(TargetConfig::parse_flag("manifests:/gitops", &c.target), Ok(TargetConfig::Manifests("/gitops".into())));
    assert!(TargetConfig::parse_flag("cluster", &m).is_err());
}

#[test]
fn auth_secrets_from_file_or_env() {
    let c = Config::parse(
        Path::new("/etc/backstop/b.yaml"),
        "target: {manifests: {dir: x}}\nhttp:\n  auth:\n    bearer_token_file: token\n    basic: {username: am, password_env: AM_PASS}\n",
    )
    .unwrap();
    assert_eq!(c.auth.bearer, Some(Secret::File("/etc/backstop/token".into())));
    assert_eq!(c.auth.basic, Some(("am".into(), Secret::Env("AM_PASS".into()))));
}

#[test]
fn kafka_audit_topic_is_optional() {
    let base = "target: {manifests: {dir: x}}\nkafka:\n  brokers: k:9092\n";
    let c = Config::parse(Path::new("b.yaml"), base).unwrap();
    assert_eq!(c.kafka.unwrap().audit_topic, None);
    let c = Config::parse(Path::new("b.yaml"), &format!("{base}  audit_topic: backstop.audit\n")).unwrap();
    assert_eq!(c.kafka.unwrap().audit_topic.as_deref(), Some("backstop.audit"));
}

#[test]
fn ui_url_is_an_absolute_http_url_kept_without_its_trailing_slash() {
    let file = Path::new("/etc/b.yaml");
    let parse = |url: &str| Config::parse(file, &format!("target: {{manifests: {{dir: x}}}}\nui: {{url: '{url}'}}\n"));
    assert_eq!(Config::parse(file, "target: {manifests: {dir: x}}\n").unwrap().ui_url, None, "optional");
    for (given, kept) in [
        ("https://backstop.example.com", "https://backstop.example.com"),
        ("https://backstop.example.com/", "https://backstop.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://ops.example.com/backstop/", "https://ops.example.com/backstop"),
    ] {
        assert_eq!(parse(given).unwrap().ui_url.as_deref(), Some(kept), "{given}");
    }
    for (given, says) in [
        ("backstop.example.com", "is not an absolute URL"),
        ("/ui/", "is not an absolute URL"),
        ("ftp://backstop.example.com", "only http:// or https://"),
        ("javascript:alert(1)", "only http:// or https://"),
        ("https://admin:s3cret@backstop.example.com", "carries credentials"),
        ("https://backstop.example.com/?a=1", "no query or fragment"),
    ] {
        let err = parse(given).unwrap_err().to_string();
        assert!(err.starts_with("/etc/b.yaml:2: field `ui.url`: "), "{given}: {err}");
        assert!(err.contains(says), "{given}: {err}");
    }
}
