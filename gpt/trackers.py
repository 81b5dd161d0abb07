"""Which experiment trackers a run logs to (``tracking.loggers``, and W&B's mode), and the package each needs.

accelerate knows the trackers by name (``Accelerator(log_with=...)``) but skips one whose package is
missing with no more than a debug message, so the run would go on without it. The config check
(``gpt.config.validate``) refuses an unknown name or a missing package instead, before torch loads;
this module therefore imports neither torch nor accelerate. Starting the trackers is gpt.tracking's.
"""

from __future__ import annotations

import difflib
import os
from importlib.util import find_spec

from gpt.errors import UserError

# accelerate's tracker name -> (the modules accelerate accepts for it, any one will do; what to install)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "wandb": (("wandb",), "wandb"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
    "aim": (("aim",), "aim"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
}


def enabled_trackers(loggers: list[str], wandb_mode_setting: str) -> list[str]:
    """The trackers of ``loggers`` that run, each once: all but W&B when its mode (``wandb.mode``,
    resolved by ``wandb_mode``) is disabled. W&B comes first: accelerate starts trackers in this
    order, so a failed online W&B start is retried offline before any other tracker has begun."""
    names = [name for name in dict.fromkeys(loggers) if name != "wandb" or wandb_mode(wandb_mode_setting) != "disabled"]
    return sorted(names, key=lambda name: name != "wandb")


def check_loggers(loggers: list[str], wandb_mode_setting: str) -> None:
    """Refuse, in one line, a tracker name accelerate does not know, or a tracker that would run
    without its package (W&B switched off needs no wandb)."""
    for name in loggers:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"config key 'tracking.loggers' has unknown tracker {name!r}{hint}; choose among {', '.join(TRACKERS)} "
                "(comma-separated), or leave it empty for metrics.jsonl only"
            )
    for name in enabled_trackers(loggers, wandb_mode_setting):
        modules, package = TRACKERS[name]
        if not any(find_spec(module) for module in modules):
            raise UserError(
                f"tracking.loggers names {name}, but its package is not installed: pip install {package} "
                f"(or remove {name} from tracking.loggers)"
            )


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(mode: str) -> str:
    """The W&B mode to run in: the config's, else WANDB_MODE, else online only with credentials."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_wandb_credentials() else "offline"
