"""An exponential-moving-average teacher: a frozen copy of modules that trails the student."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.strategies.base import Strategy


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` with gradients off, in eval mode."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for parameters and float buffers
    (BatchNorm statistics follow too); integer buffers are copied."""
    student_params = dict(student.named_parameters())
    for name, parameter in teacher.named_parameters():
        parameter.lerp_(student_params[name].detach(), 1.0 - decay)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        source = student_buffers[name]
        if buffer.is_floating_point():
            buffer.lerp_(source, 1.0 - decay)
        else:
            buffer.copy_(source)


class TeacherStrategy(Strategy):
    """A strategy that keeps an EMA teacher (`self.teacher`): it moves with the student's
    device and always stays in eval mode, whatever mode the student trains in."""

    teacher: nn.Module

    def to(self, device: torch.device) -> TeacherStrategy:
        super().to(device)
        self.teacher.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.teacher.eval()
