"""What the rendered chart must do, checked on `helm template` output with Helm 3 and Helm 4."""

import base64
import tomllib

import pytest

from conftest import RELEASE, lint_fails, notes, render, render_fails

CONFIG_DIR = "/etc/hyperlight-js-worker"
DEFAULT_NAME = f"{RELEASE}-hyperlight-js-worker"
CUSTOM_GROUPS = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}


def worker_toml(m):
    return tomllib.loads(m.one("ConfigMap")["data"]["worker.toml"])


def volume(m, name):
    found = [v for v in m.pod["volumes"] if v["name"] == name]
    assert len(found) == 1, m.pod["volumes"]
    return found[0]


def mount(m, name):
    found = [v for v in m.container["volumeMounts"] if v["name"] == name]
    assert len(found) == 1, m.container["volumeMounts"]
    return found[0]


# ---------------------------------------------------------------------------------------------
# What renders with default values and with every option on
# ---------------------------------------------------------------------------------------------


def test_default_values_render_the_core_objects_and_nothing_optional(helm):
    m = render(helm)
    assert m.kinds() == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )


def test_all_on_values_render_every_object(helm):
    m = render(helm, "values-all-on.yaml")
    assert m.kinds() == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "TriggerAuthentication",
        ]
    )


@pytest.mark.parametrize("values", [(), ("values-all-on.yaml",), ("values-hostpath.yaml",),
                                    ("values-existing.yaml",)])
def test_every_object_carries_the_standard_labels(helm, values):
    m = render(helm, *values)
    for doc in m.docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "hyperlight-js-worker"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "hyperlight-js-worker-0.1.0"


# ---------------------------------------------------------------------------------------------
# Configuration: ConfigMap mounted where --config points
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), ("values-all-on.yaml",)])
def test_deployment_mounts_the_configmap_where_the_config_flag_points(helm, values):
    m = render(helm, *values)
    cm = m.one("ConfigMap")
    assert volume(m, "config")["configMap"]["name"] == cm["metadata"]["name"]
    config_mount = mount(m, "config")
    assert config_mount["mountPath"] == CONFIG_DIR
    assert config_mount["readOnly"] is True
    assert m.container["args"] == ["--config", f"{CONFIG_DIR}/worker.toml"]
    assert "worker.toml" in cm["data"]


def test_config_toml_is_rendered_from_values(helm, chart_values):
    cfg = worker_toml(render(helm))
    assert cfg["broker"] == chart_values["config"]["broker"]
    assert cfg["telemetry"] == {"log_format": "json"}
    assert cfg["shutdown"] == {"drain_timeout_secs": 30}
    assert cfg["http"] == {"listen": "0.0.0.0:9090"}
    assert "url" not in cfg["broker"]
    expected = {k: v for k, v in chart_values["handlers"][0].items() if k != "source"}
    assert cfg["handlers"] == [expected]


def test_handler_sources_sit_next_to_the_config_under_the_names_it_gives(helm):
    m = render(helm, "values-all-on.yaml")
    data = m.one("ConfigMap")["data"]
    cfg = tomllib.loads(data["worker.toml"])
    files = [h["file"] for h in cfg["handlers"]]
    assert files == ["greet.js", "orders-total.js", "echo.js"]
    for f in files:
        assert "function handler(" in data[f]
    assert sorted(data) == sorted(["worker.toml", *files])
    # `source` is ConfigMap content, never a TOML key.
    assert all("source" not in h for h in cfg["handlers"])


def test_handler_file_defaults_to_key_dot_js(helm):
    m = render(helm, values={"handlers": [{"key": "greet", "source": "function handler(e) {}"}]})
    data = m.one("ConfigMap")["data"]
    assert worker_toml(m)["handlers"][0]["file"] == "greet.js"
    assert "greet.js" in data


def test_toml_strings_are_escaped(helm):
    tricky = 'he said "hi"\\ \u00e9 # not a comment\n\ttab <&>'
    handlers = [{"key": "greet", "source": "function handler(e) { return e; }",
                 "retry_on": ["ERR_CANCELLED", "ERR_HEAP_EXHAUSTED"]}]
    m = render(helm, values={"config": {"telemetry": {"service_name": tricky}},
                             "handlers": handlers})
    cfg = worker_toml(m)
    assert cfg["telemetry"]["service_name"] == tricky
    assert cfg["handlers"][0]["retry_on"] == ["ERR_CANCELLED", "ERR_HEAP_EXHAUSTED"]


