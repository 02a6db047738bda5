"""The FC-Attention backends behind one interface, and the choice among them (``--attention-impl``).

A backend is one module of this package that defines

* ``attend_summaries(q_sum, k_sum, v_sum, k_reg, v_reg, layout, dropout_p, training, block_size)`` → z (B, H, S, D)
  (the summarisation, spec §2.2 step 3),
* ``attend_regular(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout, scheme, dropout_p, training, block_size)``
  → (B, H, Tq, D) (the aggregation, step 5),
* ``HAS_DROPOUT``: whether it implements attention dropout;

with the contracts of ``dense.py`` (the reference every other backend is tested against). Adding a backend is one
file plus its name in ``BACKENDS``. ``auto`` (the default) picks ``sparse`` on CPU and ``flex`` on CUDA.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger(__name__)

BACKENDS = ("dense", "sparse", "flex")
IMPLS = ("auto",) + BACKENDS

_logged = set()


# The one refusal of FlexAttention with attention dropout (here for --attention-impl flex, in flex.py for a call).
FLEX_HAS_NO_DROPOUT = ("--attention-impl flex has no attention dropout, but this model trains with "
                       "--attention-dropout > 0; pass --attention-dropout 0, or use --attention-impl auto/sparse")


def get_backend(name: str) -> ModuleType:
    """The backend module ``name`` (imported on first use: flex needs a torch with FlexAttention)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention impl {name!r}; choose one of {', '.join(IMPLS)}")
    return importlib.import_module(f".{name}", __package__)


def resolve_impl(impl: str, device_type: str, dropout_active: bool) -> str:
    """The backend that runs a call: ``impl`` itself, or for ``auto`` sparse on CPU and flex on CUDA.

    FlexAttention has no attention dropout, so ``auto`` uses ``sparse`` for a CUDA call that trains with attention
    dropout (evaluation and ``--attention-dropout 0`` training use flex); each choice is logged once.
    An explicit ``flex`` with active dropout is refused rather than silently training a different model.
    """
    if impl == "auto":
        if device_type != "cuda":
            name, why = "sparse", f"on {device_type}: the block-sparse kernel"
        elif dropout_active:
            name, why = "sparse", ("on cuda while training with attention dropout (FlexAttention has none; pass "
                                   "--attention-dropout 0 to train with flex)")
        else:
            name, why = "flex", "on cuda: FlexAttention"
        if (name, device_type, dropout_active) not in _logged:
            _logged.add((name, device_type, dropout_active))
            logger.info(f"FC-Attention --attention-impl auto -> {name} ({why})")
        return name
    if impl == "flex" and dropout_active:
        raise ValueError(FLEX_HAS_NO_DROPOUT)
    if impl not in BACKENDS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
    return impl
