"""How a long training run tells a reader how far it is and how long it will take.

:func:`spectrallab.fit` reports through a :class:`Progress`, in one of three modes, chosen by
``SPECTRALLAB_PROGRESS`` (``bar``, ``lines`` or ``off``) or, unset, by where it runs:

* ``bar``: a tqdm bar (``tqdm.auto``: a widget in a live notebook, text in a terminal) that
  clears itself when the run ends — the default in an interactive kernel or terminal.
* ``lines``: compact text, for outputs that are kept (the book build, logs): nothing for a run
  that ends within ``quiet_seconds``; then one line every ``every_seconds`` with the step, the
  time so far and the estimated time left, and one closing line with the rate. The book build sets
  this mode for its kernels, so a built page shows how long its slow cells took.
* ``off``: nothing.
"""

from __future__ import annotations

import os
import sys
import time

MODES = ("bar", "lines", "off")


def progress_mode() -> str:
    """The active mode: ``SPECTRALLAB_PROGRESS`` if set, else ``bar`` when interactive, else ``lines``."""
    chosen = os.environ.get("SPECTRALLAB_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"SPECTRALLAB_PROGRESS={chosen!r} is not one of {', '.join(MODES)}")
        return chosen
    in_kernel = "ipykernel" in sys.modules
    return "bar" if in_kernel or sys.stderr.isatty() else "lines"


class Progress:
    """Progress of one run of ``total`` steps, named ``label``. Call :meth:`update` after each step."""

    def __init__(
        self,
        total: int,
        label: str,
        mode: str | None = None,
        *,
        quiet_seconds: float = 10.0,
        every_seconds: float = 15.0,
        tokens_per_step: int | None = None,
    ):
        self.total, self.label = total, label
        self.tokens_per_step = tokens_per_step  # shown as tokens/s when given
        self.mode = progress_mode() if mode is None else mode
        if self.mode not in MODES:
            raise ValueError(f"progress mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.quiet_seconds, self.every_seconds = quiet_seconds, every_seconds
        self.start = time.perf_counter()
        self.next_line = self.start + quiet_seconds
        self.step = 0
        self.first_step: int | None = None
        self.rate_start = self.start
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, leave=False, mininterval=0.2, unit="step")

    def tokens_per_second(self) -> float | None:
        """Training throughput since the first update (None without ``tokens_per_step``)."""
        if self.tokens_per_step is None or self.first_step is None:
            return None
        elapsed = time.perf_counter() - self.rate_start
        if elapsed <= 0:
            return None
        return (self.step - self.first_step) * self.tokens_per_step / elapsed

    def update(self, step: int, loss: float | None = None) -> None:
        if self.first_step is None:  # tokens/s counts from here: not the setup, not a resumed run's past
            self.first_step, self.rate_start = step, time.perf_counter()
        advanced, self.step = step - self.step, step
        if self.bar is not None:
            self.bar.update(advanced)
            if loss is not None and step % 10 == 0:
                postfix = {"loss": f"{loss:.3f}"}
                rate = self.tokens_per_second()
                if rate is not None:
                    postfix["tok/s"] = f"{rate:,.0f}"
                self.bar.set_postfix(postfix, refresh=False)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now >= self.next_line and step < self.total:
                elapsed = now - self.start
                left = elapsed / max(step, 1) * (self.total - step)
                loss_text = f", loss {loss:.3f}" if loss is not None else ""
                rate = self.tokens_per_second()
                rate_text = f", {rate:,.0f} tokens/s" if rate is not None else ""
                print(
                    f"[{self.label}] step {step:,}/{self.total:,}: {elapsed:.0f} s so far, ~{left:.0f} s left"
                    f"{loss_text}{rate_text}",
                    flush=True,
                )
                self.next_line = now + self.every_seconds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start
            if elapsed >= self.quiet_seconds:
                rate = self.tokens_per_second()
                rate_text = f", {rate:,.0f} tokens/s" if rate is not None else ""
                print(
                    f"[{self.label}] {self.step:,} steps in {elapsed:.0f} s ({self.step / elapsed:.1f} steps/s"
                    f"{rate_text})",
                    flush=True,
                )
