"""The verdict lines of the end-of-fit summary: how sure each labelled probe's change is, whether the
probe is the training corpus at all, and what the label-free signals of the training corpus can say.

A labelled probe's change from step 0 to the end gets a paired 95% interval over the same documents
(per-document cross-validated kNN correctness, Bonett & Price 2012: ``interval.paired_interval``).
A label-free signal gives a verdict only if the signal study (``STUDY``) found that it met the criterion
of ``benchmarks/signal_agreement.py``; otherwise the summary says which came closest, and how many
labels would give a verdict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lightning_app.data.sources import is_local
from lightning_app.probes import tags
from lightning_app.probes.interval import labels_for_width, paired_interval, verdict

HALF_WIDTH = 0.02  # the interval the label count is sized for: +- 2 points of accuracy
# Share of documents whose kNN outcome differs between step 0 and the end, assumed when no labelled
# probe measures it: about twice the 2.4% that the default run's 30 steps gave on BBC News.
ASSUMED_DISCORDANCE = 0.05
PACKAGED = {"packaged:bbcnews": ("BBC News", "news topics"), "packaged:newsarticles": ("NewsArticles", "news outlets"),
            "packaged:houseofcommons": ("House of Commons", "the parties of parliamentary speakers")}


@dataclass(frozen=True)
class Rule:
    """A label-free signal's record in the signal study: the model gained when ``direction * (change -
    threshold) > 0`` for the last layer's ``<view>/<signal>`` change from step 0 to the end (the rule fitted
    on every corpus); with each corpus left out of the fit in turn it agreed with the labelled verdict in
    ``agreed`` of the ``counted`` runs whose labelled interval left out 0."""

    signal: str
    threshold: float
    direction: int
    agreed: int
    counted: int


@dataclass(frozen=True)
class Study:
    """The signal study (docs/results.md, "Which label-free signal predicts the labelled verdict"):
    ``python benchmarks/signal_agreement.py docs/results/signals/*`` over ``runs`` trained runs on
    ``corpora`` (2 models x 3 seeds each), of which the labels judged ``gains`` better and ``losses``
    worse beyond their 95% interval. ``supported``: the signals that met its criterion; ``closest``: the
    signal whose change had the highest Spearman correlation ``closest_rho`` with the labelled change,
    over every run pooled."""

    corpora: tuple[str, ...]
    runs: int
    gains: int
    losses: int
    supported: tuple[Rule, ...]
    closest: str
    closest_rho: float


STUDY = Study(corpora=("bbcnews", "houseofcommons", "newsarticles"), runs=63, gains=11, losses=0, supported=(),
              closest="token_crops/effective_rank", closest_rho=0.64)
SIGNALS = {"retrieval_top1": ("retrieval top-1", ".3f"), "retrieval_mrr": ("MRR", ".3f"),
           "effective_rank": ("effective rank", ".1f"), "alignment": ("alignment", ".3f"),
           "uniformity": ("uniformity", ".3f"), "lexical_overlap": ("lexical overlap", ".3f")}


def points(share: float) -> str:
    """A share as signed points of accuracy: 0.012 -> ``+1.2``."""
    return f"{100 * share:+.1f}"


def interval_line(name: str, before, after, folds: int, step: int) -> tuple[str, float]:
    """The change of ``name``'s per-document kNN correctness from step 0 (``before``) to ``step`` (``after``)
    with its paired 95% interval and verdict, and the share of documents whose outcome changed."""
    diff, low, high = paired_interval(before, after)
    changed = sum(int(a) != int(b) for a, b in zip(before.tolist(), after.tolist())) / len(before)
    line = (f"  {name}: {folds}-fold kNN on the same {len(before)} documents, step 0 -> step {step}: "
            f"{points(diff)} points (95% interval {points(low)} to {points(high)}): {verdict(diff, low, high)}")
    return line, changed


def same_source(a: str, b: str) -> bool:
    """Whether two ``source`` options name the same corpus (local paths compared absolute)."""
    return (os.path.abspath(a) if is_local(a) else a) == (os.path.abspath(b) if is_local(b) else b)


def domain_line(name: str, source: str, label_field: str, data_source: str) -> str:
    """Whether a labelled probe corpus is the training corpus (``data.source``), said plainly."""
    if same_source(source, data_source):
        return (f"  {name} is your training corpus ({data_source}), labelled: it judges the model on your own "
                f"text (its documents may include training documents, whose labels training never saw).")
    if source in PACKAGED:
        title, topic = PACKAGED[source]
        return f"  {title} is not your corpus: it measures how the model changed on {topic}, not on {data_source}."
    return (f"  {name} ({source}) is not data.source: it measures how the model changed on its labels "
            f"'{label_field}', which speaks for {data_source} only if its documents are a sample of it.")


def last_layer(series: dict[str, dict[int, float]], view: str, signal: str) -> dict[int, float]:
    """The last layer's logged values (step -> value) of one in-domain signal; empty when it was not logged."""
    layers = tags.layer_series(series, tags.indomain_tag(view, signal))
    return layers[-1] if layers else {}


def signal_lines(series: dict[str, dict[int, float]], views: list[str], held_out: int, data_source: str) -> list[str]:
    """Each view type's label-free signals of the last layer at step 0 and at the last step logged."""
    if not views:
        return [f"  your corpus ({data_source}): no label-free signals (probe.indomain_documents is 0)"]
    lines, end_step = [], max((max(values) for values in series.values() if values), default=0)
    for view in views:
        parts = []
        for signal, (label, form) in SIGNALS.items():
            last = last_layer(series, view, signal)
            if not last:
                continue
            end = last[max(last)]
            parts.append(f"{label} {last[0]:{form}} -> {end:{form}} ({end - last[0]:+{form}})" if 0 in last
                         else f"{label} {end:{form}} (step 0 not probed)")
        lines.append(f"    {view}: {', '.join(parts)}")
    header = (f"  your corpus ({data_source}): label-free signals of the last layer on {held_out} held-out "
              f"documents, step 0 -> step {end_step}:")
    return [header, *lines]


def describe(signal: str) -> str:
    """``token_crops/lexical_overlap`` in words: ``lexical overlap of token_crops pairs``."""
    view, name = signal.split("/")
    return f"{SIGNALS[name][0]} of {view} pairs"


def study_record(study: Study) -> str:
    """The signal study's figures, in a parenthesis's words."""
    return (f"signal study, docs/results.md: {study.runs} runs on {len(study.corpora)} labelled corpora, "
            f"{study.gains} gains and {study.losses} losses beyond the labels' uncertainty; closest: "
            f"{describe(study.closest)}, Spearman {study.closest_rho:+.2f} with the labelled change")


def rule_lines(series: dict[str, dict[int, float]], study: Study) -> list[str]:
    """The verdict of each supported signal whose last layer was logged at step 0 and later."""
    lines = []
    for rule in study.supported:
        last = last_layer(series, *rule.signal.split("/"))
        if 0 not in last or len(last) < 2:
            continue
        change = last[max(last)] - last[0]
        side = ">" if rule.direction == 1 else "<"
        said = "better" if rule.direction * (change - rule.threshold) > 0 else "not better"
        lines.append(f"  your corpus: {describe(rule.signal)} changed {change:+.3f}: {said}, by the signal study's rule (gain "
                     f"when the change is {side} {rule.threshold:+.3g}; right in {rule.agreed} of {rule.counted} runs "
                     f"on {len(study.corpora)} labelled corpora, each corpus left out of the fit in turn).")
    return lines


def judgement_lines(own: str | None, seen: tuple[str, float] | None, series: dict[str, dict[int, float]] | None = None,
                    half_width: float = HALF_WIDTH, study: Study = STUDY) -> list[str]:
    """The label-free verdict where the signal study supports one, else what the signals cannot say; and
    about how many labelled documents of the training corpus give a 95% interval of +- ``half_width``
    (``labels_for_width``) at the discordance ``seen`` on a labelled probe ``(name, share)``, else at
    ``ASSUMED_DISCORDANCE``."""
    verdicts = rule_lines(series or {}, study)
    if verdicts:
        first = verdicts
    elif own:
        first = [f"  your corpus: judged with labels by {own} above; no label-free signal met the criterion for a "
                 f"verdict of its own ({study_record(study)})."]
    else:
        first = [f"  your corpus: no verdict: no label-free signal met the criterion for one without labels "
                 f"({study_record(study)})."]
    if seen:
        discordance, basis = seen[1], f"{seen[1]:.1%} of documents changed outcome on {seen[0]}"
    else:
        discordance, basis = ASSUMED_DISCORDANCE, f"assuming {ASSUMED_DISCORDANCE:.0%} of documents change outcome"
    count = labels_for_width(discordance, half_width)
    return [*first, f"  your corpus: at least {count} labelled documents of it, listed under probe.corpora, would give a "
                   f"95% interval of +/- {100 * half_width:g} points ({basis}; by subsampling two labelled "
                   f"corpora, that width took 1.3-2.2 times this count)."]
