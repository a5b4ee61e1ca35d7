"""StepPrefetcher: the batch of a step is what building it inline gives, whatever order steps are asked in."""

from __future__ import annotations

import threading

import pytest
import torch

from sparge_train.prefetch import StepPrefetcher


def build(step: int) -> list[torch.Tensor]:
    return [torch.randn(3, generator=torch.Generator().manual_seed(step)), torch.full((2,), float(step))]


def test_batches_match_inline_builds_and_the_next_step_is_built_ahead():
    built: list[tuple[int, str]] = []

    def recording(step):
        built.append((step, threading.current_thread().name))
        return build(step)

    pre = StepPrefetcher(recording, torch.device("cpu"), stop=4)
    try:
        for step in range(4):
            got = pre.get(step)
            for a, b in zip(got, build(step), strict=True):
                assert torch.equal(a, b)
    finally:
        pre.close()
    assert [s for s, _ in built] == [0, 1, 2, 3]  # each step once, none past `stop`
    assert all(name.startswith("sparge-prefetch") for _, name in built)


def test_a_step_out_of_sequence_is_built_on_demand():
    pre = StepPrefetcher(build, torch.device("cpu"), stop=100)
    try:
        pre.get(0)  # starts building step 1
        assert torch.equal(pre.get(7)[1], torch.full((2,), 7.0))  # a resume or skip: not the prefetched step
        assert torch.equal(pre.get(8)[1], torch.full((2,), 8.0))
    finally:
        pre.close()


def test_a_failing_build_raises_in_the_caller():
    def failing(step):
        if step == 1:
            raise ValueError("step 1 cannot be built")
        return build(step)

    pre = StepPrefetcher(failing, torch.device("cpu"), stop=3)
    try:
        pre.get(0)
        with pytest.raises(ValueError, match="step 1 cannot be built"):
            pre.get(1)
    finally:
        pre.close()
