"""The report's figures (HTML only): metrics against the synthetic share, and real beside synthetic images."""
from __future__ import annotations

from analysis.encode import figure_uri, png_uri
from analysis.stats import LABELS
from analysis.tables import Cell, Figure, Table

from ..results import CVResults, MixRow
from .text import TABLE_METRICS, tree_title

BASELINE_STYLE = {"oversample": ":", "classweight": "--", "noaug": "-."}


def plot_series(res: CVResults | dict) -> dict:
    """What the metrics plot draws: {"lines": {tree: rows of real, real+P and synthetic by synthetic share},
    "balance": {tree: the balance row}, "baselines": rows of the baselines without synthetic images}."""
    res = CVResults.of(res)
    lines: dict[str, list[MixRow]] = {}
    balance: dict[str, MixRow] = {}
    for tree, rows in res.tables.items():
        done = [r for r in rows if r.folds]
        lines[tree] = sorted((r for r in done if (r.uses_synthetic or r.mix == "real") and r.mix != "balance"),
                             key=lambda r: r.synthetic_fraction)
        balance.update({tree: r for r in done if r.mix == "balance"})
    first = next(iter(res.tables.values()), [])
    return {"lines": lines, "balance": balance, "baselines": [r for r in first if r.folds and r.mix in BASELINE_STYLE]}


def plot_caption(series: dict) -> str:
    """The figure's caption: names only what is drawn (stars only with `balance`, gray lines only with baselines)."""
    parts = ["mean ± std over folds"]
    if series["balance"]:
        parts.append("stars: `balance`")
    if series["baselines"]:
        parts.append("gray lines: baselines without synthetic images (" + ", ".join(f"`{r.mix}`" for r in series["baselines"]) + ")")
    return f"each metric against the synthetic share of the training set ({'; '.join(parts)})"


def plot_metrics(res: CVResults | dict) -> Figure:
    """Each metric against the synthetic share of the training set: one line per LoRA weight through `real`, the
    real+P mixes and `synthetic`; `balance` as a star at its share; baselines as horizontal lines. Error bars: std."""
    res = CVResults.of(res)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = plot_series(res)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.6), sharey=True)
    axes = axes.ravel()
    for k, (tree, line) in enumerate(series["lines"].items()):
        color = f"C{k}"
        for ax, m in zip(axes, TABLE_METRICS):
            ax.errorbar([r.synthetic_fraction for r in line], [r.metrics[m].mean for r in line],
                        yerr=[r.metrics[m].std for r in line], marker="o", capsize=3, color=color, label=tree_title(tree))
            if tree in series["balance"]:
                r = series["balance"][tree]
                ax.errorbar([r.synthetic_fraction], [r.metrics[m].mean], yerr=[r.metrics[m].std], marker="*",
                            markersize=12, capsize=3, color=color, linestyle="none", label=f"balance ({tree_title(tree)})")
    for r in series["baselines"]:
        for ax, m in zip(axes, TABLE_METRICS):
            ax.axhline(r.metrics[m].mean, color="gray", linestyle=BASELINE_STYLE[r.mix], label=f"{r.mix} (baseline)")
    for ax, m in zip(axes, TABLE_METRICS):
        ax.set_title(LABELS[m])
        ax.set_xlabel("synthetic share of training set")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over folds ± std")
    axes[3].set_ylabel("mean over folds ± std")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9)
    fig.tight_layout()
    return Figure(plot_caption(series), figure_uri(fig))


def _thumb(path, reading, size: int = 96) -> str:
    """A PNG data URI of the image as the classifier sees it (read under `reading`, shorter side resized, centre crop)."""
    from ..pixels import image_to_array

    return png_uri(image_to_array(path, size, reading))


def image_grid(res: CVResults | dict, per_side: int = 4) -> Table:
    """Per class, a few real images beside a few synthetic images of each LoRA weight."""
    res = CVResults.of(res)
    from prompts.dataset import read_dataset
    from prompts.normalize import DEFAULT, Reading

    reading = Reading.from_record(res.reading) if res.reading else DEFAULT  # the run's rule (older records: the default)
    real = read_dataset(res.data, reading=reading)
    trees = {}
    if res.synthetic:
        from ..synthetic import read_synthetic

        syn = read_synthetic(res.synthetic, real.classes)
        for w in syn.weights:
            trees[w] = syn.shared.get(w) or next(t[w] for t in syn.per_fold.values() if w in t)
    rows = []
    for c in real.classes:
        cells = [Cell(c)]
        for ds in [real, *trees.values()]:
            recs = [r for r in ds.records if r.label == c][:per_side]
            cells.append(Cell(images=[_thumb(ds.root / r.path, reading) for r in recs]))
        rows.append(cells)
    return Table(["class", "real", *(f"synthetic {w}" for w in trees)], rows,
                 caption="As the classifier sees them (shorter side resized, centre crop):")
