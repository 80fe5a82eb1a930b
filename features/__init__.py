"""Event schema, the impression-click joiner, behaviour sequences, counting features.

The joiner's kernels are compiled by numba and cached on disk. Numba keys a
cached function on its own source file only, so a change in a helper it calls
from another file would leave a stale compiled caller behind; the cache folder
is therefore keyed by the content of all kernel sources.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

_KERNEL_SOURCES = ("compiled.py", "store.py", "counting.py", "joinkernel.py")


def _kernel_cache_dir() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _KERNEL_SOURCES:
        digest.update((here / name).read_bytes())
    base = os.environ.get("STREAMCTR_NUMBA_CACHE",
                          Path.home() / ".cache" / "streamctr" / "numba")
    return str(Path(base) / digest.hexdigest()[:16])


numba.config.CACHE_DIR = _kernel_cache_dir()
