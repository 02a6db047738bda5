"""The report's markup: a `SetReport` -> one HTML page with inline CSS, no script, and only relative links.

Every text that comes from a file (names, error messages) is escaped; every link is a path relative to the page,
percent-encoded, so the page opens from file:// and from any web server, without a network.
"""
from __future__ import annotations

from html import escape
from urllib.parse import quote

from .report import PieceReport, SetReport, plural
from .plots import STRUCTURE_DISTANCES

METRIC_LABELS = {  # corpus.py's "metrics" keys, in the order shown
    "pitch_class_entropy": "pitch-class entropy (bits, 0..3.585)",
    "scale_consistency": "scale consistency",
    "groove_consistency": "groove consistency",
    "empty_bar_rate": "empty-bar rate",
    "notes_per_bar": "notes per bar",
    "bars": "bars",
    "notes": "notes",
}
MAX_INSTRUMENTS_LISTED = 12  # a 16-track arrangement fits on two lines; more is listed as a count
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1260px;
       padding: 0 16px 40px; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5em; margin: 18px 0 4px; } h2 { margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { margin: 0 0 6px; font-size: 1.1em; }
.sub { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 8px 0 14px; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f5; }
.row { display: flex; flex-wrap: wrap; gap: 0 36px; align-items: flex-start; }
.row > div { max-width: 520px; }
img.curves { width: 640px; }  /* 800 x 450 drawn at 640 px, so that the SE and the L_t table fit beside it */
.piece { border: 1px solid #ddd; border-radius: 8px; padding: 12px 14px; margin: 16px 0; }
.facts { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0 8px; padding: 0; list-style: none; }
.facts b { font-weight: 600; }
.pictures { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
img { max-width: 100%; height: auto; }
.pictures img { min-width: 0; }  /* let the pictures shrink below their pixel width, side by side */
.pianoroll { flex: 1 1 700px; } .heatmap { flex: 0 1 420px; }
audio { width: 100%; max-width: 560px; margin: 4px 0 6px; display: block; }
.note { background: #fff6e0; border: 1px solid #f0d89a; border-radius: 6px; padding: 6px 10px; margin: 6px 0; }
.se { font-size: 1.25em; margin: 6px 0; }
code { background: #f3f3f5; padding: 0 3px; border-radius: 3px; }
"""


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _link(path: str) -> str:
    """A relative path for an attribute: percent-encoded, then HTML-escaped."""
    return escape(quote(path), quote=True)


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are markup already (escaped by the caller)."""
    top = "".join(f"<th>{h}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{top}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _skips(stats: dict) -> str:
    skipped = stats.get("skipped") or {}
    if not skipped:
        return ""
    return " (skipped: " + ", ".join(f"{escape(reason)}: {n}" for reason, n in skipped.items()) + ")"


def _similarity_section(report: SetReport) -> str:
    gen, ref = report.generated, report.reference
    max_distance = gen["settings"]["max_distance"]
    if report.se is not None:
        used = report.se_distances
        span = f"t = {used[0]}..{used[-1]}" if used == list(range(used[0], used[-1] + 1)) else f"t in {used}"
        se = (f'<p class="se">SE = <b>{report.se:.4f}</b></p><p>mean |L<sub>t</sub>(reference) &minus; '
              f"L<sub>t</sub>(generated)| over {span} ({len(used)} distances; lower is closer to the reference)</p>")
    else:
        se = f'<p class="note">No SE: {escape(report.se_problem or "")}</p>'
    head = ["t (bars)", "L<sub>t</sub> generated"] + (["L<sub>t</sub> reference"] if ref else [])
    rows = []
    curves = [gen["similarity"]] + ([ref["similarity"]] if ref else [])
    for t in (t for t in STRUCTURE_DISTANCES if t <= max_distance):
        if all(curve.get(str(t)) is None for curve in curves):
            continue  # no bar pair that far apart on either side
        row = [str(t), _fmt(gen["similarity"].get(str(t)))]
        if ref:
            row.append(_fmt(ref["similarity"].get(str(t))))
        rows.append(row)
    picture = (f'<img class="curves" src="{_link(report.similarity_plot)}" width="800" height="450" '
               'alt="L_t of the generated pieces and of the reference corpus against bar distance t">')
    return (f'<h2>Bar similarity</h2><div class="row">{picture}<div>{se}'
            f"{_table(head, rows)}<p>L<sub>t</sub>: mean similarity of bars t apart (paper &sect;3.1).</p>"
            "</div></div>")


def _metrics_section(report: SetReport) -> str:
    gen, ref = report.generated["metrics"], (report.reference or {}).get("metrics")
    head = ["metric", "generated"] + (["reference"] if ref else [])
    rows = []
    for key, label in METRIC_LABELS.items():
        row = [escape(label), _fmt(gen.get(key))]
        if ref:
            row.append(_fmt(ref.get(key)))
        rows.append(row)
    return "<div><h2>Music metrics</h2>" + _table(head, rows) + "</div>"


def _perplexity_section(report: SetReport) -> str:
    if report.perplexity is None:
        return ""
    rows = [[_fmt(length), _fmt(r["songs"]), _fmt(r.get("songs_whole")), _fmt(r["tokens"]), _fmt(r["loss"], 4),
             _fmt(r["ppl"], 4)] for length, r in report.perplexity.items()]
    head = ["length L (tokens)", "songs", "whole (&le; L)", "tokens", "loss (bits/token)", "perplexity"]
    return (f"<div><h2>Perplexity</h2>{_table(head, rows)}<p>From <code>{escape(report.perplexity_source or '')}"
            "</code> (<code>museformer-eval-ppl --json</code>): each song is cut to its first L tokens.</p></div>")


def _audio(piece: PieceReport, mime: str) -> str:
    if piece.audio is not None:
        return (f'<audio controls preload="metadata"><source src="{_link(piece.audio)}" type="{mime}">'
                f'<a href="{_link(piece.audio)}">{escape(piece.audio)}</a></audio>')
    return f'<p class="note">No audio: {escape(piece.audio_problem or "")}</p>'


def _instruments(labels: list[str]) -> str:
    """All of them, or the first MAX_INSTRUMENTS_LISTED and how many more (an untrained model may use 100)."""
    if len(labels) <= MAX_INSTRUMENTS_LISTED:
        return ", ".join(labels)
    shown = ", ".join(labels[:MAX_INSTRUMENTS_LISTED])
    return f"{shown} and {len(labels) - MAX_INSTRUMENTS_LISTED} more ({len(labels)} in all)"


def _piece_section(piece: PieceReport, mime: str) -> str:
    grammar = ("&ndash;" if piece.grammar_errors is None else str(piece.grammar_errors))
    facts = [
        ("bars", str(piece.bars)), ("notes", f"{piece.notes:,}"),
        ("instruments", escape(_instruments(piece.instruments))), ("tempo", escape(piece.tempo)),
        ("time signature", escape(piece.time_signature)),
        ("grammar errors", f'{grammar} <small>({escape(piece.grammar_source)})</small>'),
    ]
    items = "".join(f"<li><b>{k}:</b> {v}</li>" for k, v in facts)
    name = escape(piece.name)
    return (f'<section class="piece"><h3><a href="{_link(piece.source)}">{name}</a></h3>'
            f'<ul class="facts">{items}</ul>{_audio(piece, mime)}<div class="pictures">'
            f'<img class="pianoroll" src="{_link(piece.pianoroll)}" width="1200" height="500" '
            f'alt="piano roll of {name}">'
            f'<img class="heatmap" src="{_link(piece.heatmap)}" width="650" height="550" '
            f'alt="bar x bar similarity of {name}"></div></section>')


def render_page(report: SetReport, title: str) -> str:
    gen = report.generated
    settings = gen["settings"]
    reference = (f"reference corpus: {escape(report.reference_name or '')}, "
                 f"{plural(report.reference['files'], 'file')}{_skips(report.reference)}" if report.reference
                 else "no reference corpus (--reference)")
    summary = (f"{plural(gen['files'], 'piece')}{_skips(gen)}; {reference}. Bars cut as the tokenizer cuts them "
               f"({settings['positions_per_beat']} positions per quarter note"
               f"{', leading empty bars dropped' if settings['remove_empty_bars'] else ''}).")
    pieces = "\n".join(_piece_section(p, report.audio_mime) for p in report.pieces)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="sub">{summary}</p>
{_similarity_section(report)}
<div class="row">{_metrics_section(report)}
{_perplexity_section(report)}</div>
<h2>Pieces</h2>
{pieces}
<p class="sub">Written by <code>museformer-analyze report</code>. Piano roll: x in bars, y in MIDI pitch, one colour
per instrument. Heatmap: l(i, j) of every pair of bars (grey: both bars empty).</p>
</body>
</html>
"""
