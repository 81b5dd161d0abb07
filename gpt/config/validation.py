"""Checks of a whole config, and the settings a resumed run changes."""

from __future__ import annotations

from typing import Any

from gpt.config.fields import check_fields, flat_dict, to_dict
from gpt.config.run import Config
from gpt.errors import UserError
from gpt.trackers import check_loggers


def validate(cfg: Config) -> None:
    """Every field against its declared rule (``check_fields``), then the checks across fields."""
    check_fields(cfg)
    m, t = cfg.model, cfg.train
    if t.micro_batch_size != "auto" and t.micro_batch_size <= 0:
        raise UserError(f"config key 'train.micro_batch_size' must be positive or auto, got {t.micro_batch_size}")
    if m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if t.micro_batch_size != "auto" and t.batch_size % t.micro_batch_size:
        raise UserError(
            f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})"
        )
    if t.min_lr > t.learning_rate:
        raise UserError(
            f"train.min_lr ({t.min_lr}) must not exceed train.learning_rate ({t.learning_rate}): the schedule "
            "decays from learning_rate to min_lr"
        )
    if m.init_from and m.kind != "gpt":
        raise UserError(f"model.init_from loads a GPT-2 and needs model.kind=gpt, got model.kind={m.kind}")
    if m.position == "rope" and (m.n_embd // m.n_head) % 2:
        raise UserError(
            f"model.position=rope needs an even head size, got n_embd / n_head = {m.n_embd // m.n_head}; "
            "change model.n_embd or model.n_head"
        )
    if m.value_embeds > m.n_layer // 2:
        raise UserError(
            f"model.value_embeds={m.value_embeds} is more than n_layer // 2 = {m.n_layer // 2} "
            "(each table serves one block of the first half and one of the second); lower it"
        )
    check_loggers(cfg.tracking.loggers, cfg.wandb.mode)  # known names, the packages of those that run installed


def resume_changes(saved: dict[str, Any], cfg: Config) -> str | None:
    """One line naming the settings that differ from those a resumed checkpoint was trained with
    (``saved``: its config as a dict), or None. The architecture is not compared: a change there
    cannot resume at all (gpt.checkpoint.check_same_model)."""
    before, now = flat_dict(saved), flat_dict(to_dict(cfg))
    ignored = ("out_dir", "resume")  # where the run is and how it was asked to continue, not how it trains
    changed = [k for k in now if k in before and k not in ignored and before[k] != now[k]]
    if not changed:
        return None
    return "resuming with changed settings: " + ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)
