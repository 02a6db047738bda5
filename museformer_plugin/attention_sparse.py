"""Block-sparse FC-Attention in plain PyTorch (work in progress: temporarily delegates to the dense reference)."""
from __future__ import annotations

from .attention import attend_regular_dense, attend_summaries_dense


def attend_summaries_sparse(q_sum, k_sum, v_sum, k_reg, v_reg, layout, dropout_p=0.0, training=False, block_size=64):
    return attend_summaries_dense(q_sum, k_sum, v_sum, k_reg, v_reg, layout, dropout_p, training)


def attend_regular_sparse(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout, scheme, dropout_p=0.0, training=False,
                          block_size=64):
    return attend_regular_dense(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout, scheme, dropout_p, training)
