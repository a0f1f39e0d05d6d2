"""Progress off a terminal: plain lines with rate and ETA, no carriage returns."""

import io

from segkit.runs.progress import Progress, format_seconds


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_off_a_terminal():
    out = io.StringIO()
    with Progress(4, desc="epoch 1/2", unit="batches", stream=out, interval=0) as p:
        for _ in p.iterate(range(3)):
            pass
        p.update(1, loss="0.4120")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    assert lines[0].startswith("epoch 1/2: 1/4 batches (25%), ") and "batches/s, ETA " in lines[0]
    assert lines[3].startswith("epoch 1/2: 4/4 batches (100%)") and lines[3].endswith(", loss 0.4120")
    assert "done in" in lines[4]


def test_quiet_when_short_disabled_or_on_a_terminal():
    out = io.StringIO()
    with Progress(100, stream=out, interval=60) as p:
        p.update(100)
    assert out.getvalue() == ""                      # finished before the first line was due
    with Progress(3, stream=out, interval=0, enabled=False) as p:
        p.update(3)
    assert out.getvalue() == ""
    term = Terminal()
    with Progress(3, desc="tiles", stream=term, interval=0) as p:
        assert p.mode == "bar"
        p.update(3)
    assert "done in" not in term.getvalue()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 7440)] == ["4 s", "1 min 05 s", "2 h 04 min"]
