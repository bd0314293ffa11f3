"""Progress output for long jobs: a tqdm bar with ETA on a terminal, plain periodic lines elsewhere.

One helper for every loop that reports progress (training epochs, the comparison, the ranking
evaluation)::

    bar = Progress(total=len(users), label="ranking", unit="users")
    for k, user in enumerate(users):
        ...
        bar.update(k + 1)          # absolute position
    bar.close()

A tqdm bar is drawn only when the stream is a terminal, tqdm is installed and bars are not turned
off (``set_use_tqdm(False)``, the launchers' ``--nouse_tqdm``, or ``IARN_JAX_TQDM=0``). Otherwise
a line ``[label] done/total unit, 12.3s, ETA 40s`` is printed every ``every_s`` seconds and at the
end, so logs of batch jobs stay short and greppable.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

_use_tqdm: Optional[bool] = None  # None = decide from the environment


def set_use_tqdm(enabled: Optional[bool]) -> None:
    """True / False forces bars on / off (bars still need a terminal); None = $IARN_JAX_TQDM."""
    global _use_tqdm
    _use_tqdm = enabled


def bars_enabled(stream: Optional[TextIO] = None) -> bool:
    """Whether a tqdm bar would be drawn on ``stream`` (default stderr)."""
    stream = stream or sys.stderr
    wanted = _use_tqdm if _use_tqdm is not None else os.environ.get("IARN_JAX_TQDM", "1") not in ("0", "")
    if not wanted or not getattr(stream, "isatty", lambda: False)():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Position ``done`` of ``total`` with a rate-based ETA (see the module doc).

    enabled: False prints nothing (the ``verbose=False`` / ``progress=False`` of callers).
    stream: plain lines go to stdout by default; bars to stderr (tqdm's default).
    """

    def __init__(self, total: int, *, label: str, unit: str = "it", enabled: bool = True,
                 every_s: float = 10.0, stream: Optional[TextIO] = None):
        self.total, self.label, self.unit, self.enabled, self.every_s = int(total), label, unit, enabled, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._bar = None
        if enabled and bars_enabled():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit=unit, dynamic_ncols=True, leave=True)
        self._stream = stream

    @property
    def bar(self):
        """The tqdm bar, or None in plain-line mode."""
        return self._bar

    def eta_seconds(self) -> Optional[float]:
        elapsed = time.perf_counter() - self.start
        if self.done <= 0 or self.total <= 0:
            return None
        return elapsed / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        eta = self.eta_seconds()
        tail = f", ETA {format_seconds(eta)}" if eta is not None and self.done < self.total else ""
        return f"[{self.label}] {self.done}/{self.total} {self.unit}, {elapsed:.1f}s{tail}"

    def update(self, done: int, *, postfix: Optional[str] = None) -> None:
        """Moves to absolute position ``done``; ``postfix`` (e.g. the loss) is shown beside the bar."""
        done = min(int(done), self.total) if self.total else int(done)
        step, self.done = done - self.done, done
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(max(step, 0))
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s or (self.total and done >= self.total):
            self.last = now
            self.write(self.line() + (f" {postfix}" if postfix else ""))

    def set_description(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=False)

    def write(self, text: str) -> None:
        """A message line that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=self._stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress", "bars_enabled", "format_seconds", "set_use_tqdm"]
