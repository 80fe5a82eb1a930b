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

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from learners.base import Learner, LearnerError

if TYPE_CHECKING:
    from learners.din import DIN
    from learners.ftrl import FTRLProximal
    from learners.gbdt_lr import GBDTLR

__all__ = ["DIN", "GBDTLR", "LEARNERS", "FTRLProximal", "Learner", "LearnerError", "make_learner"]

# Name (as used by `--learners ftrl,gbdt_lr,din`) -> (module, class) of its factory.
_CLASSES = {
    "ftrl": ("learners.ftrl", "FTRLProximal"),
    "gbdt_lr": ("learners.gbdt_lr", "GBDTLR"),
    "din": ("learners.din", "DIN"),
}


class _Registry(Mapping[str, Callable[..., Learner]]):
    """Name -> learner class, each module imported when its class is first asked for.

    torch (DIN) and river with scikit-learn (GBDT+LR's drift detector) take seconds to
    import: a command that learns nothing (``checkpoint show``, ``--help``) need not wait
    for them.
    """

    def __getitem__(self, name: str) -> Callable[..., Learner]:
        module, attribute = _CLASSES[name]
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(_CLASSES)

    def __len__(self) -> int:
        return len(_CLASSES)


LEARNERS: Mapping[str, Callable[..., Learner]] = _Registry()
_BY_CLASS = {attribute: name for name, (_, attribute) in _CLASSES.items()}


def __getattr__(attribute: str) -> Any:
    """``from learners import DIN`` imports DIN's module then (see :class:`_Registry`)."""
    if attribute in _BY_CLASS:
        return LEARNERS[_BY_CLASS[attribute]]
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


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
