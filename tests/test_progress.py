"""Progress output: plain periodic lines off a terminal, a tqdm bar on one, nothing when disabled."""
from __future__ import annotations

import io

import pytest

from iarn_jax import progress
from iarn_jax.progress import Progress, format_seconds


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_with_eta_when_not_a_tty(capsys):
    bar = Progress(4, label="ranking", unit="users", every_s=0.0)
    assert bar.bar is None  # pytest's captured stderr is not a terminal
    for done in range(1, 5):
        bar.update(done)
    bar.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[ranking] 1/4 users") and "ETA" in lines[0]
    assert lines[-1].startswith("[ranking] 4/4 users") and "ETA" not in lines[-1]


def test_disabled_prints_nothing(capsys):
    bar = Progress(3, label="x", enabled=False, every_s=0.0)
    bar.update(3)
    bar.write("hidden")
    bar.close()
    assert capsys.readouterr().out == ""


def test_bars_need_a_terminal_and_can_be_turned_off(monkeypatch):
    pytest.importorskip("tqdm")
    assert progress.bars_enabled(_Terminal())
    assert not progress.bars_enabled(io.StringIO())
    progress.set_use_tqdm(False)
    try:
        assert not progress.bars_enabled(_Terminal())
    finally:
        progress.set_use_tqdm(None)
    monkeypatch.setenv("IARN_JAX_TQDM", "0")
    assert not progress.bars_enabled(_Terminal())


def test_format_seconds():
    assert format_seconds(5) == "5s"
    assert format_seconds(125) == "2m05s"
    assert format_seconds(3 * 3600 + 60) == "3h01m"
