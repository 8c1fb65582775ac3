"""Training pairs/s of our step against sentence-transformers' trainer, on the same pairs.

Systems (same weights, pairs, max length, threads; Adam(W) lr 2e-5, no weight decay, no clipping):

- ``ours``: ``ContrastiveModule`` with its default ``tokens_per_chunk`` (the in-batch padding cut:
  the 2B rows sorted by length and embedded in chunks, each padded to its own longest row), fed
  the batches in stream order: random batches, the paper's protocol, no length bucketing.
- ``sentence-transformers``: ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss(scale=20)``
  (= temperature 0.05) with its default batch sampler (a seeded ``RandomSampler``) over the same
  pairs: what a user gets. Its batches are random batches of the same pairs, but not ours.
- ``sentence-transformers, same batches``: the same trainer given exactly our batches through its
  ``batch_sampler`` argument (our stream order, unshuffled), so ``ratio_same_batches`` compares
  identical work. Checked in the run: the row lengths the loss receives equal ours row by row
  in every step (and the default sampler's batches hold the same pairs, in other batches).
- ``ours, no padding cut``: ``tokens_per_chunk=None`` (one forward padded to the batch's longest
  row), the same batches as ``ours``.
- with ``--ablations``: ours with other ``tokens_per_chunk``, eager or plain sdpa attention, the cached loss.
- with ``--compile``: ``ours, torch.compile``: ours with the encoder ``torch.compile``d (inductor,
  dynamic shapes), timed after its ``--warmup`` steps, which hold the compilation: reported as
  those steps' time beyond eager's for as many steps, with the run length where it pays back, and
  the largest loss and gradient difference from eager on one batch with dropout off.

Ours is timed as Lightning runs it: a ``Trainer.fit`` over the collated batches, each step from
``on_train_batch_start`` to ``on_train_batch_end`` (forward, loss, backward, optimizer and
scheduler step, logging); sentence-transformers from ``on_step_begin`` to ``on_step_end``.
Neither is timed while loading data or the model; ``--warmup`` steps come first, untimed. Each
repeat runs every system once (interleaved, the order rotated each repeat) and times a 2048^2
``torch.mm`` loop, the machine's matmul peak at that moment; a system's figure is the median over
repeats of its timed pairs / timed time, with the min-max range.

``peak_share``: the model FLOP/s of our step (``model_flops``: real tokens only) over the measured
matmul peak. ``real_token_share``: real tokens / padded tokens per step, padded = sum over chunks
of rows x chunk width (and without the cut: 2B rows x the longest row);
``real_token_share_sentence_transformers``: the same over what sentence-transformers padded on our
batches (B rows x the column's longest row, per column, as its loss received them). Top-level figures of
the JSON line are the worst over views.

    python benchmarks/train_throughput.py                  # CPU: crops and dropout, packaged MiniLM
    python benchmarks/train_throughput.py --ablations      # + tokens_per_chunk 1024/2048/8192, eager, cached loss
    python benchmarks/train_throughput.py --profile        # + the top ops of our step and of theirs
    python benchmarks/train_throughput.py --compile        # + ours torch.compiled: per step, compilation, payback
    python benchmarks/train_throughput.py --device cuda [--compile]   # GPU: mpnet-base-sized, bf16, MFU
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import datasets
import lightning as L
import torch
import transformers
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit, text_pairs  # noqa: E402
from lightning_app.data.collate import PairCollator  # noqa: E402
from lightning_app.data.views import Dropout, SentenceCrops  # noqa: E402
from lightning_app.model.chunking import sorted_chunks  # noqa: E402
from lightning_app.model.encoder import transformer_layers  # noqa: E402
from lightning_app.model.module import ContrastiveModule  # noqa: E402
from lightning_app.packaged import load_tokenizer, resolve_model  # noqa: E402

# Dense bf16 peak FLOP/s (no sparsity) by device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}
DEFAULT_CHUNK = inspect.signature(ContrastiveModule).parameters["tokens_per_chunk"].default
OURS, ST, ST_SAME, NO_CUT = "ours", "sentence-transformers", "sentence-transformers, same batches", "ours, no padding cut"
COMPILED = "ours, torch.compile"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class StepTimer(L.Callback):
    """Our steps' times; optionally a torch profiler over the steps after ``warmup``."""

    def __init__(self, device: str, warmup: int, profiler=None) -> None:
        self.device, self.warmup, self.profiler, self.times = device, warmup, profiler, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.profiler is not None and batch_idx == self.warmup:
            self.profiler.start()
        _sync(self.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter() - self.start)
        if self.profiler is not None and batch_idx == trainer.max_steps - 1:
            self.profiler.stop()


