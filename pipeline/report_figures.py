"""The report's figures: the latency/quality trade-off (``pareto_figure``, labels placed so that none
overlaps another) and the reliability diagrams (``reliability_figure``), and ``png_bytes``, the one
way a figure becomes PNG bytes. Matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
import math

from .report_schema import (PERCENT_METRICS, evaluated_variants, failed_variants, format_metric, judged_by,
                            metric_label, name_runtime, quality, row_label, sorted_variants)


# -- the plot ---------------------------------------------------------------------------------

def _number_label(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    runs, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            runs.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(runs)


def _overlaps(a, b, margin: float = 2.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place_labels(ax, renderer, points_px, labels, obstacles, fontsize):
    """Greedy placement: each label at the first spot (on its point, then on rings around it)
    whose box overlaps no placed label, no obstacle box and (if possible) no other point, inside
    the axes. Returns the (dx, dy) pixel offset of each label."""
    from matplotlib.text import Text

    frame = ax.get_window_extent(renderer)
    frame = (frame.x0, frame.y0, frame.x1, frame.y1)
    sizes = []
    for text in labels:
        t = Text(0, 0, text, fontsize=fontsize, fontweight="bold", figure=ax.figure)
        bb = t.get_window_extent(renderer)
        sizes.append((bb.width + 4, bb.height + 4))  # + the white box's padding
    candidates = [(0.0, 0.0)]
    for radius in (16, 26, 38, 52, 68, 86, 106, 130, 160, 200):
        steps = max(12, int(2 * math.pi * radius / 14))
        candidates += [(radius * math.cos(2 * math.pi * k / steps), radius * math.sin(2 * math.pi * k / steps))
                       for k in range(steps)]
    dots = [(x - 3, y - 3, x + 3, y + 3) for x, y in points_px]
    placed: list[tuple] = []
    offsets = []
    for i, ((x, y), (w, h)) in enumerate(zip(points_px, sizes)):
        choice = None
        for avoid_dots in (True, False):
            for dx, dy in candidates:
                box = (x + dx - w / 2, y + dy - h / 2, x + dx + w / 2, y + dy + h / 2)
                if box[0] < frame[0] or box[2] > frame[2] or box[1] < frame[1] or box[3] > frame[3]:
                    continue
                if any(_overlaps(box, b) for b in placed + obstacles):
                    continue
                if avoid_dots and any(_overlaps(box, d, 0) for j, d in enumerate(dots) if j != i):
                    continue
                choice = (dx, dy, box)
                break
            if choice:
                break
        if choice is None:  # no free spot in the axes: stack the label above the others
            top = max([b[3] for b in placed + obstacles] + [y])
            choice = (0.0, top + 4 + h / 2 - y, (x - w / 2, top + 4, x + w / 2, top + 4 + h))
        placed.append(choice[2])
        offsets.append(choice[:2])
    return offsets


#: The colour of the plot's labels for each variant's fastest runtime within the quality limit.
FASTEST_COLOR = "tab:green"


def pareto_figure(report: dict):
    """The trade-off figure: latency (log scale) against accuracy, marker area by model size,
    the front drawn, each point (or group of coinciding points) numbered with a label that
    overlaps no other label, and a key beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged, higher = judged_by(report)
    variants = [v for v in sorted_variants(report) if quality(v, judged) is not None]
    unplotted = [v for v in sorted_variants(report) if quality(v, judged) is None]
    percent = judged in PERCENT_METRICS
    if not percent:
        metric = metric_label(judged, higher)
    elif any(v.get("accuracy") is not None for v in variants):
        metric = "top-1 accuracy (%)"
    elif any(isinstance(v.get("worst_output"), dict) for v in variants):
        metric = "agreement with fp32, worst output (%)"  # unlabelled: by each output's kind
    else:
        metric = "top-1 agreement with fp32 (%)"
    failed = failed_variants(report)
    worst = any("pareto_worst_class" in v for v in variants)
    key_lines = ["    (* = Pareto front; f = fastest of its variant within the quality limit"
                 + ("; w = front on worst-class accuracy)" if worst else ")")]
    width = max([len(name_runtime(v)) for v in variants] + [0])
    for number, v in enumerate(variants, 1):
        marks = (("*" if v.get("pareto") else " ") + ("f" if v.get("fastest") else " ")
                 + (("w" if v.get("pareto_worst_class") else " ") if worst else ""))
        lowest = (f"  worst class {v['worst_class_accuracy'] * 100:6.2f}%"
                  if v.get("worst_class_accuracy") is not None else "")
        key_lines.append(f"{number:>3} {marks} {name_runtime(v):<{width}}"
                         f"  {v['latency_ms']['median']:>8.4g} ms  "
                         + (f"{quality(v, judged) * 100:6.2f}%" if percent
                            else f"{judged} {format_metric(quality(v, judged), judged)}") + lowest)
    if unplotted or failed:
        key_lines.append("")
        key_lines += [f" not plotted: {name_runtime(v)} (no {'accuracy' if percent else judged})" for v in unplotted]
        key_lines += [f" not plotted: {name_runtime(v)} (failed)" for v in failed]
    key_font = 7.5
    height = max(5.5, 1.2 + len(key_lines) * key_font * 1.3 / 72)
    fig, ax = plt.subplots(figsize=(12.5, height), dpi=120)
    top = 1 - 0.4 / height
    fig.subplots_adjust(left=0.07, right=0.62, bottom=0.6 / height, top=top)
    fig.text(0.635, top, "\n".join(key_lines), va="top", ha="left", family="monospace",
             fontsize=key_font)
    ax.set_xscale("log")
    threads = (report.get("machine") or {}).get("threads")
    ax.set_xlabel(f"latency, median ms (batch 1, {threads} threads, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("edgeopt trade-off: marker area = model size, outlined = Pareto front", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if not variants:
        ax.text(0.5, 0.5, "no measured variant to plot", transform=ax.transAxes, ha="center")
        return fig

    xs = [v["latency_ms"]["median"] for v in variants]
    ys = [quality(v, judged) * (100 if percent else 1) for v in variants]
    lo, hi = min(xs), max(xs)
    span = max(math.log10(hi / lo), 0.2)
    ax.set_xlim(lo / 10 ** (span * 0.15), hi * 10 ** (span * 0.15))
    # percentages: at least half a point around the points; other metrics: 15% of their range
    # (or of their size, when every row has the same value)
    floor = 0.5 if percent else 0.05 * max(abs(y) for y in ys) or 1e-6
    pad = max(floor, (max(ys) - min(ys)) * 0.15)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    if not higher:  # better is up on every plot: lower-is-better metrics grow downwards
        ax.invert_yaxis()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda x, _: f"{x:g}")
    # labels at 1, 2 and 5 of each decade: decades alone left two labelled ticks on a plot
    # whose points sat between them
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    if not percent:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.4g}"))
    ax.xaxis.set_minor_formatter(plain if span < 1.2 else NullFormatter())
    sizes = [v.get("size_bytes") or 1 for v in variants]
    biggest = max(sizes)
    runtimes = sorted({v["runtime"] for v in variants})
    colors = dict(zip(runtimes, plt.cm.tab10.colors))
    for v, x, y, size in zip(variants, xs, ys, sizes):
        ax.scatter(x, y, s=40 + 600 * size / biggest, color=colors.get(v["runtime"], "gray"), alpha=0.6,
                   edgecolors="black" if v.get("pareto") else "none", linewidths=1.5, zorder=3)
    front = sorted((x, y) for v, x, y in zip(variants, xs, ys) if v.get("pareto"))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front",
                zorder=2)
    for rt in runtimes:
        ax.scatter([], [], color=colors[rt], label=rt)
    if any(v.get("fastest") for v in variants):
        ax.scatter([], [], marker="s", facecolor="white", edgecolor=FASTEST_COLOR,
                   label="fastest of its variant (f)")
    legend = ax.legend(loc="lower right", fontsize=8)

    # Points often coincide (same accuracy, near-equal latency): points closer than a few
    # pixels share one label ("3-5"), and every label is placed where it overlaps no other.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = ax.transData.transform(list(zip(xs, ys)))
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(px):
        for g in groups:
            gx, gy = px[g[0]]
            if abs(x - gx) < 8 and abs(y - gy) < 8:
                g.append(i)
                break
        else:
            groups.append([i])
    centers = [tuple(px[g[0]]) for g in groups]
    labels = [_number_label([i + 1 for i in g]) for g in groups]
    lb = legend.get_window_extent(renderer)
    offsets = _place_labels(ax, renderer, centers, labels, [(lb.x0, lb.y0, lb.x1, lb.y1)], fontsize=8)
    for g, text, (dx, dy) in zip(groups, labels, offsets):
        arrow = dict(arrowstyle="-", color="0.3", linewidth=0.7) if (dx or dy) else None
        # the label of a variant's fastest runtime within the quality limit ("f" in the key) is
        # drawn in FASTEST_COLOR, boxed
        fastest = any(variants[i].get("fastest") for i in g)
        box = (dict(boxstyle="round,pad=0.15", fc="white", ec=FASTEST_COLOR, lw=1.2, alpha=0.9) if fastest
               else dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8) if (dx or dy) else None)
        ax.annotate(text, (xs[g[0]], ys[g[0]]), xytext=(dx, dy), textcoords="offset pixels", ha="center",
                    va="center", fontsize=8, fontweight="bold", zorder=5, arrowprops=arrow, bbox=box,
                    color=FASTEST_COLOR if fastest else "black", gid="pareto-label")
    return fig


