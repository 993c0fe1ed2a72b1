"""SAC auto-prompt generator networks, targets and criterion (`cellsam.models.prompter`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellsam.models.prompter import (
    FeatureHeadPrompter,
    PrompterCriterion,
    UNetPrompter,
    centre_map,
    prompter_targets,
)

WEIGHTS = {"fg_bce": 1.0, "fg_dice": 2.0, "centre": 0.5}


@pytest.mark.parametrize("size", [(64, 64), (50, 37)])
def test_unet_shapes_and_gradients(size):
    torch.manual_seed(0)
    net = UNetPrompter(in_channels=3, base_channels=8, depth=4)
    out = net(torch.rand(2, 3, *size))
    assert set(out) == {"foreground", "centre"}
    for value in out.values():
        assert value.shape == (2, 1, *size)
    (out["foreground"].sum() + out["centre"].sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_unet_batch_independent():
    # Group norm: an image's output does not depend on the other images of its batch.
    torch.manual_seed(0)
    net = UNetPrompter(1, 8, 3).eval()
    images = torch.rand(3, 1, 32, 32)
    both = net(images)["foreground"]
    one = net(images[1:2])["foreground"]
    torch.testing.assert_close(both[1:2], one, atol=1e-5, rtol=1e-5)


def test_feature_head_shapes():
    torch.manual_seed(0)
    head = FeatureHeadPrompter(in_channels=32, hidden=16, out_size=48)
    out = head(torch.randn(2, 32, 8, 8))
    assert out["foreground"].shape == (2, 1, 48, 48)
    assert out["centre"].shape == (2, 1, 48, 48)
    assert FeatureHeadPrompter(32, 16, 32)(torch.randn(1, 32, 8, 8))["centre"].shape == (
        1, 1, 32, 32)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        UNetPrompter(1, 8, 2)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="depth"):
        UNetPrompter(1, 8, 0)
    with pytest.raises(ValueError, match=r"\[B, 32, h, w\]"):
        FeatureHeadPrompter(32, 16, 32)(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match="int tensor"):
        prompter_targets(torch.zeros(1, 4, 4))


def test_targets_by_hand():
    # Cell 1: a 3x3 square (distance 2 at its centre, 1 on its rim -> 1 and 0.5);
    # cell 2: a 3x2 block touching cell 1 on the right (every pixel at distance 1 -> 1).
    labels = torch.zeros(1, 7, 7, dtype=torch.int64)
    labels[0, 1:4, 1:4] = 1
    labels[0, 1:4, 4:6] = 2
    targets = prompter_targets(labels)
    fg = torch.zeros(7, 7)
    fg[1:4, 1:6] = 1
    assert torch.equal(targets["foreground"][0, 0], fg)
    centre = torch.zeros(7, 7)
    centre[1:4, 1:4] = 0.5
    centre[2, 2] = 1.0
    centre[1:4, 4:6] = 1.0
    assert torch.equal(targets["centre"][0, 0], centre)
    assert targets["foreground"].dtype == torch.float32
    assert targets["centre"].shape == (1, 1, 7, 7)


def test_centre_map_border_and_full_image():
    # A cell filling the top three rows: the image border is not a boundary, so the
    # distances are 3, 2, 1 from the top row down -> 1, 2/3, 1/3.
    labels = np.zeros((5, 5), np.int32)
    labels[:3] = 4
    expected = np.zeros((5, 5), np.float32)
    expected[0], expected[1], expected[2] = 1.0, 2 / 3, 1 / 3
    np.testing.assert_allclose(centre_map(labels), expected, rtol=1e-6)
    np.testing.assert_array_equal(centre_map(np.ones((3, 4), np.int32)), np.ones((3, 4)))
    np.testing.assert_array_equal(centre_map(np.zeros((3, 4), np.int32)), np.zeros((3, 4)))


def test_criterion_by_hand():
    # Zero logits: BCE = ln 2 everywhere; p = 0.5 on 4 pixels, one foreground pixel:
    # Dice = 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5.
    outputs = {"foreground": torch.zeros(1, 1, 2, 2), "centre": torch.zeros(1, 1, 2, 2)}
    fg = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    targets = {"foreground": fg, "centre": fg * 0.7}
    out = PrompterCriterion(WEIGHTS)(outputs, targets)
    assert out["fg_bce"].item() == pytest.approx(math.log(2))
    assert out["fg_dice"].item() == pytest.approx(2.0 * 0.5)
    assert out["centre"].item() == pytest.approx(0.5 * math.log(2))
    assert out["loss"].item() == pytest.approx(1.5 * math.log(2) + 1.0)


def test_criterion_equals_torch_bce():
    torch.manual_seed(0)
    logits = {"foreground": torch.randn(3, 1, 8, 8), "centre": torch.randn(3, 1, 8, 8)}
    targets = {"foreground": (torch.rand(3, 1, 8, 8) > 0.5).float(),
               "centre": torch.rand(3, 1, 8, 8)}
    out = PrompterCriterion({"fg_bce": 1.0, "fg_dice": 1.0, "centre": 1.0})(logits, targets)
    bce = F.binary_cross_entropy(logits["foreground"].sigmoid(), targets["foreground"])
    centre = F.binary_cross_entropy(logits["centre"].sigmoid(), targets["centre"])
    torch.testing.assert_close(out["fg_bce"], bce)
    torch.testing.assert_close(out["centre"], centre)
    # Dice by brute force, image by image.
    dices = []
    for b in range(3):
        p, t = logits["foreground"][b].sigmoid(), targets["foreground"][b]
        dices.append(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    torch.testing.assert_close(out["fg_dice"], torch.stack(dices).mean())
    torch.testing.assert_close(out["loss"], bce + centre + torch.stack(dices).mean())


def test_criterion_no_cells_finite_and_differentiable():
    torch.manual_seed(0)
    net = UNetPrompter(1, 4, 2)
    outputs = net(torch.rand(2, 1, 16, 16))
    targets = prompter_targets(torch.zeros(2, 16, 16, dtype=torch.int64))
    assert targets["centre"].sum() == 0
    out = PrompterCriterion(WEIGHTS)(outputs, targets)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # Empty image predicted empty: Dice 0 (the +1 smoothing), BCE near 0.
    far = {"foreground": torch.full((1, 1, 4, 4), -30.0), "centre": torch.full((1, 1, 4, 4),
                                                                                -30.0)}
    zero = prompter_targets(torch.zeros(1, 4, 4, dtype=torch.int64))
    out = PrompterCriterion(WEIGHTS)(far, zero)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_criterion_errors():
    with pytest.raises(ValueError, match="exactly"):
        PrompterCriterion({"fg_bce": 1.0})
    with pytest.raises(ValueError, match="exactly"):
        PrompterCriterion({**WEIGHTS, "boundary": 1.0})
    outputs = {"foreground": torch.zeros(1, 1, 4, 4), "centre": torch.zeros(1, 1, 4, 4)}
    targets = prompter_targets(torch.zeros(1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="differ"):
        PrompterCriterion(WEIGHTS)(outputs, targets)
