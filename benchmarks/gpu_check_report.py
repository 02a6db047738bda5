"""The GPU check's report: report.json and report.md, one section per part."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


from gpu_check_common import REPO, Sizes, fmt


def header(args, sizes: Sizes) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    cuda = sizes.device == "cuda"
    return dict(gpu=torch.cuda.get_device_name(0) if cuda else "none (CPU dry run)", torch=torch.__version__,
                cuda=torch.version.cuda, python=platform.python_version(), machine=platform.machine(),
                cpus=os.cpu_count(), date=datetime.datetime.now().isoformat(timespec="seconds"), commit=commit,
                command=" ".join([Path(sys.executable).name] + sys.argv), dry_run=args.dry_run)


def write_report(out: Path, head: dict, parts: dict) -> None:
    (out / "report.json").write_text(json.dumps(dict(header=head, parts=parts), indent=1, default=str))
    md = ["# GPU check report", ""]
    md += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in head.items()]
    for name, p in parts.items():
        md += ["", f"## {name}: {p['status']} ({p.get('seconds', 0):.0f} s)", ""]
        if p.get("reason"):
            md.append(f"Reason: {p['reason']}\n")
        r = p.get("result") or {}
        md += RENDER.get(name, lambda r: [])(r)
        if p.get("traceback"):
            md += ["", "```", p["traceback"].rstrip(), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")


def render_a(r):
    return [f"`{r.get('command')}`: {r.get('summary')}", ""] + [f"- {s}" for s in r.get("skipped", [])]


def render_b(r):
    lines = [f"{r.get('device')}, {r.get('dtype')}, embed {r.get('dim')}, {r.get('heads')} heads. {r.get('note')}.",
             "", "| tokens | sdpa ms | flex ms | sparse ms | flex/sdpa | sparse/sdpa | goal | flex/sdpa mem | "
             "sparse/sdpa mem | peak MiB sdpa / flex / sparse | first step s sdpa / flex / sparse |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r.get("rows", []):
        ms = [fmt(row[m].get("median_ms")) if "error" not in row[m] else "error" for m in ("sdpa", "flex", "sparse")]
        peak = " / ".join(fmt(row[m].get("peak_mib")) for m in ("sdpa", "flex", "sparse"))
        first = " / ".join(fmt(row[m].get("first_step_s")) for m in ("sdpa", "flex", "sparse"))
        goal = f"<= {row['goal']}" if row.get("goal") else "-"
        lines.append(f"| {row['length']} | {' | '.join(ms)} | {fmt(row['flex/sdpa time'])} | "
                     f"{fmt(row['sparse/sdpa time'])} | {goal} | {fmt(row['flex/sdpa memory'])} | "
                     f"{fmt(row['sparse/sdpa memory'])} | {peak} | {first} |")
    return lines


def render_c(r):
    lines = ["| run | updates | words/s | words/batch | peak MiB | after update MiB | loss first → last | graphs | "
             "last new graph at update |", "|---|---|---|---|---|---|---|---|---|"]
    for name, x in r.get("runs", {}).items():
        if "error" in x:
            lines.append(f"| {name} | {x['error'].splitlines()[0]} |||||||")
            continue
        peak = x["peak_mib"] if x["peak_mib"] is not None else x["rss_peak_mib"]
        lines.append(f"| {name} | {x['updates']}{' (budget)' if x['interrupted'] else ''} | {fmt(x['wps'])} | "
                     f"{fmt(x['wpb'])} | {fmt(peak)} | {fmt(x['after_update_mib'])} | {fmt(x['loss_first'])} → "
                     f"{fmt(x['loss_last'])} | {fmt(x['graphs'])} | {fmt(x['last_new_graph_at_update'])} |")
    lines += ["", "Tokens per batch, museformer_lm vs transformer_lm: " + json.dumps(
        r.get("tokens_per_batch_comparison"), default=str), "", r.get("method", "")]
    return lines


def render_d(r):
    lines = [f"{r.get('parameters')} parameters, {r.get('dtype')}, prompt {r.get('prompt')}, "
             f"{r.get('new_tokens')} new tokens", "", "| batch | tokens/s | steps/s | prefill s |", "|---|---|---|---|"]
    lines += [f"| {x['batch']} | {fmt(x.get('tokens_per_s'))} | {fmt(x.get('steps_per_s'))} | {fmt(x.get('prefill_s'))} |"
              for x in r.get("rows", [])]
    return lines


RENDER = {"a": render_a, "b": render_b, "c": render_c, "d": render_d}