def test_null_config_keys_are_left_out(helm):
    m = render(helm, values={"config": {"telemetry": {"log_format": None},
                                        "broker": {"max_deliveries": None}}})
    cfg = worker_toml(m)
    assert "log_format" not in cfg["telemetry"]
    assert "max_deliveries" not in cfg["broker"]


def test_every_worker_key_is_accepted(helm):
    # Every key of config/src/lib.rs's sections (deny_unknown_fields there), each in range.
    config = {
        "broker": {"events_exchange": "ev", "results_exchange": "res",
                   "dead_letter_exchange": "dlx", "dead_letter_queue": "dlq",
                   "max_deliveries": 4, "prefetch_per_sandbox": 100, "tls_ca_file": "ca.pem",
                   "reconnect_initial_ms": 100, "reconnect_max_ms": 5000},
        "telemetry": {"log_format": "human", "otlp_endpoint": "http://otel:4317",
                      "service_name": "svc"},
        "shutdown": {"drain_timeout_secs": 30},
        "snapshots": {"dir": "/srv/snapshots"},
    }
    handler = {"key": "greet", "file": "g.js", "source": "function handler(e) { return e; }",
               "pool_size": 256, "heap_size": 8388608, "stack_size": 1048576,
               "cpu_timeout_ms": 1, "max_cpu_timeout_ms": 3600000, "wall_timeout_ms": 1,
               "max_wall_timeout_ms": 3600000, "max_message_bytes": 1, "max_result_bytes": 1,
               "max_deliveries": 1, "retry_on": ["ERR_CANCELLED"], "retry_delay_ms": 0,
               "retry_backoff": 100, "retry_max_delay_ms": 86400000}
    cfg = worker_toml(render(helm, values={"config": config, "handlers": [handler]}))
    assert cfg["broker"] == config["broker"]
    assert cfg["telemetry"] == config["telemetry"]
    assert cfg["snapshots"] == config["snapshots"]
    assert cfg["handlers"] == [{k: v for k, v in handler.items() if k != "source"}]


# Keys the worker refuses (ERR_CONFIG_PARSE: every section of config/src/lib.rs is
# deny_unknown_fields), so the schema refuses them too, in helm template and in helm lint.
UNKNOWN_KEYS = [
    {"config.broker.bogus_key": "1"},
    {"config.telemetry.sample_ratio": "0.5"},
    {"config.shutdown.grace": "1"},
    {"config.tracing.enabled": "true"},
    {"config.http.listen": "0.0.0.0:1"},
    {"config.broker.urls": "{amqp://u:p@h/}"},
    {"handlers[0].pool_sise": "2"},
]


@pytest.mark.parametrize("sets", UNKNOWN_KEYS, ids=[next(iter(s)) for s in UNKNOWN_KEYS])
def test_config_keys_the_worker_refuses_are_refused(helm, sets):
    key = next(iter(sets)).rsplit(".", 1)[-1]
    err = render_fails(helm, sets=sets)
    assert key in err or "not" in err, err
    err = lint_fails(helm, sets=sets)
    assert key in err or "not" in err, err


# Values out of the ranges the worker checks when it loads its configuration.
OUT_OF_RANGE = [
    {"handlers[0].pool_size": "0"},
    {"handlers[0].pool_size": "257"},
    {"handlers[0].max_deliveries": "0"},
    {"handlers[0].retry_backoff": "0.5"},
    {"handlers[0].retry_backoff": "101"},
    {"handlers[0].retry_max_delay_ms": "86400001"},
    {"handlers[0].cpu_timeout_ms": "0"},
    {"handlers[0].max_wall_timeout_ms": "3600001"},
    {"handlers[0].heap_size": "0"},
    {"config.broker.max_deliveries": "0"},
    {"config.broker.prefetch_per_sandbox": "0"},
    {"config.broker.prefetch_per_sandbox": "101"},
    {"config.broker.reconnect_initial_ms": "0"},
    {"config.telemetry.log_format": "xml"},
]


@pytest.mark.parametrize("sets", OUT_OF_RANGE,
                         ids=[f"{k}={v}" for s in OUT_OF_RANGE for k, v in s.items()])
def test_values_out_of_the_workers_ranges_are_refused(helm, sets):
    (key, _), = sets.items()
    field = key.rsplit(".", 1)[-1]
    assert field in render_fails(helm, sets=sets)
    assert field in lint_fails(helm, sets=sets)


