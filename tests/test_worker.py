"""serve/worker.py: one generation at a time in arrival order, a bounded queue (Busy beyond it),
cancellation at the next step (the denoise loop is closed), failures reported, close() ending
everything. A fake backend stands in for the model."""

from __future__ import annotations

import threading
import time

import pytest

from dllm_cli.config import SamplerConfig
from dllm_cli.errors import DllmError
from dllm_cli.events import DenoiseStep, Generation, Request, SpecialTokens
from dllm_cli.serve.worker import Busy, Cancelled, Failed, Worker

CFG = SamplerConfig.from_options(gen_length=8)


class Slow:
    """Yields `steps` DenoiseSteps `delay` seconds apart, then a Generation naming the request."""

    name = "slow"
    tokens = SpecialTokens(mask=1, eos=0)

    def __init__(self, steps=5, delay=0.01, fail=None):
        self.steps, self.delay, self.fail = steps, delay, fail
        self.started: list[int] = []
        self.closed: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def token_text(self, token_id):
        return ""

    def generate(self, request, cfg):
        tag = request.prompt_ids[0]
        self.started.append(tag)
        try:
            for i in range(self.steps):
                self.gate.wait(5)
                time.sleep(self.delay)
                if self.fail is not None and i == 2:
                    raise self.fail
                yield DenoiseStep(i, [1] * 8, [i], [0.9], i + 1, 0.0, i == self.steps - 1)
            yield Generation(f"answer {tag}", 1, self.steps, self.steps, 0.1)
        finally:
            self.closed.append(tag)


class Inbox:
    def __init__(self):
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, (Generation, Cancelled, Failed)):
            self.done.set()


def test_jobs_run_one_at_a_time_in_order():
    backend = Slow()
    worker = Worker(backend, capacity=8)
    boxes = [Inbox() for _ in range(5)]
    for i, box in enumerate(boxes):
        worker.submit(Request((i,)), CFG, box)
    for box in boxes:
        assert box.done.wait(10)
    assert backend.started == [0, 1, 2, 3, 4] and backend.closed == [0, 1, 2, 3, 4]
    assert [b.events[-1].text for b in boxes] == [f"answer {i}" for i in range(5)]
    assert all(sum(isinstance(e, DenoiseStep) for e in b.events) == 5 for b in boxes)
    assert worker.completed == 5
    worker.close()
    worker.join(5)


def test_a_full_queue_is_busy_and_close_cancels_everything():
    backend = Slow()
    backend.gate.clear()  # the running job waits
    worker = Worker(backend, capacity=2)
    running, a, b = Inbox(), Inbox(), Inbox()
    worker.submit(Request((0,)), CFG, running)
    while worker.running is None:
        time.sleep(0.01)
    worker.submit(Request((1,)), CFG, a)
    worker.submit(Request((2,)), CFG, b)
    with pytest.raises(Busy, match="2 requests are queued"):
        worker.submit(Request((3,)), CFG, Inbox())
    worker.close("stopping for the test")
    backend.gate.set()
    for box in (running, a, b):
        assert box.done.wait(10)
        assert isinstance(box.events[-1], Cancelled) and box.events[-1].reason == "stopping for the test"
    assert backend.started == [0] and backend.closed == [0]  # queued jobs never started
    with pytest.raises(Busy, match="stopping for the test"):
        worker.submit(Request((4,)), CFG, Inbox())
    worker.join(5)


def test_cancel_stops_the_denoise_at_its_next_step():
    backend = Slow(steps=200, delay=0.01)
    worker = Worker(backend)
    box = Inbox()
    job = worker.submit(Request((7,)), CFG, box)
    while sum(isinstance(e, DenoiseStep) for e in box.events) < 3:
        time.sleep(0.005)
    job.cancel()
    assert box.done.wait(5)
    assert isinstance(box.events[-1], Cancelled) and box.events[-1].reason == "the client went away"
    assert sum(isinstance(e, DenoiseStep) for e in box.events) < 20 and backend.closed == [7]
    follow = Inbox()
    backend.steps = 3
    worker.submit(Request((8,)), SamplerConfig(), follow)
    assert follow.done.wait(10) and follow.events[-1].text == "answer 8"  # the model is free again
    worker.close()


@pytest.mark.parametrize("error, expect", [(DllmError("out of memory on cuda; lower max_tokens"),
                                            "out of memory on cuda; lower max_tokens"),
                                           (RuntimeError("boom"), "the generation failed (RuntimeError: boom)")])
def test_a_failing_generation_is_reported_and_the_worker_goes_on(error, expect):
    worker = Worker(Slow(fail=error))
    box = Inbox()
    worker.submit(Request((1,)), CFG, box)
    assert box.done.wait(5) and box.events[-1] == Failed(expect)
    worker.backend = Slow()
    again = Inbox()
    worker.submit(Request((2,)), CFG, again)
    assert again.done.wait(5) and again.events[-1].text == "answer 2"
    worker.close()
