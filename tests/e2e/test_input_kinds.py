"""Every documented input kind of gpt.prepare, with both tokenizers, end to end: prepare, train a step,
the final evaluation, then ``python -m gpt.evaluate`` (in-process)."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt import evaluate, prepare
from gpt.config import load_config
from gpt.trainer import train

ANIMALS = ["cat", "dog", "owl", "fox", "elk", "bee", "ant", "yak", "emu", "gnu", "ram", "cow"]
DOCUMENTS = [
    f"Document {i}: the {a} sat on the mat.\n\nA second paragraph, {i * 7} words." for i, a in enumerate(ANIMALS)
]


def write_input(folder, kind: str) -> list[str]:
    """Write the documents as ``kind``; returns the gpt.prepare arguments that read them."""
    folder.mkdir()
    rows = [{"text": d} for d in DOCUMENTS]
    if kind in ("text", "paragraph", "line"):
        separator = "\n" if kind == "line" else "\n\n"  # line: one paragraph per line, no blank lines
        (folder / "corpus.txt").write_text(separator.join(DOCUMENTS))
        return ["--input", str(folder / "corpus.txt")] + ([] if kind == "text" else ["--sample_by", kind])
    if kind in ("folder", "glob"):
        for i, d in enumerate(DOCUMENTS):
            (folder / f"doc{i:02d}.txt").write_text(d)
        return ["--input", str(folder) if kind == "folder" else str(folder / "doc*.txt")]
    path = folder / f"corpus.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text"], delimiter="," if kind == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return ["--input", str(path)]


KINDS = ["text", "paragraph", "line", "folder", "glob", "jsonl", "json", "csv", "tsv", "parquet"]


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
@pytest.mark.parametrize("kind", KINDS)
def test_prepared_input_trains_and_evaluates(tmp_path, kind, tokenizer):
    data = tmp_path / "data" / "corpus"
    assert prepare.main([*write_input(tmp_path / "input", kind), "--out", str(data), "--tokenizer", tokenizer]) == 0
    out = tmp_path / "run"
    cfg = load_config([
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=8", "train.batch_size=2",
        "train.micro_batch_size=2", "train.max_steps=1", "train.eval_windows=2", "train.eval_samples=0",
        "train.cpu_threads=1", "wandb.mode=disabled", f"data.root={data.parent}", "data.dataset=corpus",
        f"out_dir={out}",
    ])  # fmt: skip
    train(cfg)  # ends with the final evaluation over the whole val split
    final = json.loads((out / "eval.json").read_text())
    assert final["tokens"] > 0 and final["bytes"] > 0 and final["loss"] > 0
    assert evaluate.main(["--out_dir", str(out), "--data", str(data)]) == 0
    again = json.loads((out / "eval-val.json").read_text())
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6) and again["bytes"] == final["bytes"]
