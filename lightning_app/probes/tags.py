"""Every TensorBoard tag of the probes and the drift, and layer names: written and read here alone.

Callbacks build tags with these functions and the grid's report reads them back with
:func:`layer_series`, so a renamed tag changes in one place.
"""

from __future__ import annotations

KNN = "knn_acc"  # kNN accuracy on the seeded 10% split (the paper's protocol)
KNN_CV = "knn_cv_acc"  # k-fold cross-validated kNN accuracy
KNN_CV_CHANGE = "knn_cv_change"  # the last layer's k-fold kNN accuracy at the end minus step 0, a share
LINEAR = "linear_acc"  # logistic-regression probe
DRIFT = "drift"
INDOMAIN = "indomain"  # label-free signals on held-out documents of the training corpus (no corpus may take the name)

Series = dict[int, float]  # step -> value


def probe_tag(corpus: str, score: str) -> str:
    """``probe/<corpus>/<score>``: a score of the last layer (what ``ModelCheckpoint`` monitors)."""
    return f"probe/{corpus}/{score}"


def change_tags(corpus: str) -> tuple[str, str, str]:
    """``probe/<corpus>/knn_cv_change`` and its ``_low`` and ``_high``: the paired change of the last layer's
    k-fold kNN accuracy from step 0 to the end and its 95% interval (shares), logged at the final step."""
    tag = probe_tag(corpus, KNN_CV_CHANGE)
    return tag, f"{tag}_low", f"{tag}_high"


def indomain_tag(view: str, signal: str) -> str:
    """``probe/indomain/<view>/<signal>``: a label-free signal of one view type (``/layer_NN`` per layer)."""
    return probe_tag(INDOMAIN, f"{view}/{signal}")


def layer_tag(prefix: str, layer: int, num_layers: int) -> str:
    """``<prefix>/layer_00`` .. ``layer_NN``, zero-padded to at least two digits (0: the embeddings)."""
    return f"{prefix}/layer_{layer:0{max(2, len(str(num_layers)))}d}"


def layer_tags(prefix: str, values) -> dict[str, float]:
    """``{layer_tag(prefix, i, N): value_i}`` for the values of layers 0..N."""
    values = [float(v) for v in values]
    return {layer_tag(prefix, i, len(values) - 1): v for i, v in enumerate(values)}


def layer_series(scalars: dict[str, Series], prefix: str) -> list[Series]:
    """The series of ``<prefix>/layer_00``, ``layer_01``, ... in layer order (embeddings first)."""
    tags = sorted(tag for tag in scalars if tag.startswith(prefix + "/layer_"))
    return [scalars[tag] for tag in tags]


def layer_names(count: int, prefix: str = "L") -> list[str]:
    """Names of hidden states 0..count-1: ``emb`` for the embeddings, then ``<prefix>1`` ...; an
    empty prefix gives plain numbers (axis ticks)."""
    return ["emb"] + [f"{prefix}{i}" for i in range(1, count)]
