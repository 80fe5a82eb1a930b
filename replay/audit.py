"""Leak audit of a replay: for every scored impression, the times that must be in order.

An impression is scored at its event time ``t`` (the prediction time). The replay
is leak-free when, for every impression:

* the newest behaviour in its features — recent sequence and same-category
  search — happened strictly before ``t`` (``behaviour_not_before_prediction``);
* its label became known after ``t``: a click at or after ``t``, the final label at
  the window end ``t + window`` (``label_known_before_prediction``);
* the learners trained on it only after it was scored (``learned_before_scored``)
  and never on a label before it was known: a positive at or after its click, a
  ``FINAL`` sample at or after the window end (``trained_before_label_known``).

:class:`LeakAudit` hangs on the engine's ``on_score``, ``on_learn`` and
``on_outcome`` hooks and checks every impression, not a sample; the report lists
the counts of violations (all must be zero), the first offending impression ids,
and a sample of rows with their times for a reader to check by eye. It also keeps
each impression's sequence lengths, for the report's distribution of them.

The joiner's sequences are newest first (its contract, tested there), so the
newest behaviour is the first element: the audit costs O(1) per impression.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.events import Impression
from features.joiner import FINAL, JoinedFeatures, Release
from replay.engine import Outcome

__all__ = ["CHECKS", "LeakAudit"]

CHECKS = (
    "behaviour_not_before_prediction",
    "label_known_before_prediction",
    "learned_before_scored",
    "trained_before_label_known",
)
_NONE = -1  # "no such time" in the int64 columns
_EXAMPLES = 5  # offending impression ids kept per check


@dataclass
class LeakAudit:
    """Checks the times of every impression of one engine (see the module doc)."""

    window_ms: int
    violations: dict[str, int] = field(init=False)
    examples: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.violations = dict.fromkeys(CHECKS, 0)
        self.examples = {check: [] for check in CHECKS}
        # Scored impressions whose label is not final yet:
        # id → [prediction ts, newest behaviour ts, recent length, same-category length,
        #       first training ts].
        self._open: dict[str, list[int]] = {}
        self._ids: list[str] = []
        self._columns = {name: array("q") for name in (
            "prediction_ts", "newest_behaviour_ts", "recent_length", "same_category_length",
            "label", "click_ts", "label_final_ts", "first_trained_ts")}

    def _violation(self, check: str, impression_id: str) -> None:
        self.violations[check] += 1
        if len(self.examples[check]) < _EXAMPLES:
            self.examples[check].append(impression_id)

    def on_score(self, imp: Impression, features: JoinedFeatures) -> None:
        """Engine ``on_score`` hook: the impression is being scored now, at ``imp.ts``."""
        newest_age_s = min(
            (float(ages[0]) for ages in (features.recent_age_s, features.topk_age_s) if len(ages)),
            default=None,
        )
        if newest_age_s is None:
            newest = _NONE
        else:
            newest = imp.ts - round(newest_age_s * 1000)
            if newest_age_s <= 0:
                self._violation("behaviour_not_before_prediction", imp.impression_id)
        self._open[imp.impression_id] = [imp.ts, newest, len(features.recent_age_s),
                                         len(features.topk_age_s), _NONE]

    def on_learn(self, release: Release) -> None:
        """Engine ``on_learn`` hook: the learners have just trained on ``release``."""
        imp = release.impression
        entry = self._open.get(imp.impression_id)
        if entry is None:
            self._violation("learned_before_scored", imp.impression_id)
            return
        trained_at = release.final_ts
        too_early = trained_at < entry[0]
        if release.label:
            too_early |= release.click_ts is None or trained_at < release.click_ts
        if release.kind == FINAL:
            too_early |= trained_at < imp.ts + self.window_ms
        if too_early:
            self._violation("trained_before_label_known", imp.impression_id)
        if entry[4] == _NONE:
            entry[4] = trained_at

    def on_outcome(self, outcome: Outcome) -> None:
        """Engine ``on_outcome`` hook: the label is final; the impression's row is complete."""
        release = outcome.release
        imp = release.impression
        entry = self._open.pop(imp.impression_id, None)
        if entry is None:  # an outcome the audit never saw scored
            self._violation("learned_before_scored", imp.impression_id)
            return
        click_ts = release.click_ts if release.label and release.click_ts is not None else _NONE
        if (release.label and click_ts < entry[0]) or release.final_ts < entry[0] + self.window_ms:
            self._violation("label_known_before_prediction", imp.impression_id)
        cols = self._columns
        self._ids.append(imp.impression_id)
        for name, value in zip(("prediction_ts", "newest_behaviour_ts", "recent_length",
                                "same_category_length"), entry[:4], strict=True):
            cols[name].append(value)
        cols["first_trained_ts"].append(entry[4])
        cols["label"].append(release.label)
        cols["click_ts"].append(click_ts)
        cols["label_final_ts"].append(release.final_ts)

    def __len__(self) -> int:
        return len(self._ids)

    def column(self, name: str) -> np.ndarray:
        """One int64 column over the audited impressions, in outcome order."""
        return np.frombuffer(self._columns[name], dtype=np.int64)

    def summary(self, sample_rows: int = 12) -> dict[str, Any]:
        """The audit for ``report.json``: counts, verdict, lead times and a sample of rows."""
        n = len(self)
        predicted = self.column("prediction_ts")
        newest = self.column("newest_behaviour_ts")
        has_behaviour = newest != _NONE
        final = self.column("label_final_ts")
        lead_s = (predicted[has_behaviour] - newest[has_behaviour]) / 1000
        rows = []
        for i in np.unique(np.linspace(0, n - 1, min(sample_rows, n)).astype(np.int64)):
            rows.append({"impression_id": self._ids[i],
                         **{name: _time_or_none(int(col[i])) for name, col in (
                             ("newest_behaviour_ts", newest), ("prediction_ts", predicted),
                             ("click_ts", self.column("click_ts")),
                             ("label_final_ts", final),
                             ("first_trained_ts", self.column("first_trained_ts")))}})
        return {
            "impressions_checked": n,
            "with_behaviour": int(has_behaviour.sum()),
            "violations": dict(self.violations),
            "examples": {k: list(v) for k, v in self.examples.items() if v},
            "consistent": not any(self.violations.values()),
            "min_behaviour_lead_s": float(lead_s.min()) if lead_s.size else None,
            "median_behaviour_lead_s": float(np.median(lead_s)) if lead_s.size else None,
            "min_label_final_after_s": float((final - predicted).min() / 1000) if n else None,
            "sample": rows,
        }

    def sequence_lengths(self) -> dict[str, list[int]]:
        """Impressions per sequence length (index = length), recent and same-category."""
        return {name: np.bincount(self.column(f"{name}_length")).tolist() if len(self) else []
                for name in ("recent", "same_category")}


def _time_or_none(ts: int) -> int | None:
    return None if ts == _NONE else ts
