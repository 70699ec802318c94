"""Shows a tuning result: the measured curve as a text table, and as a PNG plot."""

from __future__ import annotations

from pathlib import Path

from textserve.tuning.choice import batch_size_for
from textserve.tuning.result import TuningPoint, TuningResult


def _grid(curve: list[TuningPoint]) -> tuple[list[int], list[int], dict[tuple[int, int], TuningPoint]]:
    lengths = sorted({p.text_tokens for p in curve})
    sizes = sorted({p.batch_size for p in curve})
    return lengths, sizes, {(p.text_tokens, p.batch_size): p for p in curve}


def curve_table(tuned: TuningResult) -> str:
    """Texts/s (and batch latency) for each text length x batch size, best per length starred,
    the batch size the chosen budget gives each length marked with brackets."""
    lengths, sizes, points = _grid(tuned.curve)
    budget = tuned.budget
    width = 17
    lines = [
        "texts/s (batch latency ms) by text length x batch size;  * fastest for the length,  "
        "[ ] the batch the tuned budget forms,  - not measured (a smaller batch already passed the ceiling)",
        "tokens |" + "".join(f"{size:>{width}}" for size in sizes),
        "-------+" + "-" * (width * len(sizes)),
    ]
    for length in lengths:
        row = [p for p in tuned.curve if p.text_tokens == length]
        best = max(row, key=lambda p: p.texts_per_second).batch_size
        tuned_size = batch_size_for(budget, length)
        cells = []
        for size in sizes:
            point = points.get((length, size))
            if point is None:
                cells.append(f"{'-':>{width}}")
                continue
            text = f"{point.texts_per_second:.0f} ({point.batch_latency_ms:.1f})"
            text += "*" if size == best else " "
            if size == tuned_size:
                text = f"[{text}]"
            cells.append(f"{text:>{width}}")
        lines.append(f"{length:>6} |" + "".join(cells))
    return "\n".join(lines)


def summary(tuned: TuningResult) -> str:
    """The chosen budget, what it does to each length, and its predicted gain over fixed sizes."""
    budget = tuned.budget
    lengths = sorted({p.text_tokens for p in tuned.curve})
    per_length = ", ".join(f"{length} tok -> {batch_size_for(budget, length)}" for length in lengths)
    lines = [
        f"chosen: max_batch_size={budget.max_batch_size} max_batch_tokens={budget.max_batch_tokens} "
        f"(slowest batch {tuned.worst_batch_latency_ms:.1f} ms, ceiling {tuned.latency_ceiling_ms:g} ms)",
        f"texts per batch by length: {per_length}",
        f"predicted on the mix (lengths {', '.join(map(str, tuned.mix_text_tokens))}, equally likely; "
        f"{tuned.concurrency} in flight): {tuned.predicted_texts_per_second:.0f} texts/s",
    ]
    if tuned.fixed_sizes:
        fixed = "  ".join(
            f"{size}: {rate:.0f} ({tuned.predicted_texts_per_second / rate:.2f}x)"
            for size, rate in tuned.fixed_sizes
        )
        lines.append(f"vs a fixed max_batch_size alone (texts/s, tuned gain): {fixed}")
    return "\n".join(lines)


def header(tuned: TuningResult) -> str:
    """Model, device and how long the measurement took."""
    measured = tuned.provenance
    return (
        f"{measured.model} ({measured.backend} on {measured.device}; {measured.hardware}); "
        f"measured in {measured.measure_seconds:.1f} s at {measured.created}"
    )


def plot(tuned: TuningResult, path: Path) -> None:
    """Writes a PNG: throughput and batch latency against batch size, one line per text length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, _sizes, _points = _grid(tuned.curve)
    budget = tuned.budget
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for length in lengths:
        row = sorted((p for p in tuned.curve if p.text_tokens == length), key=lambda p: p.batch_size)
        sizes = [p.batch_size for p in row]
        (line,) = left.plot(sizes, [p.texts_per_second for p in row], marker="o", label=f"{length} tokens")
        right.plot(sizes, [p.batch_latency_ms for p in row], marker="o", color=line.get_color())
        chosen = batch_size_for(budget, length)
        for point in row:
            if point.batch_size == chosen:
                left.plot(
                    [chosen], [point.texts_per_second], marker="*", markersize=16, color=line.get_color()
                )
    right.axhline(tuned.latency_ceiling_ms, linestyle="--", color="grey", label="latency ceiling")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size (texts)")
        axis.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("texts / second")
    left.set_title(f"throughput ({tuned.provenance.model}, {tuned.provenance.device}); * = tuned batch")
    right.set_yscale("log")
    right.set_ylabel("batch latency (ms)")
    right.set_title(
        f"tuned: max_batch_size={budget.max_batch_size}, max_batch_tokens={budget.max_batch_tokens}"
    )
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
