"""Named points where a test can stop a job, so that it can SIGKILL it at exactly that moment.

With SDT_RAY_PAUSE_AT=<point> in the environment (Ray workers inherit it), the process that
reaches <point> writes the point's name to SDT_RAY_PAUSE_FILE and sleeps; the test waits
for that file, then kills the job's process group. Unset, a point costs one lookup.

Points: `plan-start` and `plan-complete` (a plan written aside, not yet moved into place),
`compaction` (a part's file written, its done marker not yet), `recognition` (a call
recognised, its part not yet written), `finetune-reported` (a fine-tuning epoch's checkpoint
handed to Ray Train).

With SDT_RAY_CRASH_AT=<point> instead, the first process to reach <point> writes
SDT_RAY_CRASH_FILE and dies at once (os._exit, as a SIGKILL or the OOM killer would end it);
later processes pass: a test of Ray's actor restart and task retry. <point>#N dies the Nth time
one process reaches it (`finetune-reported#2`: after the second epoch's checkpoint).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def reached(point: str) -> None:
    if os.environ.get("SDT_RAY_PAUSE_AT") != point:
        return
    Path(os.environ["SDT_RAY_PAUSE_FILE"]).write_text(point)
    time.sleep(3600)


_times_reached: dict[str, int] = {}


def crash_once(point: str) -> None:
    name, _, nth = os.environ.get("SDT_RAY_CRASH_AT", "").partition("#")
    if name != point:
        return
    _times_reached[point] = _times_reached.get(point, 0) + 1
    flag = Path(os.environ["SDT_RAY_CRASH_FILE"])
    if _times_reached[point] < int(nth or 1) or flag.exists():
        return
    flag.write_text(point)
    os._exit(1)
