"""``release_freed_memory``: freed heap pages stay resident until it hands them back.

The measurement runs in a process of its own (forked from the test session's fork server): in the
test process the heap holds whatever earlier tests freed, and a new block may land in those free
pages, which hides the growth the test measures.
"""

import json
import textwrap

import pytest

from lightning_app.cli.memory import release_freed_memory
from tests.helpers import run_lightning

MEASURE = textwrap.dedent("""
    import json, os
    import torch
    from lightning_app.cli.memory import release_freed_memory

    def resident_bytes():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    # 200 MB of 64 kB tensors (heap blocks: below glibc's mmap threshold), with small tensors kept
    # between them so the freed blocks cannot merge into the heap's top and be trimmed there.
    release_freed_memory()
    start = resident_bytes()
    blocks, kept = [], []
    for _ in range(3200):
        blocks.append(torch.ones(64 << 10, dtype=torch.uint8))
        kept.append(torch.ones(64, dtype=torch.uint8))
    del blocks
    held = resident_bytes()
    released = release_freed_memory()
    print(json.dumps({"start": start, "held": held, "released": released, "after": resident_bytes()}))
""")


@pytest.mark.skipif(not release_freed_memory(), reason="needs glibc's malloc_trim")
def test_freed_tensors_stay_resident_until_released(tmp_path):
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    out, _ = run_lightning([], script=script, timeout=120)
    figures = json.loads(out.strip().splitlines()[-1])
    print(figures)
    assert figures["held"] - figures["start"] > 150e6  # freed, still resident
    assert figures["released"] is True
    assert figures["after"] < figures["held"] - 150e6