def build_batches(pairs, tokenizer, batch_size: int, max_length: int):
    """The pairs cut into collated batches in stream order, and each pair's token ids."""
    tokenize = lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    rows = [{"a": tokenize(a), "b": tokenize(b), "skipped": 0} for a, b in pairs]
    collate = PairCollator(tokenizer, max_length)
    return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def padded_tokens(batch: dict, tokens_per_chunk: int | None) -> int:
    """Tokens our step pads the batch to: rows x width summed over its chunks (one chunk without the cut)."""
    if tokens_per_chunk is None:
        return batch["attention_mask"].numel()
    return sum(len(rows) * width for rows, width in sorted_chunks(batch["attention_mask"], tokens_per_chunk))


def time_ours(model_path: str, batches, device: str, warmup: int, compiled: bool = False, profiler=None,
              **options) -> list[float]:
    """Every step's time, the ``warmup`` untimed ones first (with ``compiled``, they hold the compilation)."""
    module = ContrastiveModule(model_path, lr=2e-5, **options)
    if compiled:  # dynamic shapes: the padding cut gives every chunk its own width
        module.encoder.backbone = torch.compile(module.encoder.backbone, dynamic=True)
    timer = StepTimer(device, warmup, profiler)
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        precision="bf16-mixed" if device == "cuda" else "32-true", callbacks=[timer])
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.times


def compiled_difference(model_path: str, batch: dict, device: str) -> dict:
    """Largest absolute difference of the compiled step's loss and gradients from eager's on one
    batch, fp32, dropout off (compiled dropout draws other masks)."""
    off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    batch = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
    results = []
    for compiled in (False, True):
        module = ContrastiveModule(model_path, config_overrides=off).to(device)
        module.trainer = SimpleNamespace(world_size=1, global_rank=0)
        if compiled:
            module.encoder.backbone = torch.compile(module.encoder.backbone, dynamic=True)
        loss = module.contrastive_step(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), [p.grad for p in module.parameters() if p.grad is not None]))
    (loss, grads), (compiled_loss, compiled_grads) = results
    return {"loss": float((loss - compiled_loss).abs()),
            "gradients": max(float((a - b).abs().max()) for a, b in zip(grads, compiled_grads))}


def time_sentence_transformers(model_path: str, pairs, batch_size: int, max_length: int, device: str,
                               warmup: int, same_batches: bool, profiler=None):
    """Step times of sentence-transformers' trainer over ``pairs``, the row lengths its loss
    received per step (anchor column then positive column, as our batches' 2B rows), and the tokens
    it padded per step (each column padded to its own longest row, one forward per column).
    ``same_batches``: our batches in our order; else the trainer's default (random) sampler."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            if profiler is not None and state.global_step == warmup:
                profiler.start()
            _sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter() - self.start)
            if profiler is not None and state.global_step == state.max_steps:
                profiler.stop()

    class RecordingLoss(MultipleNegativesRankingLoss):
        """MNRL that keeps the row lengths and padded sizes it is given (read after training)."""

        def forward(self, sentence_features, labels):
            self.lengths.append(torch.cat([f["attention_mask"].sum(1) for f in sentence_features]))
            self.padded.append(sum(f["attention_mask"].numel() for f in sentence_features))
            return super().forward(sentence_features, labels)

    model = SentenceTransformer(model_path, device=device)
    model.max_seq_length = max_length
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs]})
    in_order = lambda data, batch_size, drop_last, **_: BatchSampler(SequentialSampler(data), batch_size, drop_last)  # noqa: E731
    sampler = {"batch_sampler": in_order} if same_batches else {}
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=len(pairs) // batch_size,
            learning_rate=2e-5, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch",
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_drop_last=True, use_cpu=device == "cpu", bf16=device == "cuda", seed=0, **sampler)
        timer, loss = Timer(), RecordingLoss(model, scale=20.0)
        loss.lengths, loss.padded = [], []
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[timer])
        trainer.train()
    return timer.times[warmup:], [x.tolist() for x in loss.lengths], loss.padded


def check_batches(batches, lengths: list[list[int]], same: bool) -> str:
    """What the baseline really trained on, against our batches: the row lengths step by step."""
    ours = [b["attention_mask"].sum(1).tolist() for b in batches]
    if len(lengths) != len(ours):
        raise RuntimeError(f"sentence-transformers ran {len(lengths)} steps, ours {len(ours)}")
    equal = sum(a == b for a, b in zip(ours, lengths))
    if same and equal != len(ours):
        raise RuntimeError(f"'same batches': only {equal} of {len(ours)} steps got our rows")
    if sorted(sum(ours, [])) != sorted(sum(lengths, [])):
        raise RuntimeError("sentence-transformers trained on other pairs than ours")
    return f"same pairs; {equal} of {len(ours)} steps with our exact rows"


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


def matmul_peak(device: str, size: int, seconds: float = 1.0) -> float:
    """FLOP/s of a timed square ``torch.mm`` loop (fp32 on CPU, bf16 on CUDA), at least 3 products."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    _sync(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
        if device == "cuda" and count % 50:
            continue
        _sync(device)
    _sync(device)
    return 2 * size ** 3 * count / (time.perf_counter() - start)


