"""``lightning mteb``: evaluate a model (and optionally a baseline) on MTEB tasks and write a report."""

from __future__ import annotations

import time
from pathlib import Path

from lightning_app.model.encoder import read_model_config
from lightning_app.errors import ConfigError
from lightning_app.evaluate.mteb_encoder import DEFAULT_MAX_LENGTH, MtebEncoder
from lightning_app.evaluate.report import Run, evaluate_layers, evaluate_tasks, tables, task_info, to_markdown, to_text
from lightning_app.evaluate.tasks import resolve_tasks
from lightning_app.model.precision import DEFAULT_PRECISION


def parse_layer(layer: str | int | None) -> int | str | None:
    """None (last layer), ``"all"``, or a layer index given as an int or a string of digits."""
    if layer is None or layer == "all" or (isinstance(layer, int) and not isinstance(layer, bool)):
        return layer
    if isinstance(layer, str) and layer.strip().isdigit():
        return int(layer)
    raise ConfigError(f"layer: expected a layer index (0 = embeddings), 'all', or nothing for the last "
                      f"layer, got {layer!r}")


def _load(option: str, model: str, layer: int | str | None, **options) -> MtebEncoder:
    """The encoder to evaluate; a path that is neither a checkpoint nor a model is one line naming ``option``."""
    if model.endswith(".ckpt"):
        if not Path(model).is_file():
            raise ConfigError(f"{option}: checkpoint not found: '{model}'")
    else:
        read_model_config(model, option)
    return MtebEncoder.load(model, layer=None if layer == "all" else layer, all_layers=layer == "all", **options)


def _run(role: str, model: str, encoder: MtebEncoder, tasks: list, output: Path, layer: int | str | None) -> Run:
    scores = (evaluate_layers(encoder, tasks, output) if layer == "all"
              else [evaluate_tasks(encoder, tasks, output)])
    return Run(role, model, encoder.name, encoder.revision, scores)


def mteb_command(*, model: str, tasks: str = "offline", output: str = "mteb_results", batch_size: int = 32,
                 max_length: int = DEFAULT_MAX_LENGTH, pooling: str | None = None, layer: str | None = None,
                 device: str = "cpu", precision: str = DEFAULT_PRECISION, baseline: str | None = None) -> None:
    """Evaluate a text embedding model on MTEB tasks; print and save a table of main scores by block.

    Scores come from mteb 2.x and are stored in its JSON layout under OUTPUT/results/<model>/<revision>,
    where the revision is a hash of the weights; later runs with the same weights and settings reuse
    them. Nothing in OUTPUT is deleted. The table (main score x 100 per task, the mean of each block
    Clustering/Reranking/Retrieval/STS/Classification, and the mean of block means) is printed and
    written to OUTPUT/report.md.

    Args:
        model: Model to evaluate: a Lightning checkpoint (.ckpt) written by lightning fit, an exported
            or sentence-transformers folder, a Hugging Face hub id, or packaged:minilm.
        tasks: A task set (offline, offline-fast, paper, paper-classification) or comma-separated set
            and task names (offline tasks or any mteb task). Hub tasks need their datasets in the
            Hugging Face cache or network access.
        output: Folder for mteb's result files and report.md; created if missing.
        batch_size: Texts per forward pass.
        max_length: Tokens kept per text; longer texts are truncated (default: the paper's evaluation length).
        pooling: How token states become one embedding: mean (over non-padding tokens) or cls;
            nothing keeps the model's own (the checkpoint's, or the folder's pooling config; mean otherwise).
        layer: Which hidden layer to pool: nothing for the last, an index (0 = embeddings), or all
            for a task-by-layer table from one forward pass per text.
        device: Torch device to encode on, e.g. cpu, cuda, cuda:1, mps.
        precision: auto (bf16 autocast where the device multiplies bf16 natively: a CUDA GPU from
            Ampere on, a CPU with AMX or AVX512-BF16; float32 elsewhere), 32 (32-true) or
            bf16-mixed. The report says which ran; a precision other than 32-true files results
            in its own experiments folder.
        baseline: Optional second model, evaluated the same way and shown side by side with the
            difference (model - baseline).
    """
    task_list = resolve_tasks(tasks)
    chosen = parse_layer(layer)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output: expected a folder, but {out} is a file")
    options = dict(pooling=pooling, batch_size=batch_size, max_length=max_length, device=device, precision=precision)
    # Both models load (and fail on bad input) before anything is written.
    encoders = [(role, name, _load(role, name, chosen, **options))
                for role, name in (("model", model), ("baseline", baseline)) if name]
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    runs = [_run(role, name, encoder, task_list, out, chosen) for role, name, encoder in encoders]
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    sections = tables(runs, task_info(task_list))
    lines = [f"# MTEB report: {model}", ""]
    lines += [f"- {run.role}: {run.model} (mteb name {run.name}, revision {run.revision})" for run in runs]
    lines += [f"- tasks: {tasks} ({len(task_list)} tasks)",
              f"- settings: pooling {pooling or 'of the model'}, max_length {max_length}, layer "
              f"{'last' if chosen is None else chosen}, batch_size {batch_size}, device {device}, precision "
              f"{encoders[0][2].precision} ({precision})",
              f"- results: {out / 'results'} (mteb JSON)", f"- run time: {minutes}m {seconds:02d}s", "",
              "Main score x 100 per task, the mean of each block and the mean of block means."]
    for title, table in sections:
        lines += ["", f"## {title}", "", to_markdown(table)]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for title, table in sections:
        print(f"\n{title}\n{to_text(table)}")
    print(f"\nrun time {minutes}m {seconds:02d}s; report: {out / 'report.md'}")
