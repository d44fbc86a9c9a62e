"""The optimizer ``train.optimizer`` names, built for a model: AdamW, or Muon + AdamW.

AdamW (``adamw``): weight decay on 2-D weights except embeddings, none on embeddings, norms and biases.
Muon (``muon``): ``torch.optim.Muon`` for the hidden matrices (every 2-D weight inside ``blocks``: attention and
MLP), AdamW as above for the rest (embeddings, the frame embedder, the output head, norms, biases). Muon's
update is orthogonalised, so its raw scale differs from Adam's; ``adjust_lr_fn="match_rms_adamw"`` rescales it
to AdamW's update RMS (lr x 0.2 x sqrt(max(rows, cols))), so one ``train.lr`` (and one schedule) suits both.

``SplitOptimizer`` steps both as one optimizer. Its ``state_dict`` is torch's plain layout (parameter indices in
order over both, each group tagged with its optimizer), so checkpoints keep every moment and momentum buffer in
safetensors/JSON and a resume is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig

MUON_LR_SCALING = "match_rms_adamw"


def split_parameters(model: nn.Module) -> dict[str, str]:
    """Role of each trainable parameter, in model order: 'muon' (2-D matrices inside the blocks), 'decay' (other
    2-D weights but embeddings, e.g. the head), 'no_decay' (embeddings, norms, biases, any other vector)."""
    roles: dict[str, str] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            matrix = p.ndim == 2 and "emb" not in name
            hidden = ".blocks." in f".{name}" and min(p.shape) > 1  # stack.blocks.N.*; not a 1 x d unit (ACT halting)
            roles[name] = ("muon" if hidden else "decay") if matrix else "no_decay"
    return roles


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    roles = split_parameters(model)
    params = dict(model.named_parameters())
    use_muon = cfg.optimizer == "muon"

    def pick(*wanted: str) -> list[nn.Parameter]:
        return [params[n] for n, role in roles.items() if role in wanted]

    adamw = torch.optim.AdamW(
        [{"params": pick("decay") if use_muon else pick("decay", "muon"), "weight_decay": cfg.weight_decay},
         {"params": pick("no_decay"), "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))
    if not use_muon:
        return adamw
    muon = torch.optim.Muon(pick("muon"), lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn=MUON_LR_SCALING)
    return SplitOptimizer({"adamw": adamw, "muon": muon})


class SplitOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped, zeroed and saved as one."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts
        # Not Optimizer.__init__: the groups and state belong to the parts; these views stay in sync with them.
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def state(self):  # type: ignore[override]
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}

    def step(self, closure=None):  # type: ignore[override]
        for opt in self.parts.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """torch's layout over all parts: indices run on from one part to the next; groups name their part."""
        state, groups, offset = {}, [], 0
        for name, opt in self.parts.items():
            sd = opt.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            for g in sd["param_groups"]:
                groups.append({**g, "params": [offset + i for i in g["params"]], "optimizer": name})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state = {int(k): v for k, v in state_dict["state"].items()}
        for name, opt in self.parts.items():
            groups = [g for g in state_dict["param_groups"] if g.get("optimizer") == name]
            if len(groups) != len(opt.param_groups):
                raise ValueError(f"checkpoint optimizer state has {len(groups)} '{name}' parameter groups, this run "
                                 f"has {len(opt.param_groups)}: resume with the same train.optimizer")
            ids = [i for g in groups for i in g["params"]]
            local = {k: n for n, k in enumerate(ids)}
            opt.load_state_dict({
                "state": {local[i]: state[i] for i in ids if i in state},
                "param_groups": [{**{k: v for k, v in g.items() if k != "optimizer"},
                                  "params": [local[i] for i in g["params"]]} for g in groups],
            })
