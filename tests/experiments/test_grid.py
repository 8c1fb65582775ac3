"""The reproduction grid: cells are ordinary fits, the report comes from their logs, reruns skip
finished cells and an interrupted grid completes only what is missing."""

import csv
import json
import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import yaml

from lightning_app.cli import main
from lightning_app.data.views import TokenCrops
from lightning_app.cli.fit import resolve_recipe
from lightning_app.experiments.grid import ALL_SETTINGS, RECIPES, Budget, Hardware, Probes, plan, recipe_file
from lightning_app.experiments.logs import read_scalars
from lightning_app.probes.tags import layer_series
from lightning_app.packaged import packaged_path
from tests.experiments.holds import held_recipe, python_path, recipes_option
from tests.helpers import LAUNCH_ENV, Launched, fork_cells, launches

SETTINGS = ["dropout", "crops", "token_crops", "crops_last2", "crops_last1"]
# The end-to-end grid: untrained, two views and a frozen prefix (the other settings differ only in
# their config, checked by the plan test), 2 seeds each.
TRAINED = {"dropout": "dropout", "crops": "crops", "crops_last1": "crops, last 1 layer"}
ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("knn_by_layer.png", "knn_by_step.png", "drift_by_layer.png")


def grid_args(model, corpus, output, *extra) -> list[str]:
    return ["reproduce", f"--source={corpus}", "--text_field=body", "--label_field=topic", "--name=bbc",
            f"--model={model}", "--settings=[untrained, dropout, crops, crops_last1]", "--seeds=[1, 2]", "--budget.steps=2", "--budget.batch_size=8",
            "--budget.lr=1e-3", "--budget.max_length=32", "--probe.every=1", "--probe.documents=null",
            "--probe.max_length=32", "--probe.cv_folds=5", "--hardware.accelerator=cpu",
            "--hardware.num_workers=0", "--mteb.tasks=LeeDocumentSimilarity", "--mteb.max_length=32",
            f"--output={output}", *extra]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_model):
    """A 2-seed grid (3 trained settings) on 300 BBC articles with the tiny BERT, killed while its
    third cell is held as its fit sets up, and rerun."""
    folder = tmp_path_factory.mktemp("grid")
    corpus = folder / "bbc.jsonl"
    paths = sorted(packaged_path("packaged:bbcnews").glob("*/*.txt"))[::7][:300]
    corpus.write_text("".join(json.dumps({"body": p.read_bytes().decode("latin-1"), "topic": p.parent.name}) + "\n"
                              for p in paths))
    output = folder / "results"
    # The crops recipe holds the third cell (crops_last1/seed1) at its fit's first hook until it is killed.
    held = folder / "third-cell-held"
    recipe = held_recipe(folder, "configs/crop.yaml", step=0, marker=str(held), cell="crops_last1/seed1")
    args = grid_args(tiny_model, corpus, output, recipes_option(crops=recipe))
    # `python -m lightning_app reproduce` as a process (forked from the fork server: tests.helpers.Launched)
    first = Launched(args, env={**os.environ, **LAUNCH_ENV, "PYTHONPATH": python_path()})
    deadline = time.monotonic() + 300
    while not held.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the grid ended before its third cell was held"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = {p.parent.relative_to(output): p.read_text() for p in output.glob("*/seed*/done.json")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", python_path())
        fork_cells(patch)
        main(args)  # the rerun, in this process (the held marker exists: nothing is held again)
    return output, finished


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_interrupted_grid_reruns_only_the_missing_cells(grid):
    output, finished = grid
    assert {str(cell) for cell in finished} == {"dropout/seed1", "crops/seed1"}
    for cell, record in finished.items():
        assert (output / cell / "done.json").read_text() == record
        assert launches(output / cell) == 1  # not started again
    assert launches(output / "crops_last1" / "seed1") == 2  # killed, then completed
    for setting in TRAINED:
        for seed in (1, 2):
            cell = output / setting / f"seed{seed}"
            assert (cell / "done.json").exists() and (cell / "export" / "config.json").exists()
            assert not (cell / "checkpoints").exists()  # removed once the cell finished
            config = yaml.safe_load((cell / "config.yaml").read_text())
            assert config["seed_everything"] == seed and config["trainer.max_steps"] == 2
            if setting == "dropout":
                assert config["config"] == str(ROOT / "configs/dropout.yaml")
            else:  # configs/crop.yaml with the test's hold as its profiler
                assert yaml.safe_load(Path(config["config"]).read_text())["config"] == str(ROOT / "configs/crop.yaml")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_report_file_is_written(grid):
    output, _ = grid
    for name in ("report.md", "results.csv", "cells.csv", "layers.csv", "signals.csv", "reproduce.yaml", *FIGURES):
        assert (output / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (output / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report
    for label in ("untrained", *TRAINED.values()):
        assert f"| {label} |" in report
    for setting in TRAINED:
        scores = json.loads((output / setting / "seed1" / "mteb" / "scores.json").read_text())
        assert set(scores["tasks"]) == {"LeeDocumentSimilarity"} and scores["mean"] == scores["blocks"]["STS"]
        assert not (output / setting / "seed2" / "mteb").exists()  # mteb.seeds: 1
    assert (output / "untrained" / "mteb" / "scores.json").exists()


def mean_std(values):
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_table_numbers_come_from_the_cells_logs(grid):
    output, _ = grid
    rows = {row["setting"]: row for row in csv.DictReader((output / "results.csv").open())}
    for setting, label in TRAINED.items():
        split, cv = [], []
        for seed in (1, 2):
            scalars = read_scalars(output / setting / f"seed{seed}" / "tensorboard")
            split.append(scalars["probe/bbc/knn_acc"][2])
            cv.append(scalars["probe/bbc/knn_cv_acc"][2])
            assert len(layer_series(scalars, "probe/bbc/knn_cv_acc")) == 3  # embeddings + 2 layers
        assert rows[label]["knn_split"] == mean_std(split)
        assert rows[label]["knn_cv"] == mean_std(cv)
        assert rows[label]["seeds"] == "2"
    # The untrained base: step 0, probed by every cell, the same in every setting of a seed.
    for seed in (1, 2):
        starts = {setting: read_scalars(output / setting / f"seed{seed}" / "tensorboard")["probe/bbc/knn_cv_acc"][0]
                  for setting in TRAINED}
        assert len(set(starts.values())) == 1, starts
    base = [read_scalars(output / "dropout" / f"seed{seed}" / "tensorboard")["probe/bbc/knn_cv_acc"][0]
            for seed in (1, 2)]
    assert rows["untrained"]["knn_cv"] == mean_std(base)
    runs = {(row["setting"], row["seed"]): row for row in csv.DictReader((output / "cells.csv").open())}
    assert float(runs["crops", "2"]["knn_cv"]) == pytest.approx(
        read_scalars(output / "crops" / "seed2" / "tensorboard")["probe/bbc/knn_cv_acc"][2], abs=1e-4)
    # signals.csv: every trained cell's own step 0, its paired interval and its in-domain signal changes.
    signals = {(row["setting"], row["seed"]): row for row in csv.DictReader((output / "signals.csv").open())}
    assert set(signals) == {(setting, str(seed)) for setting in TRAINED for seed in (1, 2)}
    crops = read_scalars(output / "crops" / "seed2" / "tensorboard")
    row = signals["crops", "2"]
    assert row["corpus"] == "bbc" and float(row["knn_cv_start"]) == pytest.approx(crops["probe/bbc/knn_cv_acc"][0])
    assert float(row["knn_cv_change"]) == pytest.approx(crops["probe/bbc/knn_cv_change"][2], abs=1e-5)
    assert float(row["knn_cv_change"]) == pytest.approx(float(row["knn_cv_end"]) - float(row["knn_cv_start"]), abs=1e-5)
    assert float(row["change_low"]) <= float(row["change_high"])
    top1 = layer_series(crops, "probe/indomain/sentence_crops/retrieval_top1")[-1]
    assert float(row["sentence_crops/retrieval_top1"]) == pytest.approx(top1[2] - top1[0], abs=1e-5)
    lee = json.loads((output / "crops" / "seed1" / "mteb" / "scores.json").read_text())["mean"]
    assert float(runs["crops", "1"]["mteb_mean"]) == pytest.approx(lee, abs=1e-4)
    assert runs["crops", "2"]["mteb_mean"] == ""  # mteb.seeds: 1
    assert rows["crops"]["mteb"] == f"{100 * lee:.1f}"  # one model: no spread to show
    assert rows["crops"]["paper_knn"] == "55.8" and rows["crops, last 1 layer"]["paper_knn"] == "-"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_rerun_of_a_finished_grid_runs_nothing(grid, tiny_model, capsys):
    output, _ = grid
    options = yaml.safe_load((output / "reproduce.yaml").read_text())
    before = {p: p.stat().st_mtime_ns for p in output.glob("*/seed*/done.json")}
    main(["reproduce", "--config", str(output / "reproduce.yaml")])
    assert {p: p.stat().st_mtime_ns for p in output.glob("*/seed*/done.json")} == before
    assert capsys.readouterr().out.count("finished earlier, kept") == 6
    assert options["seeds"] == [1, 2]
    # The same folder with another budget is refused, naming the cell, before anything runs.
    with pytest.raises(SystemExit) as exit_info:
        main(grid_args(tiny_model, options["source"], output, "--budget.lr=5e-4"))
    assert exit_info.value.code == 2
    assert "holds a finished dropout/seed1 run with a different config" in capsys.readouterr().err


def test_plan_trains_the_last_layers_and_probes_step_zero_in_every_cell(tmp_path):
    recipes = {view: recipe_file(path) for view, path in RECIPES.items()}
    cells = plan(tmp_path, list(ALL_SETTINGS), [1, 2], recipes=recipes,
                 model={"model": "m", "pretrained": True, "config_overrides": None},
                 corpus={"name": "c", "source": "c.jsonl", "text_field": "text", "label_field": "label"},
                 budget=Budget(steps=40), probe=Probes(), steps=40, num_layers=6, hardware=Hardware())
    assert [cell.name for cell in cells[:5]] == [f"{s}/seed1" for s in SETTINGS]
    frozen = {cell.setting: cell.config["model.frozen_layers"] for cell in cells}
    assert frozen == {"dropout": 0, "crops": 0, "token_crops": 0, "crops_last2": 4, "crops_last1": 5}
    views = {cell.setting: Path(cell.config["config"]).name for cell in cells}
    assert views == {"dropout": "dropout.yaml", "crops": "crop.yaml", "token_crops": "token_crop.yaml",
                     "crops_last2": "crop.yaml", "crops_last1": "crop.yaml"}
    assert all(cell.config["probe.at_start"] for cell in cells)  # every cell has its own step-0 baseline
    assert {cell.config["trainer.val_check_interval"] for cell in cells} == {10}
    # What the budget leaves unset is the recipe's, written there alone.
    assert not any(key in cell.config for cell in cells for key in ("model.lr", "data.batch_size", "model.temperature"))


def test_a_cell_is_its_recipe_plus_the_grid_budget(tmp_path, tiny_model):
    """The resolved config of a cell keeps the recipe's hyperparameters and takes the budget's."""
    recipes = {view: recipe_file(path) for view, path in RECIPES.items()}
    budget, probe = Budget(steps=7, lr=1e-3), Probes(documents=100)
    (cell,) = plan(tmp_path, ["token_crops"], [3], recipes=recipes, budget=budget, probe=probe, steps=7, num_layers=2,
                   model={"model": tiny_model, "pretrained": True, "config_overrides": None},
                   corpus={"name": "c", "source": "packaged:bbcnews", "text_field": "text", "label_field": "label"},
                   hardware=Hardware(accelerator="cpu"))
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(cell.config))
    config, recipe = resolve_recipe(path), resolve_recipe(recipes["crops"])
    assert config["data"]["view"]["class_path"] == "lightning_app.data.views.TokenCrops"
    # the recipe's window keeps its longest span within the cell's tokens per view ([CLS] and [SEP] aside)
    max_length = config["data"]["max_length"]
    TokenCrops(**config["data"]["view"]["init_args"]).check_fits(max_length - 2, max_length)
    assert (config["trainer"]["max_steps"], config["model"]["lr"], config["seed_everything"]) == (7, 1e-3, 3)
    assert config["trainer"]["accelerator"] == "cpu" and config["probe"]["corpora"][0]["max_documents"] == 100
    for section, key in (("model", "temperature"), ("model", "warmup_fraction"), ("data", "batch_size"),
                         ("data", "max_length"), ("probe", "max_length"), ("probe", "geometry_pairs")):
        assert config[section][key] == recipe[section][key], key


@pytest.mark.parametrize(("option", "message"), [
    ("--settings=[crops, cropz]", "settings: expected some of"),
    ("--settings=[untrained]", "add at least one of"),
    ("--seeds=[1, 1]", "seeds: expected distinct"),
    ("--config_overrides={hidden_sise: 8}", "config_overrides: 'hidden_sise' is not a field of BertConfig"),
    ("--probe.every=0", "probe.every: expected >= 1 step or null"),
    ("--budget.steps=0", "budget.steps: expected >= 1, 'epoch' or null (the recipe's), got 0"),
    ("--recipes={crops: configs/nothing.yaml, dropout: configs/dropout.yaml, token_crops: configs/token_crop.yaml}",
     "recipes: no config file at 'configs/nothing.yaml'"),
    ("--mteb.seeds=-1", "mteb.seeds: expected >= 0, got -1"),
    ("--model=/no/such/model", "model: cannot load '/no/such/model' as a model"),
    ("--source=/no/such/corpus.jsonl", "data.source: file not found: '/no/such/corpus.jsonl'"),
])
def test_bad_grid_options(tmp_path, tiny_model, capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", f"--model={tiny_model}", f"--output={tmp_path / 'out'}", option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_recipe_that_is_not_a_fit_config_is_named(tmp_path, tiny_model, capsys):
    recipe = tmp_path / "crop.yaml"
    recipe.write_text(f"config: {ROOT / 'configs/crop.yaml'}\nmodel:\n  temprature: 0.05\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", f"--model={tiny_model}", f"--output={tmp_path / 'out'}",
              f"--recipes={{crops: {recipe}, dropout: configs/dropout.yaml, token_crops: configs/token_crop.yaml}}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"recipes: '{recipe}' is not a valid `lightning fit` config" in err[0], err
    assert "temprature" in err[0]
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused_and_kept(tmp_path, tiny_model, capsys):
    output = tmp_path / "results"
    output.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", f"--model={tiny_model}", f"--output={output}"])
    assert exit_info.value.code == 2
    assert f"output: expected a folder, but {output} is a file" in capsys.readouterr().err
    assert output.read_text() == "not a folder"
