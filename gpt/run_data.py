"""Opening a training run's data: data.dataset, or every dataset of data.mixture, prepared when missing
and checked against its tokenizer and the model's context; and the model config resolved against it."""

from __future__ import annotations

from accelerate import Accelerator

from gpt import hf
from gpt.config import Config, ModelConfig
from gpt.data import DocumentStarts, TokenStream, split_files
from gpt.errors import UserError
from gpt.mixture import Source, parse_mixture
from gpt.prepared import ensure_dataset
from gpt.tokenizer import Tokenizer, load_tokenizer


def open_dataset(cfg: Config, accelerator: Accelerator, name: str) -> tuple[Tokenizer, TokenStream, TokenStream]:
    """The tokenizer and the train and val streams of dataset ``name`` under data.root."""
    # A missing built-in dataset is prepared by the main process first (data.root on a filesystem the
    # machines share is then ready for all), then by each machine's first process (node-local disks).
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        folder = ensure_dataset(cfg.data.root, name)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    streams = []
    for split in ("train", "val"):
        stream = TokenStream(split_files(folder, split))
        if stream.identity != tokenizer.identity:
            raise UserError(
                f"{stream.files[0].path} was made by tokenizer {stream.identity!r} but {folder / 'tokenizer.json'} "
                f"is {tokenizer.identity!r}; re-run prepare for {folder}"
            )
        stream.check_fits(cfg.model.block_size)
        streams.append(stream)
    return tokenizer, streams[0], streams[1]


def open_data(cfg: Config, accelerator: Accelerator) -> tuple[Tokenizer, list[Source]]:
    """data.dataset, or every dataset of data.mixture (which must share one tokenizer)."""
    weighted = parse_mixture(cfg.data.mixture) if cfg.data.mixture else [(cfg.data.dataset, 1.0)]
    sources, tokenizers = [], []
    for name, weight in weighted:
        tokenizer, train, val = open_dataset(cfg, accelerator, name)
        if tokenizers and tokenizer.identity != tokenizers[0].identity:
            raise UserError(
                f"data.mixture mixes tokenizers: {sources[0].name} was made by {tokenizers[0].identity!r} and {name} "
                f"by {tokenizer.identity!r}; prepare every dataset of a mixture with one tokenizer"
            )
        documents = (
            DocumentStarts(train, tokenizer.eot_id, cfg.model.block_size) if cfg.data.align == "document" else None
        )
        sources.append(Source(name, weight, train, val, documents))
        tokenizers.append(tokenizer)
    return tokenizers[0], sources


def resolve_model_config(
    cfg: Config, tokenizer: Tokenizer, sources: list[Source], accelerator: Accelerator
) -> ModelConfig:
    """Fill cfg.model in place, once: a pretrained model's architecture (model.init_from, gpt.hf) and
    the vocabulary size (0: the tokenizer's); checks that every token of the data fits the vocabulary.
    Checkpoints, exports and W&B all record this one config."""
    if cfg.model.init_from:
        with accelerator.local_main_process_first():
            adopted = hf.adopt_architecture(cfg.model, tokenizer)
        if accelerator.is_main_process:
            print(adopted, flush=True)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tokenizer.vocab_size
    for data in (stream for source in sources for stream in (source.train, source.val)):
        data.check_model(cfg.model.vocab_size)
    return cfg.model
