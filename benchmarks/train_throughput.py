"""Training samples/s of our step against sentence-transformers' trainer on the same pairs.

Ours is timed as Lightning runs it: a ``Trainer.fit`` over a fixed list of collated batches,
each step from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, loss, backward,
optimizer and scheduler step, logging). The baseline is ``SentenceTransformerTrainer`` with
``MultipleNegativesRankingLoss(scale=20)`` (= temperature 0.05), timed from ``on_step_begin`` to
``on_step_end``. Both get the same weights, pairs, max length, optimizer (Adam(W) without weight
decay, lr 2e-5, no clipping) and threads; neither is timed while loading data or the model.

The batches: a pool of ``16 * 64`` pairs (one window of ``data.length_buckets`` 16). The baseline
and ``ours, no bucketing`` train on the pool's first ``steps`` batches in stream order (what a
random sampler gives); ours on ``steps`` of the pool's 16 bucketed batches, chosen evenly over
their padded lengths (a stratified sample, so its mean step time estimates the whole window's
without timing all 16). ``warmup`` batches of other pairs come first and are not timed. Each
system runs ``repeats`` times, interleaved; the figure is the median over repeats of the timed
pairs divided by the timed steps' total time.

    python benchmarks/train_throughput.py                  # CPU: crops and dropout, with ablations
    python benchmarks/train_throughput.py --device cuda    # GPU: mpnet-base-sized, bf16, MFU
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit, text_pairs  # noqa: E402
from lightning_app.data.bucketing import regroup_by_length  # noqa: E402
from lightning_app.data.collate import PairCollator  # noqa: E402
from lightning_app.data.views import Dropout, SentenceCrops  # noqa: E402
from lightning_app.model.encoder import transformer_layers  # noqa: E402
from lightning_app.packaged import load_tokenizer  # noqa: E402
from lightning_app.model.module import ContrastiveModule  # noqa: E402
from lightning_app.packaged import resolve_model  # noqa: E402

# Dense bf16 peak FLOP/s (no sparsity) by device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


class TwoForwards(ContrastiveModule):
    """Ablation: one forward per view, each padded to its own longest row (as sentence-transformers)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        halves = []
        for ids, mask in zip(input_ids.chunk(2), attention_mask.chunk(2)):
            width = int(mask.sum(1).max())
            halves.append(self.encoder(ids[:, :width], mask[:, :width]))
        return torch.cat(halves)


class StepTimer(L.Callback):
    def __init__(self, device: str) -> None:
        self.device, self.times = device, []

    def on_train_batch_start(self, *args) -> None:
        _sync(self.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_batches(pairs, tokenizer, batch_size: int, max_length: int, warmup: int, steps: int):
    """Warm-up + timed batches, bucketed and in stream order (see the module docstring), and the
    stream-order batches' texts."""
    tokenize = lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    rows = [{"a": tokenize(a), "b": tokenize(b), "skipped": 0, "id": i} for i, (a, b) in enumerate(pairs)]
    first, pool = rows[:warmup * batch_size], rows[warmup * batch_size:]
    collate = PairCollator(tokenizer, max_length)
    cut = lambda rs: [collate(rs[i:i + batch_size]) for i in range(0, len(rs), batch_size)]  # noqa: E731
    by_width = sorted(cut(regroup_by_length(pool, batch_size, len(pool) // batch_size, 0, random.Random(0))),
                      key=lambda b: b["input_ids"].shape[1])
    stratified = [by_width[int((i + 0.5) * len(by_width) / steps)] for i in range(steps)]
    stream = first + pool[:steps * batch_size]
    return cut(first) + stratified, cut(stream), [pairs[r["id"]] for r in stream]


def time_ours(model_path: str, batches, device: str, warmup: int, module_class=ContrastiveModule,
              compiled: bool = False, **options):
    module = module_class(model_path, lr=2e-5, **options)
    if compiled:
        module.encoder.backbone = torch.compile(module.encoder.backbone, dynamic=True)
    timer = StepTimer(device)
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        precision="bf16-mixed" if device == "cuda" else "32-true", callbacks=[timer])
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.times[warmup:]


def time_sentence_transformers(model_path: str, text_batches, batch_size: int, max_length: int, device: str,
                               warmup: int):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            _sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter() - self.start)

    model = SentenceTransformer(model_path, device=device)
    model.max_seq_length = max_length
    dataset = Dataset.from_dict({"anchor": [a for a, _ in text_batches], "positive": [b for _, b in text_batches]})
    in_order = lambda data, batch_size, drop_last, **_: BatchSampler(SequentialSampler(data), batch_size, drop_last)  # noqa: E731
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=len(text_batches) // batch_size,
            learning_rate=2e-5, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch",
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_drop_last=True, batch_sampler=in_order, use_cpu=device == "cpu", bf16=device == "cuda", seed=0)
        timer = Timer()
        timer.times = []
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[timer])
        trainer.train()
    return timer.times[warmup:]