@pytest.mark.parametrize("values", [
    {"handlers": [{"key": "amq.greet", "source": "function handler(e) {}"}]},
    {"handlers": [{"key": "a" * 201, "source": "function handler(e) {}"}]},
    {"handlers": [{"key": "bad\nkey", "source": "function handler(e) {}"}]},
    {"handlers": [{"key": "greet", "source": "function handler(e) {}", "retry_on": ["cancelled"]}]},
    {"config": {"broker": {"events_exchange": "amq.direct"}}},
])
def test_names_and_codes_the_worker_refuses_are_refused(helm, values):
    render_fails(helm, values=values)


def test_config_change_rolls_the_pods(helm):
    a = render(helm).deployment["spec"]["template"]["metadata"]["annotations"]
    b = render(helm, sets={"config.broker.max_deliveries": 7})
    b = b.deployment["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]


def test_existing_configmap_removes_the_configmap_and_is_mounted(helm):
    m = render(helm, sets={"existingConfigMap": "my-worker-config"})
    assert m.maybe("ConfigMap") is None
    assert volume(m, "config")["configMap"]["name"] == "my-worker-config"
    assert mount(m, "config")["mountPath"] == CONFIG_DIR
    assert "checksum/config" not in (m.deployment["spec"]["template"]["metadata"]
                                     .get("annotations") or {})


def test_environment_overrides_keep_port_and_drain_timeout_with_any_config(helm):
    m = render(helm, "values-existing.yaml")
    assert m.env("HLJS__HTTP__LISTEN")["value"] == "0.0.0.0:9090"
    assert m.env("HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS")["value"] == "30"
    m = render(helm, "values-all-on.yaml")
    assert m.env("HLJS__HTTP__LISTEN")["value"] == "0.0.0.0:9191"
    assert m.env("HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS")["value"] == "60"
    assert worker_toml(m)["http"]["listen"] == "0.0.0.0:9191"


# ---------------------------------------------------------------------------------------------
# KVM
# ---------------------------------------------------------------------------------------------


def test_deployment_requests_the_kvm_device_plugin_resource(helm):
    resources = render(helm).container["resources"]
    assert resources["limits"]["devices.kubevirt.io/kvm"] == 1
    assert resources["requests"]["devices.kubevirt.io/kvm"] == 1
    # The other resources stay as the values give them.
    assert resources["requests"]["memory"] == "256Mi"
    assert resources["limits"]["memory"] == "1Gi"


def test_kvm_resource_name_is_configurable(helm):
    m = render(helm, "values-all-on.yaml")
    resources = m.container["resources"]
    assert resources["limits"]["hyperlight.dev/hypervisor"] == 1
    assert resources["requests"]["hyperlight.dev/hypervisor"] == 1
    assert "devices.kubevirt.io/kvm" not in resources["limits"]


def test_device_plugin_mode_mounts_no_host_device(helm):
    m = render(helm)
    assert all("hostPath" not in v for v in m.pod["volumes"])
    assert all(v["mountPath"] != "/dev/kvm" for v in m.container["volumeMounts"])


def test_hostpath_fallback_mounts_dev_kvm_as_a_char_device(helm):
    m = render(helm, "values-hostpath.yaml")
    kvm = volume(m, "kvm")
    assert kvm["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}
    assert mount(m, "kvm")["mountPath"] == "/dev/kvm"
    resources = m.container.get("resources", {})
    for section in resources.values():
        assert not any("kvm" in name for name in section)


def test_hostpath_fallback_stays_unprivileged_unless_asked(helm):
    m = render(helm, "values-hostpath.yaml")
    assert m.container["securityContext"]["privileged"] is False
    m = render(helm, "values-hostpath.yaml", sets={"kvm.hostPath.privileged": "true"})
    sc = m.container["securityContext"]
    assert sc["privileged"] is True
    # The API rejects privileged with allowPrivilegeEscalation false; the rest stays hardened.
    assert sc["allowPrivilegeEscalation"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_privileged_is_refused_with_the_device_plugin(helm):
    err = render_fails(helm, sets={"kvm.hostPath.privileged": "true"})
    assert "kvm.hostPath.privileged applies only with kvm.mode=hostPath" in err


def test_pods_schedule_only_onto_labelled_kvm_nodes(helm):
    m = render(helm)
    assert m.pod["nodeSelector"] == {"hyperlight.dev/kvm": "true"}
    m = render(helm, "values-all-on.yaml")
    assert m.pod["nodeSelector"] == {"hyperlight.dev/kvm": "true", "kubernetes.io/arch": "amd64"}
    assert m.pod["tolerations"] == [
        {"key": "hyperlight.dev/kvm", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "podAntiAffinity" in m.pod["affinity"]
    m = render(helm, sets={"kvm.nodeLabel.key": "feature.node.kubernetes.io/kvm",
                           "kvm.nodeLabel.value": "present"})
    assert m.pod["nodeSelector"] == {"feature.node.kubernetes.io/kvm": "present"}
    m = render(helm, sets={"kvm.nodeLabel.key": ""})
    assert "nodeSelector" not in m.pod


def test_kvm_group_is_added_to_supplemental_groups(helm):
    assert "supplementalGroups" not in render(helm).pod["securityContext"]
    m = render(helm, "values-all-on.yaml")
    assert m.pod["securityContext"]["supplementalGroups"] == [2000, 108]
    m = render(helm, sets={"kvm.groupId": 108, "securityContext.supplementalGroups": "{108}"})
    assert m.pod["securityContext"]["supplementalGroups"] == [108]


# ---------------------------------------------------------------------------------------------
# Hardening
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), ("values-all-on.yaml",), ("values-hostpath.yaml",),
                                    ("values-existing.yaml",)])
def test_pod_and_container_are_hardened(helm, values):
    m = render(helm, *values)
    pod_sc = m.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532 and pod_sc["runAsGroup"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = m.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert m.pod["automountServiceAccountToken"] is False
    # The read-only root gets a bounded scratch /tmp.
    assert mount(m, "tmp")["mountPath"] == "/tmp"
    assert "emptyDir" in volume(m, "tmp")


def test_service_account_has_no_token(helm):
    m = render(helm)
    sa = m.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert m.pod["serviceAccountName"] == sa["metadata"]["name"]
    m = render(helm, sets={"serviceAccount.create": "false"})
    assert m.maybe("ServiceAccount") is None
    assert m.pod["serviceAccountName"] == "default"
    assert m.pod["automountServiceAccountToken"] is False


def test_uid_zero_is_refused_by_the_schema(helm):
    err = render_fails(helm, sets={"securityContext.runAsUser": 0})
    assert "runAsUser" in err


# ---------------------------------------------------------------------------------------------
# Probes, shutdown
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), ("values-all-on.yaml",)])
def test_probes_point_at_healthz_and_readyz_on_the_http_port(helm, values):
    m = render(helm, *values)
    c = m.container
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    listen = m.env("HLJS__HTTP__LISTEN")["value"]
    assert listen == f"0.0.0.0:{ports['http']}"


