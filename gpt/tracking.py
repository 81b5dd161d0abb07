"""What a run reports besides its losses: memory, samples, the loss plot, and the W&B extras.

The trainer starts W&B through accelerate's tracker and logs its metrics with ``accelerator.log``;
this module adds, on the main process only:

- W&B charts against tokens seen: every metric is plotted against ``tokens`` by default (W&B's
  ``define_metric``), and ``_step`` (the optimizer step) stays available as the other x-axis;
- peak memory in the logged metrics (the largest over processes);
- at each evaluation, a few samples from the current model in ``samples.jsonl`` and a W&B table,
  and a refreshed ``loss.png`` (``gpt.plot``);
- at the end, the final metrics in the W&B run summary and, with ``wandb.log_model=true``, the
  exported model as a W&B artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gpt import checkpoint as ckpt
from gpt.config import Config
from gpt.errors import UserError
from gpt.perf import peak_rss_bytes
from gpt.tokenizer import Tokenizer

SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "loss.png"
GIB = 1024**3


def start_wandb(
    accelerator: Accelerator, project: str, config: dict[str, Any], init: dict[str, Any], timeout_s: float
) -> None:
    """Start the W&B run through accelerate's tracker (``init``: wandb.init's arguments, "mode" among
    them). An online start that fails or gets no answer within ``timeout_s`` (no network, W&B down)
    does not end the run: it continues offline, and one line says so and how to upload it later."""
    if not accelerator.is_main_process:
        return
    import wandb

    if init["mode"] != "online":
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init})
        print(
            f"W&B is offline (no credentials found); upload this run later with: wandb sync {_run_dir(accelerator)}",
            flush=True,
        )
        return
    settings = wandb.Settings(init_timeout=timeout_s)
    try:
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init | {"settings": settings}})
    except wandb.Error as e:
        accelerator.trackers.clear()  # the tracker whose start failed
        wandb.teardown()  # the W&B service still holds the failed run's id, which the offline run reuses
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init | {"mode": "offline"}})
        reason = " ".join(str(e).split("\n")[0].split())
        print(
            f"W&B could not start the run online ({reason}); continuing offline (wandb.init_timeout_s bounds the "
            f"wait): upload this run later with: wandb sync {_run_dir(accelerator)}",
            flush=True,
        )


def _run_dir(accelerator: Accelerator) -> Path:
    return Path(accelerator.get_tracker("wandb", unwrap=True).dir).parent


class Tracking:
    """Created once the W&B run (if any) has started; every method is safe to call on every process."""

    def __init__(self, accelerator: Accelerator, cfg: Config, model: torch.nn.Module, tokenizer: Tokenizer):
        self.accelerator = accelerator
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.out_dir = Path(cfg.out_dir)
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size
        self.wandb_run = None
        if accelerator.is_main_process and any(t.name == "wandb" for t in accelerator.trackers):
            self.wandb_run = accelerator.get_tracker("wandb", unwrap=True)
            self.wandb_run.define_metric("tokens")
            self.wandb_run.define_metric("*", step_metric="tokens")  # charts against tokens seen by default
        sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.sample_count = 0 if sharded else cfg.train.eval_samples
        if sharded and cfg.train.eval_samples and accelerator.is_main_process:
            print(
                "evaluation samples are off: the model is sharded over processes, so generating on one of them "
                "is not possible; sample from a checkpoint with sample.py instead",
                flush=True,
            )
        self.plot_note_shown = False

    # ------------------------------------------------------------------------------------------
    # At log steps

    def memory(self) -> dict[str, float]:
        """Peak memory so far in GiB, the largest over processes: tensors on the GPU (on CUDA), and the
        process's resident memory (RSS). A collective: call it on every process at the same steps."""
        device = self.accelerator.device
        names, values = [], []
        if device.type == "cuda":
            names.append("memory/gpu_peak_gib")
            values.append(torch.cuda.max_memory_allocated(device) / GIB)
        rss = peak_rss_bytes()
        if rss is not None:
            names.append("memory/rss_peak_gib")
            values.append(rss / GIB)
        if not names:
            return {}
        local = torch.tensor(values, dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local[None]).amax(dim=0)
        return dict(zip(names, local.tolist(), strict=True))

    # ------------------------------------------------------------------------------------------
    # At evaluation steps

    def after_eval(self, step: int) -> None:
        """Samples from the current model (samples.jsonl, W&B table) and a fresh loss.png."""
        if not self.accelerator.is_main_process:
            return
        if self.sample_count:
            self.log_samples(step)
        self.refresh_plot()

    def generate_samples(self) -> list[str]:
        """A few continuations of the start of a document, seeded so that samples at successive
        evaluations are comparable; training's random state is left alone."""
        from gpt.generate import generate_text

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        was_training = model.training
        model.eval()
        try:
            return generate_text(
                model, self.tokenizer, self.prompt(), max_new_tokens=self.cfg.train.eval_sample_tokens,
                num_samples=self.sample_count, temperature=0.8, top_k=200, seed=self.cfg.seed,
            )  # fmt: skip
        finally:
            model.train(was_training)

    def prompt(self) -> str:
        """The start of a document: end-of-text for BPE (an empty prompt), else a newline, else the
        first character of a vocabulary that has no newline."""
        if self.tokenizer.eot_id is not None:
            return ""
        try:
            self.tokenizer.encode("\n")
            return "\n"
        except UserError:
            return self.tokenizer.decode([0])

    def log_samples(self, step: int) -> None:
        texts = self.generate_samples()
        tokens = step * self.tokens_per_step
        with open(self.out_dir / SAMPLES_FILE, "a") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"step": step, "tokens": tokens, "sample": i, "text": text}) + "\n")
        if self.wandb_run is not None:
            rows = [[step, tokens, i, text] for i, text in enumerate(texts)]
            self.accelerator.get_tracker("wandb").log_table(
                "samples", columns=["step", "tokens", "sample", "text"], data=rows, step=step
            )

    def refresh_plot(self) -> None:
        """Redraw loss.png; without matplotlib, say so once and go on."""
        try:
            from gpt.plot import plot_runs

            plot_runs([self.out_dir], self.out_dir / PLOT_FILE)
        except ImportError:
            if not self.plot_note_shown:
                print(f"{PLOT_FILE} is not drawn: matplotlib is not installed (pip install matplotlib)", flush=True)
            self.plot_note_shown = True
        except UserError:
            pass  # nothing logged yet to draw

    # ------------------------------------------------------------------------------------------
    # At the end

    def finish(self, step: int, metrics: dict[str, Any]) -> None:
        """Put the final metrics in the W&B run summary (the final evaluation's among them: pass its
        dict in ``metrics``) and upload the exported model when wandb.log_model is set."""
        if self.wandb_run is None:
            return
        self.wandb_run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.wandb_run.summary.update({"step": step, "tokens": step * self.tokens_per_step})
        if self.cfg.wandb.log_model:
            self.log_model(step, metrics)

    def log_model(self, step: int, metrics: dict[str, Any]) -> None:
        import wandb

        latest = ckpt.latest_checkpoint(self.out_dir)
        if latest is None:
            return
        export = latest / ckpt.EXPORT_DIR
        meta = {k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"step": step}
        artifact = wandb.Artifact(f"model-{self.wandb_run.id}", type="model", metadata=meta)
        artifact.add_dir(str(export))  # copied into W&B's staging area: checkpoint rotation can't remove it
        self.wandb_run.log_artifact(artifact, aliases=["latest", latest.name])
        print(f"logged {export} to W&B as artifact model-{self.wandb_run.id}:{latest.name}", flush=True)
