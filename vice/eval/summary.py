"""The plain-text summary of an evaluation's metrics (what a launch prints at its end)."""

from __future__ import annotations


def mapping_name(c: int, num_classes: int) -> str:
    return "majority" if c > num_classes else "Hungarian"


def figure_count(counts: list[int], num_classes: int) -> int | None:
    """The C drawn: the smallest C >= #classes (the Hungarian one when present), else the
    largest C."""
    if not counts:
        return None
    at_least = [c for c in counts if c >= num_classes]
    return min(at_least) if at_least else max(counts)


def headline_key(metrics: dict) -> str | None:
    """The headline metric: clustering mIoU at C = #classes (Hungarian) when it was run,
    else at the C the figure shows."""
    counts = sorted(
        {
            int(k.split(".")[1])
            for k in metrics
            if k.startswith("clustering.") and k.endswith(".miou")
        }
    )
    if not counts or "num_classes" not in metrics:  # e.g. an evaluation that did not run
        return None
    c = figure_count(counts, metrics["num_classes"])
    return None if c is None else f"clustering.{c}.miou"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _over(metrics: dict, key: str) -> str | None:
    """ "+1.23 points over <floor> 4.56 %" for a metric with a margin, else None."""
    floor = metrics.get(f"margin.{key}.floor")
    if floor is None:
        return None
    margin = 100 * metrics[f"margin.{key}"]
    return f"{margin:+.2f} points over {floor} {_pct(metrics[f'floors.{floor}.{key}'])}"


def _summary_lines(metrics: dict) -> list[str]:
    """The headline's margin over the strongest floor, and the region metrics."""
    lines = []
    key = headline_key(metrics)
    over = None if key is None else _over(metrics, key)
    if over is not None:
        c = key.split(".")[1]
        lines.append(f"margin: clustering C={c} mIoU {_pct(metrics[key])}, {over}")
    parts = []
    for label, metric, chance_label, chance in (
        ("NN same class", "nn_same_class", "chance", "nn_chance"),
        ("probe", "probe_acc", "majority", "probe_majority"),
    ):
        value = metrics.get(f"region.{metric}")
        if value is None:
            continue
        notes = [n for n in (_over(metrics, f"region.{metric}"),) if n is not None]
        notes.append(f"{chance_label} {_pct(metrics.get(f'region.{chance}'))}")
        parts.append(f"{label} {_pct(value)} ({', '.join(notes)})")
    if parts:
        lines.append("regions: " + "; ".join(parts))
    return lines


def format_summary(metrics: dict) -> str:
    """A plain-text table: one row per cluster count and one for the probe, in percent;
    then the headline's margin over the strongest floor and the region metrics, when
    measured."""
    rows = []
    counts = sorted(
        {
            int(k.split(".")[1])
            for k in metrics
            if k.startswith("clustering.") and k.endswith(".miou")
        }
    )
    for c in counts:
        rows.append(
            (
                f"clustering C={c} ({mapping_name(c, metrics['num_classes'])})",
                metrics[f"clustering.{c}.miou"],
                metrics[f"clustering.{c}.acc"],
            )
        )
    if "linear.miou" in metrics:
        rows.append(("linear", metrics["linear.miou"], metrics["linear.acc"]))
    if "mask_kmeans.miou" in metrics:
        rows.append(("mask k-means (5 seeds)", metrics["mask_kmeans.miou"],
                     metrics["mask_kmeans.acc"]))  # fmt: skip
    width = max([len("method"), *(len(r[0]) for r in rows)])
    lines = [f"{'method':<{width}}  {'mIoU %':>7}  {'acc %':>7}"]
    lines += [f"{name:<{width}}  {100 * miou:7.2f}  {100 * acc:7.2f}" for name, miou, acc in rows]
    if "saliency.iou" in metrics:
        lines.append(
            f"saliency: IoU {100 * metrics['saliency.iou']:.2f} % with the ground-truth "
            f"foreground (predicted {100 * metrics['saliency.fg_fraction']:.1f} % of pixels, "
            f"true {100 * metrics['saliency.gt_fg_fraction']:.1f} %)"
        )
    return "\n".join(lines + _summary_lines(metrics))