def test_startup_probe_can_be_turned_off(helm):
    m = render(helm, sets={"probes.startup.enabled": "false"})
    assert "startupProbe" not in m.container
    assert m.container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("values", [(), ("values-all-on.yaml",), ("values-existing.yaml",)])
def test_grace_period_exceeds_the_drain_timeout(helm, values):
    m = render(helm, *values)
    drain = int(m.env("HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS")["value"])
    assert m.pod["terminationGracePeriodSeconds"] > drain
    if m.maybe("ConfigMap"):
        assert worker_toml(m)["shutdown"]["drain_timeout_secs"] == drain


@pytest.mark.parametrize("grace", [30, 10])
def test_grace_period_not_above_drain_timeout_is_refused(helm, grace):
    err = render_fails(helm, sets={"terminationGracePeriodSeconds": grace})
    assert "must be greater than config.shutdown.drain_timeout_secs (30)" in err
    err = render_fails(helm, sets={"config.shutdown.drain_timeout_secs": 50})
    assert "terminationGracePeriodSeconds (45)" in err


# ---------------------------------------------------------------------------------------------
# Broker credentials
# ---------------------------------------------------------------------------------------------


def test_amqp_url_becomes_a_secret_the_pod_reads(helm):
    m = render(helm, "values-all-on.yaml")
    secret = m.one("Secret")
    ref = m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    url = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert url == "amqp://worker:s3cr%21t@rabbitmq.messaging.svc:5672/%2f"
    # The URL never reaches the ConfigMap.
    assert all("s3cr" not in v for v in m.one("ConfigMap")["data"].values())
    assert "checksum/amqp-secret" in m.deployment["spec"]["template"]["metadata"]["annotations"]


