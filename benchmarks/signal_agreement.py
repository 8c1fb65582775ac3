"""Which label-free in-domain signal predicts the labelled verdict, across reproduction grids.

Each grid (one corpus x one model, ``lightning reproduce``) writes ``signals.csv``: per trained cell,
the last layer's k-fold kNN accuracy change from step 0 to the end with its paired 95% interval, and
each ``<view>/<signal>``'s change over the same steps. For every signal this prints

- its Spearman correlation with the kNN change, per corpus and over every cell pooled;
- its sign agreement under leave-one-corpus-out: on the other corpora's cells, the threshold on the
  signal's change and its direction that get the most verdicts right (cells whose interval lies wholly
  above 0 against those wholly below; cells whose interval covers 0 are not counted) are fitted, then
  scored on the held-out corpus's counted cells. Thresholds are the midpoints between adjacent signal
  changes and one unit beyond either end (every cell one way); ties go to "higher is better", then to
  the lowest threshold. With one corpus, leave-one-corpus-out is not possible: the rule is fitted and
  scored on that corpus itself (in-sample, an upper bound).

Gain detection (an added look, not part of the criterion below): the same leave-one-corpus-out rule
fitting, but every cell counted, a detected gain (interval wholly above 0) against everything else
(no detectable change, or a loss): whether the signal tells a run the labels call better from one
they do not.

A signal **supports a label-free verdict** (the criterion fixed before any of the study's results was read) when its
leave-one-corpus-out sign agreement is at least 90% over at least 20 counted cells from at least 2
held-out corpora, the counted cells hold at least 3 gains and 3 losses, and the agreement beats the
trivial rule that always says the majority sign. Its rule for users is then the one fitted on every
corpus's counted cells (``rule_all``).

The JSON last line holds every figure.

    python benchmarks/signal_agreement.py GRID_DIR [GRID_DIR ...] [--markdown]

``--markdown`` also prints the figures as one Markdown table (docs/results.md's).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import warnings
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit  # noqa: E402

CHANGE = "knn_cv_change"
SUPPORT_AGREEMENT, SUPPORT_CELLS, SUPPORT_EACH_SIGN, SUPPORT_CORPORA = 0.9, 20, 3, 2


def fail(message: str) -> None:
    """One line naming the argument, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_grids(folders: list[str]) -> tuple[dict[str, list[dict]], list[str]]:
    """Every grid's cells by corpus (values as floats, None where blank) and the signal columns
    (``<view>/<signal>``) in the first grid's order; one line naming the folder when it has no signals.csv."""
    by_corpus: dict[str, list[dict]] = {}
    columns: list[str] = []
    for folder in folders:
        path = Path(folder) / "signals.csv"
        if not path.is_file():
            fail(f"GRID_DIR: no signals.csv in {folder}; expected a `lightning reproduce` output folder")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns += [name for name in reader.fieldnames or [] if "/" in name and name not in columns]
            for row in reader:
                cell = {key: (value if key in ("setting", "seed", "corpus") else float(value) if value else None)
                        for key, value in row.items()}
                by_corpus.setdefault(row["corpus"], []).append(cell)
    return by_corpus, columns


