"""``lightning embed``: stream a corpus through a model into Parquet shards (resumable, DDP-sharded),
with ``meta.json`` describing what was embedded, and optionally a 2D map."""

from __future__ import annotations

import json
import os
import shlex
import warnings
from pathlib import Path

import torch
from lightning import Trainer

from lightning_app.data.sources import open_corpus
from lightning_app.embed.shards import META, SHARD_FOLDER, shard_files, write_meta
from lightning_app.embed.writer import EmbedData, EmbedModule, ShardWriter
from lightning_app.errors import ConfigError
from lightning_app.evaluate.mteb_encoder import DEFAULT_MAX_SEQ_LENGTH, token_limit, weights_revision
from lightning_app.export import load_encoder

MAPS = ("tsne", "umap")
# meta.json fields that must match for a rerun to continue the shards already written.
SETTINGS = ("model", "revision", "pooling", "layer", "normalize", "max_length", "dimension", "corpus",
            "text_field", "label_field", "subset", "split", "sample_by", "max_documents", "shard_size")


def _check_options(batch_size, shard_size, max_documents, max_length, map, html_points, map_threads) -> None:
    for name, value, least in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1),
                               ("html_points", html_points, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}: expected an integer >= {least}, got {value!r}")
    if max_documents is not None and (not isinstance(max_documents, int) or max_documents < 1):
        raise ConfigError(f"max_documents: expected an integer >= 1 or nothing for all, got {max_documents!r}")
    if not isinstance(max_length, int) or max_length < 3:
        raise ConfigError(f"max_length: expected an integer >= 3, got {max_length!r}")
    if isinstance(map_threads, bool) or not isinstance(map_threads, int) or not (map_threads == -1 or map_threads >= 1):
        raise ConfigError(f"map_threads: expected -1 (every core) or an integer >= 1, got {map_threads!r}")
    if map is not None and map not in MAPS:
        raise ConfigError(f"map: expected one of {', '.join(MAPS)}, got {map!r}")
    if map == "umap":
        from lightning_app.embed.maps import require_umap
        require_umap()


