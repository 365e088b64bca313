"""The deployment rules of issue 4, as functions over rendered Kubernetes objects.

Each returns a list of violations (empty when the objects comply), so tests can show that a broken
manifest is caught as well as that ours passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# Grace period >= preStop sleep + SHUTDOWN_GRACE_S + this margin (process exit after the drain deadline).
GRACE_MARGIN_S = 5
DEFAULT_SHUTDOWN_GRACE_S = 25.0  # shared/config.py


def kind(objects: Iterable[Obj], name: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == name]


def _name(o: Obj) -> str:
    return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """True when a LabelSelector selects pods labelled `labels` (an empty selector selects all)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _env(objects: Iterable[Obj], container: Obj) -> dict[str, str]:
    """The container's environment as Kubernetes would build it (ConfigMap envFrom, then env)."""
    configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update(configmaps.get(ref["name"], {}))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _probe_key(probe: Obj | None) -> str:
    return json.dumps(probe, sort_keys=True)


def container_violations(objects: list[Obj], dep: Obj, c: Obj, prod: bool) -> list[str]:
    where = f"{_name(dep)} container {c.get('name')}"
    out: list[str] = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if not c.get(probe):
            out.append(f"{where}: no {probe}")
    ready, live = c.get("readinessProbe"), c.get("livenessProbe")
    if ready and live:
        if _probe_key(ready) == _probe_key(live):
            out.append(f"{where}: readiness and liveness probes are the same")
        if (ready.get("httpGet") or {}).get("path") != "/readyz":
            out.append(f"{where}: readinessProbe must GET /readyz")
        if (live.get("httpGet") or {}).get("path") != "/healthz":
            out.append(f"{where}: livenessProbe must GET /healthz (no dependency checks)")
    sc = c.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{where}: readOnlyRootFilesystem must be true")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        out.append(f"{where}: capabilities must drop ALL")
    if sc.get("privileged"):
        out.append(f"{where}: privileged")
    res = c.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    if not requests.get("cpu") or not requests.get("memory"):
        out.append(f"{where}: cpu and memory requests must be set")
    if limits.get("memory") != requests.get("memory"):
        out.append(f"{where}: memory limit must equal the memory request")
    ports = {p.get("name") for p in c.get("ports") or []}
    if "http" not in ports:
        out.append(f"{where}: no container port named http")
    mounts = {m.get("mountPath") for m in c.get("volumeMounts") or []}
    if "/tmp" not in mounts:
        out.append(f"{where}: no writable /tmp mount (emptyDir)")
    image = str(c.get("image", ""))
    if prod:
        tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and tag in ("", "latest"):
            out.append(f"{where}: image {image!r} is not pinned (no tag, or `latest`)")
    pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds")
    if pre_stop is None:
        out.append(f"{where}: no native preStop sleep")
    else:
        grace_s = float(_env(objects, c).get("SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
        period = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if period < pre_stop + grace_s + GRACE_MARGIN_S:
            out.append(
                f"{where}: terminationGracePeriodSeconds {period} < preStop {pre_stop} + "
                f"SHUTDOWN_GRACE_S {grace_s:g} + margin {GRACE_MARGIN_S}"
            )
    return out


def deployment_violations(objects: list[Obj], prod: bool) -> list[str]:
    """Every rule a Deployment of this project must follow, checked against the rendered overlay."""
    out: list[str] = []
    deployments = kind(objects, "Deployment")
    if not deployments:
        return ["no Deployment rendered"]
    for dep in deployments:
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels") or {}
        where = _name(dep)
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        if (
            strategy.get("type") != "RollingUpdate"
            or rolling.get("maxSurge") != 1
            or rolling.get("maxUnavailable") != 0
        ):
            out.append(f"{where}: strategy must be RollingUpdate maxSurge 1, maxUnavailable 0")
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            out.append(f"{where}: pod runAsNonRoot must be true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{where}: pod seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{where}: automountServiceAccountToken must be false")
        sa = pod.get("serviceAccountName")
        accounts = {s["metadata"]["name"]: s for s in kind(objects, "ServiceAccount")}
        if not sa or sa not in accounts:
            out.append(f"{where}: no ServiceAccount of its own")
        elif accounts[sa].get("automountServiceAccountToken") is not False:
            out.append(f"ServiceAccount/{sa}: automountServiceAccountToken must be false")
        keys = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints") or []}
        if not {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys:
            out.append(f"{where}: topology spread by host and zone missing")
        if not any(v.get("name") == "tmp" and "emptyDir" in v for v in pod.get("volumes") or []):
            out.append(f"{where}: /tmp must be an emptyDir volume")
        for c in pod.get("containers") or []:
            out += container_violations(objects, dep, c, prod)
        if not any(selects(p["spec"].get("selector"), labels) for p in kind(objects, "PodDisruptionBudget")):
            out.append(f"{where}: no PodDisruptionBudget")
        own_policies = [
            p
            for p in kind(objects, "NetworkPolicy")
            if p["spec"].get("podSelector")
            and selects(p["spec"]["podSelector"], labels)
            and "Ingress" in (p["spec"].get("policyTypes") or [])
        ]
        # Default-deny plus an explicit ingress allow for this workload (who may reach it, on which port).
        if not own_policies:
            out.append(f"{where}: no NetworkPolicy of its own")
        if not any(
            h["spec"]["scaleTargetRef"].get("name") == dep["metadata"]["name"]
            for h in kind(objects, "HorizontalPodAutoscaler")
        ):
            out.append(f"{where}: no HorizontalPodAutoscaler")
        if "replicas" in spec:
            out.append(f"{where}: `replicas` is set although an HPA owns the count")
    return out


def namespace_violations(objects: list[Obj]) -> list[str]:
    out: list[str] = []
    spaces = kind(objects, "Namespace")
    if len(spaces) != 1:
        return [f"expected one Namespace, got {len(spaces)}"]
    labels = spaces[0]["metadata"].get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        out.append("Namespace: pod-security.kubernetes.io/enforce must be restricted")
    policies = kind(objects, "NetworkPolicy")
    if not any(
        p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        out.append("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)")
    return out


def service_violations(objects: list[Obj]) -> list[str]:
    out: list[str] = []
    for svc in kind(objects, "Service"):
        for port in svc["spec"].get("ports") or []:
            if port.get("name") == "http" and port.get("appProtocol") != "kubernetes.io/ws":
                out.append(f"{_name(svc)}: WebSocket port `http` must have appProtocol kubernetes.io/ws")
        if "metrics" not in {p.get("name") for p in svc["spec"].get("ports") or []}:
            out.append(f"{_name(svc)}: no port named metrics")
    for ing in kind(objects, "Ingress"):
        ann = ing["metadata"].get("annotations") or {}
        for key in (
            "nginx.ingress.kubernetes.io/proxy-read-timeout",
            "nginx.ingress.kubernetes.io/proxy-send-timeout",
        ):
            if int(ann.get(key, "0")) < 3600:
                out.append(f"{_name(ing)}: {key} must be >= 3600")
        if not ing["spec"].get("tls"):
            out.append(f"{_name(ing)}: no TLS")
        for key in ("nginx.ingress.kubernetes.io/limit-connections", "nginx.ingress.kubernetes.io/limit-rps"):
            if not str(ann.get(key, "")).isdigit():
                out.append(f"{_name(ing)}: {key} must cap each client IP (SECURITY.md)")
        paths = {p["path"] for r in ing["spec"].get("rules") or [] for p in r["http"]["paths"]}
        if paths != {"/edge/ws", "/edge/sync", "/ws/miniapp/"}:
            out.append(f"{_name(ing)}: routes {sorted(paths)}, expected only the three public paths")
    return out


def prod_secret_violations(objects: list[Obj]) -> list[str]:
    """Production renders no Secret: real ones are created out of band, so no placeholder can leak."""
    return [f"{_name(s)}: production must not render Secrets" for s in kind(objects, "Secret")]


def schema_for(obj: Obj, schemas: Path) -> Path | None:
    """The vendored CRD schema file for `obj`, if the project ships one."""
    group_version = str(obj.get("apiVersion", ""))
    group = group_version.split("/")[0].split(".")[0]
    version = group_version.split("/")[-1]
    path = schemas / f"{str(obj.get('kind', '')).lower()}-{group}-{version}.json"
    return path if path.exists() else None
