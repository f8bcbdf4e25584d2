"""Scale-out on Ray: evals and searches whose runs are made by Ray workers, under limits and a budget for all.

``RayRunner`` is the pool (``moa.distributed.runner``); ``moa eval ... --ray`` and
``moa search ... --ray`` use it.  Ray is an optional extra
(``pip install 'moa-pipeline[ray]'``), imported only when a runner is made.
"""

from moa.distributed._support import CacheView, RayUnavailableError
from moa.distributed.runner import RayRunner

__all__ = ["CacheView", "RayRunner", "RayUnavailableError"]
