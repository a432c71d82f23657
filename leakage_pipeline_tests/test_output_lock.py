"""Finding 3: one writer per output directory, checked with real processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from leakage_pipeline.storage.output_lock import LOCK_FILE, OutputLocked, output_lock

HOLD = """
import sys, time
from leakage_pipeline.storage.output_lock import output_lock
with output_lock(sys.argv[1], run_id=sys.argv[3] or None):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(out, seconds: float, run_id: str | None = None) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds), run_id or ""],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    holder = _holder(tmp_path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(OutputLocked, match=rf"in use by another run \(pid {holder.pid} on "
                                               rf"{socket.gethostname()}, started .*\); waited 0.5 s"):
            with output_lock(tmp_path, wait_seconds=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(tmp_path):  # the kernel released the killed holder's lock: nothing stale to take over
        pass


def test_a_second_process_waits_for_the_first_to_finish(tmp_path):
    holder = _holder(tmp_path, 1.0)
    with output_lock(tmp_path, wait_seconds=30):
        assert holder.poll() is not None or holder.wait(5) == 0
    assert holder.wait() == 0


def test_the_lock_is_shared_by_nested_holders_in_one_process(tmp_path):
    with output_lock(tmp_path), output_lock(tmp_path / "."):
        pass
    with output_lock(tmp_path):
        pass


def test_the_steps_of_one_run_share_the_lock_and_other_runs_are_refused(tmp_path):
    killed = _holder(tmp_path, 60, run_id="run-a")
    assert _holder(tmp_path, 0, run_id="run-a").wait(30) == 0  # a second step held it beside the first, and left
    finishing = _holder(tmp_path, 5, run_id="run-a")  # and a third joins
    try:
        for other_run in ("run-b", None):
            with pytest.raises(OutputLocked, match=rf"another run \(pid {killed.pid} on .*, run run-a: "):
                with output_lock(tmp_path, wait_seconds=0.2, run_id=other_run):
                    pass
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        with pytest.raises(OutputLocked):  # the surviving step still holds it for its run
            with output_lock(tmp_path, run_id="run-b"):
                pass
        with output_lock(tmp_path, wait_seconds=30, run_id="run-b"):  # once the survivor has finished
            assert finishing.wait(5) == 0
            assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "run-b"
    finally:
        for process in (killed, finishing):
            process.kill()
            process.wait()
    assert (tmp_path / LOCK_FILE).read_text() == ""


@pytest.mark.slow
def test_two_cli_audits_on_one_output_directory_never_mix(small_demo, tmp_path):
    """The hostile pass: run A printed run B's test count and the folder held B's manifest beside A's
    hashes. Now the second run refuses (naming the first) or waits; it never writes beside it."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "leakage_pipeline.cli", "audit", "--manifest", str(small_demo), "--out", str(out)]
    holder = _holder(out, 60)
    try:
        refused = subprocess.run([*command, "--lock-wait", "0"], capture_output=True, text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert refused.returncode == 2, refused.stderr
    assert f"in use by another run (pid {holder.pid}" in refused.stderr and "Traceback" not in refused.stderr
    assert not (out / "manifest.parquet").exists()
    first = subprocess.Popen([*command, "--lock-wait", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run([*command, "--lock-wait", "300"], capture_output=True, text=True, timeout=300)
    assert first.wait(300) == 0 and second.returncode == 0, second.stderr
    assert second.stdout == first.stdout.read()


def test_the_lock_file_names_nobody_once_released(tmp_path):
    with output_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / ".leakage-pipeline.lock").read_text()
    assert (tmp_path / ".leakage-pipeline.lock").read_text() == ""
