"""Every shipped config runs, not only parses: each file under configs/ trains 2 steps on the tiny
BERT and a small corpus with its own callbacks (probes, MTEB, export, checkpoints) and precision.

Only sizes change (model, steps, corpus, probe and MTEB sizes, CPU); the recipe otherwise runs as
written. ``ddp.yaml`` and ``slurm.yaml`` are overlays, run on top of configs/crop.yaml; the files
under configs/reproduce/ and ``*reproduce.yaml`` are ``lightning reproduce`` configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_app.cli import main
from lightning_app.cli.fit import SECTIONS, resolve_recipe
from lightning_app.experiments.grid import ALL_SETTINGS, recipe_file
from lightning_app.model.load import read_checkpoint
from tests.helpers import ROOT, fork_cells, run_lightning, scalars

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
OVERLAYS = {"configs/ddp.yaml", "configs/slurm.yaml"}
# Slow: ddp.yaml runs 2 `python -m lightning_app` processes; a reproduce config, one `lightning fit` per cell.
PROCESSES = {c for c in CONFIGS if c == "configs/ddp.yaml" or c.startswith("configs/reproduce/") or c.endswith("reproduce.yaml")}
STEPS = 2


def is_reproduce(config: str) -> bool:
    return config.startswith("configs/reproduce/") or config.endswith("reproduce.yaml")


def printed(command: str, config: str, capsys) -> dict:
    """The config as the command resolves it (defaults filled in)."""
    with pytest.raises(SystemExit) as done:
        main([command, "--config", str(ROOT / config), "--print_config"])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err[-2000:]
    return yaml.safe_load(out)


def shrink_fit(config: dict, run_dir: Path, model: str, corpus: str) -> dict:
    """The same recipe at test size."""
    trainer, data = config["trainer"], config["data"]
    trainer.update(accelerator="cpu", devices=1, max_steps=STEPS, val_check_interval=STEPS, limit_val_batches=1, log_every_n_steps=1,
                   default_root_dir=str(run_dir), enable_progress_bar=False)
    trainer["logger"]["init_args"].update(save_dir=str(run_dir), version=0)
    config["model"]["model"] = model
    config["model"]["frozen_layers"] = min(config["model"].get("frozen_layers") or 0, 1)  # the tiny BERT has 2
    if not str(data["source"]).startswith("packaged:"):
        data["source"] = corpus
    data.update(max_length=min(data["max_length"], 64), batch_size=4, num_workers=min(data["num_workers"], 1),
                shuffle_buffer=100, val_documents=16)
    view = data["view"]
    if view["class_path"].endswith(".TokenCrops"):  # the longest span fits the 62 tokens a 64-token view keeps
        view["init_args"]["chunk_tokens"] = min(view["init_args"]["chunk_tokens"],
                                                int((data["max_length"] - 2) / view["init_args"]["ratio_max"]))
    for name, args in callbacks(config):
        if name == "LayerProbe":
            for corpus_spec in args["corpora"]:
                corpus_spec["max_documents"] = 100
            args.update(k=3, max_length=64, geometry_pairs=min(args.get("geometry_pairs", 0), 16),
                        cv_folds=min(args.get("cv_folds", 0), 3))
        elif name == "MtebCallback" and args.get("tasks"):
            args.update(tasks="LeeDocumentSimilarity", max_length=64)
    return config


def callbacks(config: dict) -> list[tuple[str, dict]]:
    """(class name, arguments) of every callback of a resolved fit config: those of its sections
    (``probe:``, ``mteb:``, ``drift:``; see lightning_app.cli.fit.SECTIONS) and of ``trainer.callbacks``."""
    sections = [(callback.__name__, config[section]) for section, callback in SECTIONS.items()
                if config.get(section) is not None]
    listed = [(callback["class_path"].rsplit(".", 1)[1], callback.setdefault("init_args", {}))
              for callback in config["trainer"]["callbacks"]]
    return sections + listed


def check_run(version: Path, config: dict) -> None:
    assert read_checkpoint(version / "checkpoints" / "last.ckpt")["global_step"] == STEPS
    assert (version / "export" / "model.safetensors").exists()
    assert [step for step, _ in scalars(version, "train/loss")] == list(range(STEPS))
    for name, args in callbacks(config):
        if name == "LayerProbe":
            for spec in args["corpora"]:
                assert [s for s, _ in scalars(version, f"probe/{spec['name']}/knn_acc")][-1] == STEPS
        elif name == "MtebCallback" and args.get("tasks"):
            assert [s for s, _ in scalars(version, "mteb/mean")] == [0]
        elif name == "LayerDrift":
            assert scalars(version, "drift/layer_00")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bbc_texts) -> str:
    import json

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text, _ in bbc_texts[::9][:200]))
    return str(path)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c in PROCESSES else c for c in CONFIGS])
def test_every_shipped_config_runs(config, tmp_path, tiny_model, corpus, capsys, monkeypatch):
    if is_reproduce(config):
        options = printed("reproduce", config, capsys)
        # the paper's comparison (no settings written) runs every setting; a study config runs the ones it names
        written = yaml.safe_load((ROOT / config).read_text()).get("settings", list(ALL_SETTINGS))
        assert options["settings"] == written and "untrained" in written and len(options["seeds"]) >= 2
        views = {view: resolve_recipe(recipe_file(path))["data"]["view"]["class_path"].rsplit(".", 1)[1]
                 for view, path in options["recipes"].items()}
        assert views == {"crops": "SentenceCrops", "dropout": "Dropout", "token_crops": "TokenCrops"}
        options["budget"].update(steps=STEPS, batch_size=4, max_length=32)
        options["probe"].update(every=1, documents=None, max_length=32, cv_folds=5)
        options["mteb"].update(tasks="LeeDocumentSimilarity", max_length=32)
        options.update(model=tiny_model, pretrained=True, config_overrides=None, settings=["untrained", "crops"],
                       seeds=[options["seeds"][0]], output=str(tmp_path / "results"))
        options["hardware"].update(accelerator="cpu", devices=1, num_workers=0)
        (tmp_path / "reproduce.yaml").write_text(yaml.safe_dump(options))
        fork_cells(monkeypatch)
        main(["reproduce", "--config", str(tmp_path / "reproduce.yaml")])
        report = (tmp_path / "results" / "report.md").read_text()
        assert "crops" in report and (tmp_path / "results" / "crops" / f"seed{options['seeds'][0]}" / "done.json").exists()
        return

    base = "configs/crop.yaml" if config in OVERLAYS else config
    resolved = shrink_fit(printed("fit", base, capsys), tmp_path / "runs", tiny_model, corpus)
    assert resolved["data"]["view"]["class_path"].startswith("lightning_app.data.views.")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(resolved))
    version = tmp_path / "runs" / resolved["trainer"]["logger"]["init_args"]["name"] / "version_0"
    command = ["fit", "--config", str(tmp_path / "config.yaml")]
    if config == "configs/ddp.yaml":  # 2 gloo processes, the overlay's precision and strategy
        command += ["--config", str(ROOT / config), "--trainer.accelerator=cpu", "--trainer.devices=2"]
        run_lightning(command, timeout=500)  # a process: Lightning starts rank 1 as `python <its script> ...`
    else:
        if config == "configs/slurm.yaml":
            command += ["--config", str(ROOT / config)]
        main(command)
    check_run(version, resolved)
