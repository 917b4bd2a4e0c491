"""Training strategies: which parameter groups train, and whether new heads are added.

A backbone splits its parameters into ``backbone``, ``heads`` (pretrained readouts),
``new_heads`` (heads added for new targets) and ``lora`` (low-rank adapters, present only
when the strategy sets ``lora_rank``). A strategy names the groups that train:

=============== ================================ ========== ============
strategy        trains                            new heads  re-init
=============== ================================ ========== ============
scratch         everything                        yes        yes
full            backbone + existing heads         no         no
head            existing heads                    no         no
transfer_full   backbone + new heads              yes        no
transfer_head   new heads                         yes        no
lora            low-rank adapters of the linears  no         no
=============== ================================ ========== ============

Frozen parameters get ``requires_grad=False`` before the optimizer is built and are left
out of it, so they stay bit-identical. Under ``lora`` the adapters are merged into the
weights before the model is saved (``Backbone.merge_lora``), so every checkpoint is a
plain model of the parent's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from mlipprobe.backbones.base import PARAMETER_GROUPS, Backbone, HeadSpec, check_lora_settings


class StrategyError(ValueError):
    """A strategy does not fit the targets or the backbone."""


@dataclass(frozen=True)
class Strategy:
    """Which parameter groups train, plus per-group learning-rate multipliers.

    Parameters
    ----------
    name : str
    trainable : sequence of {"backbone", "heads", "new_heads", "lora"}
    new_heads : bool
        Add a freshly initialised head for each non-energy target.
    reinitialize : bool
        Re-initialise every weight first (``scratch``).
    lr_multipliers : mapping
        ``{group: factor}``; a group's learning rate is ``lr * factor`` (default 1).
    lora_rank : int, optional
        Add low-rank adapters of this rank (``Backbone.add_lora``) before freezing; needs
        ``"lora"`` in ``trainable``. None: no adapters.
    lora_alpha : float
        Adapter scale: the update is ``(lora_alpha / lora_rank) B A``.
    head_init : {"fresh", "energy"}
        New heads start from random weights, or as copies of the energy head (metatrain's
        ``inherit_heads``; scalar targets only).
    """

    name: str
    trainable: Sequence[str]
    new_heads: bool = False
    reinitialize: bool = False
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    lora_rank: int | None = None
    lora_alpha: float = 8.0
    head_init: str = "fresh"

    def __post_init__(self) -> None:
        unknown = set(self.trainable) | set(self.lr_multipliers)
        unknown -= set(PARAMETER_GROUPS)
        if unknown:
            raise StrategyError(
                f"Strategy '{self.name}': unknown parameter group(s) {sorted(unknown)}; "
                f"groups are {list(PARAMETER_GROUPS)}"
            )
        if self.lora_rank is not None:
            try:
                check_lora_settings(self.lora_rank, self.lora_alpha)
            except ValueError as error:
                raise StrategyError(f"Strategy '{self.name}': {error}") from None
        if ("lora" in self.trainable) != (self.lora_rank is not None):
            raise StrategyError(
                f"Strategy '{self.name}': the 'lora' group trains only adapters added with "
                f"lora_rank (got trainable={list(self.trainable)}, lora_rank={self.lora_rank}); "
                "set both or neither"
            )

    def prepare(self, backbone: Backbone, heads: Sequence[HeadSpec], seed: int | None = None) -> None:
        """Add heads, re-initialise, add LoRA adapters and freeze ``backbone`` in place."""
        if heads and not self.new_heads:
            names = [spec.name for spec in heads]
            raise StrategyError(
                f"Strategy '{self.name}' trains the existing energy head only, but the data "
                f"asks for new target(s) {names}: use strategy=transfer_full, transfer_head or "
                "scratch, or drop data.keys.targets"
            )
        for spec in heads:
            backbone.add_head(spec, init=self.head_init)
        if self.reinitialize:
            backbone.reset_parameters(seed)
        if self.lora_rank is not None:
            backbone.add_lora(self.lora_rank, self.lora_alpha)
        for group, parameters in backbone.parameter_groups().items():
            for _, parameter in parameters:
                parameter.requires_grad_(group in self.trainable)
        if not any(p.requires_grad for p in backbone.parameters()):
            raise StrategyError(f"Strategy '{self.name}' leaves no parameter to train")

    def optimizer_groups(self, backbone: Backbone, lr: float) -> list[dict]:
        """Parameter groups for a torch optimizer: trainable parameters only."""
        groups = []
        for group, parameters in backbone.parameter_groups().items():
            trainable = [p for _, p in parameters if p.requires_grad]
            if trainable:
                factor = float(self.lr_multipliers.get(group, 1.0))
                groups.append({"params": trainable, "lr": lr * factor, "name": group})
        return groups
