//! charts/backstop/ and deploy/grafana/: `tests/helm/test_chart.py` renders and lints the chart with
//! a real Helm engine (PyPI's `helm-python-sdk`, Helm as a shared library: no helm binary), for the
//! default values and `ci/full-values.yaml`, and checks the objects against deploy/kubernetes/, the
//! rules ConfigMap against rules/, the PrometheusRule with `promtool`, and the dashboard's metrics.
//! This test runs it, then loads the backstop.yaml it rendered with backstop's own config loader.

use std::path::Path;
use std::process::Command;

use backstop::config::{Config, TargetConfig};
use backstop::secret::Secret;

use crate::support::backstop::repo;

const SKIP_ENV: &str = "BACKSTOP_SKIP_EXTERNAL";
const INSTALL: &str = "python3 -m pip install --user helm-python-sdk pyyaml \
                       (add --break-system-packages on a Debian-managed Python; .ci/run does it)";

/// Whether python3 can import the Helm SDK and PyYAML; the reason when not.
fn python_modules() -> Result<(), String> {
    match Command::new("python3").args(["-c", "import helm_python, yaml"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("").to_string()),
        Err(e) => Err(format!("cannot run python3: {e}")),
    }
}

#[test]
fn helm_chart_renders_lints_and_agrees_with_the_plain_manifests_and_the_dashboard() {
    if let Err(why) = python_modules() {
        if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            eprintln!("skipped: the Helm chart test needs PyPI's helm-python-sdk and pyyaml ({why}); {SKIP_ENV}=1");
            return;
        }
        panic!("the Helm chart test needs PyPI's helm-python-sdk and pyyaml ({why}): {INSTALL}");
    }
    let rendered = tempfile::Builder::new().prefix("backstop-helm-").tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo("tests/helm/test_chart.py"))
        .env("BACKSTOP_HELM_RENDER_DIR", rendered.path())
        .current_dir(repo(""))
        .output()
        .expect("run python3 tests/helm/test_chart.py");
    assert!(
        out.status.success(),
        "tests/helm/test_chart.py failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The rendered backstop.yaml is what backstop accepts, with the chart's paths.
    let in_pod = Path::new("/etc/backstop/config/backstop.yaml");
    for name in ["default", "full", "cluster"] {
        let file = rendered.path().join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let config = Config::parse(in_pod, &text)
            .unwrap_or_else(|e| panic!("the chart's backstop.yaml ({name} values) must load: {e}\n{text}"));
        assert!(matches!(config.target, TargetConfig::Kubernetes(_)), "{name}: {:?}", config.target);
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080", "{name}");
        assert_eq!(config.data_dir, Path::new("/var/lib/backstop"), "{name}");
        assert_eq!(config.rules, vec![Path::new("/etc/backstop/rules").to_path_buf()], "{name}");
        assert_eq!(
            config.auth.bearer,
            Some(Secret::File("/etc/backstop/secrets/http-token/token".into())),
            "{name}: Alertmanager must authenticate"
        );
        if name == "full" {
            let prometheus = config.prometheus.as_ref().expect("full values configure Prometheus");
            assert_eq!(
                prometheus.bearer_token,
                Some(Secret::File("/etc/backstop/secrets/prometheus-token/token".into()))
            );
            assert!(config.kafka.is_some(), "full values configure Kafka");
            assert_eq!(
                (config.ui_read_only, config.ui_url.as_deref()),
                (true, Some("https://backstop.example.com")),
                "full values configure the on-call page"
            );
        } else if name == "cluster" {
            let cluster = config.cluster.as_ref().expect("cluster values configure cluster mode");
            assert_eq!((cluster.lease.as_str(), cluster.log_topic.as_str()), ("backstop-leader", "backstop.audit-log"));
            assert_eq!(cluster.timing, backstop::cluster::Timing::default());
            assert_eq!(cluster.snapshot_every, backstop::cluster::config::DEFAULT_SNAPSHOT_EVERY);
        } else {
            assert!(config.prometheus.is_none() && config.kafka.is_none(), "default values: no Prometheus, no Kafka");
        }
    }
}
