"""Published figures stay traceable: every commit a figure row of README.md or docs/*.md names is in
the history, and every script or config path they name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A short or full commit hash: 7-40 hex digits with at least one letter (all-digit runs are numbers).
COMMIT = re.compile(r"(?<![\w./-])(?=[0-9]*[a-f])[0-9a-f]{7,40}(?![\w/-])")
PATH = re.compile(r"(?<![\w./-])(?:benchmarks|configs|slurm|lightning_app)/[\w./-]*")


def lines(page: Path) -> list[tuple[str, str]]:
    """(``page:line``, text) of every line of a page."""
    return [(f"{page.relative_to(ROOT)}:{n}", text) for n, text in enumerate(page.read_text().splitlines(), 1)]


def figure_row_commits() -> dict[str, list[str]]:
    """Commit -> where it is named, over the table rows that also hold a number (a measured figure)."""
    named: dict[str, list[str]] = {}
    for page in PAGES:
        for where, text in lines(page):
            if not text.lstrip().startswith("|"):
                continue
            commits = COMMIT.findall(text)
            if commits and re.search(r"\d", COMMIT.sub("", text)):
                for commit in commits:
                    named.setdefault(commit, []).append(where)
    return named


def missing_commits(commits: list[str]) -> list[str]:
    """Those of ``commits`` that are not a commit of this repository (``git cat-file``, one process)."""
    done = subprocess.run(["git", "cat-file", "--batch-check"], cwd=ROOT, capture_output=True, text=True, check=True,
                          input="".join(f"{commit}^{{commit}}\n" for commit in commits))
    answers = done.stdout.splitlines()
    return [commit for commit, answer in zip(commits, answers) if answer.endswith("missing") or "ambiguous" in answer]


def history() -> str | None:
    """Why the history cannot be checked (not a git checkout, or a shallow one), or None."""
    inside = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if inside.returncode != 0:
        return "this checkout has no git history (not a git repository)"
    if inside.stdout.strip() == "true":
        return "this checkout is shallow: older commits are not in it"
    return None


def test_every_commit_a_figure_row_names_is_in_the_history():
    reason = history()
    if reason:
        pytest.skip(reason)
    named = figure_row_commits()
    assert named, "no figure row names a commit: the pattern no longer matches the pages"
    missing = missing_commits(sorted(named))
    assert not missing, {commit: named[commit] for commit in missing}


def test_every_script_and_config_path_named_exists():
    dangling = {}
    for page in PAGES:
        for where, text in lines(page):
            for path in PATH.findall(text):
                path = path.rstrip(".,:;")
                if not (ROOT / path).exists():
                    dangling.setdefault(path, []).append(where)
    assert not dangling, dangling


def test_the_patterns_find_commits_and_paths_and_skip_numbers():
    row = "| run | `benchmarks/x.py --n 2` | 4.15 GB | `41ca25b`, `1a260ea` + a step, 1234567 rows, deadline |"
    assert COMMIT.findall(row) == ["41ca25b", "1a260ea"]
    assert PATH.findall(row) == ["benchmarks/x.py"]
    assert PATH.findall("`configs/<name>.yaml`, {crops: configs/crop.yaml}") == ["configs/", "configs/crop.yaml"]
