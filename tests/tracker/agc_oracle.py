"""The AGC rule written out with numpy in float64, unit by unit (Brock et al. 2021, eq. 3, and the nfnets
reference code): the oracle of the single-process and the sharded (FSDP2) AGC tests. Complex arrays are
clipped by the moduli of their elements (np.abs), as torch's vector_norm measures a complex tensor."""

import numpy as np


def oracle(w: np.ndarray, g: np.ndarray, clipping: float) -> np.ndarray:
    """The paper's rule per unit; a unit is a row (dim 0), or the whole tensor when it is vector-like."""
    if np.squeeze(w).ndim <= 1:
        units_w, units_g = [w.reshape(-1)], [g.reshape(-1)]
        shape_back = [g.shape]
    else:
        units_w = [w[i].reshape(-1) for i in range(w.shape[0])]
        units_g = [g[i].reshape(-1) for i in range(g.shape[0])]
        shape_back = [g.shape[1:]] * g.shape[0]
    out = []
    for uw, ug, shape in zip(units_w, units_g, shape_back, strict=True):
        max_norm = clipping * max(np.sqrt((np.abs(uw) ** 2).sum()), 1e-3)
        g_norm = np.sqrt((np.abs(ug) ** 2).sum())
        out.append((ug * (max_norm / max(g_norm, 1e-6)) if g_norm > max_norm else ug).reshape(shape))
    return out[0] if np.squeeze(w).ndim <= 1 else np.stack(out)
