"""Training batches: deterministic by step, and prefetched without changing what a step gets."""

import threading

import numpy as np
import pytest

from cordflow.data import Batches, Prefetch


def test_batches_cover_every_item_once_per_epoch_and_repeat_by_seed():
    b = Batches(10, 3, seed=7)
    epoch0 = np.concatenate([b(s) for s in range(3)])  # 10 // 3 = 3 batches per epoch
    assert sorted(epoch0.tolist()) == sorted(set(epoch0.tolist())) and len(epoch0) == 9
    again = Batches(10, 3, seed=7)
    assert [again(s).tolist() for s in (5, 0, 4)] == [b(s).tolist() for s in (5, 0, 4)]
    assert [Batches(10, 3, seed=8)(s).tolist() for s in range(3)] != [b(s).tolist()
                                                                       for s in range(3)]


def test_prefetch_gives_fn_of_the_step_in_any_order():
    calls = []

    def fn(step):
        calls.append(step)
        return step * step

    pre = Prefetch(fn)
    order = [0, 1, 2, 7, 8, 3]  # in order, then a jump (a resume), then back
    assert [pre(s) for s in order] == [s * s for s in order]
    pre.close()
    assert set(order) <= set(calls)


def test_prefetch_prepares_the_next_step_while_the_caller_works():
    started = threading.Event()

    def fn(step):
        if step == 1:
            started.set()
        return step

    pre = Prefetch(fn)
    assert pre(0) == 0
    assert started.wait(timeout=10), "step 1 was not prepared in the background"
    assert pre(1) == 1
    pre.close()


def test_prefetch_raises_a_background_failure_at_its_step():
    def fn(step):
        if step == 1:
            raise ValueError("clip 1 is unreadable")
        return step

    pre = Prefetch(fn)
    assert pre(0) == 0
    with pytest.raises(ValueError, match="clip 1 is unreadable"):
        pre(1)
    pre.close()
