"""A prepared dataset folder: what makes one (``python -m gpt.prepare`` writes them), and the
built-in datasets, prepared from the bundled text on first use. Kept apart from the preparation so
that the trainer finds its data without importing it."""

from __future__ import annotations

from pathlib import Path

from gpt.errors import UserError
from gpt.paths import check_folder
from gpt.token_files import split_files
from gpt.tokenizer import ASSETS

BUILTIN_DATASETS = {  # name -> (bundled text, tokenizer)
    "shakespeare_char": (ASSETS / "tinyshakespeare.txt", "char"),
    "shakespeare_gpt2": (ASSETS / "tinyshakespeare.txt", "gpt2"),
}
HUB_DATASETS = {  # name a preset trains on -> the arguments that prepare it from the Hugging Face hub
    "fineweb10B": "--dataset HuggingFaceFW/fineweb --dataset_config sample-10BT --streaming --tokenizer gpt2 "
    "--val_fraction 0.0005",
}
MANIFEST = "prepare.json"  # the settings and counts; written last, it marks a preparation complete
STAGING = ".incomplete"  # where a preparation writes until every split is complete


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset training can read: train and val token files and the
    tokenizer, and no preparation under way or interrupted."""
    return bool(
        split_files(folder, "train")
        and split_files(folder, "val")
        and (folder / "tokenizer.json").is_file()
        and not (folder / STAGING).exists()
    )


def ensure_dataset(root: str | Path, name: str) -> Path:
    """The dataset folder, preparing a built-in dataset from the bundled text if it is missing."""
    folder = Path(root) / name
    if is_prepared(folder):
        return folder
    if name in BUILTIN_DATASETS:
        from gpt.prepare import local_source, prepare  # the preparation loads only when there is one to do

        check_folder(root, "data.root")  # the built-in dataset is prepared there
        path, tokenizer = BUILTIN_DATASETS[name]
        source = local_source(str(path), "text", "document")
        counts = prepare(source, folder, tokenizer, val_fraction=0.1, overwrite=True, progress=False)
        print(f"prepared {folder}: {counts['train']:,} train and {counts['val']:,} val tokens ({tokenizer})")
        return folder
    source = HUB_DATASETS.get(name, "--input YOUR_TEXT.txt --tokenizer char")
    also = "" if name in HUB_DATASETS else " (or --tokenizer gpt2)"
    raise UserError(
        f"no token files in {folder} (need train and val token files and tokenizer.json); prepare them with "
        f"`python -m gpt.prepare {source} --out {folder}`{also}"
    )
