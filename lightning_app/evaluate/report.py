"""Run tasks through ``mteb.evaluate`` into an output folder, then tabulate main scores by block.

Results are written by mteb's ``ResultCache`` under ``DIR/results/<model>/<revision>/...`` (its JSON
layout); nothing in DIR is ever deleted, and tasks already there for the same model revision and
settings are read back instead of re-run. Tables follow the paper: each task's main score, the mean
of each block (Clustering, Reranking, Retrieval, STS, Classification) and the mean of block means.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mteb
import numpy as np
from datasets.exceptions import DatasetNotFoundError
from mteb.abstasks import AbsTask

from lightning_app.evaluate.mteb_encoder import MtebEncoder
from lightning_app.evaluate.tasks import BLOCKS, missing_dataset_error, task_block
from lightning_app.probes.tags import layer_names

Scores = dict[str, float]  # task name -> main score (0-1 scale, as mteb reports it)
MEAN_NAMES = ("mean", "mean of block means")


def evaluate_task(encoder: MtebEncoder, task: AbsTask, cache: mteb.ResultCache) -> float:
    """The task's main score (mean over its splits and subsets), from ``cache`` if already there."""
    try:
        result = mteb.evaluate(encoder, task, cache=cache, co2_tracker=False, show_progress_bar=False,
                               encode_kwargs={"batch_size": encoder.batch_size})
    except (ConnectionError, DatasetNotFoundError) as error:
        raise missing_dataset_error(task) from error
    return float(result.task_results[0].validate_and_filter_scores(task).get_score())


def _evaluate(views: Sequence[MtebEncoder], tasks: Sequence[AbsTask], output: str | Path) -> list[Scores]:
    """Scores per view (encoders sharing one embedding cache), which lives while consecutive tasks share data."""
    cache = mteb.ResultCache(output)
    by_view: list[Scores] = [{} for _ in views]
    dataset = None
    for task in tasks:
        if task.metadata.dataset["path"] != dataset:
            views[0].clear_cache()
            dataset = task.metadata.dataset["path"]
        for view, scores in zip(views, by_view):
            scores[task.metadata.name] = evaluate_task(view, task, cache)
    views[0].clear_cache()
    return by_view


def evaluate_tasks(encoder: MtebEncoder, tasks: Sequence[AbsTask], output: str | Path) -> Scores:
    """Main score per task; results saved under ``output``."""
    return _evaluate([encoder], tasks, output)[0]


def evaluate_layers(encoder: MtebEncoder, tasks: Sequence[AbsTask], output: str | Path) -> list[Scores]:
    """Scores of every layer (embeddings first) from one forward pass per text; needs ``all_layers``."""
    return _evaluate([encoder.at_layer(i) for i in range(encoder.encoder.num_layers + 1)], tasks, output)


def block_means(scores: dict[str, float], blocks: dict[str, str]) -> dict[str, float]:
    """``{block: mean of its tasks}`` plus ``mean``, the mean of block means (as the paper reports)."""
    by_block: dict[str, list[float]] = {}
    for task, score in scores.items():
        by_block.setdefault(blocks[task], []).append(score)
    means = {block: statistics.mean(values) for block, values in by_block.items()}
    return {**means, "mean": statistics.mean(means.values())}


def task_info(tasks: Sequence[AbsTask]) -> dict[str, tuple[str, str]]:
    """Task name -> (block, main score name), in the given order."""
    return {t.metadata.name: (task_block(t), t.metadata.main_score) for t in tasks}


def difference(scores: Scores, baseline: Scores) -> Scores:
    """scores - baseline for the tasks both have."""
    return {name: scores[name] - baseline[name] for name in scores if name in baseline}


@dataclass(frozen=True)
class Row:
    """One table row: a task, a block mean (name ``mean``) or the mean of block means (block ``all``)."""

    block: str
    name: str
    metric: str
    values: list[float | None]


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when any value is missing (a partial mean would not compare)."""
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def score_rows(columns: Sequence[Scores], info: Mapping[str, tuple[str, str]]) -> list[Row]:
    """Rows for each task grouped by block, each block's mean, then the mean of block means, per column."""
    blocks = [b for b in BLOCKS if any(block == b for block, _ in info.values())]
    blocks += [b for b in dict.fromkeys(block for block, _ in info.values()) if b not in blocks]
    rows, block_means = [], []
    for block in blocks:
        names = [name for name, (b, _) in info.items() if b == block]
        values = [[column.get(name) for column in columns] for name in names]
        rows += [Row(block, name, info[name][1], v) for name, v in zip(names, values)]
        means = [_mean([v[i] for v in values]) for i in range(len(columns))]
        rows.append(Row(block, MEAN_NAMES[0], "", means))
        block_means.append(means)
    overall = [_mean([m[i] for m in block_means]) for i in range(len(columns))]
    return rows + [Row("all", MEAN_NAMES[1], "", overall)]


def format_rows(headers: Sequence[str], rows: Sequence[Row], signed: Sequence[bool] = ()) -> list[list[str]]:
    """Header plus one line per row as strings; scores x 100, two decimals; ``signed`` columns get a sign."""
    signed = list(signed) + [False] * (len(headers) - len(signed))

    def cell(value: float | None, sign: bool) -> str:
        return "-" if value is None else f"{100 * value:{'+' if sign else ''}.2f}"

    lines = [["block", "task", "metric", *headers]]
    for row in rows:
        lines.append([row.block, row.name, row.metric, *(cell(v, s) for v, s in zip(row.values, signed))])
    return lines


def to_markdown(lines: list[list[str]]) -> str:
    """A Markdown table, score columns right-aligned; mean rows in bold."""
    header, body = lines[0], lines[1:]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] * 3 + ["--:"] * (len(header) - 3)) + "|"]
    for line in body:
        bold = line[1] in MEAN_NAMES
        cells = [f"**{c}**" if bold and c else c for c in line]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def to_text(lines: list[list[str]]) -> str:
    """A plain aligned table for the terminal, with a rule under the header and after each block."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    rule = "-" * len(fmt(lines[0]))
    out = [fmt(lines[0]), rule]
    for line in lines[1:]:
        out.append(fmt(line))
        if line[1] == MEAN_NAMES[0]:
            out.append(rule)
    return "\n".join(out)


@dataclass(frozen=True)
class Run:
    """One model's results: ``scores`` holds one column, or one per layer (embeddings first)."""

    role: str  # "model" or "baseline"
    model: str
    name: str
    revision: str
    scores: list[Scores]


def tables(runs: Sequence[Run], info: Mapping[str, tuple[str, str]]) -> list[tuple[str, list[list[str]]]]:
    """(title, formatted lines) per table: model [| baseline | difference], or task-by-layer tables."""
    model, baseline = runs[0], (runs[1] if len(runs) > 1 else None)
    if len(model.scores) == 1:
        columns = [model.scores[0]]
        if baseline:
            columns += [baseline.scores[0], difference(model.scores[0], baseline.scores[0])]
        headers = [run.role for run in runs] + (["difference"] if baseline else [])
        return [("Main scores", format_rows(headers, score_rows(columns, info), [False, False, True]))]
    out = [(f"{run.role} {run.name} by layer",
            format_rows(layer_names(len(run.scores)), score_rows(run.scores, info))) for run in runs]
    if baseline:
        diffs = [difference(a, b) for a, b in zip(model.scores, baseline.scores)]
        out.append(("model - baseline by layer",
                    format_rows(layer_names(len(diffs)), score_rows(diffs, info), [True] * len(diffs))))
    return out