def png_bytes(fig, pad_inches: float = 0.1) -> bytes:
    """A Matplotlib figure as PNG bytes, cropped to its content; the figure is closed, so a
    report with many plots does not keep them all in memory.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> png_bytes(plt.figure(figsize=(1, 1)))[:4]
    b'\\x89PNG'
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=pad_inches)
    finally:
        plt.close(fig)
    return buf.getvalue()


def pareto_png_bytes(report: dict) -> bytes:
    """The trade-off plot (``pareto_figure``) as PNG bytes."""
    return png_bytes(pareto_figure(report), pad_inches=0.15)


def reliability_figure(report: dict):
    """Reliability diagrams, one panel per evaluated variant: accuracy against confidence per
    bin (bars), the diagonal of perfect calibration, and the ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in evaluated_variants(report) if v.get("calibration")]
    n = max(len(variants), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, v in zip(axes.flat, variants):
        ax.axis("on")
        cal = v["calibration"]
        width = 1.0 / cal["bins"]
        centers = [(i + 0.5) * width for i in range(cal["bins"])]
        filled = [i for i, n in enumerate(cal["count"]) if n]  # empty bins have nothing to draw
        xs = [centers[i] for i in filled]
        acc = [cal["accuracy"][i] for i in filled]
        conf = [cal["confidence"][i] for i in filled]
        ax.bar(xs, acc, width=width * 0.95, color="tab:blue", alpha=0.75, label="accuracy")
        ax.bar(xs, [abs(c - a) for a, c in zip(acc, conf)], bottom=[min(a, c) for a, c in zip(acc, conf)],
               width=width * 0.95, color="tab:red", alpha=0.3, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{row_label(v)}\nECE {v['ece']:.4f} (fp32 {v['ece_fp32']:.4f})", fontsize=8)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.tick_params(labelsize=6)
    if variants:
        axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def reliability_png_bytes(report: dict) -> bytes | None:
    """The reliability diagrams as PNG bytes; ``None`` when no variant has calibration data."""
    if not any(v.get("calibration") for v in evaluated_variants(report)):
        return None
    return png_bytes(reliability_figure(report))

