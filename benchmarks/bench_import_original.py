"""How long museformer-import-original takes on a paper-size checkpoint (4 layers, 512 wide, 16.1 M parameters).

    .venv/bin/python benchmarks/bench_import_original.py [--repeats 3]

No paper-size checkpoint of the original ships with the repository, so one is made in the original's exact format
from the committed tiny one (tests/data/original_model/): every tensor takes the paper model's shape (random
values, fp16), the two added layers repeat layer 1's names, the summary-stream twins keep sharing their storage,
and the ``args`` get the paper's sizes. Then the importer runs on it, as a user would, in this process.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE = REPO / "tests" / "data" / "original_model"
# tiny size -> paper size of every dimension that occurs in the tiny checkpoint's tensors
PAPER_DIMS = {64: 512, 128: 2048, 448: 512 + 256 + 128, 320: 512 + 256}


def paper_size_original(path: Path) -> int:
    """Write a paper-size checkpoint in the original's format to ``path``; returns its unique parameter count."""
    from museformer_tools.original_checkpoint import LAYER_SHARED_TWINS, read_original

    state = read_original(str(FIXTURE / "checkpoint_original.pt"))
    gen = torch.Generator().manual_seed(0)
    model = {}
    for name, tensor in state["model"].items():
        if ".layers.1." in name or any(name.endswith(twin) for twin in LAYER_SHARED_TWINS):
            continue  # layers are made from layer 0 below; twins alias their regular tensor
        shape = [PAPER_DIMS.get(d, d) for d in tensor.shape]
        for layer in range(4) if ".layers.0." in name else [None]:
            key = name if layer is None else name.replace(".layers.0.", f".layers.{layer}.")
            model[key] = (torch.randn(*shape, generator=gen) * 0.02).half()
    for layer in range(4):
        prefix = f"decoder.layers.{layer}."
        for twin, regular in LAYER_SHARED_TWINS.items():
            model[prefix + twin] = model[prefix + regular]  # the same storage, as the original saves it
    args = state["args"]
    args.num_layers, args.attention_embed_dim, args.token_embed_dim = 4, 512, 512
    args.num_attention_heads, args.ffn_embed_dim = (8,), 2048
    torch.save({"args": args, "model": model, "optimizer_history": state["optimizer_history"],
                "extra_state": state["extra_state"]}, path)
    unique = {id(t): t for t in model.values()}  # a twin is the same tensor object as its regular name's
    return sum(t.numel() for t in unique.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed imports (default 3)")
    args = parser.parse_args()
    from museformer_tools.import_original import import_original

    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "paper_original.pt"
        params = paper_size_original(original)
        print(f"paper-size original checkpoint: {params:,} parameters, {original.stat().st_size / 2**20:.1f} MiB")
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            summary = import_original(str(original), str(FIXTURE / "dict.txt"), str(Path(tmp) / f"out{i}.pt"))
            times.append(time.perf_counter() - start)
        print(f"imported: {summary.num_parameters:,} parameters, {summary.layers} layers, d={summary.embed_dim}")
        print(f"import time: median {statistics.median(times):.2f} s over {len(times)} runs "
              f"({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
