"""What the rendered chart must do, checked on `helm template` output with Helm 3 and Helm 4."""

import base64
import tomllib

import pytest

from conftest import RELEASE, notes, render, render_fails

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
    m = render(helm, values={"config": {"broker": {"events_exchange": tricky},
                                        "extra": {"odd key": "v", "list": ["a", 1, True]}}})
    cfg = worker_toml(m)
    assert cfg["broker"]["events_exchange"] == tricky
    assert cfg["extra"] == {"odd key": "v", "list": ["a", 1, True]}


def test_unknown_config_keys_pass_through_and_null_keys_are_left_out(helm):
    m = render(helm, values={"config": {"broker": {"prefetch": 16},
                                        "telemetry": {"log_format": None},
                                        "tracing": {"sample_ratio": 0.25, "sampler": {"kind": "ratio"}}}})
    cfg = worker_toml(m)
    assert cfg["broker"]["prefetch"] == 16
    assert "log_format" not in cfg["telemetry"]
    assert cfg["tracing"] == {"sample_ratio": 0.25, "sampler": {"kind": "ratio"}}


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
