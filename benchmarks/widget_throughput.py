"""What the live view costs: training steps per second with and without the Playground drawing.

Without: a TrainingSession stepped in a loop (the same model, method and data). With: a live
Playground (FigureWidget) playing in its background thread, redrawing at most every 100 ms.
Rounds alternate so machine load hits both alike. Goal: the live view costs < 20 % of throughput.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")

from common import record  # noqa: E402

from spectrallab.widgets import Playground  # noqa: E402
from spectrallab.widgets.session import SCENARIOS, TrainingSession  # noqa: E402

SCENARIO, METHOD, RANK, STEPS = "digits", "lora", 8, 600


def bare_steps_per_second() -> float:
    session = TrainingSession(SCENARIOS[SCENARIO], METHOD, {"rank": RANK}, 1e-2, STEPS)
    session.step()  # step 0 (evaluation)
    start = time.perf_counter()
    while session.step() is not None:
        pass
    seconds = time.perf_counter() - start
    session.close()
    return STEPS / seconds


def live_steps_per_second() -> tuple[float, float]:
    w = Playground(scenario=SCENARIO, method=METHOD, rank=RANK, steps=STEPS, live=True, ghost=False)
    draws = 0
    original = w.draw

    def counting_draw():
        nonlocal draws
        draws += 1
        original()

    w.draw = counting_draw
    start = time.perf_counter()
    w.play()
    while w.session.playing:
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    return STEPS / seconds, draws / seconds


def main() -> dict:
    bare, live, fps = [], [], []
    bare_steps_per_second()  # warm-up: builds caches, the pretrained base if any
    for _ in range(3):
        bare.append(bare_steps_per_second())
        steps, frames = live_steps_per_second()
        live.append(steps)
        fps.append(frames)
    bare_rate, live_rate, frame_rate = statistics.median(bare), statistics.median(live), statistics.median(fps)
    cost = 1 - live_rate / bare_rate
    print(
        f"{METHOD} rank {RANK} on {SCENARIO}: {bare_rate:.0f} steps/s bare, {live_rate:.0f} steps/s with the "
        f"live view ({cost:.1%} of throughput; goal < 20%), {frame_rate:.1f} frames/s drawn"
    )
    result = {
        "scenario": SCENARIO,
        "method": METHOD,
        "rank": RANK,
        "steps": STEPS,
        "steps_per_s_bare": bare_rate,
        "steps_per_s_live": live_rate,
        "live_view_cost": cost,
        "frames_per_s": frame_rate,
    }
    print(f"recorded in {record('widget_throughput', result)}")
    return result


if __name__ == "__main__":
    main()
