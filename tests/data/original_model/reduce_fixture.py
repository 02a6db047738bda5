"""Make this folder's reduced copy of the original Museformer's outputs from ../shared/data/original_model/tiny/.

    .venv/bin/python tests/data/original_model/reduce_fixture.py ../shared/data/original_model/tiny

Copies the checkpoint, dict.txt and the Lakh song (CC-BY 4.0) as they are, and keeps of each of its (T, 560)
log-probability tables the log-probs of the targets (every row's scored entry) and every 16th full row
(``reference_logprobs.pt``). The other song of the shared folder (``mel69bars``, from a melody file whose licence
is not stated) is not copied: the tests read it from ../shared when it is there.
"""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

SEQS = ("lmd640",)
LAYOUTS = ("infer", "train")
ROW_STEP = 16


def main(src: str) -> None:
    src_dir, out_dir = Path(src), Path(__file__).resolve().parent
    manifest = json.loads((src_dir / "manifest.json").read_text())
    for name in ("checkpoint_original.pt", "dict.txt", *(f"seq_{s}.txt" for s in SEQS)):
        shutil.copyfile(src_dir / name, out_dir / name)
    reference = {}
    for seq in SEQS:
        inputs = torch.load(src_dir / f"inputs_{seq}.pt", weights_only=True)
        reference[seq] = {"src_tokens": inputs["src_tokens"].clone(), "target": inputs["target"].clone()}
        for layout in LAYOUTS:
            logprobs = torch.load(src_dir / f"logprobs_{seq}_{layout}.pt", weights_only=True)  # (T, V) fp32
            rows = torch.arange(0, logprobs.size(0), ROW_STEP)
            reference[seq][layout] = {
                "target_logprobs": logprobs.gather(1, inputs["target"][:, None])[:, 0].clone(),  # (T,)
                "row_index": rows,
                "rows": logprobs[rows].clone(),  # (ceil(T / 16), V)
            }
    torch.save(reference, out_dir / "reference_logprobs.pt")
    source = {name: manifest["files"][name]["sha256"] for name in manifest["files"]}
    (out_dir / "source_sha256.json").write_text(json.dumps({
        "muzic_commit": manifest["muzic_commit"], "source_files_sha256": source,
        "reference_logprobs.pt_sha256": hashlib.sha256((out_dir / "reference_logprobs.pt").read_bytes()).hexdigest(),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
