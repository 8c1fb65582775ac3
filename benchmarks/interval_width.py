"""How many labels a verdict needs: the paired 95% interval of a kNN change against the number of
labelled documents, measured by subsampling, beside the count ``labels_for_width`` predicts.

Two models (``--before``, e.g. the untrained model, and ``--after``, a trained export) embed every
document of each corpus (last layer, mean pooling, the probes' path). For each size n, ``--draws``
seeded random subsets of n documents are drawn; on each, both models' 10-fold 10-NN correctness is
computed within the subset (what a user who labelled those n documents gets) and the change gets
the summary's paired interval (Bonett-Price). Prints, per corpus and n: the median half-width and
its 10-90% range, the share of subsets whose interval excludes 0, and the median change; then the
labels ``labels_for_width`` asks for +- 2 points from the full corpus's discordance. Last line: JSON.

    python benchmarks/interval_width.py --after results/bbcnews-minilm/crops/seed1/export
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit  # noqa: E402
from lightning_app.model.encoder import Encoder  # noqa: E402
from lightning_app.packaged import load_tokenizer  # noqa: E402
from lightning_app.probes.corpus import ProbeCorpus, load_probe_corpus  # noqa: E402
from lightning_app.probes.embed import embed_layers  # noqa: E402
from lightning_app.probes.interval import knn_cv_correct, labels_for_width, paired_interval  # noqa: E402


def last_layer(model: str, texts: list[str], max_length: int) -> torch.Tensor:
    """(N, H) last-layer mean-pooled embeddings of ``texts`` in eval mode."""
    encoder, tokenizer = Encoder(model).eval(), load_tokenizer(model)
    token_ids = tokenizer(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
    with torch.no_grad():
        return embed_layers(encoder, token_ids, tokenizer.pad_token_id, last_only=True)[-1]


def subsample(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, n: int, draws: int,
              seed: int) -> dict:
    """Half-widths, changes and exclusions of 0 over ``draws`` random subsets of ``n`` documents."""
    generator = torch.Generator().manual_seed(seed)
    widths, changes, excluded, skipped = [], [], 0, 0
    for _ in range(draws):
        index = torch.randperm(len(labels), generator=generator)[:n]
        sub = labels[index]
        if torch.unique(sub, return_counts=True)[1].min() < 2:  # a one-document class has no neighbour of its own
            skipped += 1
            continue
        diff, low, high = paired_interval(knn_cv_correct(before[index], sub), knn_cv_correct(after[index], sub))
        widths.append((high - low) / 2)
        changes.append(diff)
        excluded += low > 0 or high < 0
    deciles = statistics.quantiles(widths, n=10) if len(widths) > 1 else widths * 9
    return {"n": n, "draws": len(widths), "skipped": skipped, "half_width_median": statistics.median(widths),
            "half_width_p10": deciles[0], "half_width_p90": deciles[-1],
            "excludes_zero": excluded / len(widths), "change_median": statistics.median(changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="packaged:minilm", help="the model at step 0")
    parser.add_argument("--after", required=True, help="the trained model (an export folder)")
    parser.add_argument("--corpora", default="packaged:bbcnews,packaged:newsarticles")
    parser.add_argument("--sizes", default="50,100,200,500,1000,2000")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--max_length", type=int, default=128, help="tokens per document (the probes')")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    figures = {}
    for source in args.corpora.split(","):
        corpus = load_probe_corpus(ProbeCorpus(name="corpus", source=source), k=10, test_fraction=0.1, seed=42)
        labels = corpus.labels
        before, after = (last_layer(model, corpus.texts, args.max_length) for model in (args.before, args.after))
        full_before, full_after = knn_cv_correct(before, labels), knn_cv_correct(after, labels)
        diff, low, high = paired_interval(full_before, full_after)
        discordance = (full_before != full_after).float().mean().item()
        need = labels_for_width(discordance, difference=min(abs(diff), discordance))
        print(f"{source}: {len(labels)} documents, change {100 * diff:+.2f} points "
              f"(95% interval {100 * low:+.2f} to {100 * high:+.2f}), discordance {discordance:.3f}; "
              f"labels_for_width(+-2 points): {need}")
        rows = [subsample(before, after, labels, n, args.draws, args.seed)
                for n in (int(s) for s in args.sizes.split(",")) if n <= len(labels)]
        for row in rows:
            print(f"  n={row['n']:5d}: half-width {100 * row['half_width_median']:.2f} points "
                  f"(10-90%: {100 * row['half_width_p10']:.2f}-{100 * row['half_width_p90']:.2f}), "
                  f"interval excludes 0 in {100 * row['excludes_zero']:.0f}% of {row['draws']} subsets "
                  f"({row['skipped']} skipped), median change {100 * row['change_median']:+.2f}")
        figures[source] = {"documents": len(labels), "change": diff, "low": low, "high": high,
                           "discordance": discordance, "labels_for_2_points": need, "subsamples": rows}
    emit("interval_width_by_labels", before=args.before, after=args.after, draws=args.draws, corpora=figures)


if __name__ == "__main__":
    main()
