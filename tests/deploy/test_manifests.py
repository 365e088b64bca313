"""Rendered overlays: valid against the Kubernetes (and vendored CRD) schemas, and following the policy."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import policy
from tests.deploy.tools import K8S, OVERLAYS, SCHEMAS, kustomize_build, module

K8S_VERSION = "1.37.0"
Obj = dict[str, Any]


def schema_errors(objects: list[Obj]) -> list[str]:
    """Strict validation of every object; an object no schema knows is an error too."""
    kv = module("kubernetes_validate")
    jsonschema = module("jsonschema")
    errors: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd_schema = policy.schema_for(obj, SCHEMAS)
        if crd_schema is not None:
            validator = jsonschema.Draft202012Validator(json.loads(crd_schema.read_text()))
            errors += [
                f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)
            ]
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.utils.ValidationError as e:
            errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.utils.SchemaNotFoundError:
            errors.append(f"{name}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    return errors


@pytest.fixture(scope="module", params=[p.name for p in OVERLAYS])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, kustomize_build(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def prod() -> list[Obj]:
    return kustomize_build(K8S / "overlays" / "prod")


def test_overlays_exist() -> None:
    assert {"dev", "prod"} <= {p.name for p in OVERLAYS}


def test_every_object_validates_strictly(overlay: tuple[str, list[Obj]]) -> None:
    assert schema_errors(overlay[1]) == []


def test_deployments_follow_the_policy(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    assert policy.deployment_violations(objects, prod=name.startswith("prod")) == []


def test_namespace_and_network_policy(overlay: tuple[str, list[Obj]]) -> None:
    assert policy.namespace_violations(overlay[1]) == []


def test_services_and_ingress(overlay: tuple[str, list[Obj]]) -> None:
    assert policy.service_violations(overlay[1]) == []


def test_prod_renders_no_secrets(prod: list[Obj]) -> None:
    assert policy.prod_secret_violations(prod) == []


def test_prod_runs_three_jetstream_replicas(prod: list[Obj]) -> None:
    declared = [o for o in prod if o["apiVersion"].startswith("jetstream.nats.io/")]
    assert declared and all(o["spec"]["replicas"] == 3 for o in declared)
    config = policy.kind(prod, "ConfigMap")
    assert any((c.get("data") or {}).get("JETSTREAM_REPLICAS") == "3" for c in config)


def test_gateway_api_overlay_replaces_the_ingress() -> None:
    objects = kustomize_build(K8S / "overlays" / "prod-gateway-api")
    assert policy.kind(objects, "Ingress") == []
    (route,) = policy.kind(objects, "HTTPRoute")
    paths = {m["path"]["value"] for r in route["spec"]["rules"] for m in r["matches"]}
    assert paths == {"/edge/ws", "/edge/sync", "/ws/miniapp/"}


def test_rotation_component_renders_and_validates(tmp_path: Path) -> None:
    # kustomize refuses absolute paths: point at the repository relative to the temporary folder.
    prod_dir = os.path.relpath(K8S / "overlays" / "prod", tmp_path)
    rotation = os.path.relpath(K8S / "components" / "edge-secret-rotation", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {prod_dir}\ncomponents:\n  - {rotation}\n"
    )
    objects = kustomize_build(tmp_path)
    assert schema_errors(objects) == []
    (edge,) = [d for d in policy.kind(objects, "Deployment") if d["metadata"]["name"] == "edge-gateway"]
    env = {e["name"] for e in edge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"EDGE_SECRET_FILE", "EDGE_SECRET_PREVIOUS_FILE"} <= env


def test_secret_placeholders_validate() -> None:
    yaml = module("yaml")
    objects = [d for d in yaml.safe_load_all((K8S / "secrets" / "secrets.example.yaml").read_text()) if d]
    assert schema_errors(objects) == []
    for secret in objects:
        assert set(secret["stringData"].values()) == {"REPLACE-ME"}, "only placeholders may be committed"


# --- Broken manifests are caught -----------------------------------------------------------------


def _edge(objects: list[Obj]) -> Obj:
    return next(d for d in policy.kind(objects, "Deployment") if d["metadata"]["name"] == "edge-gateway")


def test_a_misspelt_field_fails_validation(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    container = _edge(broken)["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    errors = schema_errors(broken)
    assert any("readinesProbe" in e for e in errors), errors


def test_a_misspelt_field_in_a_crd_fails_validation(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    monitor = policy.kind(broken, "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in e for e in schema_errors(broken))


def test_an_unknown_kind_fails_validation() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert schema_errors([unknown]) == ["Widget/w: no schema for example.com/v1 Widget"]


def test_a_missing_probe_is_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    del _edge(broken)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert "Deployment/edge-gateway container edge-gateway: no livenessProbe" in policy.deployment_violations(
        broken, prod=True
    )


def test_identical_probes_are_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    c = _edge(broken)["spec"]["template"]["spec"]["containers"][0]
    c["livenessProbe"] = copy.deepcopy(c["readinessProbe"])
    violations = policy.deployment_violations(broken, prod=True)
    assert any("readiness and liveness probes are the same" in v for v in violations)


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/ikiro/ikiro-realtime:latest",
        "registry.example.com/ikiro/ikiro-realtime",
        "ikiro-realtime",
    ],
)
def test_a_latest_or_untagged_image_in_prod_is_caught(prod: list[Obj], image: str) -> None:
    broken = copy.deepcopy(prod)
    _edge(broken)["spec"]["template"]["spec"]["containers"][0]["image"] = image
    assert any("is not pinned" in v for v in policy.deployment_violations(broken, prod=True))
    assert not any("is not pinned" in v for v in policy.deployment_violations(broken, prod=False))


def test_a_digest_pinned_image_passes(prod: list[Obj]) -> None:
    pinned = copy.deepcopy(prod)
    _edge(pinned)["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "registry.example.com/ikiro/ikiro-realtime@sha256:" + "0" * 64
    )
    assert policy.deployment_violations(pinned, prod=True) == []


def test_a_short_grace_period_is_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    _edge(broken)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    violations = policy.deployment_violations(broken, prod=True)
    assert any("terminationGracePeriodSeconds 30 < preStop 5 + SHUTDOWN_GRACE_S 25" in v for v in violations)


def test_a_longer_drain_setting_needs_a_longer_grace_period(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    for cm in policy.kind(broken, "ConfigMap"):
        if "SHUTDOWN_GRACE_S" in (cm.get("data") or {}):
            cm["data"]["SHUTDOWN_GRACE_S"] = "60"
    assert (
        len([v for v in policy.deployment_violations(broken, prod=True) if "SHUTDOWN_GRACE_S 60" in v]) == 3
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation must be false"),
        ("readOnlyRootFilesystem", False, "readOnlyRootFilesystem must be true"),
        ("capabilities", {"drop": ["NET_RAW"]}, "capabilities must drop ALL"),
    ],
)
def test_a_weak_security_context_is_caught(prod: list[Obj], field: str, value: object, message: str) -> None:
    broken = copy.deepcopy(prod)
    _edge(broken)["spec"]["template"]["spec"]["containers"][0]["securityContext"][field] = value
    assert any(message in v for v in policy.deployment_violations(broken, prod=True))


def test_a_missing_pdb_or_network_policy_is_caught(prod: list[Obj]) -> None:
    broken = [
        o
        for o in copy.deepcopy(prod)
        if not (
            o["kind"] in ("PodDisruptionBudget", "NetworkPolicy") and o["metadata"]["name"] == "edge-gateway"
        )
    ]
    violations = policy.deployment_violations(broken, prod=True)
    assert "Deployment/edge-gateway: no PodDisruptionBudget" in violations
    assert "Deployment/edge-gateway: no NetworkPolicy of its own" in violations


def test_a_memory_limit_above_the_request_is_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    _edge(broken)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert any("memory limit must equal" in v for v in policy.deployment_violations(broken, prod=True))


def test_a_short_ingress_timeout_is_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    policy.kind(broken, "Ingress")[0]["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-read-timeout"
    ] = "60"
    assert any("proxy-read-timeout must be >= 3600" in v for v in policy.service_violations(broken))


def test_a_placeholder_secret_in_prod_is_caught(prod: list[Obj]) -> None:
    leaked = [*prod, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ikiro-edge-secret"}}]
    assert policy.prod_secret_violations(leaked) == [
        "Secret/ikiro-edge-secret: production must not render Secrets"
    ]


def test_an_ingress_without_per_ip_caps_is_caught(prod: list[Obj]) -> None:
    broken = copy.deepcopy(prod)
    del policy.kind(broken, "Ingress")[0]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/limit-rps"]
    assert any("limit-rps must cap each client IP" in v for v in policy.service_violations(broken))


def test_no_overlay_commits_a_secret_value() -> None:
    """Secret generators read files git ignores (the dev overlay's come from `make k8s-dev-secrets`);
    a literal or a tracked file in a kustomization would be a secret in the repository."""
    yaml = module("yaml")
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        for generator in kustomization.get("secretGenerator") or []:
            assert not generator.get("literals"), f"{overlay.name}: {generator['name']} has literals"
            assert not generator.get("envs"), f"{overlay.name}: {generator['name']} reads an env file"
            for entry in generator.get("files") or []:
                path = overlay / entry.split("=", 1)[-1]
                ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=K8S, check=False)
                assert ignored.returncode == 0, f"{path} is not ignored by git"
