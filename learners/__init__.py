"""Online CTR learners behind one small protocol (:class:`Learner`), selectable by name.

>>> model = make_learner("ftrl", alpha=0.1, n_bits=12)
>>> model
FTRLProximal(alpha=0.1, beta=1.0, l1=0.0, l2=1.0, n_bits=12)
>>> make_learner("svm")
Traceback (most recent call last):
...
learners.base.LearnerError: unknown learner 'svm'; available: din, ftrl, gbdt_lr
>>> make_learner("ftrl", alpah=0.1)
Traceback (most recent call last):
...
learners.base.LearnerError: learner 'ftrl': got an unexpected keyword argument 'alpah'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from learners.base import Learner, LearnerError
from learners.din import DIN
from learners.ftrl import FTRLProximal
from learners.gbdt_lr import GBDTLR

__all__ = ["DIN", "GBDTLR", "LEARNERS", "FTRLProximal", "Learner", "LearnerError", "make_learner"]

# Name (as used by `--learners ftrl,gbdt_lr,din`) -> factory taking the learner's params.
LEARNERS: dict[str, Callable[..., Learner]] = {
    "ftrl": FTRLProximal,
    "gbdt_lr": GBDTLR,
    "din": DIN,
}


def make_learner(name: str, **params: Any) -> Learner:
    """A new learner registered under ``name``, built with ``params``."""
    try:
        factory = LEARNERS[name]
    except KeyError:
        raise LearnerError(
            f"unknown learner {name!r}; available: {', '.join(sorted(LEARNERS))}"
        ) from None
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as e:
        raise LearnerError(f"learner {name!r}: {e}") from None
    return factory(**params)
