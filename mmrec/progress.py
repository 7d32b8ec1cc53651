"""Progress of long loops (extraction, a training epoch): a tqdm bar with its rate and time left on a
terminal; a plain log line every ``every_s`` seconds in batch jobs (no terminal); nothing when quiet."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable


class Progress:
    """``update(n, **postfix)`` after each step; ``close()`` at the end. ``bar``: None decides by
    whether stderr is a terminal; False never draws one (log lines only); ``quiet`` shows nothing."""

    def __init__(self, total: int, *, unit: str, desc: str = "", log: Callable[[str], None] = print,
                 every_s: float = 30.0, bar: bool | None = None, quiet: bool = False):
        self.total, self.unit, self.desc, self.log, self.every_s = total, unit, desc, log, every_s
        self.quiet = quiet
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self._bar: Any = None
        if not quiet and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc or None, leave=False, dynamic_ncols=True,
                             file=sys.stderr)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last > self.every_s:
            rate = self.done / max(now - self.t0, 1e-9)
            extra = "".join(f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}" for k, v in postfix.items())
            self.log(f"{self.desc + ' ' if self.desc else ''}{self.done:,}/{self.total:,} {self.unit}"
                     f"  {rate:,.1f} {self.unit}/s{extra}")
            self.last = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
