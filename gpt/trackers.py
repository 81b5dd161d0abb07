"""The experiment trackers a run can log to (``tracking.loggers``) and the package each one needs.

accelerate knows these by name (``Accelerator(log_with=...)``) but skips one whose package is
missing with no more than a debug message, so the run would go on without it. The config check
(``gpt.config.validate``) refuses an unknown name or a missing package instead, before torch loads;
this module therefore imports neither torch nor accelerate.
"""

from __future__ import annotations

import difflib
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


def check_loggers(names: list[str]) -> None:
    """Refuse, in one line, a tracker name accelerate does not know or one whose package is not installed."""
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"config key 'tracking.loggers' has unknown tracker {name!r}{hint}; choose among {', '.join(TRACKERS)} "
                "(comma-separated), or leave it empty for metrics.jsonl only"
            )
        modules, package = TRACKERS[name]
        if not any(find_spec(module) for module in modules):
            raise UserError(
                f"tracking.loggers names {name}, but its package is not installed: pip install {package} "
                f"(or remove {name} from tracking.loggers)"
            )