def spearman(cells: list[dict], column: str) -> dict:
    """Spearman's rho of the signal's change against the kNN change over the cells with both (None when
    fewer than 3 or either is constant)."""
    pairs = [(cell[column], cell[CHANGE]) for cell in cells if cell.get(column) is not None
             and cell.get(CHANGE) is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant input: rho is nan
        rho = float(spearmanr(*zip(*pairs)).statistic) if len(pairs) >= 3 else math.nan
    return {"rho": None if math.isnan(rho) else float(rho), "n": len(pairs)}


def decided(cells: list[dict], column: str) -> list[tuple[float, int]]:
    """(signal change, +1 or -1) of the cells whose interval lies wholly above or below 0."""
    points = []
    for cell in cells:
        low, high, value = cell.get("change_low"), cell.get("change_high"), cell.get(column)
        if value is not None and low is not None and high is not None and (low > 0 or high < 0):
            points.append((value, 1 if low > 0 else -1))
    return points


def detected(cells: list[dict], column: str) -> list[tuple[float, int]]:
    """(signal change, +1 for a gain whose interval lies wholly above 0, else -1) of every cell with both."""
    return [(cell[column], 1 if cell["change_low"] > 0 else -1) for cell in cells
            if cell.get(column) is not None and cell.get("change_low") is not None]


def predict(value: float, threshold: float, direction: int) -> int:
    return 1 if direction * (value - threshold) > 0 else -1


def fit_rule(points: list[tuple[float, int]]) -> tuple[float, int] | None:
    """The (threshold, direction) that gets the most signs right; None without points."""
    values = sorted({value for value, _ in points})
    if not values:
        return None
    cuts = [values[0] - 1.0, *((a + b) / 2 for a, b in zip(values, values[1:])), values[-1] + 1.0]
    best, right = None, -1
    for direction in (1, -1):
        for cut in cuts:
            score = sum(predict(value, cut, direction) == sign for value, sign in points)
            if score > right:
                best, right = (cut, direction), score
    return best


def score(rule: tuple[float, int] | None, points: list[tuple[float, int]], fitted_on: int) -> dict:
    """How many of ``points`` the rule gets right, its share (None without a rule or points) and the rule."""
    right = sum(predict(value, *rule) == sign for value, sign in points) if rule else 0
    return {"agreement": right / len(points) if rule and points else None, "right": right, "n": len(points),
            "threshold": rule[0] if rule else None, "direction": rule[1] if rule else None, "fitted_on": fitted_on}


def loco(by_corpus: dict[str, list[dict]], column: str, points=decided) -> dict:
    """Per held-out corpus: the rule fitted on the other corpora's ``points`` (the counted cells, by
    default), scored on its own; and the share right over every held-out point."""
    folds = {}
    for held_out, cells in by_corpus.items():
        train = [point for corpus, others in by_corpus.items() if corpus != held_out
                 for point in points(others, column)]
        folds[held_out] = score(fit_rule(train), points(cells, column), len(train))
    scored = [fold for fold in folds.values() if fold["agreement"] is not None]
    right, counted = sum(fold["right"] for fold in scored), sum(fold["n"] for fold in scored)
    return {"folds": folds, "agreement": right / counted if counted else None, "n": counted,
            "corpora_scored": len(scored)}


def support(found: dict, points: list[tuple[float, int]]) -> dict:
    """Whether the signal supports a label-free verdict (the module's criterion) and why not."""
    gains = sum(sign == 1 for _, sign in points)
    losses = len(points) - gains
    trivial = max(gains, losses) / len(points) if points else None
    agreement = found["agreement"]
    reasons = [reason for failed, reason in [
        (found["n"] < SUPPORT_CELLS, f"{found['n']} counted cells (< {SUPPORT_CELLS})"),
        (found["corpora_scored"] < SUPPORT_CORPORA, f"{found['corpora_scored']} held-out corpora scored "
                                                    f"(< {SUPPORT_CORPORA})"),
        (min(gains, losses) < SUPPORT_EACH_SIGN, f"{gains} gains and {losses} losses counted "
                                                 f"(< {SUPPORT_EACH_SIGN} of each)"),
        (agreement is None or agreement < SUPPORT_AGREEMENT,
         f"agreement {_number(agreement, '.2f')} (< {SUPPORT_AGREEMENT})"),
        (agreement is not None and trivial is not None and agreement <= trivial,
         f"agreement {_number(agreement, '.2f')} does not beat always saying the majority sign ({_number(trivial, '.2f')})"),
    ] if failed]
    return {"supports": not reasons, "why_not": reasons, "gains": gains, "losses": losses, "trivial": trivial}


def figures(by_corpus: dict[str, list[dict]], column: str) -> dict:
    """Every figure of one signal: Spearman per corpus and pooled, then LOCO (several corpora) or the
    in-sample rule (one corpus)."""
    out = {"spearman": {corpus: spearman(cells, column) for corpus, cells in by_corpus.items()},
           "pooled": spearman([cell for cells in by_corpus.values() for cell in cells], column)}
    if len(by_corpus) > 1:
        out["loco"] = loco(by_corpus, column)
        everything = [point for cells in by_corpus.values() for point in decided(cells, column)]
        out["support"] = support(out["loco"], everything)
        out["rule_all"] = score(fit_rule(everything), everything, len(everything))
        out["detection"] = loco(by_corpus, column, detected)
        every = [point for cells in by_corpus.values() for point in detected(cells, column)]
        gains = sum(sign == 1 for _, sign in every)
        out["detection"]["majority"] = max(gains, len(every) - gains)  # right by always saying the commoner
    else:
        points = decided(next(iter(by_corpus.values())), column)
        out["within"] = score(fit_rule(points), points, len(points))
    return out


def _number(value, form: str = "+.2f") -> str:
    return "-" if value is None else f"{value:{form}}"


def _rule(fold: dict) -> str:
    if fold["threshold"] is None:
        return "no rule (no counted cells to fit)"
    side = ">" if fold["direction"] == 1 else "<"
    return (f"{_number(fold['agreement'], '.2f')} of {fold['n']} counted "
            f"(gain when change {side} {fold['threshold']:.4g}; fitted on {fold['fitted_on']})")


def print_signal(column: str, found: dict) -> None:
    print(column)
    per_corpus = ", ".join(f"{corpus} {_number(s['rho'])} (n={s['n']})" for corpus, s in found["spearman"].items())
    print(f"  Spearman with {CHANGE}: {per_corpus}; pooled {_number(found['pooled']['rho'])} "
          f"(n={found['pooled']['n']})")
    if "loco" in found:
        for corpus, fold in found["loco"]["folds"].items():
            print(f"  leave {corpus} out: {_rule(fold)}")
        print(f"  leave-one-corpus-out sign agreement: {_number(found['loco']['agreement'], '.2f')} "
              f"of {found['loco']['n']} counted cells")
        detection = found["detection"]
        print(f"  gain detection, corpus left out: {_number(detection['agreement'], '.2f')} of {detection['n']} cells "
              f"(always the commoner verdict: {detection['majority']} right)")
        verdict = found["support"]
        print("  supports a label-free verdict: " + ("yes, by the rule on every corpus: " + _rule(found["rule_all"])
                                                      if verdict["supports"] else "no: " + "; ".join(verdict["why_not"])))
    else:
        print(f"  within the corpus (in-sample): {_rule(found['within'])}")


def markdown(results: dict, corpora: list[str]) -> list[str]:
    """One row per signal: Spearman per corpus and pooled (n), leave-one-corpus-out agreement, the criterion."""
    head = ["signal (last layer, change step 0 -> end)", *(f"Spearman {c}" for c in corpora), "Spearman pooled",
            "sign agreement, corpus left out", "gain detection, corpus left out (always the commoner)",
            "supports a verdict"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for column, found in results.items():
        rho = [f"{_number(found['spearman'][c]['rho'])} ({found['spearman'][c]['n']})" for c in corpora]
        loco_found = found.get("loco", {})
        agreement, detection = (f"{part['agreement'] * part['n']:.0f} of {part['n']}" if part.get("agreement") is not None
                                else "-" for part in (loco_found, found.get("detection", {})))
        if "detection" in found and detection != "-":
            detection += f" ({found['detection']['majority']})"
        verdict = found.get("support")
        said = "-" if verdict is None else "yes" if verdict["supports"] else "no"
        rows.append(f"| {column} | " + " | ".join([*rho, f"{_number(found['pooled']['rho'])} ({found['pooled']['n']})",
                                                  agreement, detection, said]) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", metavar="GRID_DIR", help="`lightning reproduce` output folders")
    parser.add_argument("--markdown", action="store_true", help="also print the figures as one Markdown table")
    args = parser.parse_args()
    by_corpus, columns = read_grids(args.grids)
    if not columns:
        fail("GRID_DIR: the signals.csv files hold no <view>/<signal> columns")
    cells = sum(len(c) for c in by_corpus.values())
    print(f"{len(args.grids)} grid(s), {cells} cells, corpora: {', '.join(by_corpus)}")
    if len(by_corpus) == 1:
        print("one corpus: leave-one-corpus-out is not possible; the figures below are within that corpus")
    results = {}
    for column in columns:
        results[column] = figures(by_corpus, column)
        print_signal(column, results[column])
    if args.markdown:
        print("\n".join(markdown(results, list(by_corpus))))
    emit("signal_agreement", grids=args.grids, corpora={corpus: len(c) for corpus, c in by_corpus.items()},
         signals=results)


if __name__ == "__main__":
    main()
