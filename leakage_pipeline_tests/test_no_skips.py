"""The suite's no-skip rule: a test that skips (a missing tool, say) fails the run."""

import subprocess
import sys


def test_a_skipping_test_fails_the_run(tmp_path):
    (tmp_path / "test_needs_a_tool.py").write_text(
        "import pytest\n\ndef test_browser():\n    pytest.skip('no browser here')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "leakage_pipeline_tests.no_skips", "-p", "no:cacheprovider",
                             "-q", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "no test may skip" in result.stdout and "no browser here" in result.stdout