def random_model(config_file: str, folder: str) -> str:
    """A randomly initialised encoder of ``config_file``, saved with the packaged tokenizer."""
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(config_file)).save_pretrained(folder)
    load_tokenizer("packaged:minilm").save_pretrained(folder)
    return folder


def rate(times: list[float], batch_size: int) -> float:
    return batch_size * len(times) / sum(times)


def summary(rates: list[float]) -> dict:
    return {"median": round(statistics.median(rates), 3), "min": round(min(rates), 3), "max": round(max(rates), 3)}


def profile_steps(name: str, run) -> None:
    """Run ``run(profiler)`` and print the top ops by self CPU time over the profiled steps."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities)
    run(profiler)
    print(f"\nprofile, {name}: top ops by self CPU time", flush=True)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


def compare(name, view, model_path, tokenizer, args) -> dict:
    """Interleaved repeats of every system on one view's pairs; prints and returns the figures."""
    B, steps = args.batch_size, args.warmup + args.steps
    pairs = text_pairs(view, B * steps)
    batches = build_batches(pairs, tokenizer, B, args.max_length)
    timed = batches[args.warmup:]
    st = lambda same, profiler=None, steps=steps: time_sentence_transformers(  # noqa: E731
        model_path, pairs[:B * steps], B, args.max_length, args.device, args.warmup, same, profiler)
    ours = lambda profiler=None, steps=steps, **options: time_ours(  # noqa: E731
        model_path, batches[:steps], args.device, args.warmup, profiler=profiler, **options)[args.warmup:]
    first_steps = []  # the compiled system's untimed first steps, per repeat

    def compiled():
        times = time_ours(model_path, batches[:steps], args.device, args.warmup, compiled=True)
        first_steps.append(sum(times[:args.warmup]))
        return times[args.warmup:]

    systems = {OURS: ours, ST: lambda: st(False), ST_SAME: lambda: st(True),
               NO_CUT: lambda: ours(tokens_per_chunk=None)}
    if args.compile:
        systems[COMPILED] = compiled
    if args.ablations:
        systems |= {f"ours, tokens_per_chunk {n}": (lambda n=n: ours(tokens_per_chunk=n))
                    for n in (1024, 2048, 8192) if n != DEFAULT_CHUNK}
        systems |= {"ours, eager attention": lambda: ours(attn_implementation="eager"),
                    "ours, sdpa attention (not lean)": lambda: ours(attn_implementation="sdpa"),
                    f"ours, cached loss (chunks of {B} rows)": lambda: ours(cache_chunk_size=B)}
    rates, peaks, checks, per_column = {system: [] for system in systems}, [], {}, None
    order = list(systems)
    for repeat in range(args.repeats):
        print(f"[{name} repeat {repeat + 1}/{args.repeats}] load average at start {loadavg()}", flush=True)
        for system in order[repeat % len(order):] + order[:repeat % len(order)]:
            out = systems[system]()
            if system in (ST, ST_SAME):
                out, lengths, padded_rows = out
                checks[system] = check_batches(batches, lengths, system == ST_SAME)
                if system == ST_SAME:  # its own padding of our batches, over the timed steps
                    per_column = sum(padded_rows[args.warmup:steps]) / args.steps
            rates[system].append(rate(out, B))
            print(f"  {system}: {rates[system][-1]:.2f} pairs/s", flush=True)
        peaks.append(matmul_peak(args.device, args.mm_size))
        print(f"  torch.mm {args.mm_size}^2: {peaks[-1] / 1e9:.1f} GFLOP/s; load average at end {loadavg()}", flush=True)

    real = sum(b["tokens"] for b in timed) / args.steps
    padded = {chunk: sum(padded_tokens(b, chunk) for b in timed) / args.steps for chunk in (DEFAULT_CHUNK, None)}
    flops = model_flops(model_path, timed)
    med = {system: statistics.median(r) for system, r in rates.items()}
    peak = statistics.median(peaks)
    flop_rate = flops * med[OURS] / B
    print(f"\n{name}: {args.steps} timed steps x {args.repeats} repeats, batch {B} pairs; per step "
          f"{real:.0f} real tokens, padded: {padded[DEFAULT_CHUNK]:.0f} with the cut (tokens_per_chunk "
          f"{DEFAULT_CHUNK}), {padded[None]:.0f} without, {per_column:.0f} by sentence-transformers (each column "
          f"padded to its own longest row)")
    for system, check in checks.items():
        print(f"  {system}: {check}")
    for system, r in rates.items():
        s = summary(r)
        print(f"  {system:45s} {s['median']:7.2f} pairs/s (min {s['min']:.2f}, max {s['max']:.2f})  "
              f"{med[system] / med[ST]:5.2f}x sentence-transformers, {med[system] / med[ST_SAME]:5.2f}x same batches")
    print(f"  ours: {flops / 1e9:.1f} model GFLOP per step, {flop_rate / 1e9:.1f} GFLOP/s = {flop_rate / peak:.1%} of "
          f"the measured torch.mm peak {peak / 1e9:.1f} GFLOP/s (min {min(peaks) / 1e9:.1f}, max {max(peaks) / 1e9:.1f})")
    figures = {"ratio": round(med[OURS] / med[ST], 3), "ratio_same_batches": round(med[OURS] / med[ST_SAME], 3),
               "real_token_share": round(real / padded[DEFAULT_CHUNK], 3),
               "real_token_share_no_cut": round(real / padded[None], 3),
               "real_token_share_sentence_transformers": round(real / per_column, 3),
               "peak_share": round(flop_rate / peak, 4), "peak_gflops": summary([p / 1e9 for p in peaks]),
               "samples_per_s": round(med[OURS], 3), "tokens_per_s": round(real * med[OURS] / B, 1),
               "tflop_per_s": round(flop_rate / 1e12, 4),
               "pairs_per_s": {system: summary(r) for system, r in rates.items()}}
    if args.device == "cuda":
        table = device_peak(args)
        print(f"  ours: {med[OURS]:.1f} samples/s, {real * med[OURS] / B:.0f} tokens/s, {flop_rate / 1e12:.1f} TFLOP/s"
              + (f", MFU {flop_rate / table:.1%} of {table / 1e12:.0f} TFLOP/s dense bf16" if table else
                 ", MFU unknown: pass --peak-tflops"))
        figures["mfu"] = round(flop_rate / table, 4) if table else None
    if args.compile:
        figures |= compiled_figures(med, first_steps, flops, peak, model_path, timed[0], args)
    if args.profile:
        few = args.warmup + min(args.steps, 3)
        profile_steps(f"{OURS} ({name}, {few - args.warmup} steps)", lambda p: ours(profiler=p, steps=few))
        profile_steps(f"{ST_SAME} ({name}, {few - args.warmup} steps)", lambda p: st(True, p, few))
        if args.compile:
            profile_steps(f"{COMPILED} ({name}, {few - args.warmup} steps)", lambda p: time_ours(
                model_path, batches[:few], args.device, args.warmup, compiled=True, profiler=p))
    return figures


