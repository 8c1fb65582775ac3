"""How many documents give a pair under each view rule, on the packaged corpora.

Documents are read as training reads them (``open_corpus``) and drawn as training draws them
(``document_pair`` with the packaged MiniLM tokenizer, ``data.seed`` 42, epoch 0). Rules: the
paper's overlapping sentence crops (``SentenceCrops``, the default) against the disjoint groups
(``overlap=False``), ``Dropout`` (one crop is enough) and ``TokenCrops`` (2 tokens are enough).
The JSON last line holds the counts and, per corpus, the ratio of overlapping to disjoint pairs.

    python benchmarks/crop_counts.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit  # noqa: E402
from lightning_app.data.pairs import document_pair, token_ids  # noqa: E402
from lightning_app.data.sources import open_corpus  # noqa: E402
from lightning_app.data.views import Dropout, SentenceCrops, TokenCrops  # noqa: E402
from lightning_app.packaged import load_tokenizer  # noqa: E402

RULES = {
    "SentenceCrops(overlap=true)": SentenceCrops(overlap=True),
    "SentenceCrops(overlap=false)": SentenceCrops(overlap=False),
    "Dropout(overlap=true)": Dropout(overlap=True),
    "Dropout(overlap=false)": Dropout(overlap=False),
    "TokenCrops(chunk_tokens=252)": TokenCrops(chunk_tokens=252),
}


def count(source: str, tokenizer, seed: int) -> dict:
    """Documents, documents with a pair per rule, crops per document, documents over 252 tokens."""
    texts = [doc["text"] for doc in open_corpus(source)]
    tokenize = partial(token_ids, tokenizer)
    pairs = {name: sum(document_pair(view, text, tokenize, seed, 0) is not None for text in texts)
             for name, view in RULES.items()}
    crops = {name: statistics.mean(len(view.crops(text or "")) for text in texts)
             for name, view in RULES.items() if isinstance(view, SentenceCrops) and not isinstance(view, Dropout)}
    long_documents = sum(len(tokenize(text or "")) > 252 for text in texts)
    return {"documents": len(texts), "pairs": pairs, "crops_per_document": crops, "over_252_tokens": long_documents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+",
                        default=["packaged:bbcnews", "packaged:newsarticles", "packaged:houseofcommons"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    tokenizer = load_tokenizer("packaged:minilm")
    results = {source: count(source, tokenizer, args.seed) for source in args.sources}
    for source, result in results.items():
        n = result["documents"]
        print(f"\n{source}: {n} documents, {result['over_252_tokens']} over 252 tokens")
        print(f"  {'rule':<30} {'documents with a pair':>22} {'share':>7} {'crops/doc':>10}")
        for name, pairs in result["pairs"].items():
            crops = result["crops_per_document"].get(name)
            print(f"  {name:<30} {pairs:>22} {pairs / n:>7.1%} {'' if crops is None else f'{crops:.2f}':>10}")
    ratios = {source: round(r["pairs"]["SentenceCrops(overlap=true)"] / r["pairs"]["SentenceCrops(overlap=false)"], 4)
              for source, r in results.items()}
    emit("documents_with_a_pair", baseline="SentenceCrops(overlap=false)", ratio=ratios, seed=args.seed,
         results=results)


if __name__ == "__main__":
    main()