def test_existing_secret_removes_the_secret(helm):
    m = render(helm, "values-all-on.yaml",
               sets={"amqp.url": "", "amqp.existingSecret": "rabbitmq-worker",
                     "amqp.existingSecretKey": "uri"})
    assert m.maybe("Secret") is None
    ref = m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "rabbitmq-worker", "key": "uri"}
    # KEDA reads the same Secret.
    auth = m.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "host", "name": "rabbitmq-worker", "key": "uri"}]


def test_without_url_or_secret_the_pod_expects_a_secret_named_after_the_release(helm):
    m = render(helm)
    assert m.maybe("Secret") is None
    ref = m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{DEFAULT_NAME}-amqp", "key": "AMQP_URL"}
    text = notes()
    assert f"create secret generic {DEFAULT_NAME}-amqp" in text


def test_url_and_existing_secret_together_are_refused(helm):
    err = render_fails(helm, sets={"amqp.url": "amqp://u:p@h/", "amqp.existingSecret": "s"})
    assert "set amqp.url or amqp.existingSecret, not both" in err


def test_broker_url_in_config_is_refused(helm):
    err = render_fails(helm, sets={"config.broker.url": "amqp://u:p@h/"})
    assert "broker" in err and "url" in err


# ---------------------------------------------------------------------------------------------
# Metrics Service, ServiceMonitor
# ---------------------------------------------------------------------------------------------


