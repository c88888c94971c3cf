"""Progress: a tqdm bar on a terminal, periodic log lines elsewhere; one object drives both."""

import io
import logging
import time

from fedseg.progress import Progress, bar_wanted


def test_a_bar_when_asked_and_no_log_lines(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="fedseg"):
        progress = Progress("synthesize spleen phantoms", 3, every_s=0.0, unit="case", bar=True, stream=stream)
        time.sleep(0.6)  # tqdm redraws at most twice a second
        progress.update(1, loss=0.5)
        drawn_while_working = stream.getvalue()
        progress.update(3)
    assert "synthesize spleen phantoms" in drawn_while_working and "1/3" in drawn_while_working
    assert "case/s" in drawn_while_working and "loss=0.5000" in drawn_while_working
    assert progress._bar is None  # closed at the last step
    assert not caplog.records  # the bar replaces the periodic lines


def test_log_lines_without_a_terminal(caplog):
    assert not bar_wanted(io.StringIO())
    with caplog.at_level(logging.INFO, logger="fedseg"):
        progress = Progress("validation", 4, every_s=0.0)
        progress.update(1)
        progress.update(2, loss=0.25)
        progress.update(4)  # done: the caller logs its own summary
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["validation 1/4", "validation 2/4"]
    assert "loss 0.2500" in caplog.records[1].getMessage()


def test_track_counts_each_finished_item_and_closes():
    stream = io.StringIO()
    progress = Progress("import DICOM series", 3, bar=True, stream=stream)
    seen = []
    for item in progress.track(["a", "b", "c"]):
        if item == "b":
            continue  # a skipped series still counts as done
        seen.append(item)
    assert seen == ["a", "c"] and progress.step == 3 and progress._bar is None


def test_tqdm_disable_turns_the_bar_off(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert bar_wanted(Terminal())
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not bar_wanted(Terminal())
