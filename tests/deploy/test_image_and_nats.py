"""The container image definition and the NATS side: Helm values, and streams/buckets declared as code."""

from __future__ import annotations

import re
from typing import Any

from shared.broker import streams
from shared.protocol import subjects
from tests.deploy.tools import K8S, ROOT, module, run, tool

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_hadolint_accepts_the_dockerfile() -> None:
    out = run([tool("hadolint", "HADOLINT"), str(DOCKERFILE)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_runs_python_as_a_numeric_non_root_user_with_exec_form() -> None:
    text = DOCKERFILE.read_text()
    final = final_stage(text)
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage build"
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]$', final, re.M), "exec-form entrypoint"
    assert "PYTHONUNBUFFERED=1" in final
    assert not re.search(r"apt-get install|build-essential|gcc", final), "no build tools in the final stage"
    assert "slim" in text


def test_dockerignore_sends_only_the_package() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*") :][:1] == ["*"] and "!shared/" in lines and "!services/" in lines


def nats_values() -> dict[str, Any]:
    yaml = module("yaml")
    return dict(yaml.safe_load((K8S / "nats" / "values.yaml").read_text()))


def test_nats_values_run_a_three_node_jetstream_cluster_on_file_storage() -> None:
    v = nats_values()
    assert v["config"]["cluster"] == {**v["config"]["cluster"], "enabled": True, "replicas": 3}
    store = v["config"]["jetstream"]["fileStore"]
    assert v["config"]["jetstream"]["enabled"] and store["enabled"] and store["pvc"]["enabled"]
    assert v["config"]["nats"]["tls"]["enabled"] and v["config"]["cluster"]["tls"]["enabled"]
    assert v["config"]["resolver"]["enabled"], "per-service credentials need accounts"
    res = v["container"]["merge"]["resources"]
    assert res["requests"] == res["limits"]
    assert set(v["podTemplate"]["topologySpreadConstraints"]) == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert v["promExporter"]["enabled"] and v["promExporter"]["podMonitor"]["enabled"]


def declared() -> dict[str, dict[str, Any]]:
    """JetStream name (stream or bucket) -> NACK spec, from components/jetstream."""
    yaml = module("yaml")
    out: dict[str, dict[str, Any]] = {}
    for path in (K8S / "components" / "jetstream").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("jetstream.nats.io/"):
                out[doc["spec"].get("name") or doc["spec"]["bucket"]] = doc["spec"]
    return out


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", duration))


def test_declared_edge_streams_and_buckets_match_what_the_services_create() -> None:
    specs = declared()
    for config in streams.edge_streams(3):
        assert config.name and config.retention and config.storage
        spec = specs[config.name]
        assert spec["subjects"] == config.subjects
        assert spec["retention"] == config.retention.value
        assert spec["storage"] == config.storage.value
        assert spec.get("maxMsgsPerSubject", -1) == (config.max_msgs_per_subject or -1)
        assert seconds(spec.get("maxAge", "0s")) == (config.max_age or 0)
        if config.discard is not None:
            assert spec.get("discard", "old") == config.discard.value
    assert specs[subjects.COMMANDS_BUCKET]["ttl"] == "192h" and streams.RECORD_RETENTION_S == 192 * 3600
    assert "ttl" not in specs[subjects.AGENTS_BUCKET]


# Created only by their services at start-up (replicas from JETSTREAM_REPLICAS): they use per-message
# TTLs and limit markers (limit_marker_ttl) that the JetStream controller's CRD cannot express, and a
# controller reconciling them without those settings would break presence and lease expiry.
SERVICE_OWNED = {"MINIAPP_SESSIONS", "MINIAPP_PRESENCE", "EDGE_DISPATCHERS"}


def test_every_jetstream_object_of_the_project_is_declared() -> None:
    specs = declared()
    wanted = {
        value
        for name, value in vars(subjects).items()
        if isinstance(value, str) and name.endswith(("_BUCKET", "_STREAM")) and not value.startswith("KV_")
    }
    unknown = set(specs) - wanted
    assert not unknown, f"declared but not in shared/protocol/subjects.py (renamed?): {sorted(unknown)}"
    missing = sorted(wanted - set(specs) - SERVICE_OWNED)
    assert not missing, (
        f"declare {missing} in deploy/k8s/components/jetstream (or list them in SERVICE_OWNED)"
    )
