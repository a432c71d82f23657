"""Progress: lines at a steady interval with rate and ETA, read back as a bar, and where they go."""

import io

from leakage_pipeline.audit.image_hashing import hash_images
from leakage_pipeline.cli import EXIT_RAN, main
from leakage_pipeline.progress import ProgressDisplay, ProgressReporter, format_duration, parse_progress
from leakage_pipeline_tests.conftest import write_image


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_come_at_the_start_then_at_most_every_interval_with_rate_and_eta_then_once_at_the_end():
    clock, lines = FakeClock(), []
    progress = ProgressReporter(lines.append, "hashing test", interval_seconds=5.0, clock=clock).start(4000, "images")
    assert lines == ["hashing test: 0 / 4,000 images (0%)"]
    for _ in range(4):  # 400 images/s, one call per second: the next report is due after 5 s
        clock.now += 1.0
        progress.advance(400)
    assert len(lines) == 1
    clock.now += 1.0
    progress.advance(400)
    assert lines[1:] == ["hashing test: 2,000 / 4,000 images (50%), 400 images/s, ETA 5s"]
    clock.now += 4.9
    progress.advance(1)
    assert len(lines) == 2  # not 5 s since the last line yet
    clock.now += 0.1
    progress.advance(1999)
    progress.finish()
    assert lines[2:] == ["hashing test: 4,000 / 4,000 images (100%), 400 images/s, ETA 0s",
                         "hashing test: 4,000 / 4,000 images (100%), 400 images/s, took 10s"]


def test_a_stage_shows_and_a_step_that_stops_early_says_how_long_it_took():
    clock, lines = FakeClock(), []
    progress = ProgressReporter(lines.append, "training leaky", clock=clock).start(20_000, "images")
    progress.stage = "epoch 3/20"
    clock.now += 150.0
    progress.advance(3_000)
    progress.finish()
    assert lines[1:] == ["training leaky: 3,000 / 20,000 images (15%), epoch 3/20, 20 images/s, ETA 14m10s",
                     "training leaky: 3,000 / 20,000 images (15%), epoch 3/20, 20 images/s, took 2m30s"]


def test_nothing_to_do_reports_nothing():
    lines = []
    ProgressReporter(lines.append, "hashing val").start(0, "images").finish()
    assert lines == []


def test_durations_read_as_a_person_waits():
    assert [format_duration(s) for s in (0, 7.4, 59.6, 125, 3725)] == ["0s", "7s", "1m00s", "2m05s", "1h02m"]


def test_a_progress_line_reads_back_and_any_other_message_does_not():
    line = parse_progress("training leak_free: 9,800 / 37,540 images (26%), epoch 6/20, 2,100 images/s, ETA 13s")
    assert (line.label, line.done, line.total, line.unit) == ("training leak_free", 9800, 37540, "images")
    assert line.details == ", epoch 6/20, 2,100 images/s, ETA 13s" and not line.finished
    for other in ("split test: 432 images, hashed 432, reused 0", "epoch 1/20: loss 1.0224, val macro F1 0.268",
                  "16 of 431 test images (3.7%, 95% CI 2.3%–5.9%) show a patient"):
        assert parse_progress(other) is None


def test_off_a_terminal_each_progress_line_is_printed_as_it_comes():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    for message in ("hashing train: 10 / 20 images (50%)", "not progress", "hashing train: 20 / 20 images (100%)"):
        display(message)
    display.close()
    assert stream.getvalue() == "hashing train: 10 / 20 images (50%)\nhashing train: 20 / 20 images (100%)\n"


def test_on_a_terminal_one_bar_is_redrawn_and_each_step_ends_its_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = Terminal()
    display = ProgressDisplay(stream)
    display("training leaky: 5 / 20 images (25%), epoch 1/4, 2.5 images/s, ETA 6s")
    display("training leaky: 10 / 20 images (50%), epoch 2/4, 2.5 images/s, took 4s")  # stopped early
    display("matching: 3 / 3 split pairs (100%)")
    display("hashing test: 1 / 4 images (25%)")
    display.close()
    lines = stream.getvalue().split("\n")
    assert lines[0] == ("\rtraining leaky [######..................]  25% 5 / 20 images, epoch 1/4, 2.5 images/s, "
                        "ETA 6s\x1b[K\rtraining leaky [############............]  50% 10 / 20 images, epoch 2/4, "
                        "2.5 images/s, took 4s\x1b[K")
    assert lines[1] == "\rmatching [########################] 100% 3 / 3 split pairs\x1b[K"
    assert lines[2].startswith("\rhashing test [######") and lines[3] == ""

    monkeypatch.setenv("COLUMNS", "30")  # a narrow terminal: the bar is cut, never wrapped onto a new line
    narrow = Terminal()
    ProgressDisplay(narrow)("hashing test: 1 / 4 images (25%)")
    assert narrow.getvalue() == "\rhashing test [######.........\x1b[K"  # 29: one short of the width


def test_hashing_reports_every_image_done_at_the_end(tmp_path):
    locations = [str(write_image(tmp_path / f"{i}.png", seed=i)) for i in range(5)] + [str(tmp_path / "gone.png")]
    lines = []
    hash_images(locations, progress=ProgressReporter(lines.append, "hashing test"))
    final = parse_progress(lines[-1])
    assert (final.label, final.done, final.total, final.unit) == ("hashing test", 6, 6, "images")


def test_off_a_terminal_the_cli_prints_progress_to_stderr_and_none_of_it_to_stdout(small_demo, tmp_path, capsys):
    args = ["audit", "--manifest", str(small_demo), "--out", str(tmp_path / "out")]
    assert main(args) == EXIT_RAN
    first = capsys.readouterr()
    progress = [parse_progress(line) for line in first.err.splitlines()]
    assert progress and all(progress)  # stderr holds progress lines, and only those
    finished = {line.label for line in progress if line.finished}
    assert finished == {"hashing train", "hashing val", "hashing test", "matching", "matching the leak-free split"}
    assert not any(map(parse_progress, first.out.splitlines()))

    assert main(args) == EXIT_RAN  # every hash cached: nothing to hash, nothing said about it
    second = capsys.readouterr()
    assert second.out == first.out
    assert {line.label for line in map(parse_progress, second.err.splitlines())} == {
        "matching", "matching the leak-free split"}