def test_metrics_service_selects_the_pods_and_targets_the_http_port(helm):
    m = render(helm)
    svc = m.one("Service")
    pod_labels = m.deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [
        {"name": "http-metrics", "port": 9090, "targetPort": "http", "protocol": "TCP"}
    ]
    assert m.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_monitor_shape(helm):
    m = render(helm, "values-all-on.yaml")
    sm = m.one("ServiceMonitor")
    svc = m.one("Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "5s"
    assert set(sm["spec"]) == {"selector", "endpoints"}


def test_turning_off_the_service_monitor_removes_it(helm):
    m = render(helm, "values-all-on.yaml", sets={"metrics.serviceMonitor.enabled": "false"})
    assert m.maybe("ServiceMonitor") is None
    assert m.maybe("Service") is not None


def test_turning_off_the_metrics_service_removes_it(helm):
    m = render(helm, sets={"metrics.service.enabled": "false"})
    assert m.maybe("Service") is None
    err = render_fails(helm, "values-all-on.yaml", sets={"metrics.service.enabled": "false"})
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in err


# ---------------------------------------------------------------------------------------------
# PodDisruptionBudget
# ---------------------------------------------------------------------------------------------


def test_pdb_selects_the_pods(helm):
    m = render(helm)
    pdb = m.one("PodDisruptionBudget")
    pod_labels = m.deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    pdb = render(helm, "values-all-on.yaml").one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


def test_turning_off_the_pdb_removes_it(helm):
    m = render(helm, "values-all-on.yaml", sets={"podDisruptionBudget.enabled": "false"})
    assert m.maybe("PodDisruptionBudget") is None


# ---------------------------------------------------------------------------------------------
# KEDA
# ---------------------------------------------------------------------------------------------


def test_scaled_object_shape(helm):
    m = render(helm, "values-all-on.yaml")
    so = m.one("ScaledObject")
    auth = m.one("TriggerAuthentication")
    secret = m.one("Secret")
    assert so["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": m.deployment["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 20)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 300}
    # One rabbitmq trigger per handler queue, metadata all strings (KEDA requires it).
    assert [t["metadata"]["queueName"] for t in spec["triggers"]] == [
        "greet", "orders.total", "echo"]
    for t in spec["triggers"]:
        assert t["type"] == "rabbitmq"
        assert t["metadata"]["mode"] == "QueueLength"
        assert t["metadata"]["value"] == "25"
        assert all(isinstance(v, str) for v in t["metadata"].values())
        assert "host" not in t["metadata"]  # credentials only through the TriggerAuthentication
        assert t["authenticationRef"] == {"name": auth["metadata"]["name"]}
    ref = m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": secret["metadata"]["name"], "key": ref["key"]}]


# KEDA's rabbitmq scaler, as documented at https://keda.sh/docs/2.16/scalers/rabbitmq-queue/
# ("Parameter list" and "Authentication Parameters"): the trigger metadata names it knows, the
# values it allows, and what it says of them.
KEDA_RABBITMQ_METADATA = {
    "host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName",
    "queueLength", "useRegex", "pageSize", "operation", "timeout", "excludeUnacknowledged",
    "unsafeSsl", "hostFromEnv", "usernameFromEnv", "passwordFromEnv",
}
KEDA_RABBITMQ_AUTH_PARAMETERS = {
    "host", "username", "password", "tls", "ca", "cert", "key", "workloadIdentityResource",
}
KEDA_PROTOCOLS = {"auto", "http", "amqp"}
KEDA_MODES = {"QueueLength", "MessageRate"}
KEDA_BOOLEANS = {"true", "false"}


def assert_keda_accepts(m):
    """Every rabbitmq trigger of the ScaledObject as KEDA's rabbitmq scaler documents it."""
    so = m.one("ScaledObject")
    auths = {a["metadata"]["name"]: a for a in m.all("TriggerAuthentication")}
    for t in so["spec"]["triggers"]:
        assert t["type"] == "rabbitmq"
        md = t["metadata"]
        assert set(md) <= KEDA_RABBITMQ_METADATA, set(md) - KEDA_RABBITMQ_METADATA
        # KEDA's trigger metadata is a map of strings.
        assert all(isinstance(v, str) for v in md.values()), md
        assert md["protocol"] in KEDA_PROTOCOLS
        assert md["mode"] in KEDA_MODES
        float(md["value"])
        if "activationValue" in md:
            float(md["activationValue"])
        # "mode: MessageRate requires protocol http".
        if md["mode"] == "MessageRate":
            assert md["protocol"] == "http"
        # excludeUnacknowledged: "Only applies to hosts that use the http protocol".
        if "excludeUnacknowledged" in md:
            assert md["protocol"] == "http" and md["excludeUnacknowledged"] in KEDA_BOOLEANS
        assert "host" not in md  # credentials only through the TriggerAuthentication
        auth = auths[t["authenticationRef"]["name"]]
        refs = auth["spec"]["secretTargetRef"]
        assert {r["parameter"] for r in refs} <= KEDA_RABBITMQ_AUTH_PARAMETERS
    return so


def test_keda_amqp_triggers_count_ready_messages_with_the_worker_secret(helm):
    m = render(helm, "values-all-on.yaml")
    so = assert_keda_accepts(m)
    for t in so["spec"]["triggers"]:
        assert t["metadata"]["protocol"] == "amqp"
        assert "excludeUnacknowledged" not in t["metadata"]
    (auth,) = m.all("TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["name"] == m.one("Secret")["metadata"]["name"]


def test_keda_http_triggers_read_the_management_api_with_their_own_secret(helm):
    m = render(helm, "values-keda-http.yaml")
    so = assert_keda_accepts(m)
    (auth,) = m.all("TriggerAuthentication")
    assert auth["metadata"]["name"] == f"{DEFAULT_NAME}-rabbitmq-management"
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "rabbitmq-management", "key": "url"}]
    # Not the worker's AMQP Secret.
    assert m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]["name"] == "rabbitmq-worker"
    assert m.maybe("Secret") is None
    assert [t["metadata"]["queueName"] for t in so["spec"]["triggers"]] == ["greet", "jobs.resize"]
    for t in so["spec"]["triggers"]:
        md = t["metadata"]
        assert md["protocol"] == "http" and md["mode"] == "QueueLength"
        assert (md["value"], md["activationValue"], md["vhostName"]) == ("10", "1", "/")
        # KEDA's default for http, written out: unacknowledged messages count, so replicas
        # busy with prefetched messages are not scaled down.
        assert md["excludeUnacknowledged"] == "false"
        assert t["authenticationRef"] == {"name": auth["metadata"]["name"]}
    m = render(helm, "values-keda-http.yaml", sets={"keda.excludeUnacknowledged": "true"})
    assert all(t["metadata"]["excludeUnacknowledged"] == "true"
               for t in assert_keda_accepts(m)["spec"]["triggers"])


def test_keda_management_url_becomes_its_own_secret(helm):
    url = "https://keda:p%40ss@rabbitmq.messaging.svc:15671/%2f"
    m = render(helm, "values-all-on.yaml",
               sets={"keda.protocol": "http", "keda.mode": "MessageRate",
                     "keda.value": "2.5", "keda.management.url": url})
    so = assert_keda_accepts(m)
    assert {t["metadata"]["mode"] for t in so["spec"]["triggers"]} == {"MessageRate"}
    secrets = {s["metadata"]["name"]: s for s in m.all("Secret")}
    name = "hljs-all-on-rabbitmq-management"
    assert base64.b64decode(secrets[name]["data"]["host"]).decode() == url
    (auth,) = m.all("TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": name, "key": "host"}]
    # The worker keeps its own AMQP Secret; the management URL never reaches the ConfigMap.
    assert m.env("AMQP_URL")["valueFrom"]["secretKeyRef"]["name"] == "hljs-all-on-amqp"
    assert all("p%40ss" not in v for v in m.one("ConfigMap")["data"].values())


