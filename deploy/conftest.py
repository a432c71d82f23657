"""The deployment test must fail, never skip: a missing program or package is a failure here."""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"the deployment test may not skip: {report.longrepr}"
