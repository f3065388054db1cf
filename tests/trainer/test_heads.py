"""Pooling, embedding head, margin losses, LR schedule, LoRA layers and augmentations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from trainer.augment import Augmenter, mask_features, mix_noise, time_stretch
from trainer.heads import ArcFace, AttentiveStatsPooling, EmbeddingHead, SubClusterAdaCos
from trainer.lora import LoRALinear, apply_lora, merge_lora
from trainer.recipe import AugmentSection
from trainer.schedule import warmup_cosine_factor


def test_pooling_gives_mean_and_std_and_ignores_frame_order() -> None:
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(6, 4)
    frames = torch.randn(3, 10, 6)
    out = pool(frames)
    assert out.shape == (3, 12)
    torch.testing.assert_close(out, pool(frames[:, torch.randperm(10)]))
    constant = torch.full((1, 5, 6), 2.0)
    torch.testing.assert_close(pool(constant)[0, :6], torch.full((6,), 2.0))
    assert torch.all(pool(constant)[0, 6:] < 1e-4)


def test_embedding_head_shape() -> None:
    head = EmbeddingHead(dim=6, attention_dim=4, hidden_dim=8, embed_dim=5)
    assert head(torch.randn(4, 7, 6)).shape == (4, 5)


def test_arcface_margin_matches_formula_and_costs_more() -> None:
    torch.manual_seed(0)
    loss = ArcFace(embed_dim=4, classes=3, scale=10.0, margin=0.3)
    embeddings = torch.randn(5, 4)
    targets = torch.tensor([0, 1, 2, 0, 1])
    cos = F.normalize(embeddings, dim=1) @ F.normalize(loss.weight, dim=1).T
    theta = torch.acos(cos.gather(1, targets[:, None]).clamp(-1, 1))
    expected_logits = cos.scatter(1, targets[:, None], torch.cos(theta + 0.3))
    expected = F.cross_entropy(10.0 * expected_logits, targets)
    torch.testing.assert_close(loss(embeddings, targets), expected, rtol=1e-5, atol=1e-5)
    no_margin = ArcFace(4, 3, 10.0, 0.0)
    no_margin.weight.data.copy_(loss.weight.data)
    assert loss(embeddings, targets) > no_margin(embeddings, targets)


def test_arcface_learns_to_separate_classes() -> None:
    torch.manual_seed(0)
    centres = torch.randn(3, 8)
    targets = torch.arange(3).repeat(20)
    data = centres[targets] + 0.3 * torch.randn(60, 8)
    loss = ArcFace(8, 3, scale=16.0, margin=0.2)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.2)
    for _ in range(30):
        optimizer.zero_grad()
        loss(data, targets).backward()
        optimizer.step()
    assert (loss.logits(data).argmax(1) == targets).float().mean() > 0.95


def test_subcluster_adacos_adapts_its_scale_only_in_training() -> None:
    torch.manual_seed(0)
    loss = SubClusterAdaCos(embed_dim=6, classes=3, subclusters=2)
    embeddings, targets = torch.randn(8, 6, requires_grad=True), torch.randint(0, 3, (8,))
    assert loss.logits(embeddings).shape == (8, 3)
    before = float(loss.scale)
    value = loss(embeddings, targets)
    value.backward()
    assert math.isfinite(float(value.detach())) and embeddings.grad is not None
    assert float(loss.scale) != before
    mixed = 0.7 * loss(embeddings, targets) + 0.3 * loss(embeddings, targets.flip(0))
    mixed.backward()  # two calls in one graph (mixup) while the scale adapts in place
    loss.eval()
    after = float(loss.scale)
    loss(embeddings, targets)
    assert float(loss.scale) == after


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine_factor(s, 100, 10, 0.01) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert warmup_cosine_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_lora_starts_as_base_and_merges_exactly() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(4, 6)
    reference = model(x)
    apply_lora(model, ["0"], rank=2, alpha=4.0, dropout=0.0)
    assert isinstance(model[0], LoRALinear)
    torch.testing.assert_close(model(x), reference)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"0.lora_a", "0.lora_b"}
    model[0].lora_b.data.normal_()
    adapted = model(x)
    merge_lora(model)
    assert isinstance(model[0], torch.nn.Linear)
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)


def test_noise_is_mixed_at_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    waves = torch.from_numpy(rng.standard_normal((3, 8000)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((3, 8000)).astype(np.float32))
    snr = torch.tensor([-5.0, 0.0, 15.0])
    added = mix_noise(waves, noise, snr) - waves
    measured = 10 * torch.log10(waves.pow(2).mean(1) / added.pow(2).mean(1))
    torch.testing.assert_close(measured, snr, atol=1e-3, rtol=0)


def test_time_stretch_keeps_length_and_changes_pitch() -> None:
    t = torch.arange(16000) / 16000
    wave = torch.sin(2 * math.pi * 100 * t)
    faster = time_stretch(wave, 1.2)
    assert faster.shape == wave.shape
    spectrum = torch.fft.rfft(faster).abs()
    assert int(spectrum.argmax()) == pytest.approx(120, abs=2)
    torch.testing.assert_close(time_stretch(wave, 1.0), wave, atol=1e-5, rtol=0)


def test_masks_zero_spans_and_augmenter_is_reproducible() -> None:
    frames = torch.ones(2, 20, 10)
    masked = mask_features(frames, np.random.default_rng(1), 2, 0.2, 2, 0.2)
    assert 0 < float((masked == 0).float().mean()) < 0.7
    config = AugmentSection(noise_prob=1.0, stretch_prob=1.0, mixup_prob=1.0, mask_prob=1.0)
    waves = torch.randn(4, 4000)
    one = Augmenter(config).waves(waves, np.random.default_rng(3))
    two = Augmenter(config).waves(waves, np.random.default_rng(3))
    torch.testing.assert_close(one.waves, two.waves)
    assert one.partner is not None and 0.0 <= one.lam <= 1.0
    assert not torch.equal(one.waves, waves)
