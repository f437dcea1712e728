"""The state of a run, built from its events (docs/metrics.md): plain Python, no I/O, no UI.

The reader (tui/follow.py) feeds it what the files gained; the widgets, `--once` and the runs
list read it. Times that measure staleness ("since last heard", "stalled") are taken with the
dashboard's own clock, passed in as `now` and `heard_at`, because the hosts' clocks may differ
from ours and NFS shows writes late.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter, methodcaller

from tui.fields import all_numbers, integer, is_number, number, text_field
from tui.follow import RunPoll, Skipped
from tui.format import format_duration
from tui.quality import Estimate, FinalJudge, eval_scores, final_judge, judge_label
from tui.series import Series

# Phases in which a rank waits on the others (docs/metrics.md, "Heartbeats"): a rank stuck in
# any other phase while the rest wait in one of these is the one holding the run up.
COLLECTIVE_PHASES = frozenset({"backward", "step", "checkpoint"})
# One rank's work that the others wait for by design, outside any collective; they say so with
# WAITING_PREFIX + the phase. Neither the worker nor the waiting ranks are stuck for that.
SOLO_PHASES = frozenset({"convert", "export", "tokenize"})
WAITING_PREFIX = "wait_"


@dataclass(frozen=True)
class Thresholds:
    # Above a minute by default: NFS may show another host's writes tens of seconds late.
    stall_after_s: float = 120.0  # the run is `stalled`, a rank silent or stuck, after this
    behind_steps: int = 20  # a rank this many steps behind the most advanced one is a straggler
    alert_flash_s: float = 30.0  # how long the newest alert stays in the header


@dataclass
class LogLine:
    """One line of the events panel."""

    step: int | None
    since_start_s: float | None  # writer's time since the attempt's run_start
    kind: str  # run_start, checkpoint, alert, straggler, run_end, judge
    text: str


@dataclass
class RankRow:
    rank: int
    host: str
    phase: str
    phase_for_s: float | None
    step: int
    steps_behind: int
    since_heard_s: float
    cpu_percent: float | None
    rss_bytes: float | None
    gpu_util_percent: float | None
    gpu_mem_used_bytes: float | None
    gpu_mem_total_bytes: float | None
    straggler: str | None  # why it is one, or None


TRAIN_SERIES = ("loss", "tokens_per_s", "samples_per_s", "mfu", "lr", "grad_norm")
TRAIN_FIELDS = itemgetter("step", *TRAIN_SERIES)
GET_TYPE = methodcaller("get", "type")


def waits_by_design(phase: str) -> bool:
    """A phase in which a rank is held up on purpose, never stuck: a collective, one rank's solo
    work, or waiting for that work."""
    return (phase in COLLECTIVE_PHASES or phase in SOLO_PHASES
            or (phase.startswith(WAITING_PREFIX) and phase[len(WAITING_PREFIX):] in SOLO_PHASES))


@dataclass
class Heartbeat:
    event: dict
    heard_at: float  # dashboard clock: when the rank's file last grew


class RunState:
    def __init__(self, thresholds: Thresholds = Thresholds(), series_capacity: int = 1024,
                 keep_log: int = 500, keep_samples: int = 50):
        self.thresholds = thresholds
        self.series_capacity = series_capacity
        self.keep_log = keep_log
        self.keep_samples = keep_samples
        self.heartbeats: dict[int, Heartbeat] = {}
        self.rank_skipped: dict[int, Skipped] = {}
        self.metrics_skipped = Skipped()
        self.last_news: float | None = None  # when the run last gave news (RunFollower.last_news)
        # Judge summaries by path relative to the run directory -> summary, or why unreadable.
        self.judge: dict[str, dict | str] = {}
        self.stragglers: dict[int, str] = {}
        self.version = 0  # bumped on every change, so that widgets redraw only when needed
        self.reset_metrics()

    def reset_metrics(self) -> None:
        """Forget everything read from metrics.jsonl (it was truncated or replaced)."""
        self.run_start: dict | None = None
        self.run_end: dict | None = None
        self.last_train: dict | None = None
        self.generate: dict | None = None
        self.judge_start: dict | None = None
        self.judge_end: dict | None = None
        self.eval_responses: list[int] = []  # steps whose responses were written for the judge
        self.first_start_time: float | None = None  # writer's clock: the first run_start
        self.last_event_time: float | None = None  # writer's clock: the latest event
        capacity = self.series_capacity
        self.series = {name: Series(capacity) for name in (*TRAIN_SERIES, "val_loss")}
        self.samples: deque[tuple[int | None, str]] = deque(maxlen=self.keep_samples)
        self.sample_prompt = ""
        self.log: deque[LogLine] = deque(maxlen=self.keep_log)
        self.alert: tuple[str, float] | None = None  # (text, dashboard time it arrived)
        self.events_read = 0
        self.version += 1

    # --- feeding -----------------------------------------------------------------------------

    def apply_poll(self, poll: RunPoll, now: float) -> bool:
        """Take in one poll of the run directory; True when anything changed."""
        changed = False
        if poll.metrics.reset:
            self.reset_metrics()
            changed = True
        if poll.metrics.events:
            self.apply_events(poll.metrics.events, now)
            changed = True
        self.last_news = poll.last_news
        for rank, chunk in poll.ranks.items():
            if chunk.reset:
                self.heartbeats.pop(rank, None)
                changed = True
            if chunk.events:
                self.heartbeats[rank] = Heartbeat(chunk.events[-1], poll.heard[rank])
                changed = True
        if poll.metrics_skipped != self.metrics_skipped or poll.rank_skipped != self.rank_skipped:
            self.metrics_skipped = poll.metrics_skipped
            self.rank_skipped = dict(poll.rank_skipped)
            changed = True
        if poll.judge is not None:
            self.judge = poll.judge
            changed = True
        if changed:
            self.version += 1
        return changed

    def apply_events(self, events: list[dict], now: float) -> None:
        handlers = {
            "eval": self._eval, "sample": self._sample, "checkpoint": self._checkpoint,
            "alert": self._alert, "run_end": self._run_end, "generate": self._generate,
            "judge_start": self._judge_start, "judge_end": self._judge_end,
            "eval_responses": self._eval_responses,
        }
        types = list(map(GET_TYPE, events))
        # Taken in segments between run_starts (a resume drops steps before what follows it).
        # Within one, the order of `train` events against the others does not matter: `train`
        # events, one per step and most of a run, are picked out in C and added in one batch.
        start = 0
        while True:
            try:
                end = types.index("run_start", start)
            except ValueError:
                end = len(types)
            segment, segment_types = events[start:end], types[start:end]
            self._add_train(list(compress(segment, map("train".__eq__, segment_types))))
            for event in compress(segment, map("train".__ne__, segment_types)):
                handler = handlers.get(event["type"])
                if handler is not None:  # unknown types are ignored, as unknown fields
                    handler(event, now)
            if end == len(types):
                break
            self._run_start(events[end], now)
            start = end + 1
        self.events_read += len(events)
        if events:
            self.last_event_time = number(events[-1], "time")
        self.version += 1

    def _add_train(self, events: list[dict]) -> None:
        if not events:
            return
        # One C-level pass over the events (itemgetter, then zip to columns): reading a long
        # run is mostly this, and touching each event once keeps it fast.
        try:
            rows = list(map(TRAIN_FIELDS, events))
        except KeyError:  # a malformed event lacks a field: take them one by one
            rows = [tuple(e.get(key) for key in ("step", *TRAIN_SERIES)) for e in events]
        steps, *columns = zip(*rows)
        if not all_numbers(steps):  # a malformed step: drop those events
            rows = [row for row in rows if is_number(row[0])]
            events = [e for e in events if is_number(e.get("step"))]
            if not rows:
                return
            steps, *columns = zip(*rows)
        self.last_train = events[-1]
        for name, values in zip(TRAIN_SERIES, columns):
            if all_numbers(values):
                self.series[name].extend(steps, values)
            else:  # null where not computed (grad_norm, mfu on CPU), or malformed
                kept = [(s, v) for s, v in zip(steps, values) if is_number(v)]
                self.series[name].extend([s for s, _ in kept], [v for _, v in kept])

    def _eval(self, event: dict, now: float) -> None:
        step, val_loss = number(event, "step"), number(event, "val_loss")
        if step is not None and val_loss is not None:
            self.series["val_loss"].add(step, val_loss)

    def _sample(self, event: dict, now: float) -> None:
        self.sample_prompt = text_field(event, "prompt")
        self.samples.append((integer(event, "step"), text_field(event, "response")))

    def _generate(self, event: dict, now: float) -> None:
        self.generate = event

    def _eval_responses(self, event: dict, now: float) -> None:
        step = integer(event, "step")
        if step is not None:
            self.eval_responses.append(step)

    def _judge_start(self, event: dict, now: float) -> None:
        self.judge_start, self.judge_end = event, None
        self._log(event, "judge", f"judge started: {judge_label(event)}")

    def _judge_end(self, event: dict, now: float) -> None:
        self.judge_end = event
        status, error = text_field(event, "status", "failed"), text_field(event, "error")
        self._log(event, "judge", f"judge {status}" + (f": {error}" if error else ""))

    def _checkpoint(self, event: dict, now: float) -> None:
        seconds = number(event, "seconds")
        took = f" ({seconds:.1f} s)" if seconds is not None else ""
        self._log(event, "checkpoint", f"checkpoint {text_field(event, 'path')}{took}")

    def _alert(self, event: dict, now: float) -> None:
        kind = text_field(event, "kind", "alert")
        text = f"{kind}: {text_field(event, 'message')}"
        self._log(event, "alert", text)
        self.alert = (text, now)

    def _run_start(self, event: dict, now: float) -> None:
        attempt = integer(event, "attempt") or 1
        resumed_from = integer(event, "resumed_from_step") or 0
        if self.run_start is not None:
            self._drop_after(resumed_from)
        elif self.first_start_time is None:
            self.first_start_time = number(event, "time")
        self.run_start = event
        self.run_end = None
        self.generate = self.judge_start = self.judge_end = None
        if attempt > 1:
            self._log(event, "run_start", f"attempt {attempt} resumed from step {resumed_from}")
        else:
            self._log(event, "run_start", f"run started: {text_field(event, 'model')}")

    def _drop_after(self, step: int) -> None:
        """Forget earlier attempts' events past the step a resume continues from
        (docs/metrics.md, "Resumed runs"): the new attempt replays those steps."""
        for series in self.series.values():
            series.drop_after(step)
        if self.last_train is not None and (number(self.last_train, "step") or 0) > step:
            self.last_train = None
        self.samples = deque(((s, r) for s, r in self.samples if s is None or s <= step),
                             maxlen=self.keep_samples)
        self.eval_responses = [s for s in self.eval_responses if s <= step]
        self.log = deque((line for line in self.log if line.step is None or line.step <= step),
                         maxlen=self.keep_log)

    def _run_end(self, event: dict, now: float) -> None:
        self.run_end = event
        status = text_field(event, "status", "failed")
        error = text_field(event, "error")
        self._log(event, "run_end", f"run {status}" + (f": {error}" if error else ""))
        if status == "failed":
            self.alert = (f"run failed: {error}" if error else "run failed", now)

    def _log(self, event: dict, kind: str, text: str) -> None:
        start_time = number(self.run_start or {}, "time")
        event_time = number(event, "time")
        since = event_time - start_time if start_time is not None and event_time is not None else None
        self.log.append(LogLine(integer(event, "step"), since, kind, text))

    # --- reading -----------------------------------------------------------------------------

    def status(self, now: float) -> str:
        """`run_end`'s status when there is one, else `running`, or `stalled` when the run has
        given no news for `stall_after_s` (`last_news`: once there is a metrics.jsonl, only its
        growth, since heartbeats keep coming from a hung run); `waiting` before the first
        `run_start`, until that long without news (docs/metrics.md, "Staleness")."""
        if self.run_end is not None:
            return text_field(self.run_end, "status", "failed")
        if self.last_news is not None and now - self.last_news > self.thresholds.stall_after_s:
            return "stalled"
        return "running" if self.run_start is not None else "waiting"

    def step(self) -> int:
        """The last finished optimizer step."""
        candidates = [integer(self.run_start or {}, "resumed_from_step") or 0]
        for event in (self.last_train, self.run_end):
            if event is not None and integer(event, "step") is not None:
                candidates.append(integer(event, "step"))
        return max(candidates)

    def total_steps(self) -> int | None:
        return integer(self.run_start or {}, "total_steps")

    def describe(self) -> str:
        """What runs where: `gpt2-medium  2 ranks on node0,node1`."""
        start = self.run_start
        if start is None:
            return ""
        world = integer(start, "world_size")
        hosts = start.get("hosts")
        where = f" on {','.join(map(str, hosts))}" if isinstance(hosts, list) and hosts else ""
        return f"{text_field(start, 'model', '?')}  {world or '?'} rank{'' if world == 1 else 's'}{where}"

    def timing(self) -> str:
        """`epoch 2/2  elapsed 1:05  ETA 56 s`, the ETA replaced by the generation's progress
        once the test responses are being generated."""
        last, end = self.last_train or {}, self.run_end
        epochs = integer(self.run_start or {}, "epochs")
        elapsed = number(end, "elapsed_s") if end is not None else number(last, "elapsed_s")
        text = f"epoch {integer(last, 'epoch') or '-'}/{epochs or '?'}  elapsed {format_duration(elapsed)}"
        done, total = integer(self.generate or {}, "done"), integer(self.generate or {}, "total")
        if end is None and total:
            return text + f"  generating {done}/{total}"
        eta = None if end is not None else number(last, "eta_s")
        return text + f"  ETA {format_duration(eta)}"

    def duration(self) -> float | None:
        """Writer's time from the first run_start to the run's end, or to the latest event of a
        run without one (going on, or resumed)."""
        end = number(self.run_end, "time") if self.run_end is not None else self.last_event_time
        if self.first_start_time is None or end is None:
            return None
        return end - self.first_start_time

    def best_val(self) -> tuple[float, float] | None:
        """(val loss, its step) of the lowest validation loss."""
        lowest = self.series["val_loss"].lowest()
        return (lowest.low, lowest.last_step) if lowest is not None else None

    def final_val(self) -> float | None:
        """The whole validation split's loss with the final weights (a completed run's end)."""
        return number(self.run_end or {}, "final_val_loss")

    def active_alert(self, now: float) -> str | None:
        if self.alert is not None and now - self.alert[1] <= self.thresholds.alert_flash_s:
            return self.alert[0]
        return None

    def eval_scores(self) -> list[tuple[int, Estimate]]:
        """Each judged evaluation's mean score, in step order."""
        return eval_scores(self.judge)

    def final_judge(self) -> FinalJudge | None:
        return final_judge(self.judge_end, self.judge)

    def judge_pending(self) -> int:
        """Evaluations whose responses wait for their judge summary (`python -m judge follow`)."""
        judged = {step for step, _ in self.eval_scores()}
        return sum(step not in judged for step in set(self.eval_responses))

    def is_current_rank(self, rank: int) -> bool:
        """Ranks at or above the latest run_start's world size are an earlier attempt's
        (docs/metrics.md, "Ranks of the current attempt")."""
        world = integer(self.run_start or {}, "world_size")
        return world is None or rank < world

    def current_heartbeats(self) -> dict[int, Heartbeat]:
        return {rank: hb for rank, hb in self.heartbeats.items() if self.is_current_rank(rank)}

    def skipped(self) -> Skipped:
        """Lines skipped in metrics.jsonl and the current ranks' heartbeat files."""
        total = self.metrics_skipped
        for rank, skipped in self.rank_skipped.items():
            if self.is_current_rank(rank):
                total += skipped
        return total

    def rank_rows(self, now: float) -> list[RankRow]:
        heartbeats = self.current_heartbeats()
        if not heartbeats:
            return []
        steps = {rank: integer(hb.event, "step") or 0 for rank, hb in heartbeats.items()}
        most = max(steps.values())
        collective = [rank for rank, hb in heartbeats.items()
                      if text_field(hb.event, "phase") in COLLECTIVE_PHASES]
        watch = self.status(now) in ("running", "stalled")
        limit = self.thresholds.stall_after_s
        rows = []
        for rank in sorted(heartbeats):
            hb = heartbeats[rank]
            event = hb.event
            since_heard = max(0.0, now - hb.heard_at)
            phase = text_field(event, "phase", "?")
            written, began = number(event, "time"), number(event, "phase_since")
            # Both on the writer's clock, then our own clock since we heard it: no clock skew.
            phase_for = (written - began) + since_heard if written is not None and began is not None else None
            behind = most - steps[rank]
            straggler = None
            if watch:
                if since_heard > limit:
                    straggler = f"silent {format_duration(since_heard)}"
                elif (not waits_by_design(phase) and phase_for is not None and phase_for > limit
                      and any(other != rank for other in collective)):
                    straggler = f"stuck in {phase} {format_duration(phase_for)}"
                elif behind > self.thresholds.behind_steps:
                    straggler = f"{behind} steps behind"
            rows.append(RankRow(
                rank=rank, host=text_field(event, "host", "?"), phase=phase, phase_for_s=phase_for,
                step=steps[rank], steps_behind=behind, since_heard_s=since_heard,
                cpu_percent=number(event, "cpu_percent"), rss_bytes=number(event, "rss_bytes"),
                gpu_util_percent=number(event, "gpu_util_percent"),
                gpu_mem_used_bytes=number(event, "gpu_mem_used_bytes"),
                gpu_mem_total_bytes=number(event, "gpu_mem_total_bytes"),
                straggler=straggler,
            ))
        return rows

    def check_stragglers(self, now: float) -> None:
        """Log and flash a rank when it becomes a straggler (once, until it recovers)."""
        current = {row.rank: row.straggler for row in self.rank_rows(now) if row.straggler}
        for rank, why in current.items():
            if rank not in self.stragglers:
                text = f"rank {rank} straggler: {why}"
                self.log.append(LogLine(None, None, "straggler", text))
                self.alert = (text, now)
                self.version += 1
        self.stragglers = current

