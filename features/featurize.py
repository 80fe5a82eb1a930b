"""Sparse categorical features of an impression, as a river-style feature dict.

A constant ``bias`` feature gives linear learners an intercept with its own
per-coordinate learning rate (river's intercept is off in the parity setting).

Names are ``field=value`` strings with value 1.0; learners hash the names. Crosses
pair fields whose interaction matters for CTR: a user's taste for a category, an
item's position effect, a category's appeal in a context.

>>> from features.events import Impression
>>> imp = Impression("i1", "r1", "u7", "it3", "c2", 1, 1000, {"device": "ios"})
>>> sorted(impression_features(imp))  # doctest: +NORMALIZE_WHITESPACE
['bias', 'category=c2', 'category×ctx.device=c2|ios', 'ctx.device=ios', 'item=it3',
 'item×position=it3|1', 'position=1', 'user=u7', 'user×category=u7|c2']
"""

from __future__ import annotations

from features.events import Impression

__all__ = ["impression_features"]


def impression_features(imp: Impression) -> dict[str, float]:
    """Feature dict of one impression: ids, position, context and their crosses."""
    x = {
        "bias": 1.0,
        f"user={imp.user_id}": 1.0,
        f"item={imp.item_id}": 1.0,
        f"category={imp.category_id}": 1.0,
        f"position={imp.position}": 1.0,
        f"user×category={imp.user_id}|{imp.category_id}": 1.0,
        f"item×position={imp.item_id}|{imp.position}": 1.0,
    }
    for key, value in imp.context.items():
        x[f"ctx.{key}={value}"] = 1.0
        x[f"category×ctx.{key}={imp.category_id}|{value}"] = 1.0
    return x
