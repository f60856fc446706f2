"""Plain next-token head (horizon 1): the single-token baseline, p(y_1 | h).

With lm_head_weight and the default embedding_dim it starts as (nearly) the base model's
own next-token distribution. `rank` is ignored.
"""

from __future__ import annotations

from tjdkit.errors import TjdkitError
from tjdkit.heads.multihead import MultiHead


class STPHead(MultiHead):
    name = "stp"

    def _check_structure(self) -> None:
        if self.horizon != 1:
            raise TjdkitError(
                f"stp head predicts one token: horizon must be 1, got {self.horizon} (use multihead, cp or mps)"
            )
