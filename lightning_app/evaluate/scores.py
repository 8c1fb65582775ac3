"""A model's MTEB scores saved beside it (``scores.json``), computed once and reused."""

from __future__ import annotations

import json
from pathlib import Path


def read_scores(folder: Path) -> dict | None:
    """``{"tasks": {name: score}, "blocks": {block: mean}, "mean": mean of block means}`` or None."""
    path = folder / "scores.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def mteb_scores(model: str, tasks: str, folder: Path, max_length: int, device: str) -> dict:
    """Main score per task, block means and their mean, saved as ``folder/scores.json``; the saved
    scores are reused when they cover the same tasks at the same ``max_length``."""
    from lightning_app.evaluate.mteb_encoder import MtebEncoder  # mteb loads only when used
    from lightning_app.evaluate.report import block_means, evaluate_tasks
    from lightning_app.evaluate.tasks import resolve_tasks, task_block

    task_list = resolve_tasks(tasks)
    saved = read_scores(folder)
    if (saved and set(saved["tasks"]) == {task.metadata.name for task in task_list}
            and saved.get("max_length") == max_length):
        return saved
    folder.mkdir(parents=True, exist_ok=True)
    encoder = MtebEncoder.load(model, max_length=max_length, device=device)
    scores = evaluate_tasks(encoder, task_list, folder)
    means = block_means(scores, {task.metadata.name: task_block(task) for task in task_list})
    overall = means.pop("mean")
    result = {"model": model, "max_length": max_length, "tasks": scores, "blocks": means, "mean": overall}
    (folder / "scores.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result
