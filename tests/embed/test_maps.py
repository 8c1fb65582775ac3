"""``lightning embed --map tsne``: map.parquet, map.png, an offline map.html that renders, kNN in meta.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from lightning_app.cli import main
from lightning_app.embed.maps import read_embeddings
from lightning_app.probes.knn import split_accuracy
from lightning_app.probes.plots import palette


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, tiny_model, bbc_texts):
    folder = tmp_path_factory.mktemp("mapped")
    corpus = folder / "bbc.jsonl"
    with corpus.open("w") as f:
        for i, (text, topic) in enumerate(bbc_texts[::9][:240]):
            text = f"From https://example.org/{i} </script> " + text  # a URL and markup inside a text
            f.write(json.dumps({"body": text, "topic": topic}) + "\n")
    main(["embed", f"--model={tiny_model}", f"--source={corpus}", f"--output={folder / 'out'}", "--text_field=body",
          "--label_field=topic", "--max_length=48", "--accelerator=cpu", "--devices=1", "--map=tsne"])
    return folder / "out", [json.loads(line) for line in corpus.open()]


def test_map_files_rows_labels_and_knn_in_meta(mapped):
    out, docs = mapped
    table = pq.read_table(out / "map.parquet").to_pandas()
    assert table["row"].tolist() == list(range(len(docs)))
    assert table["label"].tolist() == [d["topic"] for d in docs]
    assert np.isfinite(table[["x", "y"]].to_numpy()).all() and table[["x", "y"]].to_numpy().std(0).min() > 0
    meta = json.loads((out / "meta.json").read_text())["map"]
    rows, labels, embeddings = read_embeddings(out)
    assert meta["knn_acc_full"] == round(split_accuracy(embeddings, labels), 4)
    assert meta["knn_acc_2d"] == round(split_accuracy(table[["x", "y"]].to_numpy(), labels), 4)
    assert (meta["method"], meta["points"], meta["knn_k"], meta["html_points"]) == ("tsne", 240, 10, 240)
    assert imread(out / "map.png").shape[2] in (3, 4)


def test_html_is_self_contained_and_holds_hover_text(mapped):
    out, docs = mapped
    page = (out / "map.html").read_text()
    assert not re.search(r"https?://|<link|src=|@import|url\(", page)  # nothing to fetch, no URL anywhere
    assert page.count("</script>") == 2  # the texts' own markup cannot close the data element
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert data["row"] == list(range(len(docs))) and sorted(data["classes"]) == sorted({d["topic"] for d in docs})
    first = " ".join(docs[0]["body"].split())
    assert data["t"][0].rstrip("…") == first[:200] and len(data["t"][0]) <= 201
    assert data["t"][0].startswith("From https://example.org/0 </script>")  # shown as written


def test_palette_keeps_the_largest_classes_and_greys_the_rest():
    labels = [f"c{i}" for i in range(25) for _ in range(25 - i)]
    codes, classes, colors = palette(labels)
    assert classes[:3] == ["c0", "c1", "c2"] and classes[-1] == "other" and len(classes) == 20
    assert colors[-1] == "#aaaaaa" and len(set(colors)) == 20
    assert (codes[np.asarray(labels) == "c24"] == 19).all()


def chromium() -> str | None:
    found = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
    return found


def test_html_map_renders_offline_in_headless_chromium(mapped, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not found (CI installs it)")
    out, _ = mapped
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
                    "--window-size=800,600", f"--screenshot={shot}", f"file://{out / 'map.html'}"],
                   capture_output=True, timeout=120, check=True)
    pixels = imread(shot)[..., :3]
    saturated = pixels.max(-1) - pixels.min(-1) > 0.3  # coloured points, not white page or grey text
    assert saturated.sum() > 2000
    colours = {tuple(np.round(p * 255 / 32).astype(int)) for p in pixels[saturated]}
    assert len(colours) >= 4  # several classes' colours, not one
