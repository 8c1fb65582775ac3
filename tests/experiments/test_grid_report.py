"""The grid's report from cells' logs: signals.csv sets each trained cell's labelled change beside the
change of every label-free signal, and cells logged before the interval tags still report."""

import csv
import json

import pytest
from torch.utils.tensorboard import SummaryWriter

from lightning_app.experiments.grid import Cell
from lightning_app.experiments.report import SIGNAL_HEADERS, collect, write_report
from lightning_app.probes.tags import change_tags, indomain_tag, layer_tags, probe_tag


def fake_cell(folder, setting: str, seed: int, scalars: dict[str, dict[int, float]]) -> Cell:
    """A finished cell whose TensorBoard folder holds ``scalars`` (tag -> step -> value)."""
    cell = Cell(setting, seed, folder / setting / f"seed{seed}", {})
    writer = SummaryWriter(str(cell.log_dir))
    for tag, series in scalars.items():
        for step, value in series.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    cell.done_file.write_text(json.dumps({"setting": setting, "seed": seed, "wall_s": 1.0, "steps": 10}))
    return cell


def layered(prefix: str, by_step: dict[int, list[float]]) -> dict[str, dict[int, float]]:
    """``<prefix>/layer_NN`` series from the values of every layer at each step."""
    scalars: dict[str, dict[int, float]] = {}
    for step, values in by_step.items():
        for tag, value in layer_tags(prefix, values).items():
            scalars.setdefault(tag, {})[step] = value
    return scalars


def knn(start: float, end: float) -> dict[str, dict[int, float]]:
    return {**layered(probe_tag("c", "knn_acc"), {0: [0.5, 0.6, start], 10: [0.5, 0.6, end]}),
            **layered(probe_tag("c", "knn_cv_acc"), {0: [0.5, 0.6, start], 10: [0.5, 0.6, end]}),
            **layered("drift", {10: [0.0, 0.1, 0.2]})}


def test_signals_csv_has_each_cells_change_interval_and_signal_changes(tmp_path):
    new = {**knn(0.75, 0.8125), **dict(zip(change_tags("c"), ({10: 0.0625}, {10: 0.015625}, {10: 0.125}))),
           **layered(indomain_tag("sentence_crops", "retrieval_top1"), {0: [0.1, 0.2, 0.25], 10: [0.1, 0.2, 0.5]}),
           **layered(indomain_tag("dropout", "effective_rank"), {0: [9.0, 8.0, 7.0], 4: [1.0, 1.0, 1.0],
                                                                  10: [9.0, 8.0, 5.5]})}
    cells = [fake_cell(tmp_path, "crops", 1, new),
             fake_cell(tmp_path, "dropout", 1, knn(0.75, 0.6875)),  # logged before the interval and signals
             fake_cell(tmp_path, "crops", 2, {key: {10: series[10]} for key, series in knn(0.75, 0.7).items()})]
    measured = collect(cells, "c", None)
    write_report(measured, tmp_path, "c", [])
    rows = list(csv.reader((tmp_path / "signals.csv").open()))
    assert rows[0] == SIGNAL_HEADERS and len(SIGNAL_HEADERS) == 8 + 3 * 6
    assert "sentence_crops/retrieval_top1" in SIGNAL_HEADERS and "dropout/lexical_overlap" in SIGNAL_HEADERS
    by_cell = {(row[0], row[1]): dict(zip(SIGNAL_HEADERS, row)) for row in rows[1:]}
    assert set(by_cell) == {("crops", "1"), ("crops", "2"), ("dropout", "1")}  # no untrained row
    first = by_cell["crops", "1"]
    assert [first[key] for key in SIGNAL_HEADERS[2:8]] == ["c", "0.75", "0.8125", "0.0625", "0.015625", "0.125"]
    assert first["sentence_crops/retrieval_top1"] == "0.25" and first["dropout/effective_rank"] == "-1.5"
    assert first["token_crops/alignment"] == "" and first["dropout/retrieval_mrr"] == ""
    old = by_cell["dropout", "1"]
    assert [old[key] for key in SIGNAL_HEADERS[2:8]] == ["c", "0.75", "0.6875", "-0.0625", "", ""]
    assert all(old[column] == "" for column in SIGNAL_HEADERS[8:])
    unprobed = by_cell["crops", "2"]  # k-fold accuracy without step 0: nothing to change from
    assert [unprobed[key] for key in SIGNAL_HEADERS[3:8]] == ["", "0.7", "", "", ""]
    assert measured["untrained"].seeds == [1]  # the first cell of seed 1 with a step 0
    assert measured["untrained"].cv[0][-1] == pytest.approx(0.75)


def test_the_report_names_the_code_each_finished_cell_ran(tmp_path):
    from lightning_app.experiments.command import code_line
    from lightning_app.experiments.grid import code_version

    cells = [fake_cell(tmp_path, setting, 1, knn(0.5, 0.6)) for setting in ("crops", "dropout", "token_crops")]
    for cell, code in zip(cells, ("abc1234", "abc1234")):
        cell.done_file.write_text(json.dumps({**json.loads(cell.done_file.read_text()), "code": code}))
    waiting = Cell("crops_last2", 1, tmp_path / "crops_last2" / "seed1", {})
    assert code_line([*cells, waiting]) == "`abc1234` (2 cells), not recorded (1 cells)"
    assert code_line([waiting]) == "no finished cell"
    # This checkout's commit (``+`` for uncommitted changes), as ``git describe`` gives it.
    assert code_version().rstrip("+").isalnum() or code_version().startswith("version ")
