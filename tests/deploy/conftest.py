"""Under `make k8s-check` (IKIRO_K8S_CHECK=1) an unexpected skip fails: every tool is installed there."""

from __future__ import annotations

import pytest

from tests.deploy.tools import NOT_BUILT, strict

_unexpected: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if strict() and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if NOT_BUILT not in reason:
            _unexpected.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected:
        print("\nk8s-check: tests skipped that must run here:\n  " + "\n  ".join(_unexpected))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
