"""synthface.stages: order kept, memory bounded, failures stop every thread and surface unchanged."""

from __future__ import annotations

import threading

import pytest

from synthface.errors import OutputPathError
from synthface.stages import Stage, StageTimes, run_stages

SAFETY_S = 30  # only for a broken executor: a correct one never waits this long


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("synthface-stage-")]


def test_results_reach_the_sink_in_order_through_every_stage():
    seen, where = [], {}

    def record(name, fn):
        def run(x):
            where.setdefault(name, set()).add(threading.current_thread().name)
            return fn(x)
        return Stage(name, run)

    times = run_stages(range(50), [record("render", lambda x: x * 10), record("analyse", lambda x: x + 1),
                                   record("write", lambda x: -x)], seen.append, max_in_flight=4)
    assert seen == [-(10 * x + 1) for x in range(50)]
    assert times.items == {"render": 50, "analyse": 50, "write": 50, "sink": 50}
    # render on the calling thread, each later stage on a thread of its own, all gone afterwards
    assert where["render"] == {threading.current_thread().name}
    assert where["analyse"] == {"synthface-stage-analyse"} and where["write"] == {"synthface-stage-write"}
    assert stage_threads() == []


def test_one_stage_runs_on_the_calling_thread_alone():
    seen = []
    times = run_stages(iter("abc"), [Stage("render", str.upper)], seen.append)
    assert seen == ["A", "B", "C"] and times.items == {"render": 3, "sink": 3} and stage_threads() == []


def test_at_most_max_in_flight_items_between_render_and_sink():
    """The analysis stage holds back until the caller has rendered `limit` items: a correct bound
    lets exactly that many through (never more), and the run then drains in order."""
    limit = 3
    release = threading.Event()
    counts = {"in_flight": 0, "most": 0, "rendered": 0}
    seen = []

    def render(x):
        counts["in_flight"] += 1
        counts["most"] = max(counts["most"], counts["in_flight"])
        counts["rendered"] += 1
        if counts["rendered"] == limit:
            release.set()
        return x

    def analyse(x):
        assert release.wait(SAFETY_S), "the caller stopped rendering before the bound was reached"
        return x

    def sink(x):
        counts["in_flight"] -= 1
        seen.append(x)

    run_stages(range(20), [Stage("render", render), Stage("analyse", analyse), Stage("write", lambda x: x)], sink,
               max_in_flight=limit)
    assert counts["most"] == limit and counts["in_flight"] == 0 and seen == list(range(20))


@pytest.mark.parametrize("failing", ["analyse", "write", "sink", "items"])
def test_a_failure_anywhere_stops_every_thread_and_is_raised_unchanged(failing):
    error = OutputPathError("No space left on device")
    processed = {"render": [], "analyse": [], "write": [], "sink": []}
    pulled = []

    def items():
        for x in range(1000):
            if failing == "items" and x == 5:
                raise error
            pulled.append(x)
            yield x

    def step(name):
        def run(x):
            if name == failing and x == 5:
                raise error
            processed[name].append(x)
            return None if name == "sink" else x
        return run

    stages = [Stage(name, step(name)) for name in ("render", "analyse", "write")]
    with pytest.raises(OutputPathError) as caught:
        run_stages(items(), stages, step("sink"), max_in_flight=4)
    assert caught.value is error
    assert stage_threads() == []
    # work stopped near the failure: the bound keeps the caller from running ahead
    assert len(pulled) <= 5 + 4 + 1
    for name, xs in processed.items():
        assert xs == list(range(len(xs))), name  # in order, nothing skipped
    # the items ahead of the failure still went through every stage: finished work is not lost
    assert processed["sink"] == [0, 1, 2, 3, 4]


def test_a_failing_render_stops_the_workers():
    def render(x):
        if x == 3:
            raise RuntimeError("CUDA error: device-side assert")
        return x

    seen = []
    with pytest.raises(RuntimeError, match="device-side assert"):
        run_stages(range(10), [Stage("render", render), Stage("analyse", lambda x: x)], seen.append)
    assert stage_threads() == [] and seen == [0, 1, 2]  # what was rendered before the failure still finished


