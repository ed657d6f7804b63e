"""The ingest writer's cost: a serving hub tunes the garbage collector for ingest's allocations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_serving_hub_freezes_what_start_up_built_and_collects_young_objects_less_often() -> None:
    probe = ("import gc; from hub.serve import YOUNG_COLLECTION_EVERY, settle_heap; before = gc.get_freeze_count(); "
             "settle_heap(); print(before, gc.get_freeze_count(), gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1], timeout=60).stdout.split()
    assert out[0] == "0" and int(out[1]) > 50_000 and out[2] == "True"
