"""Overlapped stages: the device renders item i+1 while worker threads analyse and write item i.

`run_stages(items, stages, sink)` runs the first stage (render) and `sink` on the calling thread and
every later stage on a thread of its own, joined by FIFO queues, so results reach `sink` in the
order the items were rendered. `sink` may return further items (a follow-up round of work that
depends on results so far); they are rendered before the rest of `items`, and the run ends when
nothing is left to render and nothing is in flight. At most `max_in_flight` items are between the
first stage and the sink at once (the memory bound).

The first exception, in any stage, in `sink` or in `items`, stops the run: nothing more is
rendered, the items behind the failure are dropped, and the items ahead of it (already past the
failing stage) still go through the later stages and reach `sink`, so work finished before the
failure is kept. An exception in `sink` drops everything in flight. Then every thread is joined and
the first exception is raised on the calling thread unchanged. Ctrl-C (SIGINT) on the main thread
only asks the run to stop (`sigint_deferred`): the calling thread stops at its next item, as if the
sink had failed with KeyboardInterrupt, every thread is joined, and KeyboardInterrupt is raised; a
second Ctrl-C ends the process at once (exit code 130). Threads pay off because torch,
onnxruntime, dlib, cv2 and file I/O release the GIL while they work.

`StageTimes` records how long each stage was busy, so a progress line can name the bottleneck.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_END = object()  # sent down the queues after the last item
_WAKE = object()  # a failing worker puts it on the results queue, waking a calling thread that waits there


#: What the first Ctrl-C prints, and what a second prints before it ends the process at once (see `sigint_deferred`).
STOPPING = b"\nstopping after the current step (Ctrl-C again stops at once; a rerun resumes either way)\n"
ABORT_NOW = b"\naborted; rerun to resume\n"


class DeferredSigint:
    """A Ctrl-C held back until a safe point: `requested` is set when it came, `deliver()` hands it to
    the SIGINT handler that was in place before (which raises KeyboardInterrupt, and under the CLI also
    records it), or raises KeyboardInterrupt itself where that handler does not."""

    def __init__(self, previous=None):
        self.requested = threading.Event()
        self.previous = previous

    def deliver(self) -> None:
        if callable(self.previous):
            self.previous(signal.SIGINT, None)
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_deferred() -> Iterator[DeferredSigint]:
    """Yield a `DeferredSigint` that Ctrl-C (SIGINT) sets instead of raising KeyboardInterrupt wherever
    the calling thread happens to be (inside torch, numpy or onnxruntime, with worker threads inside
    theirs), so the caller can stop at its next safe point, join its threads, then `deliver()` it. A
    second Ctrl-C ends the process at once with exit code 130 (`os._exit`, so no interpreter shutdown
    runs while threads are inside native code); a run killed at any moment resumes. Only on the main
    thread and where Ctrl-C raises KeyboardInterrupt now; elsewhere it is never set and nothing changes."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous in (None, signal.SIG_IGN, signal.SIG_DFL):
        yield DeferredSigint()
        return
    deferred = DeferredSigint(previous)

    def on_sigint(signum, frame):
        if deferred.requested.is_set():
            os.write(2, ABORT_NOW)
            os._exit(130)
        deferred.requested.set()
        os.write(2, STOPPING)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield deferred
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: `fn(item) -> item for the next stage`, named for the times."""

    name: str
    fn: Callable[[Any], Any]


@dataclass
class StageTimes:
    """Seconds each stage (and the sink) spent in its function, the items it finished, and the wall
    seconds of the runs it was passed to (it adds up over several). Live while a run goes on: each
    thread adds to its own stage's entry, and wall is brought up to date at every result."""

    busy: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    def add(self, name: str, seconds: float) -> None:
        self.busy[name] = self.busy.get(name, 0.0) + seconds
        self.items[name] = self.items.get(name, 0) + 1

    def reach(self, wall: float) -> None:
        """Bring `wall` up to `wall` seconds (never back): called before a stage's busy seconds are
        added, so a live reader never sees a stage busier than the wall time."""
        self.wall = max(self.wall, wall)

    def copy(self) -> StageTimes:
        return StageTimes(dict(self.busy), dict(self.items), self.wall)

    def since(self, earlier: StageTimes) -> StageTimes:
        """The times added after `earlier` (a `copy` of these times taken before some runs)."""
        return StageTimes({k: v - earlier.busy.get(k, 0.0) for k, v in self.busy.items()},
                          {k: v - earlier.items.get(k, 0) for k, v in self.items.items()}, self.wall - earlier.wall)

    def shares(self) -> dict[str, float]:
        """Busy seconds over wall seconds per stage: 1.0 is a stage that never waited. At most 1.0: a
        stage's busy seconds lie within the wall time (`since` can take in the end of a call that began
        before the earlier copy; its share is then capped)."""
        return {name: min(busy / self.wall, 1.0) if self.wall > 0 else 0.0 for name, busy in self.busy.items()}

    @property
    def bottleneck(self) -> str | None:
        """The busiest stage, the one that sets the pace (None before any work)."""
        return max(self.busy, key=self.busy.get, default=None)


