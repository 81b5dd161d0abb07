"""Weighted data mixtures (data.mixture, gpt.mixture): shares, purity, per-dataset logs, bad values."""

import json

import numpy as np
import pytest

from gpt.data import BatchStream, TokenStream, write_token_file
from gpt.errors import UserError
from gpt.mixture import Mixture, Source, parse_mixture
from gpt.prepare import prepare_text

from conftest import TINY, run_script


def stream(tmp_path, name: str, token: int, n: int = 1000) -> TokenStream:
    return TokenStream([write_token_file(tmp_path / f"{name}.tok", np.full(n, token), 10, "t")])


def test_realised_shares_follow_the_weights_and_rows_read_their_dataset(tmp_path):
    sources = [Source(name, w, stream(tmp_path, name, token), None) for name, w, token in
               (("web", 0.7, 1), ("books", 0.2, 2), ("code", 0.1, 3))]  # fmt: skip
    mix = Mixture(sources, seed=5, block_size=8)
    rows = mix.rows_seen(range(400), batch_size=32)  # 12,800 rows
    assert rows.sum() == 12_800
    np.testing.assert_allclose(rows / rows.sum(), [0.7, 0.2, 0.1], atol=0.015)  # ~4 standard errors
    which, starts = mix.step_rows(3, 32)
    again = mix.step_rows(3, 32)
    assert np.array_equal(which, again[0]) and np.array_equal(starts, again[1])  # a function of (seed, step)
    windows = mix.windows(which, starts, 9)
    assert (windows[:, 0] == which + 1).all()  # each row from its own dataset


def steps(mix: Mixture, world: int, micro: int, rank: int, start: int = 0, n: int = 3) -> list[np.ndarray]:
    b = BatchStream(mix.sources[0].train, seed=5, block_size=8, batch_size=8, micro_batch_size=micro, rank=rank,
                    world=world, start_step=start, mixture=mix)  # fmt: skip
    try:
        return [np.concatenate([x.numpy() for x, _ in b.next_step()]) for _ in range(n)]
    finally:
        b.close()


def test_any_split_of_the_batch_and_any_resume_step_read_the_same_rows(tmp_path):
    sources = [Source(name, w, stream(tmp_path, name, token, n=200 + 50 * token), None) for name, w, token in
               (("web", 0.5, 1), ("books", 0.5, 2))]  # fmt: skip
    for i, s in enumerate(sources):  # distinct tokens at every offset, so windows can be told apart
        s.train = TokenStream([write_token_file(tmp_path / f"u{i}.tok", np.arange(300) % 9 + i, 10, "t")])
    mix = Mixture(sources, seed=5, block_size=8)
    one = steps(mix, world=1, micro=2, rank=0)  # 1 process x 4 accumulation steps
    two = [steps(mix, world=2, micro=2, rank=r) for r in (0, 1)]  # 2 x 2: rank r takes rows (2m + r) * 2 ...
    for s in range(3):
        interleaved = np.concatenate([two[r][s][2 * m : 2 * m + 2] for m in range(2) for r in (0, 1)])
        assert np.array_equal(one[s], interleaved)
    assert np.array_equal(steps(mix, 1, 2, 0, start=1, n=2)[1], one[2])  # resuming at step 1


def test_bad_mixtures_are_one_clear_error():
    assert parse_mixture(["web:3", "books:1"]) == [("web", 0.75), ("books", 0.25)]
    for entries, message in [
        (["web:0"], "must be > 0"), (["web:-1"], "must be > 0"), (["web"], "not NAME:WEIGHT"),
        (["web:x"], "not NAME:WEIGHT"), (["web:1", "web:2"], "twice"), (["web:nan"], "not NAME:WEIGHT"),
    ]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_mixture(entries)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("mix")
    chars = "".join(sorted(set(shakespeare)))
    half = len(shakespeare) // 2
    for name, text in (("early", shakespeare[:30_000]), ("late", shakespeare[half : half + 30_000])):
        prepare_text(chars + text, root / name, "char")  # the same characters: one tokenizer
    prepare_text("abc" * 1000, root / "other", "char")
    return root


def test_a_mixture_trains_logs_each_dataset_and_resumes(tmp_path, two_datasets):
    out = tmp_path / "run"
    common = [*TINY, f"data.root={two_datasets}", "data.mixture=early:0.75,late:0.25", f"out_dir={out}"]
    r = run_script("train.py", *common, "train.max_steps=10")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "early (" in r.stdout and "weight 0.75" in r.stdout
    r = run_script("train.py", *common, "train.max_steps=20")
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [rec for rec in records if rec.get("step") == 20 and "tokens/early" in rec][-1]
    assert last["tokens/early"] + last["tokens/late"] == 20 * 8 * 32  # every row of every step, counted over a resume
    evals = [rec for rec in records if "eval/val/early/loss" in rec][-1]
    assert evals["eval/val/loss"] == pytest.approx(
        0.75 * evals["eval/val/early/loss"] + 0.25 * evals["eval/val/late/loss"]
    )
    final = [rec for rec in records if "final/val/late/loss" in rec][-1]
    assert (
        "final/val/loss" in final and (out / "eval-val-early.json").is_file() and (out / "eval-val-late.json").is_file()
    )


def test_datasets_of_two_tokenizers_are_refused(tmp_path, two_datasets):
    r = run_script(
        "train.py", *TINY, f"data.root={two_datasets}", "data.mixture=early:1,other:1", f"out_dir={tmp_path}"
    )
    assert r.returncode == 2 and "mixes tokenizers" in r.stderr and "other" in r.stderr, r.stderr
