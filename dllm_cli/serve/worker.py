"""The one model worker of `dllm serve`: a thread that runs generations one at a time, in the
order they arrived, from a bounded queue.

Knows: the queue's capacity (a request beyond it is refused with `Busy`, which the app answers
with 503), cancelling a job (a client that went away, a server that stops): the denoise loop is
closed at its next step, so the model is free at once; the events a job hears (the backend's
DenoiseSteps and Generation, then `Failed` or `Cancelled` when it did not finish).
One at a time keeps answers identical to a sequential run with the same seed (no batching).
Must not: import torch (the backend does), know HTTP, or touch files.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..backend import Backend
from ..config import SamplerConfig
from ..errors import DllmError
from ..events import Generation, Request

log = logging.getLogger("dllm.serve")


@dataclass(frozen=True)
class Failed:
    """The generation raised: `message` is one line for the client."""

    message: str


@dataclass(frozen=True)
class Cancelled:
    reason: str


class Busy(Exception):
    """The queue is full (or the server is stopping)."""


@dataclass
class Job:
    request: Request
    cfg: SamplerConfig
    emit: Callable[[object], None]  # called on the worker thread; must be thread-safe
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"
    done: bool = False

    def cancel(self, reason: str = "the client went away") -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()


class Worker:
    """Runs jobs one at a time on `backend`; at most `capacity` wait behind the running one."""

    def __init__(self, backend: Backend, capacity: int = 32) -> None:
        self.backend, self.capacity = backend, capacity
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self.running: Job | None = None
        self.closing: str | None = None
        self.completed = 0
        self._thread = threading.Thread(target=self._loop, name="dllm-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: Request, cfg: SamplerConfig, emit: Callable[[object], None]) -> Job:
        """Queue a job; Busy when `capacity` jobs already wait or the server is stopping."""
        with self._lock:
            if self.closing is not None:
                raise Busy(self.closing)
            if len(self._waiting) >= self.capacity:
                raise Busy(f"the server is busy: {len(self._waiting)} requests are queued (the most it holds); "
                           "retry shortly")
            job = Job(request, cfg, emit)
            self._waiting.append(job)
        self._queue.put(job)
        return job

    def close(self, reason: str = "the server is shutting down") -> None:
        """Refuse new jobs, cancel the running one and every queued one (each hears Cancelled)."""
        with self._lock:
            self.closing = reason
            jobs = list(self._waiting) + ([self.running] if self.running is not None else [])
        for job in jobs:
            job.cancel(reason)
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._drain()
                return
            with self._lock:
                self._waiting.remove(job)
                self.running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self.running = None
                    self.completed += 1

    def _drain(self) -> None:
        """After close(): every job still queued hears Cancelled."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._finish(job, Cancelled(job.reason))

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._finish(job, Cancelled(job.reason))
            return
        events = self.backend.generate(job.request, job.cfg)
        steps = 0
        try:
            for event in events:
                if job.cancelled.is_set():
                    log.info("a request was cancelled after %d denoising steps: %s", steps, job.reason)
                    self._finish(job, Cancelled(job.reason))
                    return
                steps += 1
                if isinstance(event, Generation):
                    self._finish(job, event)
                    return
                job.emit(event)
            self._finish(job, Failed("the model ended without an answer"))
        except DllmError as err:
            self._finish(job, Failed(str(err)))
        except Exception as exc:  # a bug or an out-of-memory: the server stays up, the client hears it
            log.exception("generation failed")
            self._finish(job, Failed(f"the generation failed ({type(exc).__name__}: {exc})"))
        finally:
            close = getattr(events, "close", None)
            if callable(close):
                close()  # stops the denoise loop where it is (GeneratorExit inside it)

    @staticmethod
    def _finish(job: Job, event: object) -> None:
        job.done = True
        try:
            job.emit(event)
        except Exception:  # the event loop is gone (the server stopped): nobody to tell
            log.debug("could not deliver the end of a job", exc_info=True)
