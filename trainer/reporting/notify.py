"""Word when a run ends: a JSON message `{"text": ...}` (the form Slack's and Discord's incoming
webhooks accept) posted to a webhook on run_end, judge_end, non-finite losses and lost ranks.

The URL comes from an environment variable (`--notify-env NAME`), so it is never written into
config.json or a log. Posts go from a thread of their own, so a slow webhook never holds up
training; a failed post is reported once and never affects the run.
"""

from __future__ import annotations

import queue
import threading
import urllib.request

import orjson

from trainer.reporting.events import Alert, Event, JudgeEnd, RunEnd

TIMEOUT_S = 10.0
NOTIFIED_ALERTS = ("nonfinite_loss", "rank_lost")


def message(run_id: str, event: Event) -> str | None:
    """The text posted for an event, or None for events that are not worth a message."""
    if isinstance(event, RunEnd):
        how = f"final val loss {event.final_val_loss:.4f}" if event.final_val_loss is not None else event.error
        return f"{run_id}: run {event.status} at step {event.step}" + (f": {how}" if how else "")
    if isinstance(event, JudgeEnd):
        if event.status != "completed":
            return f"{run_id}: judging failed: {event.error}; to finish it: {event.command}"
        verdict = f"mean score {event.mean:.2f}"
        if event.tuned_minus_base is not None:
            diff, (low, high) = event.tuned_minus_base["mean_diff"], event.tuned_minus_base["ci95"] or (None, None)
            verdict += f", tuned minus base {diff:+.2f}" + (f" (95% CI {low:+.2f} to {high:+.2f})" if low is not None else "")
        return f"{run_id}: judged: {verdict}"
    if isinstance(event, Alert) and event.kind in NOTIFIED_ALERTS:
        return f"{run_id}: {event.kind} at step {event.step}: {event.message}"
    return None


class Notifier:
    """One per process (rank 0 with --notify-env), from the run's start to the end of judging."""

    def __init__(self, url: str, warn):
        self.url = url
        self.warn = warn  # warn(text): once, on the first failed post
        self._failed = False
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def notify(self, run_id: str, event: Event) -> None:
        text = message(run_id, event)
        if text is not None:
            self._queue.put(orjson.dumps({"text": text}))

    def close(self, timeout_s: float = TIMEOUT_S) -> None:
        """Post what is queued (waiting at most about timeout_s), then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    response.read()
            except Exception as e:  # any failure of someone else's server: reported once, never raised
                if not self._failed:
                    self._failed = True
                    self.warn(f"the webhook of --notify-env did not take a message ({type(e).__name__}); "
                              "the run goes on without it")