def run_stages(
    items: Iterable[Any],
    stages: list[Stage],
    sink: Callable[[Any], Iterable[Any] | None],
    *,
    max_in_flight: int | None = None,
    times: StageTimes | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StageTimes:
    """Feed `items` through `stages` in order and hand each result to `sink`; return the times.

    stages[0] and `sink` run on the calling thread (where the device's work is queued); each later
    stage runs on its own thread. What `sink` returns (None, or an iterable of items) is rendered
    next, before the rest of `items`. max_in_flight (default: one per stage, plus one) bounds the
    items rendered but not yet through `sink`; when it is reached the calling thread waits for
    results instead of rendering more. Pass `times` to watch it during the run; `clock` times it.
    """
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    limit = len(stages) + 1 if max_in_flight is None else max_in_flight
    if limit < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    times = times if times is not None else StageTimes()
    start, wall_before = clock(), times.wall
    inbox = {i: queue.SimpleQueue() for i in range(1, len(stages))}  # what stage i works on
    done: queue.SimpleQueue = queue.SimpleQueue()  # results on their way to the sink
    sink_index = len(stages)  # where a failure in the sink (or an interrupt of the calling thread) sits
    failure: list[tuple[BaseException, int]] = []  # the first exception and the index of its stage
    lock = threading.Lock()

    def fail(exc: BaseException, index: int) -> None:
        with lock:
            if not failure:
                failure.append((exc, index))
        done.put(_WAKE)

    def worker(index: int) -> None:
        stage, outbox = stages[index], inbox.get(index + 1, done)
        while True:
            item = inbox[index].get()
            if item is _END:
                outbox.put(_END)
                return
            if failure and index <= failure[0][1]:
                continue  # behind the failure: dropped (keep reading until the end marker)
            began = clock()
            try:
                item = stage.fn(item)
            except BaseException as exc:  # re-raised on the calling thread
                fail(exc, index)
                continue
            ended = clock()
            times.reach(wall_before + ended - start)
            times.add(stage.name, ended - began)
            outbox.put(item)

    interrupt = contextlib.ExitStack()  # Ctrl-C sets `stop` while the threads run; closed once they are joined
    stop = interrupt.enter_context(sigint_deferred())
    threads = [threading.Thread(target=worker, args=(i,), name=f"synthface-stage-{s.name}", daemon=True)
               for i, s in enumerate(stages) if i > 0]
    for thread in threads:
        thread.start()
    head, first_queue = stages[0], inbox.get(1, done)
    source, follow_ups = iter(items), collections.deque()
    in_flight = 0

    def to_sink(result: Any) -> None:
        nonlocal in_flight
        in_flight -= 1
        if failure and failure[0][1] == sink_index:
            return  # the sink itself failed: nothing more reaches it
        began = clock()
        times.reach(wall_before + began - start)
        more = sink(result)
        ended = clock()
        times.reach(wall_before + ended - start)
        times.add("sink", ended - began)
        if more is not None:
            follow_ups.extend(more)

    def deliver(block: bool) -> bool:
        """Hand one finished result to the sink; False when none was ready (block=False)."""
        try:
            result = done.get(block=block)
        except queue.Empty:
            return False
        if result is not _WAKE:
            to_sink(result)
        return True

    try:
        try:
            while not failure:
                if stop.requested.is_set():  # Ctrl-C: a safe point, between two items
                    stop.deliver()
                if in_flight >= limit:
                    deliver(block=True)
                    continue
                try:
                    item = follow_ups.popleft() if follow_ups else next(source, _END)
                    if item is _END:
                        if not in_flight:
                            break
                        deliver(block=True)  # its sink may add follow-up items
                        continue
                    began = clock()
                    result = head.fn(item)
                except BaseException as exc:  # a failing render or `items`: what is in flight still finishes
                    fail(exc, 0)
                    break
                ended = clock()
                times.reach(wall_before + ended - start)
                times.add(head.name, ended - began)
                in_flight += 1
                first_queue.put(result)
                while deliver(block=False):
                    pass
        except BaseException as exc:  # the sink (or an interrupt): drop everything in flight
            fail(exc, sink_index)
        first_queue.put(_END)  # drain: the end marker passes every stage after what is ahead of it
        while (result := done.get()) is not _END:
            if result is not _WAKE:
                try:
                    to_sink(result)
                except BaseException as exc:
                    fail(exc, sink_index)
    finally:
        for thread in threads:
            thread.join()
        times.wall = wall_before + clock() - start
        interrupt.close()
    if failure:
        raise failure[0][0]
    if stop.requested.is_set():  # Ctrl-C after the last item was rendered: everything is through; stop now
        stop.deliver()
    return times
