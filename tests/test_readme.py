"""README's quickstart and CI stay the same commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_is_two_commands_and_ci_runs_the_test_command():
    install_and_run, run_tests = quickstart()
    assert install_and_run.startswith("pip install torch==2.13.0")
    assert install_and_run.endswith("lightning fit --config configs/crop.yaml")
    ci = ROOT.joinpath(".ci/run").read_text().strip().splitlines()
    assert ci[-1] == run_tests
    for step in install_and_run.split(" && ")[:-1]:
        assert any(step.replace("pip install", "python -m pip install -q") in line for line in ci), step
