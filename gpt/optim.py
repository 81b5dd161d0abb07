"""The optimizer the trainer steps: AdamW, or Muon for the hidden weight matrices with AdamW for the rest.

Muon (``torch.optim.Muon``) orthogonalises each matrix's momentum (a few Newton-Schulz iterations)
before the update, so every direction of the matrix moves at the same rate. It is meant for the 2-D
weights inside the blocks; embeddings, the LM head, biases and norm gains stay with AdamW. Both live
in one ``MuonWithAdamW`` optimizer, so the trainer, accelerate's ``prepare`` and ``save_state`` /
``load_state`` see a single optimizer whose state dict holds both.

Every param group carries ``lr_scale``: the group's learning rate is the schedule's rate times it,
so one schedule drives AdamW (scale 1) and Muon (scale muon_lr / learning_rate) together.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt.config import TrainConfig
from gpt.errors import UserError


def adamw_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear and embedding weights) only, not on biases and norm gains."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block (not an embedding, not the LM head)."""
    return param.dim() == 2 and name.startswith("blocks.")


def make_adamw(params: list, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # One fused kernel for the whole update: fewer passes over memory, no loop over tensors (on this
    # 2-core CPU, 0.4 ms instead of 2.0 ms per step for nanoGPT's CPU model; see docs/benchmarks.md).
    fused = True if device.type in ("cuda", "cpu", "mps", "xpu") else None
    return torch.optim.AdamW(
        adamw_groups(params, t.weight_decay), lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=fused
    )


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on some parameters and AdamW on the others, stepped, zeroed and saved as one optimizer.

    ``param_groups`` are the two optimizers' own group dicts, so setting a group's ``lr`` here sets it
    there. The state dict is ``{"muon": ..., "adamw": ...}``, tensors and numbers only.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise UserError(
                "the checkpoint's optimizer state is not Muon with AdamW; resume with the train.optimizer "
                "the checkpoint was trained with"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer train.optimizer names, with lr_scale set on every group (see ``set_lr``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        return make_adamw([p for _, p in named], t, device)
    if not hasattr(torch.optim, "Muon"):
        raise UserError(
            f"train.optimizer=muon needs torch.optim.Muon (torch 2.9 or newer); this is torch {torch.__version__}: "
            "upgrade torch or use train.optimizer=adamw"
        )
    matrices = [p for n, p in named if is_hidden_matrix(n, p)]
    others = [p for n, p in named if not is_hidden_matrix(n, p)]
    if not matrices:
        raise UserError("train.optimizer=muon needs a model with weight matrices in its blocks (model.kind=gpt)")
    muon = torch.optim.Muon(
        [{"params": matrices, "lr_scale": t.muon_lr / t.learning_rate}],
        lr=t.muon_lr,
        weight_decay=0.0,
        momentum=t.muon_momentum,
        adjust_lr_fn="original",  # scale by sqrt(max(1, rows / cols)), as in Keller Jordan's Muon
    )
    return MuonWithAdamW(muon, make_adamw(others, t, device))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to the schedule's ``lr`` times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
