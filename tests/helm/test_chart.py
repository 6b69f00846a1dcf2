#!/usr/bin/env python3
"""The Helm chart charts/backstop/ and the Grafana dashboard deploy/grafana/backstop.json.

Renders and lints the chart with a real Helm engine: PyPI's `helm-python-sdk`, which embeds Helm
as a shared library (no helm binary), for the default values and ci/full-values.yaml, then checks
the rendered objects against the plain manifests of deploy/kubernetes/ and the repository's
rules/, prometheus/ and alertmanager/ files. Checks the dashboard's JSON and metric names.
Rule expressions are checked with `promtool` (Debian's package `prometheus`).

    python3 -m pip install --user helm-python-sdk pyyaml
    python3 tests/helm/test_chart.py

`cargo test --test it helm` runs this file (tests/it/helm.rs). With BACKSTOP_HELM_RENDER_DIR set,
the rendered backstop.yaml files are written there (default.yaml, full.yaml) for the Rust side
to parse with backstop's own config loader.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

try:
    import helm_python as helm
    import yaml
except ImportError as e:  # pragma: no cover
    sys.exit(
        f"missing Python package ({e.name}): python3 -m pip install --user helm-python-sdk pyyaml "
        "(add --break-system-packages on a Debian-managed Python)"
    )

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "backstop"
DASHBOARD = REPO / "deploy" / "grafana" / "backstop.json"
RELEASE, NAMESPACE = "backstop", "backstop"

# What backstop exposes at /metrics (name -> type). Histograms are used as NAME_bucket etc.
METRICS = {
    "backstop_events_received_total": "counter",
    "backstop_rule_matches_total": "counter",
    "backstop_decisions_total": "counter",
    "backstop_action_duration_seconds": "histogram",
    "backstop_audit_append_duration_seconds": "histogram",
    "backstop_audit_fsync_duration_seconds": "histogram",
    "backstop_kafka_consumer_lag": "gauge",
    "backstop_rules_loaded": "gauge",
    "backstop_rules_last_reload_success": "gauge",
    "backstop_rules_last_reload_timestamp_seconds": "gauge",
    "backstop_build_info": "gauge",
    "backstop_ready": "gauge",
    "backstop_leader": "gauge",
    "backstop_takeovers_total": "counter",
    "backstop_replication_lag_messages": "gauge",
    "backstop_replication_lag_records": "gauge",
    "backstop_verifications_total": "counter",
    "backstop_flagger_calls_total": "counter",
    "backstop_replication_lag_seconds": "gauge",
    "backstop_promotion_steps_total": "counter",
    "backstop_promotions_total": "counter",
    "backstop_canary_weight": "gauge",
}
DECISION_OUTCOMES = {"applied", "noop", "held", "refused", "failed", "dry_run"}


def load_yaml_docs(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def full_values():
    return yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())


_renders = {}


def render(values=None, key=None):
    """The chart's rendered templates: {template path: text}."""
    key = key or json.dumps(values, sort_keys=True)
    if key not in _renders:
        with helm.Chart.load(CHART) as chart:
            _renders[key] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return _renders[key]


