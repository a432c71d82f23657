"""A pytest plugin: no test may skip. On a fresh machine a missing program or package is a failure,
which `make test` prevents by installing what the tests use."""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"no test may skip (a missing tool is a failure): {report.longrepr}"
