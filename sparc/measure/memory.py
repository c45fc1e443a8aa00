"""Peak resident memory (RSS) of this process over a block of code.

On Linux the kernel's high-water mark (``VmHWM``) is reset on entry by writing ``5`` to
``/proc/self/clear_refs`` and read on exit, so the peak is exact however short the spike.
Where that reset is not allowed, a thread samples ``VmRSS`` every 5 ms instead. Elsewhere
(no ``/proc``) the peak is None.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_SECONDS = 0.005


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int | None:
    """Resident memory now."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _reset_high_water_mark() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes`` (None where unmeasurable)
    and ``peak.start`` (RSS on entry). Not reentrant: an inner block resets the outer's mark."""

    def __init__(self):
        self.start: int | None = None
        self.bytes: int | None = None
        self._exact = False
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        self.start = rss_bytes()
        self.bytes = self.start
        self._exact = _reset_high_water_mark()
        if not self._exact and self.start is not None:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._record(rss_bytes())

    def _record(self, value: int | None) -> None:
        if value is not None and (self.bytes is None or value > self.bytes):
            self.bytes = value

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        if self._exact:
            self._record((_status_kib("VmHWM") or 0) * 1024)
        self._record(rss_bytes())


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
