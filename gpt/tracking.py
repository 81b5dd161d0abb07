"""What a run reports besides metrics.jsonl: experiment trackers, memory, samples, the loss plot.

The trackers are accelerate's (``tracking.loggers``: W&B, TensorBoard, MLflow, ...): the trainer
creates the Accelerator with ``log_with=trackers_to_start(cfg)``, starts them with
``start_tracking`` and logs every metric with ``accelerator.log``, which reaches them all from the
main process. W&B gets more, on the main process only:

- a run id kept in checkpoints, so that a resumed run continues the same W&B run;
- offline when there are no credentials, and a fall-back to offline when an online start fails;
- charts against tokens seen: every metric is plotted against ``tokens`` by default (W&B's
  ``define_metric``), and ``_step`` (the optimizer step) stays available as the other x-axis;
- at each evaluation, the samples as a W&B table (they also go to ``samples.jsonl``);
- at the end, the final metrics in the run summary and, with ``wandb.log_model=true``, the exported
  model as a W&B artifact.

TensorBoard and Aim write under ``out_dir/tracking/`` (accelerate's ``logging_dir``); the others
go where their own settings say. Whatever the trackers, this module also adds peak memory to the
logged metrics (the largest over processes) and redraws ``loss.png`` at each evaluation.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gpt import checkpoint as ckpt
from gpt.config import Config, flat_dict, to_dict
from gpt.errors import UserError
from gpt.perf import peak_rss_bytes
from gpt.tokenizer import Tokenizer
from gpt.trackers import enabled_trackers, wandb_mode

SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "loss.png"
TRACKING_DIR = "tracking"  # out_dir/tracking/: where TensorBoard and Aim write (W&B writes out_dir/wandb/)
GIB = 1024**3


# ----------------------------------------------------------------------------------------------
# Which trackers, and starting them


def trackers_to_start(cfg: Config) -> list[str] | None:
    """accelerate's ``log_with``: the trackers of tracking.loggers that run (gpt.trackers), None for none."""
    return enabled_trackers(cfg.tracking.loggers, cfg.wandb.mode) or None


def logging_dir(out_dir: str) -> str:
    """accelerate's ``ProjectConfiguration.logging_dir``, for the trackers that take a folder."""
    return str(Path(out_dir) / TRACKING_DIR)


def start_tracking(
    accelerator: Accelerator,
    cfg: Config,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    wandb_id: str | None,
    start_step: int,
    derived: dict[str, Any],
) -> Tracking:
    """Start the Accelerator's trackers on the main process, with the config and the settings derived
    from it (``derived``: accumulation steps, parameters, ...) as the run's hyperparameters.
    ``wandb_id``: the W&B run to continue (from the checkpoint resumed from), None for a new one;
    ``start_step``: the step resumed from, 0 for a fresh start."""
    names = [str(name) for name in accelerator.log_with]
    if accelerator.is_main_process and names:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        # TensorBoard hides what an earlier attempt logged after the checkpoint resumed from, as metrics.jsonl drops it
        init_kwargs: dict[str, Any] = {"tensorboard": {"purge_step": start_step + 1}}
        if "wandb" in names:
            wandb_id = wandb_id or new_run_id()
            init_kwargs["wandb"] = wandb_init(cfg, wandb_id, wandb_mode(cfg.wandb.mode))
        project = cfg.wandb.project or os.environ.get("WANDB_PROJECT") or "gpt"
        init_trackers(accelerator, project, init_kwargs, cfg.wandb.init_timeout_s)
        settings = to_dict(cfg) | {"derived": derived}
        for tracker in accelerator.trackers:  # W&B takes nested settings; TensorBoard's hparams want flat ones
            tracker.store_init_configuration(settings if tracker.name == "wandb" else flat_settings(settings))
        if local := [tracker.name for tracker in accelerator.trackers if tracker.requires_logging_directory]:
            view = f"; view with: tensorboard --logdir {accelerator.logging_dir}" if "tensorboard" in local else ""
            print(f"{', '.join(local)} logging under {accelerator.logging_dir}{view}", flush=True)
    return Tracking(accelerator, cfg, model, tokenizer, wandb_id)


def init_trackers(accelerator: Accelerator, project: str, init_kwargs: dict[str, Any], timeout_s: float) -> None:
    """accelerate's ``init_trackers`` (``init_kwargs["wandb"]``: wandb.init's arguments, "mode" among
    them). An online W&B start that fails or gets no answer within ``timeout_s`` (no network, W&B
    down) does not end the run: it continues offline, and one line says so and how to upload it later."""
    wandb_init_kwargs = init_kwargs.get("wandb")
    if wandb_init_kwargs is None:
        accelerator.init_trackers(project, init_kwargs=init_kwargs)
        return
    import wandb

    if wandb_init_kwargs["mode"] != "online":
        accelerator.init_trackers(project, init_kwargs=init_kwargs)
        print(
            f"W&B is offline (no credentials found); upload this run later with: wandb sync {_run_dir(accelerator)}",
            flush=True,
        )
        return
    settings = wandb.Settings(init_timeout=timeout_s)
    try:
        accelerator.init_trackers(
            project, init_kwargs=init_kwargs | {"wandb": wandb_init_kwargs | {"settings": settings}}
        )
    except wandb.Error as e:
        accelerator.trackers.clear()  # W&B's failed start came first: the others are created, not yet started
        wandb.teardown()  # the W&B service still holds the failed run's id, which the offline run reuses
        accelerator.init_trackers(project, init_kwargs=init_kwargs | {"wandb": wandb_init_kwargs | {"mode": "offline"}})
        reason = " ".join(str(e).split("\n")[0].split())
        print(
            f"W&B could not start the run online ({reason}); continuing offline (wandb.init_timeout_s bounds the "
            f"wait): upload this run later with: wandb sync {_run_dir(accelerator)}",
            flush=True,
        )


def _run_dir(accelerator: Accelerator) -> Path:
    return Path(accelerator.get_tracker("wandb", unwrap=True).dir).parent


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Nested settings as one level of dotted keys, lists joined by commas: what TensorBoard's
    hyperparameters (and MLflow's parameters) accept."""
    return {key: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for key, v in flat_dict(settings).items()}


def new_run_id() -> str:
    """A W&B run id (8 lowercase letters and digits), kept in checkpoints so a resumed run continues it."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def wandb_init(cfg: Config, wandb_id: str, mode: str) -> dict[str, Any]:
    """wandb.init's arguments: the run to start or continue (``resume="allow"``) and the wandb.* keys;
    an empty key leaves its WANDB_* variable to W&B."""
    init = {
        "id": wandb_id,
        "resume": "allow",
        "mode": mode,
        "dir": str(Path(cfg.out_dir).resolve()),
        "name": cfg.wandb.name or os.environ.get("WANDB_NAME") or Path(cfg.out_dir).name,
    }
    for key in ("entity", "group", "notes"):
        if getattr(cfg.wandb, key):
            init[key] = getattr(cfg.wandb, key)
    if cfg.wandb.tags:
        init["tags"] = cfg.wandb.tags
    return init


# ----------------------------------------------------------------------------------------------
# During the run


class Tracking:
    """Created once the trackers have started (``start_tracking``); every method is safe to call on
    every process."""

    def __init__(
        self, accelerator: Accelerator, cfg: Config, model: torch.nn.Module, tokenizer: Tokenizer, wandb_id: str | None
    ):
        self.accelerator = accelerator
        self.wandb_id = wandb_id  # saved in checkpoints (on the main process), so that a resume continues the run
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