@pytest.mark.parametrize(
    "sets, message",
    [
        # KEDA: "mode: MessageRate requires protocol http".
        ({"keda.enabled": "true", "keda.mode": "MessageRate"}, "protocol"),
        ({"keda.enabled": "true", "keda.protocol": "amqp", "keda.mode": "MessageRate"},
         "protocol"),
        # excludeUnacknowledged only applies to http.
        ({"keda.enabled": "true", "keda.excludeUnacknowledged": "true"}, "excludeUnacknowledged"),
        ({"keda.protocol": "auto"}, "protocol"),
        ({"keda.mode": "queueLength"}, "mode"),
        ({"keda.management.url": "amqp://u:p@h:5672/"}, "url"),
        ({"keda.management.url": "http://u:p@h:15672"}, "url"),  # KEDA needs the trailing slash
    ],
)
def test_keda_combinations_keda_refuses_are_refused(helm, sets, message):
    assert message in render_fails(helm, sets=sets)


def test_keda_http_needs_exactly_one_management_source(helm):
    err = render_fails(helm, sets={"keda.enabled": "true", "keda.protocol": "http"})
    assert "set keda.management.url or keda.management.existingSecret" in err
    err = render_fails(helm, "values-keda-http.yaml",
                       sets={"keda.management.url": "http://u:p@h:15672/"})
    assert "not both" in err


def test_keda_owns_the_replica_count(helm):
    assert render(helm).deployment["spec"]["replicas"] == 2
    assert "replicas" not in render(helm, "values-all-on.yaml").deployment["spec"]


def test_keda_queues_can_be_named(helm):
    m = render(helm, sets={"keda.enabled": "true", "keda.queues": "{jobs.a,jobs.b}"})
    so = m.one("ScaledObject")
    assert [t["metadata"]["queueName"] for t in so["spec"]["triggers"]] == ["jobs.a", "jobs.b"]


def test_keda_with_existing_configmap_needs_queue_names(helm):
    err = render_fails(helm, sets={"keda.enabled": "true", "existingConfigMap": "cfg"})
    assert "keda.queues" in err


def test_turning_off_keda_removes_its_objects(helm):
    m = render(helm, "values-all-on.yaml", sets={"keda.enabled": "false"})
    assert m.maybe("ScaledObject") is None
    assert m.maybe("TriggerAuthentication") is None
    assert m.deployment["spec"]["replicas"] == 3


def test_custom_resources_are_only_the_optional_ones(helm):
    # Everything kubernetes-validate skips must be one of these, and only when switched on.
    for values in [(), ("values-hostpath.yaml",), ("values-existing.yaml",)]:
        m = render(helm, *values)
        assert not [d for d in m.docs if d["apiVersion"] in CUSTOM_GROUPS]


# ---------------------------------------------------------------------------------------------
# Snapshot cache volume ([snapshots] dir)
# ---------------------------------------------------------------------------------------------


def test_snapshot_cache_is_an_emptydir_by_default_and_the_worker_points_at_it(helm):
    m = render(helm)
    path = "/var/cache/hyperlight-js-worker"
    assert mount(m, "snapshot-cache")["mountPath"] == path
    assert volume(m, "snapshot-cache")["emptyDir"] == {"sizeLimit": "2Gi"}
    assert worker_toml(m)["snapshots"] == {"dir": path}