def test_what_the_sink_returns_is_rendered_next_and_the_run_waits_for_it():
    """A sink that asks for a follow-up item after some results (as the engine's shards ask for a
    resampling round): follow-ups are rendered before the rest of the items, and a follow-up asked
    for by the very last result still runs, however many items are in flight."""
    for limit in (1, 2, 4):
        rendered, seen = [], []

        def render(x, rendered=rendered):
            rendered.append(x)
            return x

        def sink(x, seen=seen):
            seen.append(x)
            if isinstance(x, int) and x % 3 == 2:
                return [f"again-{x}"]
            return None

        run_stages(range(6), [Stage("render", render), Stage("analyse", lambda x: x)], sink, max_in_flight=limit)
        assert sorted(map(str, seen)) == sorted(map(str, [*range(6), "again-2", "again-5"])), limit
        assert seen == rendered and seen[-1] == "again-5"  # in render order; the last one was waited for
        if limit == 1:
            assert seen == [0, 1, 2, "again-2", 3, 4, 5, "again-5"]
    assert stage_threads() == []


class ThreadClock:
    """A clock per thread that moves only when a stage says it worked: busy times become exact
    sums whatever the threads' interleaving."""

    def __init__(self):
        self.local = threading.local()

    def __call__(self) -> float:
        return getattr(self.local, "now", 0.0)

    def work(self, seconds: float) -> None:
        self.local.now = self() + seconds


def test_busy_times_add_up_per_stage_and_name_the_bottleneck():
    clock = ThreadClock()
    cost = {"render": 0.25, "analyse": 1.0, "write": 0.5, "sink": 0.125}

    def step(name):
        def run(x):
            clock.work(cost[name] * (1 + x % 2))  # odd items cost twice as much
            return None if name == "sink" else x
        return run

    times = StageTimes()
    for _ in range(2):  # one StageTimes adds up over several runs (e.g. the rounds of a shard)
        run_stages(range(8), [Stage(n, step(n)) for n in ("render", "analyse", "write")], step("sink"),
                   times=times, clock=clock)
    # 2 runs x (4 even items x 1 + 4 odd items x 2) = 24 units of each stage's cost
    assert times.busy == {name: 24 * c for name, c in cost.items()}
    assert times.items == {name: 16 for name in cost}
    assert times.bottleneck == "analyse"
    # the calling thread's clock saw its own work only: render and sink
    assert times.wall == 24 * (cost["render"] + cost["sink"])
    assert times.shares()["render"] == cost["render"] / (cost["render"] + cost["sink"])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one stage"):
        run_stages([1], [], print)
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        run_stages([1], [Stage("render", int)], print, max_in_flight=0)


class _Watched(StageTimes):
    """StageTimes that says when a stage's busy seconds were added (for a reader inside a run)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.added = threading.Event()

    def add(self, name, seconds):
        super().add(name, seconds)
        if name == "analyse":
            self.added.set()


def test_a_live_share_never_exceeds_100_percent():
    """Read while the run goes on (as the progress bar does), between two sink calls: the wall time
    already covers the busy seconds of a stage that has just finished (once 10 s busy over 1 s)."""
    now = [0.0]
    times, seen = _Watched(wall=1.0), []  # a run after an earlier one (1 s of wall time)

    def analyse(x):
        now[0] += 10.0  # ten seconds of work on the fake clock
        return x

    def render(x):
        if x == 1:  # item 0 is analysed meanwhile, and no sink call has brought the wall up to date
            assert times.added.wait(SAFETY_S)
            seen.append(times.shares())
        return x

    run_stages(range(2), [Stage("render", render), Stage("analyse", analyse)], lambda x: None,
               times=times, clock=lambda: now[0])
    assert 0 < seen[0]["analyse"] <= 1.0, seen
    assert all(share <= 1.0 for share in times.shares().values())


def test_a_share_since_an_earlier_copy_is_at_most_100_percent():
    """A unit's report (`since` a copy taken when it opened) can take in the end of a call that began
    before: its share is capped at 1.0, never 250 %."""
    earlier = StageTimes({"finish": 0.0}, {"finish": 0}, wall=8.0)
    later = StageTimes({"finish": 5.0}, {"finish": 1}, wall=10.0)
    assert later.since(earlier).shares() == {"finish": 1.0}


def test_ctrl_c_while_the_threads_run_stops_at_the_next_item_and_joins_them():
    """SIGINT during a stage only asks to stop; the run stops at the next item, joins its threads and
    raises KeyboardInterrupt from the handler that was in place (here Python's own)."""
    import os
    import signal

    rendered, completed = [], []

    def render(x):
        rendered.append(x)
        if x == 1:
            os.kill(os.getpid(), signal.SIGINT)  # lands while this "native" call runs: held back
        completed.append(x)  # never cut short in the middle
        return x

    with pytest.raises(KeyboardInterrupt):
        run_stages(range(100), [Stage("render", render), Stage("analyse", lambda x: x)], lambda x: None)
    assert rendered == completed == [0, 1] and stage_threads() == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
