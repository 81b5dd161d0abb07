"""Where the text of a preparation comes from: text files (read here, in pieces), tables and hub
datasets (through HuggingFace ``datasets``), or one text in memory; and one clear error for text
that is not UTF-8."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.errors import UserError
from gpt.pieces import split_pieces, text_file_pieces

TABLE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}


@dataclass
class Source:
    """A `datasets` dataset (map-style or iterable) and where its text is; or text files, read in
    pieces by gpt.pieces (``dataset`` None), so that a huge line or file never sits in memory whole."""

    dataset: Any
    name: str  # what the user gave: a path, a glob or a dataset name
    column: str
    description: dict  # what the manifest records to recognise the same input again
    files: list[Path]  # local files, to locate decoding errors; empty for hub and in-memory data
    sample_by: str = "document"  # text files: what one document is

    def known_length(self) -> int | None:
        return len(self.dataset) if hasattr(self.dataset, "__len__") else None


def input_files(spec: str) -> list[Path]:
    """The files a --input names: a file, every file under a folder, or a glob; in sorted order."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path)))
    elif any(c in spec for c in "*?["):
        import glob

        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
    else:
        raise UserError(f"input {spec} does not exist")
    if not files:
        raise UserError(f"input {spec} holds no files")
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def file_kind(path: Path) -> str:
    return TABLE_KINDS.get(path.suffix.lower(), "text")


def local_source(spec: str, text_column: str, sample_by: str) -> Source:
    """Local files through `datasets`' packaged builders, streamed (no Arrow copy, no cache)."""
    from datasets import load_dataset
    from pyarrow import ArrowException

    files = input_files(spec)
    kinds = sorted({file_kind(f) for f in files})
    if len(kinds) > 1:
        raise UserError(f"input {spec} mixes file kinds ({', '.join(kinds)}); give one kind of file per --input")
    kind = kinds[0]
    described = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files]
    if kind == "text":  # read in pieces by gpt.pieces, with the rules of datasets' text builder
        description = {"files": described, "sample_by": sample_by, "column": "text"}
        return Source(None, spec, "text", description, files, sample_by)
    options: dict[str, Any] = {"sep": "\t"} if kind == "tsv" else {}
    try:
        dataset = load_dataset(
            "csv" if kind == "tsv" else kind,
            data_files=[str(f) for f in files],
            split="train",
            streaming=True,
            **options,
        )
    except (ArrowException, ValueError) as e:
        raise UserError(f"could not read {spec}: {e}") from None
    return Source(dataset, spec, text_column, {"files": described, "column": text_column}, [])


def hub_source(name: str, config: str | None, split: str, text_column: str, streaming: bool, num_proc: int) -> Source:
    """A dataset from the HuggingFace hub (or its local cache) through `datasets.load_dataset`."""
    from datasets import load_dataset

    try:
        extra = {} if streaming else {"num_proc": num_proc}
        dataset = load_dataset(name, config, split=split, streaming=streaming, **extra)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise UserError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {e}") from None
    description = {"dataset": name, "config": config, "split": split, "column": text_column}
    return Source(dataset, name, text_column, description, [])


def memory_source(text: str) -> Source:
    """One document held in memory, as a one-row `datasets.Dataset`."""
    from datasets import Dataset

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Source(Dataset.from_dict({"text": [text]}), "text in memory", "text", {"text_sha256": digest}, [])


def iter_texts(source: Source, batch_rows: int = 256) -> Iterator[list[str]]:
    """The documents of a source in input order, in lists; a missing value counts as an empty document."""
    from pyarrow import ArrowException

    dataset = source.dataset
    columns = dataset.column_names
    if columns is not None and source.column not in columns:
        raise UserError(f"the input has no column {source.column!r} (columns: {', '.join(columns)}); use --text_column")
    if columns is not None:
        dataset = dataset.select_columns([source.column])
    try:
        for batch in dataset.iter(batch_size=batch_rows):
            if source.column not in batch:
                raise UserError(f"the input has no column {source.column!r}; use --text_column")
            texts = batch[source.column]
            for value in texts:
                if value is not None and not isinstance(value, str):
                    raise UserError(
                        f"column {source.column!r} holds {type(value).__name__} values, not text; use --text_column"
                    )
            yield [value or "" for value in texts]
    except UnicodeDecodeError:
        raise UserError(non_utf8_message(source.files)) from None
    except (ArrowException, ValueError) as e:  # a malformed table: pyarrow's and pandas' parsers
        raise UserError(f"could not read {source.name}: {e}") from None


def iter_pieces(source: Source) -> Iterator[tuple[str, bool]]:
    """The documents of a source in input order as pieces of at most PIECE_CHARS characters:
    (text, whether it ends its document); see gpt.pieces."""
    if source.dataset is not None:
        for texts in iter_texts(source):
            for text in texts:
                yield from split_pieces(text)
        return
    for path in source.files:
        try:
            yield from text_file_pieces(path, source.sample_by)
        except UnicodeDecodeError:
            raise UserError(non_utf8_message([path])) from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None


# ----------------------------------------------------------------------------------------------
# Clear errors for text that is not UTF-8


def utf8_error(path: Path, chunk_bytes: int = 1 << 20) -> str | None:
    """Where a file stops being UTF-8, read in chunks; None when all of it is UTF-8."""
    line, line_start, offset, carry = 1, 0, 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            data = carry + chunk
            try:
                data.decode("utf-8")
                good, bad = len(data), None
            except UnicodeDecodeError as e:
                if chunk and e.end == len(data):  # a character cut by the chunk boundary
                    good, bad = e.start, None
                else:
                    good, bad = e.start, e.start
            line += data.count(b"\n", 0, good)
            newline = data.rfind(b"\n", 0, good)
            if newline >= 0:
                line_start = offset + newline + 1
            if bad is not None:
                at = offset + bad
                return (
                    f"{path} is not UTF-8: byte 0x{data[bad]:02x} at line {line}, column {at - line_start + 1} "
                    f"(offset {at}); convert it, e.g. `iconv -f latin1 -t utf-8`"
                )
            offset += good
            carry = data[good:]
            if not chunk:
                return None


def non_utf8_message(files: list[Path]) -> str:
    for path in files:
        message = utf8_error(path)
        if message:
            return message
    return "the input is not valid UTF-8; convert it, e.g. `iconv -f latin1 -t utf-8`"


def read_text(path: str | Path) -> str:
    """The file's text, or one clear error saying where it stops being UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"input {path} is a directory; give a text file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(utf8_error(path) or f"{path} is not UTF-8") from None