def test_snapshot_cache_on_a_claim_or_a_host_path(helm):
    m = render(helm, values={"snapshotCache": {"type": "persistentVolumeClaim",
                                               "claimName": "hljs-snapshots"}})
    assert volume(m, "snapshot-cache")["persistentVolumeClaim"] == {"claimName": "hljs-snapshots"}
    m = render(helm, values={"snapshotCache": {"type": "hostPath", "hostPath": "/var/lib/hljs",
                                               "mountPath": "/cache"}})
    assert volume(m, "snapshot-cache")["hostPath"] == {"path": "/var/lib/hljs",
                                                       "type": "DirectoryOrCreate"}
    assert mount(m, "snapshot-cache")["mountPath"] == "/cache"
    assert worker_toml(m)["snapshots"] == {"dir": "/cache"}


def test_snapshot_cache_can_be_turned_off_or_pointed_elsewhere(helm):
    m = render(helm, values={"snapshotCache": {"enabled": False}})
    assert all(v["name"] != "snapshot-cache" for v in m.pod["volumes"])
    assert "snapshots" not in worker_toml(m)
    m = render(helm, values={"config": {"snapshots": {"dir": "/etc/hyperlight-js-worker/s"}}})
    assert worker_toml(m)["snapshots"] == {"dir": "/etc/hyperlight-js-worker/s"}


@pytest.mark.parametrize(
    "sets, message",
    [
        ({"snapshotCache.type": "persistentVolumeClaim"}, "claimName"),
        ({"snapshotCache.type": "hostPath"}, "hostPath"),
        ({"snapshotCache.type": "nfs"}, "type"),
        ({"snapshotCache.mountPath": "relative"}, "mountPath"),
        ({"config.snapshots.size": "1"}, "size"),
    ],
)
def test_snapshot_cache_values_the_worker_or_kubernetes_would_refuse_are_refused(helm, sets, message):
    assert message in render_fails(helm, sets=sets)


# ---------------------------------------------------------------------------------------------
# Values that are refused
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        ({"kvm.mode": "passthrough"}, "mode"),
        ({"image.digest": "latest"}, "digest"),
        ({"replicaCount": "-1"}, "replicaCount"),
        ({"noSuchValue": "1"}, "noSuchValue"),
        ({"amqp.url": "http://not-amqp"}, "url"),
    ],
)
def test_schema_refuses_bad_values(helm, sets, message):
    assert message in render_fails(helm, sets=sets)


def test_handler_file_names_must_be_plain_configmap_keys(helm):
    handlers = [{"key": "greet", "file": "../etc/passwd", "source": "function handler(e) {}"}]
    assert "file" in render_fails(helm, values={"handlers": handlers})


def test_duplicate_handler_keys_are_refused(helm):
    handlers = [{"key": "greet", "source": "function handler(e) { return e; }"},
                {"key": "greet", "file": "g2.js", "source": "function handler(e) { return 1; }"}]
    err = render_fails(helm, values={"handlers": handlers})
    assert 'key "greet" appears twice' in err


def test_handler_without_source_needs_an_extra_file(helm):
    err = render_fails(helm, values={"handlers": [{"key": "greet"}]})
    assert 'handler "greet" has no source and extraFiles has no "greet.js"' in err
    m = render(helm, values={"handlers": [{"key": "greet"}],
                             "extraFiles": {"greet.js": "function handler(e) { return e; }"}})
    assert m.one("ConfigMap")["data"]["greet.js"].startswith("function handler")


def test_two_handlers_may_not_write_the_same_file(helm):
    handlers = [{"key": "a", "file": "x.js", "source": "function handler(e) { return 1; }"},
                {"key": "b", "file": "x.js", "source": "function handler(e) { return 2; }"}]
    err = render_fails(helm, values={"handlers": handlers})
    assert 'file "x.js" of handler "b" is already used by handler "a"' in err


def test_no_handlers_is_refused_unless_the_config_is_external(helm):
    assert "at least one handler" in render_fails(helm, sets={"handlers": "null"})
    render(helm, sets={"handlers": "null", "existingConfigMap": "cfg"})


# ---------------------------------------------------------------------------------------------
# NOTES.txt
# ---------------------------------------------------------------------------------------------


def test_notes_explain_kvm_and_broker_setup():
    text = notes()
    assert "devices.kubevirt.io/kvm" in text
    assert "kubectl label node <node> hyperlight.dev/kvm=true" in text
    assert "kvm.groupId" in text
    text = notes("values-all-on.yaml")
    assert "Secret hljs-all-on-amqp rendered from amqp.url" in text
    assert "greet, orders.total, echo" in text
    text = notes("values-hostpath.yaml", sets={"kvm.hostPath.privileged": "true"})
    assert "WARNING" in text and "privileged" in text
