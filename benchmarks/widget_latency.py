"""How fast SpectrumExplorer answers a rank change on a 512×512 matrix (goal: < 100 ms on a CPU).

The explorer's default matrix is 512×512; its SVD is computed once, when the widget is built (timed
separately). A rank change then reconstructs ``W_r`` (one matmul), measures ``‖W − W_r‖_F`` and
updates the figure in place. Each sample is one ``controls["rank"].value = r`` — the whole handler,
as a slider move runs it — over ranks drawn at random from 1 … 512, in three settings:

* ``static``: a ``go.Figure`` (the book build);
* ``live``: a ``FigureWidget`` in this process — the update is built and serialized, with no frontend;
* ``kernel``: a ``FigureWidget`` displayed in a Jupyter kernel (ipykernel), so every update also goes
  out as a comm message, as it does to JupyterLab (the browser's own redraw is not counted).

Rounds alternate between the settings so that machine load hits all alike. Measured, not asserted
in tests.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time

import plotly.graph_objects as go
from common import machine, record
from jupyter_client.manager import start_new_kernel

from spectrallab.widgets import SpectrumExplorer

ROUNDS, CHANGES_PER_ROUND, WARMUP = 5, 40, 10

KERNEL_SETUP = """
import os, time, json
os.environ["SPECTRALLAB_WIDGETS"] = "live"
from IPython.display import display
from spectrallab.widgets import SpectrumExplorer
_t = time.perf_counter()
explorer = SpectrumExplorer()
_build = time.perf_counter() - _t
display(explorer)
def rank_changes(ranks):
    samples = []
    for rank in ranks:
        start = time.perf_counter()
        explorer.controls["rank"].value = rank
        samples.append(time.perf_counter() - start)
    if explorer.error is not None:
        raise explorer.error
    return samples
print(json.dumps({"build": _build, "k": explorer.controls["rank"].max}))
"""


class KernelExplorer:
    """A SpectrumExplorer living in a Jupyter kernel, driven by executing code there."""

    def __init__(self):
        env = {**os.environ, "SPECTRALLAB_WIDGETS": "live"}
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env)
        setup = self.run(KERNEL_SETUP)
        self.build_seconds, self.k = setup["build"], setup["k"]

    def run(self, code: str):
        """Execute ``code`` in the kernel; return the JSON it printed last (raise on an error)."""
        printed: list[str] = []

        def collect(msg):
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))

        reply = self.client.execute_interactive(code, output_hook=collect, timeout=300)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"kernel: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        return json.loads("".join(printed).strip().splitlines()[-1])

    def rank_changes(self, ranks: list[int]) -> list[float]:
        return self.run(f"print(json.dumps(rank_changes({ranks!r})))")

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def in_process(live: bool) -> tuple[SpectrumExplorer, float]:
    start = time.perf_counter()
    explorer = SpectrumExplorer(live=live)
    return explorer, time.perf_counter() - start


def rank_changes(explorer: SpectrumExplorer, ranks: list[int]) -> list[float]:
    """Seconds per rank change, one sample per change."""
    slider = explorer.controls["rank"]
    samples = []
    for rank in ranks:
        start = time.perf_counter()
        slider.value = rank
        samples.append(time.perf_counter() - start)
    if explorer.error is not None:
        raise explorer.error
    return samples


def main() -> dict:
    rng = random.Random(0)
    go.FigureWidget()  # import the widget machinery first, so build times count the SVD and figure only
    static, static_build = in_process(live=False)
    live, live_build = in_process(live=True)
    kernel = KernelExplorer()
    changers = {
        "static": lambda ranks: rank_changes(static, ranks),
        "live": lambda ranks: rank_changes(live, ranks),
        "kernel": kernel.rank_changes,
    }
    build_ms = {"static": static_build * 1e3, "live": live_build * 1e3, "kernel": kernel.build_seconds * 1e3}
    k = static.controls["rank"].max
    try:
        for change in changers.values():
            change([rng.randint(1, k) for _ in range(WARMUP)])
        samples: dict[str, list[float]] = {mode: [] for mode in changers}
        for _ in range(ROUNDS):
            for mode, change in changers.items():
                samples[mode] += change([rng.randint(1, k) for _ in range(CHANGES_PER_ROUND)])
    finally:
        kernel.close()

    ms = {
        mode: {
            "median": statistics.median(s) * 1e3,
            "p90": statistics.quantiles(s, n=10)[-1] * 1e3,
            "max": max(s) * 1e3,
            "changes": len(s),
        }
        for mode, s in samples.items()
    }
    info = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(
        f"SpectrumExplorer rank change, {k}×{k} matrix, on {info['cpu']} ({info['cores']} cores, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}; load average {load:.2f}):"
    )
    for mode, m in ms.items():
        print(
            f"  {mode:6s}: median {m['median']:.1f} ms, p90 {m['p90']:.1f} ms, max {m['max']:.1f} ms "
            f"over {m['changes']} changes (goal < 100 ms); built (SVD once) in {build_ms[mode]:.0f} ms"
        )
    result = {"matrix": f"{k}x{k} demo", "ms_per_rank_change": ms, "build_ms": build_ms, "load_average": load}
    print(f"recorded in {record('widget_latency', result)}")
    return result


if __name__ == "__main__":
    main()
