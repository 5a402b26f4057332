"""The front as pictures: a static PNG (matplotlib) and an interactive, self-contained HTML page (plotly).

Both show accuracy against predicted latency: every trial faded, the front highlighted and joined
as a step line, the budget as a dashed line and the baseline as a star.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..core.candidate import candidate_summary
from .pareto import TrialRecord

__all__ = ["plot_html", "plot_png"]


def _plot_groups(records: Sequence[TrialRecord], front: Sequence[TrialRecord]):
    """(other scored-or-partial trials with an accuracy, trials with only a latency, y for the latter)."""
    on_front = {r.number for r in front}
    others = [r for r in records if r.number not in on_front and r.accuracy is not None and r.latency_ms is not None]
    unscored = [r for r in records if r.accuracy is None and r.latency_ms is not None]
    shown = [r.accuracy for r in [*front, *others]]
    # Over-budget trials have no accuracy; a row under the lowest point still shows where the sampler went.
    floor = (min(shown) if shown else 0.0) * 100 - 2.0
    return others, unscored, floor


def _front_envelope(front: Sequence[TrialRecord]) -> list[TrialRecord]:
    # A 3-objective front point can sit below the accuracy/latency staircase (kept for its size);
    # the step line follows only the points that raise the best accuracy as latency grows.
    envelope, best = [], -math.inf
    for r in front:
        if r.accuracy > best:
            envelope.append(r)
            best = r.accuracy
    return envelope


def plot_png(path: Path, records, front, best, budget_ms, baseline) -> None:
    # The object API with an explicit Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    others, unscored, floor = _plot_groups(records, front)
    if others:
        ax.scatter([r.latency_ms for r in others], [100 * r.accuracy for r in others], s=18, color="0.6",
                   alpha=0.45, label="dominated / infeasible / partial")
    if unscored:
        ax.scatter([r.latency_ms for r in unscored], [floor] * len(unscored), marker="x", s=18, color="0.7",
                   alpha=0.6, label="over budget (not fine-tuned)")
    if front:
        envelope = _front_envelope(front)
        ax.step([r.latency_ms for r in envelope], [100 * r.accuracy for r in envelope], where="post",
                color="tab:blue", lw=1.4, alpha=0.8)
        points = ax.scatter([r.latency_ms for r in front], [100 * r.accuracy for r in front],
                            c=[r.size_bytes / 1000 for r in front], cmap="viridis", s=46, edgecolors="black",
                            linewidths=0.6, zorder=3, label="Pareto front")
        fig.colorbar(points, ax=ax, label="size (KB)")
    if best is not None:
        ax.scatter([best.latency_ms], [100 * best.accuracy], s=190, facecolors="none", edgecolors="tab:red",
                   linewidths=1.6, zorder=4, label=f"best under budget (trial {best.number})")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:red", ls="--", lw=1.2, label=f"budget {budget_ms:g} ms")
    ax.scatter([baseline["latency_ms"]], [100 * baseline["accuracy"]], marker="*", s=230, color="gold",
               edgecolors="black", zorder=4, label="baseline (uncompressed)")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{len(records)} trials, {len(front)} on the Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _hover(r: TrialRecord) -> str:
    accuracy = "not measured" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
    std = "" if r.latency_std_ms is None else f" ± {r.latency_std_ms:.3f}"
    size = "?" if r.size_bytes is None else f"{r.size_bytes / 1000:.1f} KB"
    text = json.dumps(r.candidate, sort_keys=True, separators=(",", ":"))
    text = text if len(text) <= 300 else text[:300] + "…"
    wrapped = "<br>".join(html.escape(text[i:i + 80]) for i in range(0, len(text), 80))
    return (f"<b>trial {r.number}</b><br>accuracy {accuracy}<br>latency {r.latency_ms:.3f}{std} ms<br>size {size}"
            f"<br>status {html.escape(r.status)}, origin {html.escape(r.origin or '-')}"
            f"<br>{html.escape(candidate_summary(r.candidate))}<br><span style='font-size:10px'>{wrapped}</span>")


def plot_html(path: Path, records, front, budget_ms, baseline) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    others, unscored, floor = _plot_groups(records, front)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.68, 0.32], vertical_spacing=0.08,
                        specs=[[{"type": "xy"}], [{"type": "table"}]])
    fig.add_trace(go.Scatter(
        x=[r.latency_ms for r in others], y=[100 * r.accuracy for r in others], mode="markers",
        name="dominated / infeasible / partial", marker={"color": "grey", "size": 6, "opacity": 0.4},
        text=[_hover(r) for r in others], hovertemplate="%{text}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[r.latency_ms for r in unscored], y=[floor] * len(unscored), mode="markers",
        name="over budget (not fine-tuned)", marker={"color": "grey", "symbol": "x", "size": 6, "opacity": 0.5},
        text=[_hover(r) for r in unscored], hovertemplate="%{text}<extra></extra>"), row=1, col=1)
    envelope = _front_envelope(front)
    fig.add_trace(go.Scatter(
        x=[r.latency_ms for r in envelope], y=[100 * r.accuracy for r in envelope], mode="lines",
        line={"shape": "hv", "color": "royalblue", "width": 1.5}, hoverinfo="skip", showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[r.latency_ms for r in front], y=[100 * r.accuracy for r in front], mode="markers", name="Pareto front",
        marker={"size": 10, "color": [r.size_bytes / 1000 for r in front], "colorscale": "Viridis",
                "line": {"color": "black", "width": 1},
                "colorbar": {"title": {"text": "size (KB)"}, "len": 0.6, "y": 0.68}},
        text=[_hover(r) for r in front], hovertemplate="%{text}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[baseline["latency_ms"]], y=[100 * baseline["accuracy"]], mode="markers", name="baseline (uncompressed)",
        marker={"symbol": "star", "size": 16, "color": "gold", "line": {"color": "black", "width": 1}},
        hovertemplate=(f"<b>baseline</b><br>accuracy {100 * baseline['accuracy']:.2f}%<br>latency "
                       f"{baseline['latency_ms']:.3f} ms<br>size {baseline['size_bytes'] / 1000:.1f} KB<extra></extra>")),
        row=1, col=1)
    if budget_ms is not None:
        fig.add_vline(x=budget_ms, line_dash="dash", line_color="red", annotation_text=f"budget {budget_ms:g} ms",
                      row=1, col=1)
    fig.add_trace(go.Table(
        header={"values": ["trial", "accuracy %", "latency ms", "size KB", "status", "origin", "candidate"]},
        cells={"values": [
            [r.number for r in front], [f"{100 * r.accuracy:.2f}" for r in front],
            [f"{r.latency_ms:.3f}" for r in front], [f"{r.size_bytes / 1000:.1f}" for r in front],
            [r.status for r in front], [r.origin for r in front], [candidate_summary(r.candidate) for r in front]]},
        columnwidth=[1, 2, 2, 2, 2, 3, 8]), row=2, col=1)
    fig.update_xaxes(title_text="predicted latency (ms)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_layout(title=f"{len(records)} trials, {len(front)} on the Pareto front", height=900,
                      template="plotly_white", legend={"orientation": "h", "y": 1.04})
    fig.write_html(path, include_plotlyjs=True)