def _check_output(output: Path) -> None:
    """The folder must be (or be creatable as) a writable folder; nothing is created here."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: expected a folder, but {output} is a file")
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output: cannot write to {output} ({existing} is not a writable folder)")


def _load_model(model: str, trust_remote_code: bool):
    try:
        return load_encoder(model, trust_remote_code=trust_remote_code)
    except Exception as error:  # unknown hub id offline, folder without a model, unreadable checkpoint, ...
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model: cannot load '{model}' ({reason}); expected a .ckpt written by lightning "
                          "fit, an exported or sentence-transformers folder, a hub id, or packaged:minilm") from None


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


def _precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on a CUDA GPU, float32 elsewhere."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if gpu else "32-true"


def embed_command(*, model: str, corpus: str, output: str, text_field: str = "text",
                  label_field: str | None = None, subset: str | None = None, split: str = "train",
                  sample_by: str = "document", layer: int | None = None, normalize: bool = False,
                  max_length: int = DEFAULT_MAX_SEQ_LENGTH, batch_size: int = 32, shard_size: int = 10_000,
                  max_documents: int | None = None, accelerator: str = "auto", devices: int | str = "auto",
                  num_nodes: int = 1, strategy: str = "auto", precision: str = "auto",
                  map: str | None = None, map_threads: int = 1, html_points: int = 100_000, seed: int = 42,
                  trust_remote_code: bool = False) -> None:
    """Embed every document of a corpus into Parquet shards, with meta.json, and optionally draw a 2D map.

    Output: OUTPUT/embeddings/shard-NNNNNN.parquet with columns row (the corpus row number), label
    (with --label_field) and embedding (float32, fixed size), every row exactly once, shards and rows
    in corpus order (datasets.load_dataset("parquet", data_files="OUTPUT/embeddings/*.parquet"),
    pandas or pyarrow read them); OUTPUT/meta.json with the model, its weight-hash revision (the
    one lightning mteb files results under), pooling, layer, dimension, count and the command. A
    rerun with the same arguments continues: complete shards are kept, the others are embedded.
    With several devices or nodes (the same DDP/SLURM setup as lightning fit) each rank embeds
    every W-th shard.

    Args:
        model: A Lightning checkpoint (.ckpt) written by lightning fit, an exported or
            sentence-transformers folder, a Hugging Face hub id, or packaged:minilm.
        corpus: Anything data.source takes: a local jsonl/json/parquet/csv/txt file, folder or glob, a
            hub dataset id, packaged:bbcnews or packaged:newsarticles. It is streamed, never loaded whole.
        output: Folder for the shards, meta.json and the map; created if missing.
        text_field: The column holding the text.
        label_field: A column to copy next to each embedding (and to colour the map by).
        subset: The hub dataset's configuration name.
        split: The hub dataset's split.
        sample_by: For .txt files: one document per document (file), line or paragraph.
        layer: Hidden state to pool: nothing for the last layer, an index (0 = embeddings).
        normalize: L2-normalise every embedding (a model trained with normalize keeps it anyway).
        max_length: Tokens kept per text, special tokens included; longer texts are truncated.
        batch_size: Texts per forward pass.
        shard_size: Rows per Parquet shard: the unit of resuming, of sharding across ranks and of
            sorting by length (rows are batched by token count within a shard).
        max_documents: Embed only the first this many rows of the corpus.
        accelerator: Lightning accelerator: auto, cpu, gpu.
        devices: Devices per node (e.g. 8), or auto.
        num_nodes: Nodes (under SLURM: the allocation's, as in lightning fit).
        strategy: Lightning strategy (auto; ddp with several devices).
        precision: auto (bf16-mixed on a CUDA GPU, 32-true elsewhere) or any Lightning precision.
        map: Also draw a 2D map: tsne (openTSNE, PCA initialisation) or umap (needs umap-learn),
            written to OUTPUT/map.parquet, map.png and map.html, with kNN accuracy (k=10) of the
            labels in 2D and in the full space in meta.json.
        map_threads: Threads of the map's layout; -1 for every core (faster for large maps on an
            idle machine; on a shared one a single thread often is).
        html_points: At most this many points (a seeded random sample) in map.html; 0 writes no HTML.
        seed: Seed of the map's layout and of the HTML sample.
        trust_remote_code: Run model code shipped with a hub model (off unless asked for).
    """
    args = dict(locals())
    out = Path(output)
    _check_options(batch_size, shard_size, max_documents, max_length, map, html_points, map_threads)
    _check_output(out)
    corpus_args = dict(source=corpus, text_field=text_field, label_field=label_field, subset=subset,
                       split=split, sample_by=sample_by, trust_remote_code=trust_remote_code)
    open_corpus(**corpus_args)  # reads the first row: a missing column fails here
    encoder, tokenizer = _load_model(model, trust_remote_code)
    count = encoder.num_layers
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= count):
        raise ConfigError(f"layer: expected an integer in 0..{count} (0 = embeddings, {count} = last) or "
                          f"nothing for the last layer, got {layer!r}")
    limit = token_limit(encoder, tokenizer)
    if max_length > limit:
        raise ConfigError(f"max_length: expected at most {limit} (the most tokens this model and tokenizer "
                          f"take), got {max_length}")
    encoder.normalize = encoder.normalize or normalize
    settings = dict(model=model, revision=weights_revision(encoder), pooling=encoder.pooling,
                    layer=count if layer is None else layer, normalize=encoder.normalize, max_length=max_length,
                    dimension=encoder.backbone.config.hidden_size, corpus=corpus, text_field=text_field,
                    label_field=label_field, subset=subset, split=split, sample_by=sample_by,
                    max_documents=max_documents, shard_size=shard_size)
    _check_resume(out, settings)

    defaults = embed_command.__kwdefaults__
    command = ["lightning", "embed"] + [f"--{k}={v}" for k, v in args.items() if k not in defaults or v != defaults[k]]
    meta = {**settings, "count": None, "complete": False, "command": shlex.join(command)}
    (out / SHARD_FOLDER).mkdir(parents=True, exist_ok=True)
    if not (out / META).exists():
        write_meta(out, meta)

    writer = ShardWriter(out, meta)
    warnings.filterwarnings("ignore", "Couldn't infer the batch indices")  # the writer reads rows, not indices
    trainer = Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                      precision=_precision(precision, accelerator), logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                      callbacks=[writer])
    data = EmbedData(corpus=corpus_args, tokenizer=tokenizer, output=out, shard_size=shard_size,
                     batch_size=batch_size, max_length=max_length, max_documents=max_documents)
    trainer.predict(EmbedModule(encoder.eval(), None if layer in (None, count) else layer), datamodule=data,
                    return_predictions=False)
    if not trainer.is_global_zero:
        return
    meta = json.loads((out / META).read_text())
    if not meta.get("complete"):
        raise RuntimeError(f"the shards in {out / SHARD_FOLDER} do not hold every corpus row exactly once; "
                           "rerun the same command to embed the missing shards")
    print(f"embedded {meta['count']} rows into {meta['shards']} shards in {out / SHARD_FOLDER} "
          f"(dimension {settings['dimension']}, revision {settings['revision']})")
    if map:
        from lightning_app.embed.maps import draw_map
        meta["map"] = draw_map(out, map, corpus_args, max_documents, seed, html_points, map_threads)
        write_meta(out, meta)

