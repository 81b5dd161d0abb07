"""Evaluate a model: one full, deterministic pass over a split (loss, perplexity, bits per byte), or a
benchmark (HellaSwag, lm-evaluation-harness tasks).

    python -m gpt.evaluate --out_dir out/default                   # the run's val split, one process
    python -m gpt.evaluate --out_dir out/default --split train --batch_size 32
    python -m gpt.evaluate --out_dir path/to/model --data data/my_corpus
    accelerate launch --config_file launch/cpu_multiprocess.yaml -m gpt.evaluate --out_dir out/default
    accelerate launch --config_file launch/single_node.yaml -m gpt.evaluate --out_dir out/big --mixed_precision bf16
    python -m gpt.evaluate --out_dir out/default --task hellaswag --data hellaswag_val.jsonl   # gpt.hellaswag
    python -m gpt.evaluate --out_dir out/default --lm_eval lambada_openai --limit 100        # gpt.lm_eval_model
    python -m gpt.evaluate --help

Prints a table and writes the same figures as JSON (eval-<split>.json in the run directory). What
the figures are, which tokens they count and how several processes share the work: gpt.evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt.config import EvalConfig, parse_flags
from gpt.errors import UserError, run_main


def main(argv: list[str]) -> int:
    cfg = parse_flags(EvalConfig, argv, "python -m gpt.evaluate", __doc__)
    import torch  # after the flags: --help and a bad flag answer before torch loads
    from accelerate import Accelerator

    from gpt.data import TokenStream, split_files
    from gpt.evaluation import dataset_of, evaluate_split, format_table, run_directory, token_byte_lengths, write_json
    from gpt.export import load_exported, resolve_export
    from gpt.paths import folder_problem

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Several processes and no GPU: CPU over gloo (as in gpt.trainer.setup).
    accelerator = Accelerator(cpu=launched > 1 and not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    if cfg.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise UserError("--mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 or no")

    if cfg.lm_eval:  # lm-evaluation-harness drives the model itself
        from gpt.lm_eval_model import run_lm_eval

        return run_lm_eval(cfg, run_directory)
    export = resolve_export(cfg.out_dir)
    model, tokenizer, meta = load_exported(export)
    if cfg.task:
        from gpt.hellaswag import run_task

        prepared = accelerator.prepare_model(model, evaluation_mode=True)
        run_task(cfg, prepared, model.cfg, tokenizer, accelerator, export, meta, run_directory(export))
        accelerator.end_training()
        return 0
    folder = Path(cfg.data) if cfg.data else dataset_of(export, accelerator)
    files = split_files(folder, cfg.split)
    if not files:
        raise UserError(
            f"no token files for split {cfg.split!r} in {folder} (need {cfg.split}.tok or {cfg.split}-*.tok)"
        )
    data = TokenStream(files)
    if data.identity != tokenizer.identity:
        raise UserError(
            f"{files[0]} was made by tokenizer {data.identity!r} but the model uses {tokenizer.identity!r}; "
            "evaluate on data prepared with the model's tokenizer"
        )
    path = Path(cfg.json) if cfg.json else run_directory(export) / f"eval-{cfg.split}.json"
    problem = folder_problem(path.parent) if accelerator.is_main_process else None  # before the pass, not after
    if problem is not None:
        raise UserError(f"cannot write the results to {path}: {path.parent} {problem}; pass --json PATH elsewhere")
    block_size = model.cfg.block_size
    model = accelerator.prepare_model(model, evaluation_mode=True)  # device placement and autocast
    result = evaluate_split(model, data, token_byte_lengths(tokenizer), block_size, cfg.batch_size, accelerator)
    if accelerator.is_main_process:
        title = f"{export} (step {meta.get('step')}) on the {cfg.split} split of {folder}:"
        print(format_table(result, title), flush=True)  # first: the figures are not lost if writing fails
        record = {"model": str(export), "step": meta.get("step"), "data": str(folder), "split": cfg.split}
        try:
            write_json(path, record | result.as_dict())
        except OSError as e:
            raise UserError(f"could not write {path} ({e.strerror}); the figures are above; pass --json PATH") from None
        print(f"wrote {path}", flush=True)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_main(main)