def device_peak(args) -> float | None:
    """The GPU's dense bf16 peak FLOP/s: ``--peak-tflops``, else by device name; None if unknown."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)


def compiled_figures(med: dict, first_steps: list[float], flops: float, peak: float, model_path: str,
                     batch: dict, args) -> dict:
    """The compiled system against eager: per-step speed, compilation (its first steps beyond
    eager's time for as many steps), the run length where it pays, and its numbers (dropout off)."""
    B, eager_step, compiled_step = args.batch_size, args.batch_size / med[OURS], args.batch_size / med[COMPILED]
    # the first repeat compiles from scratch, as a fresh `lightning fit` process does; later repeats
    # find the process's and inductor's caches warm
    compile_s = first_steps[0] - args.warmup * eager_step
    warm = statistics.median(first_steps[1:]) - args.warmup * eager_step if len(first_steps) > 1 else None
    payback = compile_s / (eager_step - compiled_step) if compiled_step < eager_step else None
    difference = compiled_difference(model_path, batch, args.device)
    flop_rate = flops * med[COMPILED] / B
    warm_text = f" ({warm:.0f} s with warm caches)" if warm is not None else ""
    payback_text = f"pays back after {payback:.0f} steps" if payback else "never pays back"
    print(f"  {COMPILED}: {med[COMPILED] / med[OURS]:.3f}x eager per step ({compiled_step:.2f} s against "
          f"{eager_step:.2f} s); first {args.warmup} step(s) {', '.join(f'{t:.1f}' for t in first_steps)} s: "
          f"compilation about {compile_s:.0f} s{warm_text}; {payback_text}; {flop_rate / peak:.1%} of the "
          f"torch.mm peak; dropout off, largest difference from eager: loss {difference['loss']:.1e}, "
          f"gradients {difference['gradients']:.1e}")
    mfu = {}
    if args.device == "cuda":
        table = device_peak(args)
        mfu["mfu_compiled"] = round(flop_rate / table, 4) if table else None
    return {"ratio_compiled_vs_eager": round(med[COMPILED] / med[OURS], 3), "samples_per_s_compiled": round(med[COMPILED], 3),
            "compile_s": round(compile_s, 1), "compile_s_warm_caches": warm and round(warm, 1),
            "first_steps_s": [round(t, 1) for t in first_steps], "payback_steps": payback and round(payback),
            "peak_share_compiled": round(flop_rate / peak, 4), "compiled_difference_dropout_off": difference,
            **mfu}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=None, help="model folder (default: the packaged MiniLM on CPU, a "
                        "random model built from --model-config on CUDA or when --model-config is given)")
    parser.add_argument("--model-config", default=None, help="config.json of a random model (CUDA default: "
                        "benchmarks/configs/mpnet-base.json)")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per system and repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every system")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--views", default="crops,dropout", help="comma-separated: crops, dropout")
    parser.add_argument("--ablations", action="store_true", help="also time ours with tokens_per_chunk "
                        "1024/2048/8192, eager and plain sdpa attention, and the cached loss")
    parser.add_argument("--profile", action="store_true", help="after the timing, profile a few steps of ours "
                        "and of sentence-transformers (same batches) and print the top ops by self CPU time")
    parser.add_argument("--mm-size", type=int, default=None, help="side of the timed torch.mm (the peak): "
                        "2048 fp32 on CPU, 8192 bf16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="also time ours with the encoder torch.compiled "
                        "(a system of its own; its first --warmup steps hold the compilation)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (for MFU)")
    args = parser.parse_args()
    views = {"crops": SentenceCrops(), "dropout": Dropout()}
    unknown = [v for v in args.views.split(",") if v not in views]
    if unknown:
        print(f"error: --views: expected names among {', '.join(views)}, got {', '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    args.mm_size = args.mm_size or (8192 if args.device == "cuda" else 2048)
    if args.device == "cuda" and args.model is None and args.model_config is None:
        args.model_config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mpnet-base.json")
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model or (random_model(args.model_config, folder) if args.model_config
                                    else resolve_model("packaged:minilm"))
        tokenizer = load_tokenizer(model_path)
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} cores"
        print(f"commit {commit()}; device {args.device} ({where}), torch {torch.__version__}, threads {args.threads}, "
              f"model {args.model or args.model_config or 'packaged:minilm'}, tokens_per_chunk {DEFAULT_CHUNK}, "
              f"load average {loadavg()}", flush=True)
        results = {name: compare(name, views[name], model_path, tokenizer, args) for name in args.views.split(",")}
    print(f"load average at the end {loadavg()}")
    worst = lambda key: min(r[key] for r in results.values())  # noqa: E731
    gpu = {"mfu": worst("mfu")} if args.device == "cuda" and all(r["mfu"] for r in results.values()) else {}
    if args.compile:
        gpu |= {key: worst(key) for key in ("ratio_compiled_vs_eager", "peak_share_compiled", "samples_per_s_compiled")}
        if args.device == "cuda" and all(r["mfu_compiled"] for r in results.values()):
            gpu["mfu_compiled"] = worst("mfu_compiled")
    emit("train_pairs_per_s_vs_sentence_transformers", ratio=worst("ratio"),
         ratio_same_batches=worst("ratio_same_batches"), real_token_share=worst("real_token_share"),
         real_token_share_no_cut=worst("real_token_share_no_cut"),
         real_token_share_sentence_transformers=worst("real_token_share_sentence_transformers"), peak_share=worst("peak_share"), **gpu,
         samples_per_s=worst("samples_per_s"), tokens_per_s=worst("tokens_per_s"), tflop_per_s=worst("tflop_per_s"),
         tokens_per_chunk=DEFAULT_CHUNK, views=results)


if __name__ == "__main__":
    main()
