"""Where the deploy checks find their external tools, and rendering overlays with kustomize.

`make k8s-check` installs the tools under `.tools/` and sets IKIRO_K8S_CHECK=1: then a missing tool
fails the run. Under plain `make test` a test that needs a missing tool is skipped.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.proc import ROOT as ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
MONITORING = K8S / "components" / "monitoring"
RULES_FILE = MONITORING / "alerts.rules.yml"
RULES_TEST_FILE = MONITORING / "alerts.test.yml"
DASHBOARD_FILE = MONITORING / "dashboard.json"
README = K8S / "README.md"
SCHEMAS = K8S / "schemas"
TOOLS = ROOT / ".tools"


def strict() -> bool:
    """True inside `make k8s-check`, where every tool must be present."""
    return os.environ.get("IKIRO_K8S_CHECK") == "1"


def tool(name: str, env: str) -> str:
    """Path of an external tool: $env, then .tools/, then PATH; skip (or fail under k8s-check) if absent."""
    candidates = [
        os.environ.get(env, ""),
        str(TOOLS / "bin" / name),
        str(TOOLS / "node_modules" / ".bin" / name),
    ]
    candidates += [str(Path(sys.executable).parent / name), shutil.which(name) or ""]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    message = f"{name} is not installed (make k8s-check installs it)"
    if strict():
        pytest.fail(message)
    pytest.skip(message)


def module(name: str) -> Any:
    """Import a Python package that only `make k8s-check` installs (requirements in deploy/k8s.mk)."""
    if strict():
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (make k8s-check installs it)")


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """Render a kustomization and return its objects (the dev overlay's local secrets made first)."""
    yaml = module("yaml")
    made = run([sys.executable, str(K8S.parent / "scripts" / "dev_secrets.py")])
    assert made.returncode == 0, made.stderr
    out = subprocess.run(
        [tool("kustomize", "KUSTOMIZE"), "build", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"kustomize build {path} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def run(
    cmd: list[str], cwd: Path | None = None, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, check=False, cwd=cwd, timeout=120, input=input_text
    )
