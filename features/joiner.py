"""Event-time join of clicks to impressions: the one joiner of replay and service.

An impression opens an attribution window ``[ts, ts + window_ms]``; a click on it
inside the window makes it a positive. When the watermark (the newest event time
seen minus ``allowed_lateness_ms``) passes the window's end, the sample is emitted
with its final label, positive or negative. Emitting both labels at the window end
delays every sample by the same ``window_ms``: emitting positives at click time
instead would show a learner the clicks of the last window before its non-clicks,
and bias it upwards wherever features are new (the delayed-feedback problem).

Everything that does not join is counted, never dropped silently:

* a second click on the same impression is a *duplicate click*;
* a repeated impression id is a *duplicate impression* (the first one wins);
* a click after its impression's window end is a *late click*;
* a click whose impression is not known yet is *held* (it may have overtaken its
  impression between two topics) until its impression arrives or the watermark
  passes ``click.ts + window_ms``; then it is an *orphan click*.

Closed windows are remembered for ``closed_retention_ms`` more, so a late or
duplicate click can be told apart from an orphan.

>>> from features.events import Click, Impression
>>> j = Joiner(JoinerConfig(window_ms=1000))
>>> j.add_impression(Impression("i1", "r1", "u1", "it1", "c1", 0, ts=0))
[]
>>> j.add_click(Click("i1", "u1", ts=900))
[]
>>> j.add_impression(Impression("i2", "r1", "u1", "it2", "c1", 1, ts=500))
[]
>>> [(s.impression.impression_id, s.label, s.click_ts) for s in j.advance(1001)]
[('i1', 1, 900)]
>>> [(s.impression.impression_id, s.label, s.final_ts) for s in j.flush()]
[('i2', 0, 1500)]
>>> j.stats.clicks_joined, j.stats.samples_positive, j.stats.samples_negative
(1, 1, 1)
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field

from features.events import Click, Impression

__all__ = ["JoinStats", "Joiner", "JoinerConfig", "Sample"]


@dataclass(frozen=True, slots=True)
class JoinerConfig:
    """Hyper-parameters of the join (event-time milliseconds)."""

    window_ms: int = 15 * 60 * 1000
    allowed_lateness_ms: int = 0
    closed_retention_ms: int | None = None  # None: one more window length

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {self.window_ms}")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms}")
        if self.closed_retention_ms is not None and self.closed_retention_ms < 0:
            raise ValueError(f"closed_retention_ms must be >= 0, got {self.closed_retention_ms}")

    @property
    def retention_ms(self) -> int:
        return self.window_ms if self.closed_retention_ms is None else self.closed_retention_ms


@dataclass(frozen=True, slots=True)
class Sample:
    """A labelled training example: the impression, its final label and when it became final.

    ``final_ts`` is the event time at which the joiner released it (the window end);
    ``click_ts`` the time of the click that made it positive. ``payload`` is whatever
    the caller attached to the impression (its features and scores at impression time).
    """

    impression: Impression
    label: int
    click_ts: int | None
    final_ts: int
    payload: object = None


@dataclass(slots=True)
class JoinStats:
    """Counters of everything the joiner saw; exported by the service, written to reports."""

    impressions: int = 0
    duplicate_impressions: int = 0
    clicks: int = 0
    clicks_joined: int = 0
    duplicate_clicks: int = 0
    late_clicks: int = 0
    orphan_clicks: int = 0
    samples_positive: int = 0
    samples_negative: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _Pending:
    impression: Impression
    payload: object
    click_ts: int | None = None


@dataclass(slots=True)
class Joiner:
    """Joins clicks to impressions in event time; see the module docstring for semantics.

    Each ``add_*``/``advance`` call returns the samples whose windows closed, in
    window-end order.
    """

    config: JoinerConfig = field(default_factory=JoinerConfig)
    stats: JoinStats = field(default_factory=JoinStats)
    watermark: int = field(default=-1, init=False)
    _max_ts: int = field(default=-1, init=False)
    _open: dict[str, _Pending] = field(default_factory=dict, init=False)
    _open_ends: list[tuple[int, str]] = field(default_factory=list, init=False)  # heap (end, id)
    _closed: dict[str, bool] = field(default_factory=dict, init=False)  # id -> was clicked
    _closed_expiry: list[tuple[int, str]] = field(default_factory=list, init=False)  # heap
    _held: dict[str, Click] = field(default_factory=dict, init=False)  # clicks before impression
    _held_expiry: list[tuple[int, str]] = field(default_factory=list, init=False)  # heap
    _orphans: list[Click] = field(default_factory=list, init=False)

    def add_impression(self, imp: Impression, payload: object = None) -> list[Sample]:
        """Open the impression's window; join a click that was waiting for it.

        ``payload`` travels with the impression into its sample; a duplicate
        impression is dropped with its payload.
        """
        out = self._advance_to(imp.ts)
        self.stats.impressions += 1
        iid = imp.impression_id
        if iid in self._open or iid in self._closed:
            self.stats.duplicate_impressions += 1
            return out
        pending = _Pending(imp, payload)
        self._open[iid] = pending
        heapq.heappush(self._open_ends, (imp.ts + self.config.window_ms, iid))
        held = self._held.pop(iid, None)
        if held is not None:
            # The held click was counted on arrival; now it finds its impression.
            self._join(pending, held)
        return out

    def add_click(self, click: Click) -> list[Sample]:
        """Join the click to its impression, or count it as duplicate, late or held."""
        out = self._advance_to(click.ts)
        self.stats.clicks += 1
        iid = click.impression_id
        pending = self._open.get(iid)
        if pending is not None:
            self._join(pending, click)
        elif iid in self._closed:
            if self._closed[iid]:
                self.stats.duplicate_clicks += 1
            else:
                self.stats.late_clicks += 1
        elif iid in self._held:
            self.stats.duplicate_clicks += 1
        else:
            self._held[iid] = click
            heapq.heappush(self._held_expiry, (click.ts + self.config.window_ms, iid))
        return out

    def advance(self, ts: int) -> list[Sample]:
        """Move event time forward without an event (e.g. an idle stream's wall clock)."""
        return self._advance_to(ts)

    def flush(self) -> list[Sample]:
        """End of input: close every open window and give up on every held click."""
        out = self._close_until(None)
        for click in self._held.values():
            self._orphan(click)
        self._held.clear()
        self._held_expiry.clear()
        return out

    def take_orphans(self) -> list[Click]:
        """Clicks declared orphan since the last call: bad records for the caller's DLQ."""
        orphans, self._orphans = self._orphans, []
        return orphans

    @property
    def open_windows(self) -> int:
        return len(self._open)

    @property
    def held_clicks(self) -> int:
        return len(self._held)

    def _orphan(self, click: Click) -> None:
        self.stats.orphan_clicks += 1
        self._orphans.append(click)

    def _join(self, pending: _Pending, click: Click) -> None:
        imp = pending.impression
        if pending.click_ts is not None:
            self.stats.duplicate_clicks += 1
        elif click.ts < imp.ts:
            # A click cannot precede what it clicks: bad clock or bad id, not a label.
            self._orphan(click)
        elif click.ts - imp.ts > self.config.window_ms:
            self.stats.late_clicks += 1
        else:
            pending.click_ts = click.ts
            self.stats.clicks_joined += 1

    def _advance_to(self, ts: int) -> list[Sample]:
        if ts <= self._max_ts:
            return []
        self._max_ts = ts
        watermark = ts - self.config.allowed_lateness_ms
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        return self._close_until(watermark)

    def _close_until(self, watermark: int | None) -> list[Sample]:
        """Close windows ending before ``watermark`` (all when None) and expire old state."""
        out: list[Sample] = []
        ends = self._open_ends
        retention = self.config.retention_ms
        while ends and (watermark is None or ends[0][0] < watermark):
            end, iid = heapq.heappop(ends)
            pending = self._open.pop(iid)
            clicked = pending.click_ts is not None
            if clicked:
                self.stats.samples_positive += 1
            else:
                self.stats.samples_negative += 1
            out.append(Sample(pending.impression, int(clicked), pending.click_ts, end,
                              pending.payload))
            self._closed[iid] = clicked
            heapq.heappush(self._closed_expiry, (end + retention, iid))
        if watermark is None:
            return out
        closed = self._closed_expiry
        while closed and closed[0][0] < watermark:
            del self._closed[heapq.heappop(closed)[1]]
        held = self._held_expiry
        window = self.config.window_ms
        while held and held[0][0] < watermark:
            end, iid = heapq.heappop(held)
            click = self._held.get(iid)
            # Entries of clicks that found their impression stay in the heap; skip them.
            if click is not None and click.ts + window == end:
                del self._held[iid]
                self._orphan(click)
        return out
