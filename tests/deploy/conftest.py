"""Under `make k8s-check` (IKIRO_K8S_CHECK=1) an unexpected skip fails: every tool is installed there."""

from __future__ import annotations

import pytest

from tests.deploy.tools import strict

_unexpected: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if strict() and report.skipped and isinstance(report.longrepr, tuple):
        _unexpected.append(f"{report.nodeid}: {report.longrepr[2]}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected:
        print("\nk8s-check: tests skipped that must run here:\n  " + "\n  ".join(_unexpected))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
