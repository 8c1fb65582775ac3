"""``plan``: a reproduction laid out from its options (cells, their configs, what they run with),
reading the recipes, model and corpus, running and writing nothing."""

import math

import pytest

from lightning_app.cli.fit import resolve_recipe
from lightning_app.errors import ConfigError
from lightning_app.experiments.command import Mteb, plan
from lightning_app.experiments.grid import RECIPES, Budget, Hardware, Probes, recipe_file


def plan_options(source, model, output, **changes) -> dict:
    options = dict(source=source, text_field="body", label_field="topic", name=None, model=model, pretrained=True,
                   config_overrides=None, settings=["untrained", "dropout", "crops_last1"], seeds=[1, 2],
                   recipes=dict(RECIPES), budget=Budget(), probe=Probes(), mteb=Mteb(),
                   hardware=Hardware(accelerator="cpu"), output=str(output), resolve=resolve_recipe)
    return {**options, **changes}


def test_plan_lays_out_the_cells_and_fills_in_the_recipes_values(tmp_path, tiny_model, bbc_jsonl):
    output = tmp_path / "results"
    budget = Budget(steps="epoch", batch_size=16, val_documents=32, val_fraction=0.2, limit_val_batches=3)
    probe = Probes(every=5, documents=None, max_length=48, projector=True, indomain_documents=40)
    planned = plan(**plan_options(bbc_jsonl, tiny_model, output, budget=budget, probe=probe, mteb=Mteb(max_length=64)))
    assert not output.exists()
    recipe = resolve_recipe(recipe_file(RECIPES["crops"]))
    steps = math.ceil(300 * 0.8 / 16)  # one epoch of the 300 documents, 20% held out
    assert (planned.name, planned.folder, planned.model, planned.described) == ("bbc", output, tiny_model, tiny_model)
    assert planned.budget == Budget(steps=steps, batch_size=16, lr=recipe["model"]["lr"],
                                    max_length=recipe["data"]["max_length"], val_documents=32, val_fraction=0.2,
                                    limit_val_batches=3)
    assert planned.probe == Probes(every=5, documents=None, max_length=48, cv_folds=10, projector=True,
                                   indomain_documents=40)
    assert planned.runs_on == Hardware(accelerator="cpu", devices=recipe["trainer"]["devices"],
                                       precision=recipe["trainer"]["precision"],
                                       num_workers=recipe["data"]["num_workers"])
    assert [cell.name for cell in planned.cells] == ["dropout/seed1", "crops_last1/seed1", "dropout/seed2",
                                                     "crops_last1/seed2"]
    assert all(cell.config["probe.at_start"] for cell in planned.cells)  # each cell's own baseline
    cell = planned.cells[3]
    assert cell.folder == output / "crops_last1" / "seed2"
    expected = {"config": str(recipe_file(RECIPES["crops"])), "seed_everything": 2, "trainer.max_steps": steps,
                "trainer.val_check_interval": 5, "trainer.limit_val_batches": 3, "trainer.accelerator": "cpu",
                "data.source": bbc_jsonl, "data.text_field": "body", "data.batch_size": 16, "data.val_documents": 32,
                "data.val_fraction": 0.2, "probe.indomain_documents": 40, "probe.max_length": 48, "probe.cv_folds": 10, "probe.projector": True, "model.frozen_layers": 1,
                "model.model": tiny_model, "mteb.tasks": None}
    assert {key: cell.config[key] for key in expected} == expected
    assert cell.config["probe.corpora"] == [{"name": "bbc", "source": bbc_jsonl, "text_field": "body",
                                             "label_field": "topic", "max_documents": None}]
    assert not {"data.max_length", "model.lr", "trainer.devices"} & set(cell.config)  # the recipe's, left to it


def test_plan_refuses_a_length_the_model_cannot_take(tmp_path, tiny_model, bbc_jsonl):
    with pytest.raises(ConfigError, match=r"^mteb.max_length: expected at most 520 tokens"):
        plan(**plan_options(bbc_jsonl, tiny_model, tmp_path / "results", mteb=Mteb(max_length=600)))
    assert not (tmp_path / "results").exists()
