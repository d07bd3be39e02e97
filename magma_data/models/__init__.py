"""Network code: our CoTracker3 and TAPNext++ (official checkpoints load unchanged) and what every tracker shares.

The public loaders are here, imported on first use, so that importing ``point_tracking`` (as the
Lucas-Kanade tracker does) never imports torch:

    from magma_data.models import load_tapnextpp
    tracks, visible = load_tapnextpp("tapnextpp_ckpt.pt", resolution=256)(video, queries)
"""

from __future__ import annotations

import importlib

#: public name -> the module that defines it
_LOADERS = {
    "load_cotracker3": "magma_data.models.cotracker3_predictor",
    "load_tapnextpp": "magma_data.models.tapnextpp_predictor",
}

__all__ = list(_LOADERS)


def __getattr__(name: str):
    if name in _LOADERS:
        return getattr(importlib.import_module(_LOADERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
