"""Recovery with the dense model as teacher: the loss mixes the task loss with a distillation term.

For student logits s and teacher (dense model) logits t of a batch of B examples, temperature τ and
weight w ∈ [0, 1]:

    classification:  KD = τ² · (1/B) Σ_b Σ_c q_bc (log q_bc − log p_bc),   q = softmax(t/τ), p = softmax(s/τ)
    regression:      KD = (1/B) Σ_b (s_b − t_b)²
    loss = (1 − w) · task loss + w · KD

(Hinton et al. 2015: τ² keeps the gradient's scale independent of τ.) w = 0 is plain task-loss
recovery, w = 1 learns from the teacher alone. `kd_loss` is the pure function; `fisvd.train`'s
Trainer calls it with the teacher's logits, computed without gradients in eval mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool) -> torch.Tensor:
    """KD term above (a scalar): `student`, `teacher` logits [B, C] (regression: [B] or [B, 1])."""
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} != teacher logits {tuple(teacher.shape)}")
    s, t = student.float(), teacher.float().detach()
    if regression:
        return ((s - t) ** 2).mean()
    if temperature <= 0:
        raise ValueError(f"temperature {temperature!r} must be > 0")
    logq = F.log_softmax(t / temperature, dim=-1)
    logp = F.log_softmax(s / temperature, dim=-1)
    return temperature ** 2 * (logq.exp() * (logq - logp)).sum(-1).mean()


def mixed_loss(task_loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, weight: float,
               temperature: float, regression: bool) -> torch.Tensor:
    """(1 − w) · task loss + w · KD (w = 0: the task loss itself, no KD computed)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight {weight!r} must be in [0, 1]")
    if weight == 0.0:
        return task_loss
    kd = kd_loss(student, teacher, temperature, regression)
    return kd if weight == 1.0 else (1.0 - weight) * task_loss + weight * kd
