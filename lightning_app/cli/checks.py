"""What ``lightning fit`` checks before the first step: the token lengths the model can take, the
contrastive batch and the corpora; and a constructor's error turned into one line naming its option.

Each raises :class:`~lightning_app.errors.ConfigError` naming the option and what was expected,
so a bad input stops the command before it writes anything.
"""

from __future__ import annotations

from lightning_app.errors import ConfigError, first_line
from lightning_app.evaluate.callback import MtebCallback
from lightning_app.model.load import check_length
from lightning_app.probes.callbacks import LayerProbe


def check_fit(trainer, module, datamodule) -> None:
    """Before ``fit``: every token length the run uses fits the model, and the contrastive batch has
    negatives (at least 2 pairs, counted over all devices when negatives are gathered)."""
    backbone, model = module.encoder.backbone, module.hparams.model
    if datamodule is not None and "max_length" in datamodule.hparams:
        check_length("data.max_length", datamodule.hparams.max_length, backbone, model)
    for callback in trainer.callbacks:
        if isinstance(callback, LayerProbe):
            check_length("probe.max_length", callback.max_length, backbone, model)
        elif isinstance(callback, MtebCallback):
            check_length("mteb.max_length", callback.max_length, backbone, model)
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

    launcher = trainer.strategy.launcher
    if launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        return
    if datamodule is not None:
        datamodule.trainer = trainer  # as fit attaches it: the rank and world size split the corpus
        trainer.datamodule = datamodule  # as fit attaches it: the probes read its held-out documents
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
