"""``lightning embed``: stream a corpus through a model into Parquet shards (resumable, DDP-sharded),
with ``meta.json`` describing what was embedded, and optionally a 2D map."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning import Trainer

from lightning_app.data.sources import open_corpus
from lightning_app.embed.shards import META, SHARD_FOLDER, shard_files, write_meta
from lightning_app.embed.writer import EmbedData, EmbedModule, ShardWriter
from lightning_app.errors import ConfigError
from lightning_app.evaluate.mteb_encoder import DEFAULT_MAX_LENGTH
from lightning_app.model.load import check_layer, check_max_length, load_encoder, weights_revision
from lightning_app.model.precision import DEFAULT_PRECISION, accelerator_device, resolve_precision
from lightning_app.model.teardown import DestroyProcessGroupAtExit

MAPS = ("tsne", "umap")
# meta.json fields that must match for a rerun to continue the shards already written.
SETTINGS = ("model", "revision", "pooling", "layer", "normalize", "max_length", "dimension", "precision", "source",
            "text_field", "label_field", "subset", "split", "sample_by", "max_documents", "shard_size")


def _check_output(output: Path) -> None:
    """The folder must be (or be creatable as) a writable folder; nothing is created here."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: expected a folder, but {output} is a file")
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output: cannot write to {output} ({existing} is not a writable folder)")


def _check_resume(output: Path, settings: dict) -> None:
    """A folder holding shards of other settings (another model, corpus, layer, ...) is refused."""
    meta_path = output / META
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            raise ConfigError(f"output: {meta_path} is not valid JSON; expected the meta.json of an earlier "
                              "lightning embed run, or a new folder") from None
        differ = [key for key in SETTINGS if old.get(key) != settings[key]]
        if differ:
            shown = ", ".join(f"{k} {old.get(k)!r} (now {settings[k]!r})" for k in differ[:4])
            raise ConfigError(f"output: {output} holds embeddings made with other settings: {shown}; "
                              "expected the same settings to continue, or another folder")
    elif shard_files(output):
        raise ConfigError(f"output: {output / SHARD_FOLDER} holds shards but no meta.json; expected a new folder")


