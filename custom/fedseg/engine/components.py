"""Loss and optimizer named by a task spec."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from monai.optimizers import Novograd

from fedseg.tasks.spec import TaskSpec


def build_loss(spec: TaskSpec) -> torch.nn.Module:
    if spec.out_channels == 1:  # one sigmoid channel against a binary mask (Deepgrow)
        if spec.loss == "dice":
            return DiceLoss(sigmoid=True)
        return DiceCELoss(sigmoid=True)
    if spec.loss == "dicece":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if spec.loss == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss {spec.loss!r}")


def build_optimizer(spec: TaskSpec, params) -> torch.optim.Optimizer:
    opt = spec.optimizer
    if opt.name == "novograd":
        return Novograd(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    raise ValueError(f"unknown optimizer {opt.name!r}")
