"""PNG pictures with matplotlib: L_t curves of corpora (the paper's Fig. 1), a bar x bar heatmap, a piano roll.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, so no GUI backend or global
pyplot state is involved; every PNG is exactly `figsize x dpi` pixels (no tight bounding box).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from data_prep.constants import DRUM_INSTRUMENT

from .piece import Piece
from .similarity import similarity_matrix

DPI = 100
CURVES_SIZE = (8.0, 4.5)  # inches: 800 x 450 px
HEATMAP_SIZE = (6.5, 5.5)  # 650 x 550 px: square axes plus a colour bar
PIANOROLL_SIZE = (12.0, 5.0)  # 1200 x 500 px
STRUCTURE_DISTANCES = (1, 2, 4, 8, 12, 16, 24, 32)  # Museformer's fine-attention bars, marked on the L_t axis

# GM program families (program // 8), for piano-roll legends.
GM_FAMILIES = ("piano", "chromatic perc.", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth lead", "synth pad", "synth fx", "ethnic", "percussive", "sound fx")


def _figure(size: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("the pictures need matplotlib: pip install matplotlib (or `make install`)") from e
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> str:
    out_path = os.fspath(out_path)
    if os.path.dirname(out_path):
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=DPI, format="png")
    return out_path


def instrument_label(inst: int) -> str:
    if inst == DRUM_INSTRUMENT:
        return "drums"
    return f"{GM_FAMILIES[inst // 8]} ({inst})"


def plot_curves(
    curves: Sequence[tuple[str, dict]], out_path: str | os.PathLike, max_distance: int, title: str | None = None
) -> str:
    """L_t against t for each (label, {"1": L_1, ...}) on one chart."""
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves:
        ts = [t for t in range(1, max_distance + 1) if curve.get(str(t)) is not None]
        ax.plot(ts, [curve[str(t)] for t in ts], marker="o", markersize=3, linewidth=1.5, label=label)
    for t in STRUCTURE_DISTANCES:
        if t <= max_distance:
            ax.axvline(t, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlim(0.5, max_distance + 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xticks([t for t in STRUCTURE_DISTANCES if t <= max_distance])
    ax.set_xlabel("bar distance t")
    ax.set_ylabel("L_t: mean similarity of bars t apart")
    ax.set_title(title or "Bar similarity: " + ", ".join(label for label, _ in curves), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_heatmap(piece: Piece, out_path: str | os.PathLike) -> str:
    """The bar x bar similarity matrix l(i, j) of one piece, instruments pooled (grey where both bars are empty)."""
    matrix = similarity_matrix(piece.bar_note_sets())
    fig = _figure(HEATMAP_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.8")  # grey: two empty bars
    n = piece.num_bars
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0, origin="lower",
                      extent=(0.5, n + 0.5, 0.5, n + 0.5), interpolation="nearest")
    fig.colorbar(image, ax=ax, label="l(i, j)")
    ax.set_xlabel("bar j")
    ax.set_ylabel("bar i")
    ax.set_title(f"Bar similarity: {os.path.basename(piece.name)} ({n} bars)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_pianoroll(piece: Piece, out_path: str | os.PathLike) -> str:
    """Notes as boxes (x: quarter notes, y: pitch), one colour per instrument with a legend, and bar lines."""
    from matplotlib import colormaps

    P = piece.positions_per_beat
    fig = _figure(PIANOROLL_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    palette = colormaps["tab10"].colors
    for k, inst in enumerate(piece.instruments()):
        notes = [n for n in piece.notes if n.inst == inst]
        starts = np.array([piece.bar_start_pos[n.bar_idx] + n.pos_in_bar for n in notes]) / P
        widths = np.array([max(n.dur_pos, 1) for n in notes]) / P  # a 0-length note is drawn one step wide
        pitches = np.array([n.pitch % 128 for n in notes])
        color = "0.25" if inst == DRUM_INSTRUMENT else palette[k % len(palette)]
        ax.barh(pitches, widths, left=starts, height=0.8, color=color, alpha=0.75, linewidth=0,
                label=f"{instrument_label(inst)}: {len(notes)} notes")
    end_beats = (piece.bar_start_pos[-1] + piece.bar_length_pos[-1]) / P
    bar_beats = [s / P for s in piece.bar_start_pos] + [end_beats]
    for x in bar_beats:
        ax.axvline(x, color="0.7", linewidth=0.6, zorder=0)
    step = max(1, int(np.ceil(piece.num_bars / 24)))  # at most ~24 bar numbers on the axis
    ax.set_xticks(bar_beats[:-1][::step], [str(i + 1) for i in range(piece.num_bars)][::step])
    ax.set_xlim(bar_beats[0], end_beats)
    ax.set_xlabel("bar")
    ax.set_ylabel("MIDI pitch (drums: key number)")
    ax.set_title(f"{os.path.basename(piece.name)}: {piece.num_bars} bars, {len(piece.notes)} notes", fontsize=10)
    # legend outside the axes, on the right, so that it never hides notes
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0,
              ncol=1 + len(piece.instruments()) // 20)
    fig.tight_layout()
    return _save(fig, out_path)
