"""What every point tracker shares, networks and the track stage alike: the query grid and the batch bounds.

Torch-free, so the Lucas-Kanade tracker and the track stage use it without importing a network.
"""

from __future__ import annotations

import numpy as np

#: Windows per tracker call when neither the config nor the device says otherwise.
DEFAULT_BATCH_SIZE = 8
#: The most windows a tracker call may hold, whatever the device's memory allows: a bound on the
#: host memory of a Ray batch and on the latency of one call.
MAX_WINDOWS_PER_CALL = 64


def grid_points(grid_size: int, height: int, width: int) -> np.ndarray:
    """The query grid [N, 2] (x, y), row by row, inset by width/64 as CoTracker3's reference grid is.

    The one grid every tracker queries (CoTracker3's predictor included), so N = grid_size².
    """
    if grid_size == 1:
        return np.array([[width / 2, height / 2]], np.float32)
    margin = width / 64
    ys = np.linspace(margin, height - margin, grid_size)
    xs = np.linspace(margin, width - margin, grid_size)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=-1).astype(np.float32)
