"""Checks run before the first training step: the model behind an option, the token lengths the
model can take, the contrastive batch, and constructor errors turned into one named line.

Each raises :class:`~lightning_app.errors.ConfigError` naming the option and what was expected,
so a bad input stops the command before it writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from lightning_app.errors import ConfigError
from lightning_app.packaged import resolve_model


def first_line(error: BaseException) -> str:
    """An exception's message on one line (its first non-empty line, or its type's name)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def read_model_config(model: str, option: str, **kwargs):
    """The Hugging Face config of a hub id, local folder or ``packaged:`` model; anything else
    (a folder without a model's config.json, a missing path) is one line naming ``option``."""
    path = resolve_model(model)
    if os.path.isfile(path):
        raise ConfigError(f"{option}: '{model}' is a file; expected a model folder (with config.json), "
                          "a hub id or packaged:minilm")
    if os.path.isdir(path) and not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{option}: '{model}' is not a model folder (no config.json); expected a folder "
                          "written by save_pretrained or lightning export, a hub id or packaged:minilm")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{option}: cannot load '{model}' as a model ({first_line(error)}); expected a "
                          "model folder (with config.json), a hub id or packaged:minilm") from None


def position_limit(backbone: nn.Module) -> int | None:
    """The most tokens (special tokens included) the backbone's position embeddings take, or None
    when it has no absolute position table (rotary or relative positions).

    RoBERTa, XLM-R and MPNet number positions from ``padding_idx + 1``, so they take
    ``max_position_embeddings - padding_idx - 1`` tokens (514 - 2 = 512).
    """
    embeddings = getattr(backbone, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    return table.num_embeddings - (padding_idx + 1 if isinstance(padding_idx, int) else 0)


def config_position_limit(config) -> int | None:
    """``position_limit`` of the model a config describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        return position_limit(AutoModel.from_config(config))


def check_length(option: str, value: int, backbone: nn.Module | int | None, model: str) -> None:
    """``value`` tokens fit the model's position table (``backbone``, or its limit as a number)."""
    limit = backbone if backbone is None or isinstance(backbone, int) else position_limit(backbone)
    if limit is not None and value > limit:
        raise ConfigError(f"{option}: expected at most {limit} tokens (the position limit of '{model}'), got {value}")


def check_span_length(view, max_length: int, body: int, length_option: str = "data.max_length",
                      where: str = "") -> None:
    """A ``TokenCrops`` view's longest span fits the ``body`` tokens a view keeps at ``max_length``
    besides its special tokens; the collator would cut a longer one, breaking the spans' ratios."""
    from lightning_app.data.views import TokenCrops

    if not isinstance(view, TokenCrops) or view.longest_span() <= body:
        return
    special = max_length - body
    fits = next((c for c in range(view.chunk_tokens - 1, 0, -1) if view.longest_span(c) <= body), None)
    expected = f"chunk_tokens <= {fits} at {length_option} {max_length}, or " if fits else ""
    needed = view.longest_span() + special
    raise ConfigError(
        f"data.view.init_args.chunk_tokens{where}: expected {expected}{length_option} >= {needed} "
        f"(the longest TokenCrops span, ratio_max {view.ratio_max} x chunk_tokens {view.chunk_tokens} = "
        f"{view.longest_span()} tokens, must fit the {max(body, 0)} a view keeps besides its {special} special tokens)")


def check_fit(trainer, module, datamodule) -> None:
    """Before ``fit``: every token length the run uses fits the model, and the contrastive batch has
    negatives (at least 2 pairs, counted over all devices when negatives are gathered)."""
    from lightning_app.evaluate.callback import MtebCallback
    from lightning_app.probes.callbacks import LayerProbe

    backbone, model = module.encoder.backbone, module.hparams.model
    if datamodule is not None and "max_length" in datamodule.hparams:
        check_length("data.max_length", datamodule.hparams.max_length, backbone, model)
    for callback in trainer.callbacks:
        if isinstance(callback, LayerProbe):
            check_length("probe.max_length", callback.max_length, backbone, model)
        elif isinstance(callback, MtebCallback):
            check_length("mteb.max_seq_length", callback.max_seq_length, backbone, model)
    if datamodule is not None and "batch_size" in datamodule.hparams:
        per_device = datamodule.hparams.batch_size
        devices = trainer.num_devices * trainer.num_nodes if module.hparams.gather_negatives else 1
        if per_device * devices < 2:
            raise ConfigError(f"data.batch_size: expected a contrastive batch of at least 2 pairs (the other pairs "
                              f"are each pair's negatives), got {per_device} pair(s) x {devices} device(s)")


def set_up_early(trainer, module, datamodule) -> None:
    """Run the data module's and the probes'/MTEB callback's ``setup`` (reading and checking the corpus
    and the probe corpora) before ``fit`` starts the loggers and saves the config, so a bad corpus
    stops the run with nothing written. Their ``setup`` keeps what it prepared, so ``fit`` does not
    repeat it. Skipped under a spawning launcher (its processes get their own rank's data)."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    from lightning_app.evaluate.callback import MtebCallback
    from lightning_app.probes.callbacks import LayerProbe

    launcher = trainer.strategy.launcher
    if launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        return
    if datamodule is not None:
        datamodule.trainer = trainer  # as fit attaches it: the rank and world size split the corpus
        datamodule.setup("fit")
    for callback in trainer.callbacks:
        if isinstance(callback, (LayerProbe, MtebCallback)):
            callback.setup(trainer, module, "fit")


def class_options(config, prefix: str = "") -> dict[str, str]:
    """``class_path`` -> the option that configures it, e.g. ``lightning_app.data.views.TokenCrops``
    -> ``data.view``; list items are named ``trainer.callbacks[3]``."""
    found: dict[str, str] = {}
    if isinstance(config, dict):
        items = config.items()
    else:
        items = vars(config).items() if hasattr(config, "__dict__") else ()
    for key, value in items:
        option = f"{prefix}.{key}" if prefix else str(key)
        if key == "class_path" and isinstance(value, str):
            found.setdefault(value, prefix)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                found.update({k: v for k, v in class_options(item, f"{option}[{i}]").items() if k not in found})
        elif hasattr(value, "__dict__") or isinstance(value, dict):
            found.update({k: v for k, v in class_options(value, option).items() if k not in found})
    return found


def constructor_error(error: BaseException, config, roots: dict[type, str]) -> ConfigError:
    """A constructor's ValueError/TypeError as one line naming the option of the object it built:
    the innermost ``__init__`` in the traceback whose class the config (or ``roots``) configures."""
    options = class_options(config)
    # jsonargparse wraps a constructor's error in its own ("Does not validate against any of the
    # Union subtypes ..."); the constructor's is the innermost of the chain.
    while isinstance(error.__cause__ or error.__context__, (ValueError, TypeError)):
        error = error.__cause__ or error.__context__
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if owner is None:
            continue
        cls = type(owner)
        option = options.get(f"{cls.__module__}.{cls.__qualname__}")
        option = option or next((name for root, name in roots.items() if isinstance(owner, root)), None)
        if option:
            label = option if option in roots.values() else f"{option} ({cls.__name__})"
            return ConfigError(f"{label}: {first_line(error)}")
    return ConfigError(first_line(error))
