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


def param_kind(name: str, param: torch.nn.Parameter) -> str:
    """'scalar' (0-D or 1-D: biases, norm gains, mixing weights), 'embed' (token and value embeddings),
    'head' (an untied LM head) or 'matrix' (the blocks' weights): the groups that can have their own rate."""
    if param.dim() < 2:
        return "scalar"
    if name.startswith(("wte.", "value_embeds.")):
        return "embed"
    return "head" if name.startswith("lm_head.") else "matrix"


def adamw_groups(named: list[tuple[str, torch.nn.Parameter]], t: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear and embedding weights) only, not on biases and norm gains; each
    kind's learning rate scaled by its train.*_lr_scale. Parameters with the same decay and scale share a
    group, so with every scale at 1 the groups are the two they always were (checkpoints resume)."""
    scales = {"embed": t.embed_lr_scale, "head": t.head_lr_scale, "scalar": t.scalar_lr_scale, "matrix": 1.0}
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in named:
        kind = param_kind(name, p)
        groups.setdefault((kind != "scalar", scales[kind]), []).append(p)
    return [
        {"params": params, "weight_decay": t.weight_decay if decayed else 0.0, "lr_scale": scale}
        for (decayed, scale), params in groups.items()
    ]


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block (not an embedding, not the LM head)."""
    return param.dim() == 2 and name.startswith("blocks.")


def make_adamw(named: list[tuple[str, torch.nn.Parameter]], t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # One fused kernel for the whole update: fewer passes over memory, no loop over tensors (on this
    # 2-core CPU, 0.4 ms instead of 2.0 ms per step for nanoGPT's CPU model; see docs/benchmarks.md).
    fused = True if device.type in ("cuda", "cpu", "mps", "xpu") else None
    return torch.optim.AdamW(adamw_groups(named, t), lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=fused)


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
        return make_adamw(named, t, device)
    if not hasattr(torch.optim, "Muon"):
        raise UserError(
            f"train.optimizer=muon needs torch.optim.Muon (torch 2.9 or newer); this is torch {torch.__version__}: "
            "upgrade torch or use train.optimizer=adamw"
        )
    matrices = [p for n, p in named if is_hidden_matrix(n, p)]
    others = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
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