def objects(rendered):
    """The Kubernetes objects of a render (NOTES.txt left out), in template order."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.safe_load_all(rendered[path]))
        except yaml.YAMLError as e:
            raise AssertionError(f"{path} does not render to YAML: {e}\n{rendered[path]}")
        out += [d for d in docs if d is not None]
    return out


def notes(rendered):
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def find(objs, kind, name=None, namespace=None):
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    return found


def one(objs, kind, name=None, namespace=None):
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} {namespace or ''}, got {len(found)}"
    return found[0]


def rbac_rules(rules):
    """Rules as comparable tuples (apiGroups, resources, verbs), order of verbs kept."""
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in rules]


def promtool():
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("BACKSTOP_SKIP_EXTERNAL") == "1":
            raise unittest.SkipTest("promtool not found (BACKSTOP_SKIP_EXTERNAL=1)")
        raise AssertionError("`promtool` not found on PATH: install Debian's package `prometheus`")
    return path


def run_promtool(args, cwd):
    out = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def metric_names(expr):
    """The metric names an expression reads (identifiers followed by { or [ or used bare)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no names inside label values
    names = set(re.findall(r"\b(backstop_[a-z0-9_]+)", expr))
    return names


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and METRICS.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


class ChartFiles(unittest.TestCase):
    """The chart's copies of repository files (Helm reads nothing outside the chart)."""

    def test_shipped_rules_are_the_repositorys_rules(self):
        repo = {p.name: p.read_bytes() for p in (REPO / "rules").glob("*.yaml")}
        chart = {p.name: p.read_bytes() for p in (CHART / "files" / "rules").glob("*.yaml")}
        self.assertTrue(repo, "rules/ has no *.yaml")
        self.assertEqual(
            sorted(chart), sorted(repo), "charts/backstop/files/rules/ must hold exactly rules/*.yaml: "
            "rm charts/backstop/files/rules/*.yaml && cp rules/*.yaml charts/backstop/files/rules/"
        )
        for name in repo:
            self.assertEqual(
                chart[name], repo[name], f"charts/backstop/files/rules/{name} differs from rules/{name}: "
                f"cp rules/{name} charts/backstop/files/rules/"
            )

    def test_canary_alerts_and_dashboard_are_copies(self):
        for chart_file, repo_file in [
            ("files/prometheus/canary-rules.yaml", "deploy/prometheus/canary-rules.yaml"),
            ("files/grafana/backstop.json", "deploy/grafana/backstop.json"),
        ]:
            self.assertEqual(
                (CHART / chart_file).read_bytes(), (REPO / repo_file).read_bytes(),
                f"charts/backstop/{chart_file} differs: cp {repo_file} charts/backstop/{chart_file}",
            )


class Lint(unittest.TestCase):
    def lint(self, values):
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        self.assertEqual(report["total_charts_linted"], 1)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(report["errors"], [], report)
        self.assertEqual(problems, [], report)

    def test_default_values_lint_clean(self):
        self.lint(None)

    def test_full_values_lint_clean(self):
        self.lint(full_values())

    def test_chart_metadata(self):
        with helm.Chart.load(CHART) as chart:
            meta = chart.metadata
        self.assertEqual(meta["name"], "backstop")
        self.assertEqual(meta["apiVersion"], "v2")
        cargo = (REPO / "Cargo.toml").read_text()
        version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
        self.assertEqual(meta["appVersion"], version, "appVersion follows Cargo.toml's version")


class Schema(unittest.TestCase):
    def setUp(self):
        self.chart = helm.Chart.load(CHART)
        self.addCleanup(self.chart.close)

    def test_schema_is_draft_07_and_closed(self):
        schema = json.loads((CHART / "values.schema.json").read_text())
        self.assertEqual(schema["$schema"], "http://json-schema.org/draft-07/schema#")
        self.assertIs(schema["additionalProperties"], False)
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        self.assertEqual(sorted(set(defaults) - set(schema["properties"])), [], "every value has a schema entry")
        self.chart.validate_schema(None)
        self.chart.validate_schema(full_values())

    def rejected(self, values, where):
        with self.assertRaises(helm.HelmValuesError) as e:
            self.chart.validate_schema(values)
        self.assertIn(where, str(e.exception))
        with self.assertRaises(helm.HelmError):
            self.chart.render(values, name=RELEASE, namespace=NAMESPACE)

    def test_bad_values_are_rejected_before_rendering(self):
        self.rejected({"replicaCount": "two"}, "/replicaCount")
        self.rejected({"replicaCount": 2}, "/replicaCount")  # one writer per audit log
        self.rejected({"replicaConut": 1}, "replicaConut")
        self.rejected({"service": {"port": 70000}}, "/service/port")
        self.rejected({"rbac": {"argoRollouts": "yes"}}, "/rbac/argoRollouts")
        self.rejected({"config": {"listen": "0.0.0.0:9"}}, "listen")  # the chart owns it
        self.rejected({"config": {"guards": {"window": "soon"}}}, "/config/guards/window")
        self.rejected({"config": {"guards": {"windoww": "1h"}}}, "windoww")
        self.rejected({"config": {"kafka": {"group_id": "x"}}}, "brokers")
        self.rejected({"rules": {"canary.txt": "rules: []"}}, "canary.txt")

    def test_two_targets_fail_with_a_message(self):
        with self.assertRaises(helm.HelmError) as e:
            self.chart.render({"config": {"target": {"manifests": {"dir": "/gitops"}}}}, name=RELEASE)
        self.assertIn("exactly one of kubernetes or manifests", str(e.exception))


class Workload:
    """Checks shared by the default and the full render."""

    values = None

    @classmethod
    def setUpClass(cls):
        cls.rendered = render(cls.values)
        cls.objs = objects(cls.rendered)
        cls.deploy = one(cls.objs, "Deployment", RELEASE)
        cls.pod = cls.deploy["spec"]["template"]["spec"]
        cls.container = cls.pod["containers"][0]
        cm = next(o for o in cls.objs if o["kind"] in ("ConfigMap", "Secret") and o["metadata"]["name"] == f"{RELEASE}-config")
        cls.config_text = (cm.get("data") or cm.get("stringData"))["backstop.yaml"]
        cls.config = yaml.safe_load(cls.config_text)
        out = os.environ.get("BACKSTOP_HELM_RENDER_DIR")
        if out:
            Path(out, f"{cls.name}.yaml").write_text(cls.config_text)

    def mounts(self):
        return {m["mountPath"]: m for m in self.container["volumeMounts"]}

    def volume(self, name):
        return next(v for v in self.pod["volumes"] if v["name"] == name)

    def mounted_file(self, path):
        """The volume, and the key in it, that a file path in the container comes from."""
        for mount_path, m in self.mounts().items():
            if path.startswith(mount_path.rstrip("/") + "/"):
                return self.volume(m["name"]), path[len(mount_path.rstrip("/")) + 1 :]
        raise AssertionError(f"{path} is on no volume: {list(self.mounts())}")

    def test_single_writer_with_recreate(self):
        self.assertEqual(self.deploy["spec"]["replicas"], 1)
        self.assertEqual(self.deploy["spec"]["strategy"], {"type": "Recreate"})

    def test_security_context_is_locked_down_like_the_plain_manifest(self):
        plain = load_yaml_docs(REPO / "deploy/kubernetes/deployment.yaml")[0]["spec"]["template"]["spec"]
        pod_sc, c_sc = self.pod["securityContext"], self.container["securityContext"]
        for k, v in plain["securityContext"].items():
            self.assertEqual(pod_sc.get(k), v, f"pod securityContext.{k}")
        for k, v in plain["containers"][0]["securityContext"].items():
            self.assertEqual(c_sc.get(k), v, f"container securityContext.{k}")
        self.assertIs(pod_sc["runAsNonRoot"], True)
        self.assertIs(c_sc["readOnlyRootFilesystem"], True)
        self.assertIs(c_sc["allowPrivilegeEscalation"], False)
        self.assertEqual(c_sc["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", c_sc["capabilities"])
        self.assertFalse(c_sc.get("privileged", False))
        self.assertEqual(pod_sc["seccompProfile"], {"type": "RuntimeDefault"})

    def test_probes_ports_and_resources(self):
        c = self.container
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertEqual(c["startupProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertEqual(c["ports"], [{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        svc = one(self.objs, "Service", RELEASE)
        self.assertEqual(svc["spec"]["ports"][0]["port"], 8080)
        self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "http")
        self.assertEqual(svc["spec"]["selector"], self.deploy["spec"]["selector"]["matchLabels"])
        for k, v in self.deploy["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(self.deploy["spec"]["template"]["metadata"]["labels"][k], v)
        self.assertTrue(c["resources"]["requests"]["cpu"])
        self.assertTrue(c["resources"]["requests"]["memory"])
        self.assertTrue(c["resources"]["limits"]["memory"])
        self.assertEqual(c["args"][:2], ["--config", "/etc/backstop/config/backstop.yaml"])
        self.assertEqual(c["args"][-1], "serve")

    def test_config_rules_and_audit_log_are_mounted(self):
        cfg = self.config
        self.assertEqual(cfg["listen"], "0.0.0.0:8080")
        self.assertIn("kubernetes", cfg["target"])
        self.assertNotIn("manifests", cfg["target"])
        mounts = self.mounts()
        data = mounts[cfg["data_dir"]]
        self.assertNotIn("readOnly", data)
        self.assertEqual(self.volume(data["name"])["persistentVolumeClaim"]["claimName"], f"{RELEASE}-data")
        pvc = one(self.objs, "PersistentVolumeClaim", f"{RELEASE}-data")
        self.assertEqual(pvc["spec"]["accessModes"], ["ReadWriteOnce"])
        self.assertEqual(pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
        self.assertEqual(cfg["rules"], ["/etc/backstop/rules"])
        rules_vol = self.volume(mounts["/etc/backstop/rules"]["name"])
        self.assertEqual(rules_vol["configMap"]["name"], f"{RELEASE}-rules")
        config_vol, key = self.mounted_file(self.container["args"][1])
        self.assertEqual(key, "backstop.yaml")
        self.assertEqual((config_vol.get("configMap") or {}).get("name") or config_vol["secret"]["secretName"], f"{RELEASE}-config")
        # The bearer token: a file from the Secret, as deploy/kubernetes does.
        vol, key = self.mounted_file(cfg["http"]["auth"]["bearer_token_file"])
        self.assertEqual(vol["secret"]["secretName"], "backstop-token")
        self.assertEqual(vol["secret"]["items"], [{"key": key, "path": key}])
        # The same settings as the plain manifest's ConfigMap where the values keep them.
        plain = yaml.safe_load(load_yaml_docs(REPO / "deploy/kubernetes/configmap.yaml")[0]["data"]["backstop.yaml"])
        self.assertEqual(cfg["data_dir"], plain["data_dir"])
        self.assertEqual(cfg["listen"], plain["listen"])
        self.assertEqual(cfg["http"]["max_body_bytes"], plain["http"]["max_body_bytes"])

    def test_rules_configmap_holds_the_rules(self):
        cm = one(self.objs, "ConfigMap", f"{RELEASE}-rules")
        expected = {p.name: p.read_text() for p in (REPO / "rules").glob("*.yaml")}
        self.assertEqual(cm["data"], expected)

    def test_service_account_and_bindings_agree(self):
        sa = one(self.objs, "ServiceAccount")
        self.assertEqual(self.pod["serviceAccountName"], sa["metadata"]["name"])
        roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in self.objs if o["kind"] in ("Role", "ClusterRole")}
        bindings = [o for o in self.objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
        self.assertTrue(bindings)
        for b in bindings:
            self.assertEqual(b["subjects"], [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}])
            ref = (b["roleRef"]["kind"], b["metadata"].get("namespace") if b["roleRef"]["kind"] == "Role" else None, b["roleRef"]["name"])
            self.assertIn(ref, roles, b)

    def test_notes_tell_how_to_wire_alertmanager_and_read_the_audit_trail(self):
        text = notes(self.rendered)
        self.assertIn("http://backstop.backstop.svc:8080/v1/alertmanager", text)
        self.assertIn("/readyz", text)
        self.assertIn("backstop --config /etc/backstop/config/backstop.yaml audit tail", text)
        self.assertIn("kubectl -n backstop exec deploy/backstop", text)


class DefaultValues(Workload, unittest.TestCase):
    name = "default"

    def test_only_the_core_objects(self):
        kinds = sorted(o["kind"] for o in self.objs)
        self.assertEqual(
            kinds,
            sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap",
                    "PersistentVolumeClaim", "Deployment", "Service"]),
        )

    def test_cluster_scoped_names_carry_the_namespace_so_releases_in_two_namespaces_do_not_collide(self):
        names = lambda objs: {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"].startswith("Cluster")}
        here = names(self.objs)
        with helm.Chart.load(CHART) as chart:
            other = names(objects(chart.render({}, name=RELEASE, namespace="other-ns")))
        self.assertTrue(here)
        self.assertFalse(here & other, f"{here} and {other} collide")

    def test_cluster_role_is_deploy_kubernetes_rbac(self):
        plain = one(load_yaml_docs(REPO / "deploy/kubernetes/rbac.yaml"), "ClusterRole")
        role = one(self.objs, "ClusterRole", f"{RELEASE}-{NAMESPACE}")
        self.assertEqual(rbac_rules(role["rules"]), rbac_rules(plain["rules"]))
        self.assertEqual(
            rbac_rules(role["rules"]),
            [(("networking.istio.io",), ("virtualservices",), ("get", "list", "watch", "patch")),
             (("",), ("events",), ("create", "patch"))],
        )

    def test_argo_rollouts_rules_are_opt_in_and_those_of_deploy_kubernetes(self):
        plain = one(load_yaml_docs(REPO / "deploy/kubernetes/rbac.yaml"), "ClusterRole")
        argo = one(load_yaml_docs(REPO / "deploy/kubernetes/rbac-argo-rollouts.yaml"), "ClusterRole")
        self.assertEqual(
            rbac_rules(argo["rules"]),
            [(("argoproj.io",), ("rollouts",), ("get", "list", "watch", "patch")),
             (("argoproj.io",), ("rollouts/status",), ("patch",))],
        )
        role = one(objects(render({"rbac": {"argoRollouts": True}})), "ClusterRole", f"{RELEASE}-{NAMESPACE}")
        self.assertEqual(rbac_rules(role["rules"]), rbac_rules(plain["rules"]) + rbac_rules(argo["rules"]))
        objs = objects(render({"rbac": {"argoRollouts": True, "clusterWide": False, "namespaces": ["sms-app"]}}))
        role = one(objs, "Role", RELEASE, "sms-app")
        self.assertEqual(rbac_rules(role["rules"]), rbac_rules(plain["rules"]) + rbac_rules(argo["rules"]))

    def test_notes_show_the_receiver_with_the_token_file(self):
        text = notes(self.rendered)
        self.assertIn("credentials_file: /etc/alertmanager/secrets/backstop-token/token", text)
        self.assertIn("send_resolved: true", text)

    def test_rules_from_values_replace_the_shipped_ones(self):
        mine = "rules:\n  - name: mine\n    match: ['alertname=\"Mine\"']\n"
        objs = objects(render({"rules": {"mine.yaml": mine}}))
        self.assertEqual(one(objs, "ConfigMap", f"{RELEASE}-rules")["data"], {"mine.yaml": mine})
        a = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]
        self.assertNotEqual(a, self.deploy["spec"]["template"]["metadata"]["annotations"]["checksum/rules"])

    def test_without_a_token_there_is_no_auth_and_notes_warn(self):
        r = render({"secrets": {"httpToken": {"name": "", "key": "token"}}})
        cfg = yaml.safe_load(one(objects(r), "ConfigMap", f"{RELEASE}-config")["data"]["backstop.yaml"])
        self.assertNotIn("auth", cfg["http"])
        self.assertIn("WARNING", notes(r))


class FullValues(Workload, unittest.TestCase):
    name = "full"
    values = full_values()

    def test_every_optional_object_is_there(self):
        kinds = {o["kind"] for o in self.objs}
        for kind in ["ServiceMonitor", "PrometheusRule", "AlertmanagerConfig", "PodDisruptionBudget",
                     "NetworkPolicy", "Role", "RoleBinding"]:
            self.assertIn(kind, kinds)
        self.assertNotIn("ClusterRole", kinds, "rbac.clusterWide: false uses Roles only")
        one(self.objs, "ConfigMap", f"{RELEASE}-dashboard", "monitoring")

    def test_roles_per_namespace_carry_the_plain_rules(self):
        plain = one(load_yaml_docs(REPO / "deploy/kubernetes/rbac.yaml"), "ClusterRole")
        switch = one(load_yaml_docs(REPO / "deploy/kubernetes/rbac-service-switch.yaml"), "Role")
        for ns in ["sms-app", "shop"]:
            role = one(self.objs, "Role", RELEASE, ns)
            self.assertEqual(rbac_rules(role["rules"]), rbac_rules(plain["rules"]), ns)
        role = one(self.objs, "Role", f"{RELEASE}-service-switch", "shop")
        self.assertEqual(rbac_rules(role["rules"]), rbac_rules(switch["rules"]))
        self.assertEqual(find(self.objs, "Role", f"{RELEASE}-service-switch", "sms-app"), [])
        for o in self.objs:
            for r in o.get("rules", []) if o["kind"] in ("Role", "ClusterRole") else []:
                self.assertNotIn("*", r["verbs"])
                self.assertNotIn("delete", r["verbs"])
                self.assertNotIn("secrets", r["resources"])

    def test_secrets_are_mounted_files(self):
        cfg = self.config
        for path, secret in [
            (cfg["prometheus"]["bearer_token_file"], "prometheus-reader"),
            (cfg["prometheus"]["ca_file"], "prometheus-ca"),
            (cfg["kafka"]["properties"]["ssl.ca.location"], "backstop-kafka-tls"),
        ]:
            vol, _ = self.mounted_file(path)
            self.assertEqual(vol["secret"]["secretName"], secret, path)
        self.assertEqual(cfg["kafka"]["brokers"], self.values["config"]["kafka"]["brokers"])
        self.assertNotIn("password", self.config_text.lower())

    def test_pdb_allows_the_single_replica_to_be_evicted(self):
        pdb = one(self.objs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertNotIn("minAvailable", pdb["spec"])
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], self.deploy["spec"]["selector"]["matchLabels"])

    def test_service_monitor_scrapes_metrics_on_the_http_port(self):
        sm = one(self.objs, "ServiceMonitor")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "http")
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        svc = one(self.objs, "Service", RELEASE)
        for k, v in sm["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(svc["metadata"]["labels"][k], v)

    def test_alertmanager_config_matches_deploy_alertmanager(self):
        plain = load_yaml_docs(REPO / "deploy/alertmanager/alertmanagerconfig.yaml")[0]["spec"]
        for ns in ["sms-app", "shop"]:
            amc = one(self.objs, "AlertmanagerConfig", RELEASE, ns)["spec"]
            self.assertEqual(amc["route"], plain["route"], ns)
            self.assertEqual(amc["receivers"], plain["receivers"], ns)  # same URL: release backstop in backstop
        self.assertEqual(amc["receivers"][0]["webhookConfigs"][0]["url"], "http://backstop.backstop.svc:8080/v1/alertmanager")

    def test_network_policy(self):
        np_ = one(self.objs, "NetworkPolicy")["spec"]
        self.assertEqual(sorted(np_["policyTypes"]), ["Egress", "Ingress"])
        self.assertEqual(np_["podSelector"]["matchLabels"], self.deploy["spec"]["selector"]["matchLabels"])
        self.assertEqual(len(np_["ingress"]), 2)
        for rule in np_["ingress"]:
            self.assertEqual(rule["ports"], [{"port": "http", "protocol": "TCP"}])
            self.assertTrue(rule["from"])
        egress = {tuple(sorted((p["port"], p["protocol"]) for p in r["ports"])): r.get("to") for r in np_["egress"]}
        self.assertIn(((53, "TCP"), (53, "UDP")), egress)
        self.assertEqual(egress[((443, "TCP"), (6443, "TCP"))], [{"ipBlock": {"cidr": "10.0.0.1/32"}}])
        self.assertIn(((9093, "TCP"),), egress)
        self.assertIn(((9090, "TCP"),), egress)
        # Without Kafka and Prometheus in the config, no egress to them.
        objs = objects(render({"networkPolicy": {"enabled": True}}))
        ports = {p["port"] for r in one(objs, "NetworkPolicy")["spec"]["egress"] for p in r["ports"]}
        self.assertEqual(ports, {53, 443, 6443})
        self.assertFalse(one(objs, "NetworkPolicy")["spec"].get("ingress"), "no peers: no ingress at all")

    def test_grafana_dashboard_configmap_is_the_dashboard(self):
        cm = one(self.objs, "ConfigMap", f"{RELEASE}-dashboard")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(cm["data"], {"backstop.json": DASHBOARD.read_text()})

    def test_config_as_secret(self):
        objs = objects(render(dict(self.values, configAsSecret=True)))
        secret = one(objs, "Secret", f"{RELEASE}-config")
        self.assertEqual(yaml.safe_load(secret["stringData"]["backstop.yaml"]), self.config)
        self.assertEqual(find(objs, "ConfigMap", f"{RELEASE}-config"), [])
        vols = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        self.assertEqual(next(v for v in vols if v["name"] == "config")["secret"]["secretName"], f"{RELEASE}-config")


class ClusterMode(unittest.TestCase):
    """cluster.enabled: a StatefulSet of replicas with a volume each, one leading (docs/cluster.md)."""

    values = {"cluster": {"enabled": True}, "config": {"kafka": {"brokers": "kafka.kafka.svc:9092"}}}

    @classmethod
    def setUpClass(cls):
        cls.objs = objects(render(cls.values))
        cls.sts = one(cls.objs, "StatefulSet", RELEASE)
        cls.pod = cls.sts["spec"]["template"]["spec"]
        cm = one(cls.objs, "ConfigMap", f"{RELEASE}-config")
        cls.config_text = cm["data"]["backstop.yaml"]
        cls.config = yaml.safe_load(cls.config_text)
        out = os.environ.get("BACKSTOP_HELM_RENDER_DIR")
        if out:
            Path(out, "cluster.yaml").write_text(cls.config_text)

    def test_three_replicas_each_with_its_own_volume_on_different_nodes(self):
        self.assertEqual(find(self.objs, "Deployment"), [], "no single-writer Deployment beside it")
        self.assertEqual(find(self.objs, "PersistentVolumeClaim"), [], "claims come from the template")
        spec = self.sts["spec"]
        self.assertEqual(spec["replicas"], 3)
        self.assertEqual(spec["serviceName"], f"{RELEASE}-replicas")
        self.assertEqual(spec["updateStrategy"], {"type": "RollingUpdate"})
        (claim,) = spec["volumeClaimTemplates"]
        self.assertEqual(claim["metadata"]["name"], "data")
        self.assertEqual(claim["spec"]["resources"]["requests"]["storage"], "5Gi")
        self.assertNotIn("data", [v["name"] for v in self.pod["volumes"]], "the claim template provides it")
        anti = self.pod["affinity"]["podAntiAffinity"]
        self.assertEqual(anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"], "kubernetes.io/hostname")
        zone = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
        self.assertEqual(zone, "topology.kubernetes.io/zone")
        env = {e["name"]: e for e in self.pod["containers"][0]["env"]}
        self.assertEqual(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name")
        self.assertEqual(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace")

    def test_the_service_reaches_the_leader_and_a_budget_keeps_a_standby(self):
        svc = one(self.objs, "Service", RELEASE)
        self.assertEqual(svc["spec"]["selector"]["backstop.io/leader"], "true")
        headless = one(self.objs, "Service", f"{RELEASE}-replicas")
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        self.assertNotIn("backstop.io/leader", headless["spec"]["selector"])
        pdb = one(self.objs, "PodDisruptionBudget", RELEASE)
        self.assertEqual(pdb["spec"], {"minAvailable": 2, "selector": pdb["spec"]["selector"]})

    def test_rbac_for_its_lease_and_its_own_pod_in_its_namespace_only(self):
        role = one(self.objs, "Role", f"{RELEASE}-cluster", NAMESPACE)
        self.assertEqual(
            rbac_rules(role["rules"]),
            [(("coordination.k8s.io",), ("leases",), ("get", "create", "update")), (("",), ("pods",), ("get", "patch"))],
        )
        binding = one(self.objs, "RoleBinding", f"{RELEASE}-cluster", NAMESPACE)
        self.assertEqual(binding["roleRef"]["name"], f"{RELEASE}-cluster")
        self.assertEqual(find(self.objs, "ClusterRole", f"{RELEASE}-cluster"), [])

    def test_the_config_carries_the_cluster_section(self):
        self.assertEqual(
            self.config["cluster"],
            {"lease": f"{RELEASE}-leader", "lease_duration": "10s", "renew_every": "2s", "margin": "3s",
             "log_topic": "backstop.audit-log", "snapshot_every": "10m"},
        )

    def test_what_cluster_mode_needs_is_refused_with_a_message(self):
        with helm.Chart.load(CHART) as chart:
            for values, message in [
                ({"cluster": {"enabled": True}}, "needs config.kafka"),
                ({**self.values, "persistence": {"enabled": False}}, "needs persistence.enabled"),
                ({**self.values, "cluster": {"enabled": True, "replicas": 2}}, "minAvailable must be below"),
            ]:
                with self.assertRaises(helm.HelmError) as e:
                    chart.render(values, name=RELEASE, namespace=NAMESPACE)
                self.assertIn(message, str(e.exception))
            with self.assertRaises(helm.HelmValuesError) as e:
                chart.validate_schema({"cluster": {"enabled": True, "replicas": 1}})
            self.assertIn("/cluster/replicas", str(e.exception))
            with self.assertRaises(helm.HelmValuesError) as e:
                chart.validate_schema({"cluster": {"enabled": True, "leaseDuration": "1500ms"}})
            self.assertIn("/cluster/leaseDuration", str(e.exception))


class Alerts(unittest.TestCase):
    """The PrometheusRule: backstop's own alerts and the canary alerts, checked by promtool."""

    @classmethod
    def setUpClass(cls):
        cls.rule = one(objects(render(full_values())), "PrometheusRule")
        cls.groups = {g["name"]: g for g in cls.rule["spec"]["groups"]}

    def test_canary_group_is_deploy_prometheus_canary_rules(self):
        plain = load_yaml_docs(REPO / "deploy/prometheus/canary-rules.yaml")[0]["spec"]["groups"]
        self.assertEqual([self.groups["backstop-canary"]], plain)

    def test_backstop_alerts_use_only_backstops_metrics(self):
        rules = self.groups["backstop"]["rules"]
        self.assertEqual(
            [r["alert"] for r in rules],
            ["BackstopDown", "BackstopNotReady", "BackstopActionFailures", "BackstopRulesReloadFailed",
             "BackstopEventsRejected", "BackstopKafkaLagHigh", "BackstopAuditSlow"],
        )
        for r in rules:
            names = {base_metric(n) for n in metric_names(r["expr"])}
            self.assertLessEqual(names, set(METRICS), r["alert"])
            self.assertIn('job="backstop", namespace="backstop"', r["expr"], r["alert"])
            self.assertIn("severity", r["labels"])
        failures = next(r for r in rules if r["alert"] == "BackstopActionFailures")
        self.assertIn('outcome="failed"', failures["expr"])

    def test_only_when_enabled(self):
        objs = objects(render({"prometheusRule": {"enabled": True}}))
        groups = [g["name"] for g in one(objs, "PrometheusRule")["spec"]["groups"]]
        self.assertEqual(groups, ["backstop"])

    def test_promtool_checks_the_rules_and_unit_tests_backstops_alerts(self):
        with tempfile.TemporaryDirectory(prefix="backstop-helm-") as d:
            Path(d, "rules.yml").write_text(yaml.safe_dump({"groups": self.rule["spec"]["groups"]}))
            out = run_promtool(["check", "rules", "rules.yml"], d)
            self.assertIn("SUCCESS: 10 rules found", out)
            Path(d, "test.yml").write_text(PROMTOOL_TESTS)
            run_promtool(["test", "rules", "test.yml"], d)


# Unit tests of backstop's own alerts: each fires on a bad series and stays silent on a good one.
PROMTOOL_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="backstop", namespace="backstop", pod="backstop-0"}'
        values: '1x5 0x10'
      - series: 'backstop_ready{job="backstop", namespace="backstop", pod="backstop-0"}'
        values: '1x5 0x10'
      - series: 'backstop_decisions_total{job="backstop", namespace="backstop", rule="canary-high-error-rate", outcome="failed"}'
        values: '0x5 1x10'
      - series: 'backstop_decisions_total{job="backstop", namespace="backstop", rule="canary-high-error-rate", outcome="applied"}'
        values: '0+1x15'
      - series: 'backstop_rules_last_reload_success{job="backstop", namespace="backstop"}'
        values: '1x5 0x10'
      - series: 'backstop_events_received_total{job="backstop", namespace="backstop", source="alertmanager", outcome="rejected"}'
        values: '0+1x40'
      - series: 'backstop_events_received_total{job="backstop", namespace="backstop", source="kafka", outcome="accepted"}'
        values: '0+100x40'
      - series: 'backstop_audit_fsync_duration_seconds_bucket{job="backstop", namespace="backstop", le="0.1"}'
        values: '0+10x5 50+1x35'
      - series: 'backstop_audit_fsync_duration_seconds_bucket{job="backstop", namespace="backstop", le="1"}'
        values: '0+10x5 50+100x35'
      - series: 'backstop_audit_fsync_duration_seconds_bucket{job="backstop", namespace="backstop", le="+Inf"}'
        values: '0+10x5 50+100x35'
      - series: 'backstop_kafka_consumer_lag{job="backstop", namespace="backstop", topic="backstop.alerts", partition="0"}'
        values: '0+500x15'
      - series: 'backstop_kafka_consumer_lag{job="backstop", namespace="backstop", topic="backstop.feedback", partition="0"}'
        values: '10x15'
    alert_rule_test:
      - alertname: BackstopDown
        eval_time: 4m
        exp_alerts: []
      - alertname: BackstopDown
        eval_time: 12m
        exp_alerts:
          - exp_labels: {severity: critical, job: backstop, namespace: backstop, pod: backstop-0}
            exp_annotations:
              summary: "backstop in backstop is down: nothing rolls back bad canaries"
              description: "No successful scrape of backstop for 5 minutes. Alertmanager keeps re-sending what it cannot deliver; check the pod (kubectl -n backstop describe pod -l app.kubernetes.io/instance=backstop)."
      - alertname: BackstopNotReady
        eval_time: 12m
        exp_alerts:
          - exp_labels: {severity: warning, job: backstop, namespace: backstop, pod: backstop-0}
            exp_annotations:
              summary: "backstop backstop-0 is not ready"
              description: "/readyz has answered no for 5 minutes: the audit log cannot be written or no rules are loaded. The pod's logs and the /readyz body (kubectl -n backstop port-forward svc/backstop 8080, then curl localhost:8080/readyz) say which."
      - alertname: BackstopActionFailures
        eval_time: 4m
        exp_alerts: []
      - alertname: BackstopActionFailures
        eval_time: 7m
        exp_alerts:
          - exp_labels: {severity: critical, rule: canary-high-error-rate}
            exp_annotations:
              summary: "backstop failed to act for rule canary-high-error-rate"
              description: "1 failed actions of rule canary-high-error-rate in 15 minutes: the traffic was not put back. `backstop audit query --outcome failed` names the reason (RBAC, API server, conflicts)."
      - alertname: BackstopRulesReloadFailed
        eval_time: 5m
        exp_alerts: []
      - alertname: BackstopRulesReloadFailed
        eval_time: 8m
        exp_alerts:
          - exp_labels: {severity: warning, job: backstop, namespace: backstop}
            exp_annotations:
              summary: "backstop could not reload its rules"
              description: "The last reload of the rules failed; the previous rules are still in force. `backstop validate` names file, line and field."
      - alertname: BackstopEventsRejected
        eval_time: 10m
        exp_alerts: []
      - alertname: BackstopEventsRejected
        eval_time: 20m
        exp_alerts:
          - exp_labels: {severity: warning, source: alertmanager}
            exp_annotations:
              summary: "backstop rejects events from alertmanager"
              description: "Events from alertmanager have been rejected for 15 minutes (wrong token, bad payload, too large): alerts are not acted on. The audit log's `rejected` records say why."
      - alertname: BackstopAuditSlow
        eval_time: 5m
        exp_alerts: []
      - alertname: BackstopAuditSlow
        eval_time: 25m
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "backstop's audit log is slow to fsync"
              description: "p99 fsync of the audit log is 990.9ms (limit 0.5s): every webhook answer waits for it. Check the volume."
      - alertname: BackstopKafkaLagHigh
        eval_time: 5m
        exp_alerts: []
      - alertname: BackstopKafkaLagHigh
        eval_time: 14m
        exp_alerts:
          - exp_labels: {severity: warning, topic: backstop.alerts, partition: "0"}
            exp_annotations:
              summary: "backstop lags on backstop.alerts/0"
              description: "7k messages behind for 10 minutes (limit 1000): alerts from Kafka arrive late."
  - interval: 1m
    input_series: []
    alert_rule_test:
      # Never scraped at all (no ServiceMonitor, wrong selector): absent() fires.
      - alertname: BackstopDown
        eval_time: 6m
        exp_alerts:
          - exp_labels: {severity: critical, job: backstop, namespace: backstop}
            exp_annotations:
              summary: "backstop in backstop is down: nothing rolls back bad canaries"
              description: "No successful scrape of backstop for 5 minutes. Alertmanager keeps re-sending what it cannot deliver; check the pod (kubectl -n backstop describe pod -l app.kubernetes.io/instance=backstop)."
"""


class Dashboard(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dash = json.loads(DASHBOARD.read_text())
        cls.panels = [p for p in cls.dash["panels"] if p["type"] != "row"]
        cls.exprs = [(p["title"], t["expr"]) for p in cls.panels for t in p["targets"]]

    def test_structure(self):
        d = self.dash
        self.assertGreaterEqual(d["schemaVersion"], 36)
        self.assertTrue(d["uid"] and d["title"])
        ds = next(v for v in d["templating"]["list"] if v["name"] == "datasource")
        self.assertEqual((ds["type"], ds["query"]), ("datasource", "prometheus"))
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])

    def test_no_hard_coded_datasource(self):
        def walk(node, where):
            if isinstance(node, dict):
                if "datasource" in node and node["datasource"] is not None:
                    ref = node["datasource"]
                    uid = ref.get("uid") if isinstance(ref, dict) else ref
                    self.assertEqual(uid, "${datasource}", f"{where}: datasource {ref}")
                for k, v in node.items():
                    walk(v, f"{where}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{where}[{i}]")

        walk(self.dash["panels"], "panels")
        walk([v for v in self.dash["templating"]["list"] if v["type"] != "datasource"], "templating")
        self.assertNotIn("__inputs", self.dash)

    def test_metric_names_are_backstops(self):
        used = set()
        for title, expr in self.exprs:
            names = {base_metric(n) for n in metric_names(expr)}
            self.assertTrue(names, f"{title}: {expr}")
            unknown = names - set(METRICS)
            self.assertFalse(unknown, f"{title}: unknown metrics {unknown} in {expr}")
            for n in metric_names(expr):
                if METRICS.get(base_metric(n)) == "histogram":
                    self.assertTrue(n.endswith("_bucket"), f"{title}: {n}")
            used |= names
        self.assertEqual(used, set(METRICS), "every metric backstop exposes is on the dashboard")

    def test_panels_asked_for(self):
        titles = " | ".join(p["title"] for p in self.panels).lower()
        for want in ["events received", "rule matches", "decisions by outcome", "action latency",
                     "fsync", "kafka consumer lag", "rules loaded", "last rules reload", "version", "ready"]:
            self.assertIn(want, titles)
        latency = next(e for t, e in self.exprs if t.startswith("Action latency") and "0.99" in e)
        self.assertIn("histogram_quantile(0.99", latency)
        dec = next(p for p in self.panels if p["title"] == "Decisions by outcome")
        colored = {o["matcher"]["options"] for o in dec["fieldConfig"]["overrides"]}
        self.assertEqual(colored, DECISION_OUTCOMES)

    def test_expressions_parse_with_promtool(self):
        def concrete(expr):
            expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            expr = expr.replace("$promotion_rules", ".*promot.*")
            return expr.replace("$namespace", ".*").replace("$job", ".*")

        rules = [{"record": f"dashboard:panel{n}", "expr": concrete(e)} for n, (_, e) in enumerate(self.exprs)]
        with tempfile.TemporaryDirectory(prefix="backstop-grafana-") as d:
            Path(d, "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
            out = run_promtool(["check", "rules", "dashboard.yml"], d)
            self.assertIn(f"SUCCESS: {len(rules)} rules found", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
