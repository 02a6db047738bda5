"""FC-Attention (spec §2.2): the layer module and its interchangeable backends.

* ``module.py``   — ``FineCoarseAttention``: projections of both streams, summarisation → K2/V2 → aggregation → Wo;
* ``backends.py`` — the backend interface and ``--attention-impl auto|dense|sparse|flex``;
* ``dense.py``    — the reference (full boolean masks);
* ``sparse.py``   — bar-aligned block-sparse gather (CPU fused flash kernel, or matmul + softmax on any device);
* ``flex.py``     — torch's FlexAttention with a BlockMask built from bar spans (compiled on CUDA);
* ``window.py``   — cached decoding: one new query over the window of keys its bar may see;
* ``common.py``   — the half-precision rules they share (q scaled first, fp32 softmax).
"""
from .backends import BACKENDS, IMPLS, get_backend, resolve_impl
from .common import softmax_dtype
from .module import FineCoarseAttention

__all__ = ["BACKENDS", "IMPLS", "FineCoarseAttention", "get_backend", "resolve_impl", "softmax_dtype"]