def model_flops(model_path: str, batches) -> float:
    """Training FLOPs per step: 6 per transformer-block parameter and non-padding token, plus
    attention's 12 * layers * hidden * length^2 per row (Kaplan et al. 2020; PaLM's MFU)."""
    from transformers import AutoModel
    backbone = AutoModel.from_pretrained(model_path)
    params = sum(p.numel() for p in transformer_layers(backbone).parameters())
    layers, hidden = backbone.config.num_hidden_layers, backbone.config.hidden_size
    total = 0.0
    for batch in batches:
        lengths = batch["attention_mask"].sum(1).double()
        total += 6 * params * float(lengths.sum()) + 12 * layers * hidden * float((lengths ** 2).sum())
    return total / len(batches)


def random_model(config_file: str, folder: str) -> str:
    """A randomly initialised encoder of ``config_file``, saved with the packaged tokenizer."""
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(config_file)).save_pretrained(folder)
    load_tokenizer("packaged:minilm").save_pretrained(folder)
    return folder


def median_rate(runs: list[list[float]], batch_size: int) -> float:
    """Median over runs of pairs/s over the run's timed steps."""
    return statistics.median(batch_size * len(times) / sum(times) for times in runs)


def compare(name, view, model_path, tokenizer, args, ablations: bool) -> dict:
    """Interleaved repeats of every system on one view's pairs; returns pairs/s per system."""
    pairs = text_pairs(view, args.batch_size * (args.warmup + 16))
    bucketed, stream, texts = build_batches(pairs, tokenizer, args.batch_size, args.max_length, args.warmup,
                                            args.steps)
    systems = {
        "ours": lambda: time_ours(model_path, bucketed, args.device, args.warmup, compiled=args.compile),
        "sentence-transformers": lambda: time_sentence_transformers(
            model_path, texts, args.batch_size, args.max_length, args.device, args.warmup),
    }
    if ablations:
        systems |= {
            "ours, no bucketing": lambda: time_ours(model_path, stream, args.device, args.warmup),
            "ours, two forwards (per-view padding)": lambda: time_ours(
                model_path, bucketed, args.device, args.warmup, module_class=TwoForwards),
            "ours, eager attention": lambda: time_ours(
                model_path, bucketed, args.device, args.warmup, attn_implementation="eager"),
            f"ours, cached loss (chunks of {args.batch_size} rows)": lambda: time_ours(
                model_path, bucketed, args.device, args.warmup, cache_chunk_size=args.batch_size),
        }
    times = {system: [] for system in systems}
    for repeat in range(args.repeats):
        for system, run in systems.items():
            times[system].append(run())
            print(f"[{name} repeat {repeat + 1}/{args.repeats}] {system}: "
                  f"{median_rate(times[system], args.batch_size):.1f} pairs/s so far", file=sys.stderr, flush=True)
    rates = {system: median_rate(t, args.batch_size) for system, t in times.items()}
    tokens = sum(b["tokens"] for b in bucketed[args.warmup:]) / args.steps
    padded = lambda bs: sum(b["attention_mask"].numel() for b in bs[args.warmup:]) / args.steps  # noqa: E731
    print(f"\n{name}: {args.steps} timed steps x {args.repeats} repeats, batch {args.batch_size} pairs, "
          f"{tokens:.0f} real tokens per step; padded tokens per step (2B rows): bucketed {padded(bucketed):.0f}, "
          f"stream order {padded(stream):.0f}; load average {os.getloadavg()[0]:.2f}")
    base = rates["sentence-transformers"]
    for system, rate in rates.items():
        print(f"  {system:55s} {rate:7.1f} pairs/s  {rate / base:5.2f}x")
    if args.device == "cuda":
        flops = model_flops(model_path, bucketed[args.warmup:])
        step = args.batch_size / rates["ours"]
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        print(f"  ours: {rates['ours']:.1f} samples/s, {tokens / step:.0f} tokens/s, {flops / step / 1e12:.1f} TFLOP/s"
              + (f", MFU {flops / step / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else
                 ", MFU unknown: pass --peak-tflops"))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=None, help="model folder or hub id (default: packaged MiniLM on CPU, "
                        "a random model built from --model-config on CUDA)")
    parser.add_argument("--model-config", default=os.path.join(os.path.dirname(__file__), "configs", "mpnet-base.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--views", default="crops,dropout")
    parser.add_argument("--ablations", default="crops", help="views that also run the per-optimization variants")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (raise --warmup)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (for MFU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model or (random_model(args.model_config, folder) if args.device == "cuda"
                                    else resolve_model("packaged:minilm"))
        tokenizer = load_tokenizer(model_path)
        print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else os.cpu_count()} "
              f"{'' if args.device == 'cuda' else 'cores'}), torch threads {args.threads}, model {model_path}, "
              f"load average {os.getloadavg()[0]:.2f}")
        views = {"crops": SentenceCrops(), "dropout": Dropout()}
        results = {}
        for name in args.views.split(","):
            rates = compare(name, views[name], model_path, tokenizer, args, ablations=name in args.ablations.split(","))
            results[name] = {"ours": round(rates["ours"], 2), "baseline": round(rates["sentence-transformers"], 2),
                             "ratio": round(rates["ours"] / rates["sentence-transformers"], 3)}
    worst = min(results, key=lambda n: results[n]["ratio"])
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    emit("train_samples_per_s_vs_sentence_transformers", **results[worst], view=worst, views=results)


if __name__ == "__main__":
    main()
