"""Draw one chart from a JSON spec with matplotlib's Agg backend (run in the plot venv).

Spec: ``{"kind": "bar"|"line", "title", "xlabel", "ylabel", "x": [...], "series":
{label: [y...]}, "log": bool}``. Usage: ``python bench/plot.py spec.json out.png``.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(spec_path: str, out: str) -> None:
    with open(spec_path) as fh:
        spec = json.load(fh)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    x = [str(v) for v in spec["x"]]
    series = spec["series"]
    if spec.get("kind", "bar") == "bar":
        width = 0.8 / max(1, len(series))
        for i, (label, ys) in enumerate(series.items()):
            pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(x))]
            vals = [v if v is not None else 0 for v in ys]
            bars = ax.bar(pos, vals, width, label=label)
            for b, v in zip(bars, ys, strict=True):
                if v is not None:
                    ax.annotate(f"{v:.2g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(x)), x)
    else:
        for label, ys in series.items():
            ax.plot(x, ys, marker="o", label=label)
    if spec.get("log"):
        ax.set_yscale("log")
    ax.set_title(spec.get("title", ""))
    ax.set_xlabel(spec.get("xlabel", ""))
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
