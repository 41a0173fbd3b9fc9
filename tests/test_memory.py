"""The daemon gives a cycle's freed memory back before sleeping (README "Performance")."""

from __future__ import annotations

import subprocess
import sys

# In a child process: the test's own heap would blur the figures.
CHILD = """
import os
from rorfeed.heap import release

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

# 100 MB in 64 kB blocks (malloc's heap: below its mmap threshold, above Python's own small
# object arenas), a small survivor after each so that the heap's top never shrinks by itself.
blocks, keep = [], []
for i in range(1_600):
    blocks.append(bytes(65_536))
    keep.append(bytes(600))
before = rss_mb()
del blocks
freed = rss_mb()
release()
print(before, freed, rss_mb())
"""


# Frozen or not, as the collector shows it: a reference cycle frozen while alive survives a
# plain collection once it is garbage; only the next settle frees it.
SETTLE = """
import gc, weakref
from rorfeed import heap

class Node:
    pass

def ring():
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    return a, weakref.ref(a)

first, watch_first = ring()
heap.settle()  # first alive: frozen with everything else
del first
gc.collect()  # a plain collection leaves frozen objects alone
waited = watch_first() is not None
second, watch_second = ring()
heap.settle()  # unfreezes, collects, freezes again
freed = watch_first() is None
del second
gc.collect()
print(waited, freed, watch_second() is not None)  # the survivors are frozen again
"""


def test_settle_collects_the_garbage_among_frozen_objects_and_freezes_the_rest() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.split() == ["True", "True", "True"]


def test_release_returns_freed_heap_pages_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    before, freed, released = map(float, out.split())
    assert freed > before - 20, "glibc kept the freed blocks (the case this is for)"
    assert released < freed - 60, (before, freed, released)
