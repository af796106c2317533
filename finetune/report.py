"""The evaluation report: a confusion-matrix PNG, a gallery of the maps answered wrong and a Markdown
summary of an `evaluate_file` result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.taxonomy import CLASS_NAMES

INVALID = "unparsed/invalid"
#: Most maps the gallery of mistakes shows (the first ones in file order; the report lists them all).
GALLERY_MAPS = 64
GALLERY_COLUMNS = 8


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def confusion_png(confusion: list[dict], path: Path) -> Path:
    """Row-normalised confusion matrix (true class × predicted class) over the classes that occur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {c["truth"] for c in confusion} | {c["predicted"] for c in confusion}
    names = [n for n in CLASS_NAMES if n in present] + ([INVALID] if INVALID in present else [])
    index = {n: i for i, n in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for cell in confusion:
        matrix[index[cell["truth"]], index[cell["predicted"]]] += cell["count"]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(6.0, 0.28 * len(names) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted (parsed from the generated answer)")
    ax.set_ylabel("true class")
    for (r, c), value in np.ndenumerate(matrix):
        if value and r != c:
            ax.text(c, r, int(value), ha="center", va="center", fontsize=6, color="red")
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def mistakes_png(missed: list[dict], grids: np.ndarray, path: Path, most: int = GALLERY_MAPS) -> Path:
    """The first `most` maps answered wrong (the fab palette: green good dies, red failing), each titled with its
    row in the file, its true class and what its answer was read as: to tell a model's slip from a
    map whose label is arguable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data_tools.render import render

    shown = missed[:most]
    columns = min(GALLERY_COLUMNS, max(1, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, miss in zip(axes.flat, shown):
        ax.imshow(render(grids[miss["map"]], palette="fab", size=156), interpolation="nearest")
        ax.set_title(f"row {miss['row']}\ntrue: {miss['truth']}\nread: {miss['parsed']}", fontsize=6)
    fig.tight_layout()
    return _save_figure(fig, path)


def missed_lines(missed: list[dict], gallery_name: str | None = None) -> list[str]:
    """The report's section on the maps answered wrong: the gallery (when drawn) and a table of every one."""
    if not missed:
        return []
    shown = f"the first {GALLERY_MAPS} of {len(missed)}" if len(missed) > GALLERY_MAPS else f"all {len(missed)}"
    lines = ["## Maps answered wrong", ""]
    if gallery_name:
        lines += [f"Drawn in `{gallery_name}` ({shown}):", "", f"![maps answered wrong]({gallery_name})", ""]
    lines += ["| row (the file's index) | truth | read as |", "| --- | --- | --- |"]
    lines += [f"| {m['row']} | {m['truth']} | {m['parsed']} |" for m in missed]
    return [*lines, ""]


def markdown(result: dict, image_name: str, gallery_name: str | None = None) -> str:
    lines = [
        "# Defect-GLM evaluation",
        "",
        f"- model: `{result['model']}`" + (f", adapter `{result['adapter']}`" if result.get("adapter") else ""),
        f"- data: `{result['file']}` (split: {result['split']}, limit: {result['limit']}), n = {result['n']}",
        f"- **exact match (all 8 patterns right): {100 * result['exact_match']:.2f}%** "
        f"({result['correct']}/{result['n']}; unparsed answers: {result['unparsed']})",
        f"- Defect-GLM protocol ({result['defect_glm_protocol']['classes']} classes, Near-full and Random excluded): "
        f"{100 * result['defect_glm_protocol']['exact_match']:.2f}% of {result['defect_glm_protocol']['n']}",
        "- by language: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.get("by_language", {}).items()),
        f"- speed: {result['ms_per_map']} ms per map (generation, batch {result['batch_size']}, "
        f"{result['torch_threads']} threads)",
    ]
    numbers = result.get("numbers")
    if numbers:
        lines.append(
            f"- numbers on {numbers['n_maps']} maps: failing dies within ±1: {100 * numbers['failing_within_1_die']:.1f}%, "
            f"yield within ±0.5%: {100 * numbers['yield_within_0_5_pct']:.1f}% "
            f"(written as slots filled from the map: {100 * (numbers.get('from_slots') or 0):.1f}%)"
        )
    yesno = result.get("yesno")
    if yesno and yesno["n"]:
        lines.append(f"- yes/no on {yesno['n']} maps (\"is there <pattern>?\", half about a pattern the map lacks): right in "
                     f"{100 * yesno['right']:.1f}% as served (checked against the recognition; the model's own answers "
                     f"{100 * (yesno.get('model_right') or 0):.1f}%); yes to a missing pattern {100 * (yesno['yes_when_absent'] or 0):.1f}%, "
                     f"no to a present one {100 * (yesno['no_when_present'] or 0):.1f}%")
    locations = result.get("locations")
    if locations and locations["n_maps"]:
        lines.append(f"- locations on {locations['n_maps']} maps with an Edge-Loc, Loc or Scratch: sectors named as "
                     f"measured in {100 * locations['sectors_right']:.1f}% of answers; the largest cluster's zone "
                     f"and sector as measured in {100 * locations['largest_cluster_right']:.1f}%")
    lines += ["", "## Per pattern", "", "| pattern | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for key, v in result["per_pattern"].items():
        lines.append(f"| {key} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |")
    lines += ["", "## Per class", "", "| class | n | exact match |", "| --- | --- | --- |"]
    for name, v in result["per_class"].items():
        lines.append(f"| {name} | {v['n']} | {100 * v['exact_match']:.2f}% |")
    lines += ["", "## Confusion matrix", "", f"![confusion matrix]({image_name})", ""]
    lines += missed_lines(result.get("missed") or [], gallery_name)
    if result.get("mistakes"):
        lines += ["## Some mistakes", "", "| truth | parsed | answer |", "| --- | --- | --- |"]
        for m in result["mistakes"]:
            lines.append(f"| {m['truth']} | {m['parsed']} | {m['answer'].replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path, grids: np.ndarray | None = None) -> Path:
    """Write confusion_matrix.png and report.md into `out_dir`, and mistakes.png when the evaluated
    `grids` are given and some were answered wrong; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion_png(result["confusion"], out_dir / "confusion_matrix.png")
    gallery = None
    if grids is not None and result.get("missed"):
        gallery = mistakes_png(result["missed"], grids, out_dir / "mistakes.png").name
    path = out_dir / "report.md"
    _atomic_write_text(path, markdown(result, "confusion_matrix.png", gallery))
    return path
