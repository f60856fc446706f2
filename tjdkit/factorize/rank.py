"""Automatic Tucker ranks from the spectra of the attention tensor's unfoldings.

    spectra = mode_spectra(tensor)              # singular values of modes d_model, head_dim, role
    ranks = auto_ranks(spectra, energy=0.99)    # smallest ranks keeping 99% of each mode's energy

For a truncated HOSVD the squared error is at most the sum over modes of the discarded
squared singular values, so keeping `energy` of every mode bounds the relative error by
sqrt(3 * (1 - energy)). tensorly has no explained-variance helper, hence this module.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from tjdkit.config import FactorizeSection
from tjdkit.errors import TjdkitError
from tjdkit.factorize.specs import MODE_NAMES, Rank

DEFAULT_ENERGY = FactorizeSection.energy  # chosen, and justified by measurement, in tjdkit.config


def mode_spectra(tensor: Tensor) -> list[Tensor]:
    """Singular values (descending, float32) of the mode-0, -1 and -2 unfoldings of `tensor`.

    Those are the d_model, head_dim and role modes; the heads mode is never decomposed.
    """
    import tensorly as tl

    data = tensor.detach().float()
    with tl.backend_context("pytorch"):
        return [gram_svd(tl.unfold(data, mode))[1] for mode in range(len(MODE_NAMES))]


def gram_svd(matrix: Tensor, n_eigenvecs: Optional[int] = None, **_ignored) -> tuple[Tensor, Tensor, Tensor]:
    """U, S, V^T of `matrix` with U and S from the eigendecomposition of the small Gram matrix.

    The unfoldings are very wide (Gemma 3: 640 x 4096); on a CPU LAPACK's SVD of such a
    matrix takes ~10 s, eigh of the 640 x 640 Gram matrix ~0.3 s. U stays orthonormal to
    float32 round-off, so a full-rank Tucker is still exact; only tiny singular values
    lose relative accuracy, which does not move an energy threshold. Usable as tensorly's
    `svd=` callable (tensorly's own "symeig_svd" builds the large Gram matrix instead).
    """
    rows, cols = matrix.shape
    if rows > cols:  # tall: the Gram trick would not help, use the SVD
        u, s, vt = torch.linalg.svd(matrix, full_matrices=False)
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending
        s = eigenvalues.flip(0).clamp_min(0).sqrt()
        u = eigenvectors.flip(1)
        vt = (u.T @ matrix) / s.clamp_min(torch.finfo(s.dtype).eps)[:, None]  # only its signs matter to tensorly
    k = len(s) if n_eigenvecs is None else min(int(n_eigenvecs), len(s))
    return u[:, :k], s[:k], vt[:k]


def auto_ranks(spectra: Sequence[Tensor], energy: float) -> Rank:
    """Per mode, the smallest rank k with sum(s[:k]**2) >= energy * sum(s**2).

    energy = 1.0 keeps every singular value (full rank). A mode whose spectrum is all
    zeros gets rank 1 (a rank cannot be zero).
    """
    if not 0.0 < float(energy) <= 1.0:
        raise TjdkitError(f"energy must lie in (0, 1], got {energy}")
    if len(spectra) != len(MODE_NAMES):
        raise ValueError(f"expected {len(MODE_NAMES)} spectra ({', '.join(MODE_NAMES)}), got {len(spectra)}")
    return tuple(_rank_for_energy(s, float(energy)) for s in spectra)  # type: ignore[return-value]


def _rank_for_energy(singular_values: Tensor, energy: float) -> int:
    squared = torch.sort(singular_values.detach().double().flatten(), descending=True).values ** 2
    total = squared.sum()
    if energy >= 1.0:
        return max(1, len(squared))
    if total <= 0:
        return 1
    kept = torch.cumsum(squared, dim=0) / total  # kept[k-1]: share of the energy in the top k
    # Smallest k with kept[k-1] >= energy; the clamp guards against round-off on the last entry.
    k = int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype), right=False)) + 1
    return min(max(k, 1), len(squared))
