"""attention_module_names() is what peft needs: LoRA lands on exactly those layers and trains."""

from __future__ import annotations

import peft
import torch

from trainer.backbones import build_backbone


def test_lora_wraps_the_named_attention_projections_and_gets_gradients() -> None:
    for name in ("beats", "eat", "hubert"):
        backbone = build_backbone(name, "tiny")
        targets = backbone.attention_module_names()
        model = peft.get_peft_model(
            backbone, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets)
        )
        wrapped = {
            module_name.removeprefix("base_model.model.")
            for module_name, module in model.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer)
        }
        assert wrapped == set(targets), name
        model(0.1 * torch.randn(2, 16000)).pow(2).mean().backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None for p in trainable), name
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad), name
