import os

import pytest
import torch

from lightning_app.cli.memory import ReleaseFreedMemory, release_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not release_freed_memory(), reason="needs glibc's malloc_trim")
def test_freed_tensors_stay_resident_until_released():
    # 200 MB of 64 kB tensors (heap blocks: below glibc's mmap threshold), with small tensors kept
    # between them so the freed blocks cannot merge into the heap's top and be trimmed there.
    # Free pages left by earlier tests would be reused and hide the growth: hand them back first.
    release_freed_memory()
    start = resident_bytes()
    blocks, kept = [], []
    for _ in range(3200):
        blocks.append(torch.ones(64 << 10, dtype=torch.uint8))
        kept.append(torch.ones(64, dtype=torch.uint8))
    del blocks
    held = resident_bytes()
    assert held - start > 150e6  # freed, still resident
    assert release_freed_memory()
    assert resident_bytes() < held - 150e6