@dataclass(frozen=True)
class EmbedOptions:
    """The options of one ``lightning embed`` run (see ``embed_command``), checked when built."""

    model: str
    source: str
    output: str
    text_field: str
    label_field: str | None
    subset: str | None
    split: str
    sample_by: str
    layer: int | None
    normalize: bool
    max_length: int
    batch_size: int
    shard_size: int
    max_documents: int | None
    accelerator: str
    devices: int | str
    num_nodes: int
    strategy: str
    precision: str
    map: str | None
    map_threads: int
    html_points: int
    seed: int
    trust_remote_code: bool

    def __post_init__(self) -> None:
        for name, least in (("batch_size", 1), ("shard_size", 1), ("html_points", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name}: expected an integer >= {least}, got {value!r}")
        if self.max_documents is not None and (not isinstance(self.max_documents, int) or self.max_documents < 1):
            raise ConfigError(f"max_documents: expected an integer >= 1 or nothing for all, got {self.max_documents!r}")
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ConfigError(f"max_length: expected an integer >= 3, got {self.max_length!r}")
        threads = self.map_threads
        if isinstance(threads, bool) or not isinstance(threads, int) or not (threads == -1 or threads >= 1):
            raise ConfigError(f"map_threads: expected -1 (every core) or an integer >= 1, got {threads!r}")
        if self.map is not None and self.map not in MAPS:
            raise ConfigError(f"map: expected one of {', '.join(MAPS)}, got {self.map!r}")
        if self.map == "umap":
            from lightning_app.probes.plots import require_umap
            require_umap()
        _ = self.used_precision  # an unknown precision fails here
        _check_output(Path(self.output))

    @property
    def used_precision(self) -> str:
        """The Lightning precision the forward runs at (``auto`` resolved for the accelerator)."""
        return resolve_precision(self.precision, accelerator_device(self.accelerator))

    @property
    def corpus(self) -> dict:
        """Keyword arguments of ``open_corpus``."""
        return dict(source=self.source, text_field=self.text_field, label_field=self.label_field, subset=self.subset,
                    split=self.split, sample_by=self.sample_by, trust_remote_code=self.trust_remote_code)

    @property
    def command(self) -> str:
        """The ``lightning embed`` command line of these options, defaults left out."""
        defaults = embed_command.__kwdefaults__
        given = [f"--{key}={value}" for key, value in dataclasses.asdict(self).items()
                 if key not in defaults or value != defaults[key]]
        return shlex.join(["lightning", "embed", *given])


def _load(options: EmbedOptions):
    """The encoder and tokenizer, checked against the layer and tokens per text asked for."""
    encoder, tokenizer = load_encoder(options.model, trust_remote_code=options.trust_remote_code, option="model")
    check_layer(options.layer, encoder.num_layers)
    check_max_length(options.max_length, encoder, tokenizer)
    encoder.normalize = encoder.normalize or options.normalize
    return encoder, tokenizer


def _settings(options: EmbedOptions, encoder) -> dict:
    """What meta.json records of how the embeddings were made: the ``SETTINGS``."""
    made = dict(revision=weights_revision(encoder), pooling=encoder.pooling, normalize=encoder.normalize,
                layer=encoder.num_layers if options.layer is None else options.layer,
                dimension=encoder.backbone.config.hidden_size, precision=options.used_precision)
    return {key: made[key] if key in made else getattr(options, key) for key in SETTINGS}


def _start(out: Path, settings: dict, command: str) -> dict:
    """The run's meta.json (written unless a rerun finds one) and its shard folder."""
    meta = {**settings, "count": None, "complete": False, "command": command}
    (out / SHARD_FOLDER).mkdir(parents=True, exist_ok=True)
    if not (out / META).exists():
        write_meta(out, meta)
    return meta


def _predict(options: EmbedOptions, encoder, tokenizer, meta: dict) -> bool:
    """Embed this rank's shards that are not complete yet, each written as it completes; True on rank 0."""
    out = Path(options.output)
    warnings.filterwarnings("ignore", "Couldn't infer the batch indices")  # the writer reads rows, not indices
    trainer = Trainer(accelerator=options.accelerator, devices=options.devices, num_nodes=options.num_nodes,
                      strategy=options.strategy, precision=options.used_precision,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      use_distributed_sampler=False, callbacks=[ShardWriter(out, meta), DestroyProcessGroupAtExit()])
    data = EmbedData(corpus=options.corpus, tokenizer=tokenizer, output=out, shard_size=options.shard_size,
                     batch_size=options.batch_size, max_length=options.max_length, max_documents=options.max_documents)
    layer = None if options.layer in (None, encoder.num_layers) else options.layer
    trainer.predict(EmbedModule(encoder.eval(), layer), datamodule=data, return_predictions=False)
    return trainer.is_global_zero


def _finish(options: EmbedOptions, settings: dict) -> None:
    """Check that every corpus row was embedded once, say so, and draw the map if one was asked for."""
    out = Path(options.output)
    meta = json.loads((out / META).read_text())
    if not meta.get("complete"):
        raise RuntimeError(f"the shards in {out / SHARD_FOLDER} do not hold every corpus row exactly once; "
                           "rerun the same command to embed the missing shards")
    print(f"embedded {meta['count']} rows into {meta['shards']} shards in {out / SHARD_FOLDER} "
          f"(dimension {settings['dimension']}, revision {settings['revision']}, precision {settings['precision']})")
    if options.map:
        from lightning_app.embed.maps import draw_map
        meta["map"] = draw_map(out, options.map, options.corpus, options.max_documents, options.seed,
                               options.html_points, options.map_threads)
        write_meta(out, meta)


def embed_command(*, model: str, source: str, output: str, text_field: str = "text",
                  label_field: str | None = None, subset: str | None = None, split: str = "train",
                  sample_by: str = "document", layer: int | None = None, normalize: bool = False,
                  max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 32, shard_size: int = 10_000,
                  max_documents: int | None = None, accelerator: str = "auto", devices: int | str = "auto",
                  num_nodes: int = 1, strategy: str = "auto", precision: str = DEFAULT_PRECISION,
                  map: str | None = None, map_threads: int = 1, html_points: int = 100_000, seed: int = 42,
                  trust_remote_code: bool = False) -> None:
    """Embed every document of a corpus into Parquet shards, with meta.json, and optionally draw a 2D map.

    Output: OUTPUT/embeddings/shard-NNNNNN.parquet with columns row (the corpus row number), label
    (with --label_field) and embedding (float32, fixed size), every row exactly once, shards and rows
    in corpus order (datasets.load_dataset("parquet", data_files="OUTPUT/embeddings/*.parquet"),
    pandas or pyarrow read them); OUTPUT/meta.json with the model, its weight-hash revision (the
    one lightning mteb files results under), pooling, layer, dimension, precision, count and the command. A
    rerun with the same arguments continues: complete shards are kept, the others are embedded.
    With several devices or nodes (the same DDP/SLURM setup as lightning fit) each rank embeds
    every W-th shard.

    Args:
        model: A Lightning checkpoint (.ckpt) written by lightning fit, an exported or
            sentence-transformers folder, a Hugging Face hub id, or packaged:minilm.
        source: Anything data.source takes: a local jsonl/json/parquet/csv/txt file, folder or glob, a
            hub dataset id, packaged:bbcnews, packaged:newsarticles or packaged:houseofcommons. It is
            streamed, never loaded whole.
        output: Folder for the shards, meta.json and the map; created if missing.
        text_field: The column holding the text.
        label_field: A column to copy next to each embedding (and to colour the map by).
        subset: The hub dataset's configuration name.
        split: The hub dataset's split.
        sample_by: For .txt files: one document per document (file), line or paragraph.
        layer: Hidden state to pool: nothing for the last layer, an index (0 = embeddings).
        normalize: L2-normalise every embedding (a model trained with normalize keeps it anyway).
        max_length: Tokens kept per text, special tokens included; longer texts are truncated (default:
            lightning mteb's).
        batch_size: Texts per forward pass.
        shard_size: Rows per Parquet shard: the unit of resuming, of sharding across ranks and of
            sorting by length (rows are batched by token count within a shard).
        max_documents: Embed only the first this many rows of the corpus.
        accelerator: Lightning accelerator: auto, cpu, gpu.
        devices: Devices per node (e.g. 8), or auto.
        num_nodes: Nodes (under SLURM: the allocation's, as in lightning fit).
        strategy: Lightning strategy (auto; ddp with several devices).
        precision: auto (bf16-mixed where the hardware multiplies bf16 natively: a CUDA GPU from
            Ampere on, a CPU with AMX or AVX512-BF16; 32-true elsewhere), 32 (32-true), bf16-mixed
            or bf16-true. meta.json records the one used; embeddings are stored as float32.
        map: Also draw a 2D map: tsne (openTSNE, PCA initialisation) or umap (needs umap-learn),
            written to OUTPUT/map.parquet, map.png and map.html, with kNN accuracy (k=10) of the
            labels in 2D and in the full space in meta.json.
        map_threads: Threads of the map's layout; -1 for every core (faster for large maps on an
            idle machine; on a shared one a single thread often is).
        html_points: At most this many points (a seeded random sample) in map.html; 0 writes no HTML.
        seed: Seed of the map's layout and of the HTML sample.
        trust_remote_code: Run model code shipped with a hub model (off unless asked for).
    """
    options = EmbedOptions(**locals())
    open_corpus(**options.corpus)  # reads the first row: a missing column fails here
    encoder, tokenizer = _load(options)
    settings = _settings(options, encoder)
    _check_resume(Path(output), settings)
    meta = _start(Path(output), settings, options.command)
    if _predict(options, encoder, tokenizer, meta):
        _finish(options, settings)
