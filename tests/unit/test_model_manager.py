"""The model manager's heap handling (api/model_manager.py: settle_heap), without a server."""

from __future__ import annotations

import gc
import weakref

from api.runtime.model_manager import settle_heap


def test_settle_heap_freezes_the_heap_and_a_swap_frees_what_it_replaced():
    """The long-lived heap is frozen out of the cyclic collector's full passes (their stalls were the
    p99 of one worker); the next swap unfreezes and collects first, so a replaced model is freed."""

    class Model:  # a model with a reference cycle, as fitted estimators often have
        pass

    old = Model()
    old.me = old
    ref = weakref.ref(old)
    try:
        settle_heap()  # served: frozen
        assert gc.get_freeze_count() > 0
        del old  # swapped out
        gc.collect()
        assert ref() is not None  # a frozen cycle is never collected by itself...
        settle_heap()  # ...so the next swap unfreezes and collects before it freezes again
        assert ref() is None
    finally:
        gc.unfreeze()
