"""Ray backend: data-parallel training of the one engine on a site's own Ray cluster.

``fedseg train --backend ray`` (:func:`fedseg.ray.runner.run_ray`), an FL site's local trainer
for sites whose YAML says ``backend: ray`` (:class:`fedseg.ray.trainer.RaySiteTrainer`) and
``fedseg tune`` (:func:`fedseg.ray.tune.run_tune`).

Ray is an optional extra (``pip install 'fedseg[ray]'``). Importing this package, or
:mod:`fedseg.ray.cli` and :mod:`fedseg.ray.common`, never imports ray: the other modules import
it inside the functions that need it, so ``fedseg`` without Ray still starts, and asking for the
Ray backend without Ray installed ends with :func:`require_ray`'s message instead of a traceback.
"""

from __future__ import annotations

from fedseg.errors import FedsegError


def require_ray():
    """Import and return the ``ray`` module, or raise a :class:`FedsegError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise FedsegError(f"the Ray backend needs Ray, which is not installed ({exc}); "
                          "install it with: pip install 'fedseg[ray]'") from None
    return ray


__all__ = ["require_ray"]
