"""The terminal's live view of ``rtfb run``: the metric, what the participant is shown, and
every flag (folded, never cut), on an 80-column terminal."""

from rich.console import Console

from rtfb.session.commands import _status_table
from rtfb.session.runner import SessionStatus


def _render(status, metric="alff"):
    console = Console(width=80, record=True, color_system=None)
    console.print(_status_table(status, 450, metric))
    return console.export_text()


def test_rest_shows_the_metric_but_no_feedback():
    flags = ("no_feedback", "motion", "censored", "stale", "paused")
    text = _render(SessionStatus(index=199, block="rest", value=None, metric=6.25, fd=0.7,
                                 latency_ms=21.5, flags=flags))
    assert "alff" in text and "6.25" in text and "200/450" in text
    row = next(line for line in text.splitlines() if "200/450" in line)
    assert " - " in row  # nothing shown to the participant during rest
    for flag in flags:  # all there on 80 columns (under the table), none cut
        assert flag in text, (flag, text)
    assert "…" not in text


def test_regulate_shows_the_feedback_value():
    text = _render(SessionStatus(index=9, block="regulate", value=0.42, metric=3.1),
                   metric="seed_fc")
    assert "seed_fc" in text and "0.42" in text and "3.1" in text and "regulate" in text
    assert "…" not in text
