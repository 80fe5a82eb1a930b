"""Sparse features of an impression for linear learners, as a river-style feature dict.

Names are ``field=value`` strings with value 1.0; learners hash the names.

* ids and position, and crosses whose interaction matters for CTR: a user's taste
  for a category, an item's position effect, a category's appeal in a context;
* behaviour, from the joiner (strictly before the impression): the categories of
  the user's recent clicks, whether the user recently clicked this very item, and
  how many of the user's recent clicks fall in the impression's category (the
  lifelong hard search), bucketed;
* a constant ``bias``, which gives linear learners an intercept with its own
  per-coordinate learning rate (river's intercept is off in the parity setting).

>>> from features.events import Click, Impression
>>> from features.joiner import Joiner
>>> j = Joiner()
>>> imp = Impression("i1", "r1", "u7", "it3", "c2", 1, 1000, {"device": "ios"})
>>> _ = j.push([Impression("i0", "r0", "u7", "it1", "c2", 0, 0), Click("i0", "u7", 10), imp])
>>> row = j.settle().rows[0]  # the newest event waits for a newer one, or for settle()
>>> sorted(impression_features(imp, j.features(row)))
... # doctest: +NORMALIZE_WHITESPACE
['bias', 'category=c2', 'category×ctx.device=c2|ios', 'ctx.device=ios', 'item=it3',
 'item×position=it3|1', 'position=1', 'recent_category=c2', 'same_category_clicks=1',
 'user=u7', 'user×category=u7|c2']
"""

from __future__ import annotations

from features.events import Impression
from features.joiner import JoinedFeatures

__all__ = ["impression_features"]

# Upper bounds of the buckets of "how many recent clicks in this category".
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 16)


def _bucket(n: int) -> str:
    for bound in _COUNT_BUCKETS:
        if n <= bound:
            return str(bound)
    return f">{_COUNT_BUCKETS[-1]}"


def impression_features(imp: Impression, joined: JoinedFeatures) -> dict[str, float]:
    """Feature dict of one impression: ids, position, context, behaviour and crosses."""
    x = {
        "bias": 1.0,
        f"user={imp.user_id}": 1.0,
        f"item={imp.item_id}": 1.0,
        f"category={imp.category_id}": 1.0,
        f"position={imp.position}": 1.0,
        f"user×category={imp.user_id}|{imp.category_id}": 1.0,
        f"item×position={imp.item_id}|{imp.position}": 1.0,
        f"same_category_clicks={_bucket(len(joined.topk_item))}": 1.0,
    }
    for key, value in imp.context.items():
        x[f"ctx.{key}={value}"] = 1.0
        x[f"category×ctx.{key}={imp.category_id}|{value}"] = 1.0
    for category in joined.categories_of_recent():
        x[f"recent_category={category}"] = 1.0
    if joined.recently_clicked(imp.item_id):
        x["recent_item_match"] = 1.0
    return x
