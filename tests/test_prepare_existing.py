"""The one rule for an output folder that already holds something (gpt.prepare.existing)."""

import json

import pytest

from gpt.errors import UserError
from gpt.prepare.existing import OnDisk, claim_output, decide, look
from gpt.prepared import MANIFEST, STAGING
from gpt.token_files import write_token_file

SETTINGS = {"input": {"files": ["a.txt"]}, "val": {"fraction": 0.1}, "tokenizer": "char", "shard_tokens": 100}
OTHER = SETTINGS | {"tokenizer": "gpt2"}
EMPTY = OnDisk(files=False, interrupted=False, complete=None)
PREPARED = OnDisk(files=True, interrupted=False, complete=SETTINGS)
INTERRUPTED = OnDisk(files=True, interrupted=True, complete=None)
UNKNOWN = OnDisk(files=True, interrupted=False, complete=None)  # token files, truncated or without a manifest


def test_nothing_there_is_written_whatever_was_asked():
    assert decide(EMPTY, SETTINGS, overwrite=False, out="o") == "write"
    assert decide(EMPTY, SETTINGS, overwrite=True, out="o") == "write"


def test_the_same_preparation_is_skipped():
    assert decide(PREPARED, SETTINGS, overwrite=False, out="o") == "skip"


def test_other_settings_are_refused_naming_what_differs_and_what_to_do():
    with pytest.raises(UserError, match=r"o already holds a dataset prepared with other settings \(different: "):
        decide(PREPARED, OTHER | {"shard_tokens": 5}, overwrite=False, out="o")
    with pytest.raises(UserError, match=r"different: shard_tokens, tokenizer\); pass --overwrite"):
        decide(PREPARED, OTHER | {"shard_tokens": 5}, overwrite=False, out="o")


@pytest.mark.parametrize("on_disk", [PREPARED, INTERRUPTED, UNKNOWN], ids=["prepared", "interrupted", "unknown"])
def test_overwrite_replaces_anything(on_disk):
    assert decide(on_disk, SETTINGS, overwrite=True, out="o") == "replace"
    assert decide(on_disk, OTHER, overwrite=True, out="o") == "replace"


def test_an_interrupted_or_unknown_preparation_is_refused_without_overwrite():
    with pytest.raises(UserError, match="o already holds the remains of an interrupted preparation; pass --overwrite"):
        decide(INTERRUPTED, SETTINGS, overwrite=False, out="o")
    with pytest.raises(UserError, match="o already holds token files; pass --overwrite"):
        decide(UNKNOWN, SETTINGS, overwrite=False, out="o")


def write_prepared(out, tokens=10):
    """A complete preparation as gpt.prepare publishes it, with one train and one val shard."""
    for split in ("train", "val"):
        write_token_file(out / f"{split}-000000.tok", list(range(tokens)), vocab_size=65, identity="char")
    (out / "tokenizer.json").write_text("{}")
    shards = {s: [{"file": f"{s}-000000.tok", "tokens": tokens}] for s in ("train", "val")}
    (out / MANIFEST).write_text(json.dumps({"settings": SETTINGS, "vocab_size": 65, "shards": shards}))


def test_look_finds_a_complete_preparation_and_what_spoils_one(tmp_path):
    assert look(tmp_path / "missing") == EMPTY
    write_prepared(tmp_path)
    assert look(tmp_path) == PREPARED
    shard = tmp_path / "val-000000.tok"
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated: one token short
    assert look(tmp_path) == UNKNOWN
    write_prepared(tmp_path)
    (tmp_path / STAGING).mkdir()  # a later run that was interrupted
    assert look(tmp_path) == INTERRUPTED
    (tmp_path / STAGING).rmdir()
    (tmp_path / MANIFEST).write_text('{"settings": {}}')  # a manifest this code did not write
    assert look(tmp_path) == UNKNOWN


def test_partial_token_files_count_as_a_preparation(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")
    assert look(tmp_path) == EMPTY
    (tmp_path / "train-000000.tok.partial").write_bytes(b"x")
    assert look(tmp_path) == UNKNOWN


def test_claim_output_replaces_only_what_a_preparation_wrote(tmp_path):
    write_prepared(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's")
    assert claim_output(tmp_path, SETTINGS, overwrite=False) is False  # skip: nothing touched
    assert len(list(tmp_path.iterdir())) == 5
    assert claim_output(tmp_path, OTHER, overwrite=True) is True
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
