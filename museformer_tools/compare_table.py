"""compare_table: write the markdown table of run_scripts/compare.sh (the paper's Table 1, spec §6.3, at small scale).

Reads one ``museformer-eval-ppl`` JSON per model and writes a markdown page with the perplexity of every model at
every length, the number of parameters, the command that produced it and the machine it ran on; and, where a run
folder has ``se.json`` (``museformer-analyze se``), the similarity error of that model's samples.

    python -m museformer_tools.compare_table --out docs/results.md --command "bash run_scripts/compare.sh ..." \\
        museformer=runs/compare/museformer full=runs/compare/full linear=runs/compare/linear
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# What each compared preset is (spec §6.3: the paper's baselines and ablations).
DESCRIPTIONS = {
    "museformer": "Museformer: fine bars 1,2,4,8,12,16,24,32 + summaries of the others",
    "full": "full causal attention (Music Transformer-like, no relative positions)",
    "recent8": "ablation \"w/o bar selection\": fine = the previous 8 bars, summaries of the others",
    "no-coarse": "ablation \"w/o coarse-grained\": Museformer's fine bars, no summaries",
    "linear": "Linear Transformer (elu+1 causal linear attention)",
}


def load_run(run_dir: str, json_name: str = "ppl.json") -> Tuple[Dict[int, dict], Optional[int], Optional[int]]:
    """(results by length, parameter count, updates) of one compare.sh run folder."""
    path = os.path.join(run_dir, json_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run museformer-eval-ppl on {run_dir}'s checkpoint first")
    with open(path, encoding="utf-8") as f:
        results = {int(k): v for k, v in json.load(f).items()}
    params, updates = None, None
    checkpoint = os.path.join(run_dir, "checkpoint_best.pt")
    if os.path.isfile(checkpoint):
        from .checkpoint import read_checkpoint

        state = read_checkpoint(checkpoint)  # the one safe reader (no arbitrary code on load); CheckpointError
        params = sum(t.numel() for t in state["model"].values())
        history = state.get("optimizer_history") or [{}]
        updates = history[-1].get("num_updates")
    return results, params, updates


def load_se(run_dir: str) -> Optional[dict]:
    """The `museformer-analyze se --json` result of a run folder, or None when it has none."""
    path = os.path.join(run_dir, "se.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def machine_description() -> str:
    """CPU / GPU, core count, torch and fairseq versions, in one line."""
    import torch

    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} cores", f"Python {platform.python_version()}",
             f"torch {torch.__version__}"]
    try:
        import fairseq

        parts.append(f"fairseq {fairseq.__version__}")
    except ImportError:
        pass
    if torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name(0))
    return ", ".join(parts)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(runs: Sequence[Tuple[str, Dict[int, dict], Optional[int], Optional[int]]], command: str, machine: str,
           notes: str = "", se: Optional[Dict[str, dict]] = None) -> str:
    """The markdown page; `se` maps a model name to its `museformer-analyze se` result (an SE column if any)."""
    se = {name: r for name, r in (se or {}).items() if r is not None}
    lengths = sorted({length for _, results, _, _ in runs for length in results})
    header = ["model", "params", "updates"] + [f"PPL @ {length}" for length in lengths] + (["SE"] if se else [])
    lines = [
        "# Results: perplexity at several lengths (the paper's Table 1 at small scale)",
        "",
        f"Date {datetime.date.today().isoformat()}, commit `{git_commit()}`. Machine: {machine}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    best = {length: min(r[length]["ppl"] for _, r, _, _ in runs if length in r) for length in lengths}
    for name, results, params, updates in runs:
        cells = [f"{name}", f"{params / 1e6:.2f} M" if params else "?", str(updates) if updates is not None else "?"]
        for length in lengths:
            if length not in results:
                cells.append("–")
                continue
            ppl = results[length]["ppl"]
            cells.append(f"**{ppl:.3f}**" if ppl == best[length] else f"{ppl:.3f}")
        if se:
            best_se = min(r["se"] for r in se.values())
            value = se[name]["se"] if name in se else None
            cells.append("–" if value is None else (f"**{value:.4f}**" if value == best_se else f"{value:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "PPL = exp(mean NLL per token) on the test split, each song cut to its first L tokens (summary "
              "tokens are not counted); best per column in bold. Songs shorter than L are used whole:"]
    first = runs[0][1]
    for length in lengths:
        if length in first:
            r = first[length]
            lines.append(f"- L = {length}: {r['songs_whole']} of {r['songs']} songs used whole, {r['tokens']} tokens "
                         "scored.")
    if se:
        any_se = next(iter(se.values()))
        ref = any_se["reference"]
        lines += ["", "SE = similarity error (spec §6.2) = mean over bar distances t of |L_t(songs) - L_t(samples)|, "
                  "L_t = mean similarity of bars t apart (`museformer-analyze se`, docs/analysis.md); lower is closer "
                  f"to the real music's structure. Reference: {ref['files']} songs of the evaluation split. Samples:"]
        for name, r in se.items():
            t, n = r["distances"], r["generated"]["files"]
            lines.append(f"- `{name}`: {n} piece{'s' if n != 1 else ''}, {r['generated']['metrics']['bars']} bars, "
                         f"t = {t[0]}..{t[-1]} ({len(t)} distances).")
        missing = [name for name, _, _, _ in runs if name not in se]
        if missing:
            lines.append(f"- no SE for {', '.join(f'`{m}`' for m in missing)}: its run folder has no se.json "
                         "(sampling failed, see its sample.log).")
    lines += ["", "Models:"]
    for name, _, _, _ in runs:
        lines.append(f"- `{name}`: {DESCRIPTIONS.get(name, name)}")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m museformer_tools.compare_table",
        description="Markdown table of perplexities from compare.sh run folders (each with ppl.json).",
        epilog="example:\n  python -m museformer_tools.compare_table --out docs/results.md "
               "museformer=runs/compare/museformer linear=runs/compare/linear\n\n"
               "exit status: 0 = page written, 2 = bad input (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR pairs, in table order")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--command", default=" ".join(sys.argv),
                        help="the command to record on the page (default: this command line)")
    parser.add_argument("--notes", default="", help="a paragraph appended to the page (default: none)")
    parser.add_argument("--json-name", default="ppl.json",
                        help="name of the eval JSON inside each run dir (default: ppl.json)")
    args = parser.parse_args(argv)
    runs, se = [], {}
    try:
        for item in args.runs:
            name, sep, run_dir = item.partition("=")
            if not sep or not name or not run_dir:
                raise ValueError(f"expected NAME=RUN_DIR, got {item!r}")
            runs.append((name, *load_run(run_dir, args.json_name)))
            se[name] = load_se(run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    page = render(runs, args.command, machine_description(), args.notes, se)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page)
    print(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
