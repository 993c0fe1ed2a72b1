"""SAC's auto-prompt generator learns on real DSB nuclei: a small `UNetPrompter` trained
100 steps on fluorescence tiles of ../shared/data/dsb2018_fixed (skipped without it);
its foreground BCE on held-out images falls and the prompts that `discriminate` makes from
its maps land inside true nuclei."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellsam.inference.point_prompts import PointPromptSettings, discriminate
from cellsam.models.prompter import (
    PrompterCriterion,
    UNetPrompter,
    centre_map,
    prompter_targets,
)
from cellsam.preprocess.normalize import rescale_channel

pytestmark = [pytest.mark.shared_data]

N_TRAIN, N_HELD_OUT = 12, 4
STEPS, BATCH, TILE = 100, 4, 96
WEIGHTS = {"fg_bce": 1.0, "fg_dice": 1.0, "centre": 1.0}


def load_images(root) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `N_TRAIN + N_HELD_OUT` 256x256 fluorescence images (sorted ids) as grey
    `[H, W]` float32 in [0, 1] (percentile-rescaled) and int64 labels."""
    import imageio.v3 as iio
    import tifffile

    meta = json.loads((root / "meta.json").read_text())
    ids = sorted(m["id"] for m in meta
                 if m["modality"] == "fluorescence" and (m["h"], m["w"]) == (256, 256))
    out = []
    for name in ids[:N_TRAIN + N_HELD_OUT]:
        image = iio.imread(root / "images" / f"{name}.png").astype(np.float32)
        grey = image[..., :3].mean(-1) if image.ndim == 3 else image
        grey = rescale_channel(grey)
        label = tifffile.imread(root / "labels" / f"{name}.tif").astype(np.int64)
        out.append((grey.astype(np.float32), label))
    return out


def held_out_bce(net, images, labels, criterion) -> float:
    with torch.no_grad():
        out = net(images)
    return criterion.loss_fg_bce(out["foreground"], prompter_targets(labels)["foreground"]).item()


@pytest.fixture(scope="module")
def trained(shared_data):
    data = load_images(shared_data / "dsb2018_fixed")
    train, held = data[:N_TRAIN], data[N_TRAIN:]
    held_images = torch.from_numpy(np.stack([g for g, _ in held]))[:, None]
    held_labels = torch.from_numpy(np.stack([lab for _, lab in held]))
    torch.manual_seed(0)
    net = UNetPrompter(in_channels=1, base_channels=8, depth=3)
    criterion = PrompterCriterion(WEIGHTS)
    bce_before = held_out_bce(net, held_images, held_labels, criterion)
    optim = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        tiles, tile_labels = [], []
        for i in rng.integers(0, N_TRAIN, BATCH):
            grey, label = train[i]
            y, x = rng.integers(0, 256 - TILE + 1, 2)
            k = int(rng.integers(0, 4))  # random quarter turn
            tiles.append(np.rot90(grey[y:y + TILE, x:x + TILE], k).copy())
            tile_labels.append(np.rot90(label[y:y + TILE, x:x + TILE], k).copy())
        images = torch.from_numpy(np.stack(tiles))[:, None]
        labels = torch.from_numpy(np.stack(tile_labels))
        loss = criterion(net(images), prompter_targets(labels))["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    net.eval()
    bce_after = held_out_bce(net, held_images, held_labels, criterion)
    with torch.no_grad():
        maps = {k: v.sigmoid()[:, 0].numpy() for k, v in net(held_images).items()}
    return {"bce_before": bce_before, "bce_after": bce_after, "losses": losses,
            "maps": maps, "labels": held_labels.numpy()}


def prompt_hits(trained, split: str) -> tuple[float, float, int]:
    """(fraction of prompts whose first positive lies in a true nucleus, fraction of true
    nuclei hit by exactly one prompt, number of prompts) over the held-out images."""
    settings = PointPromptSettings(threshold=0.5, min_area=15, split=split,
                                   selection="centroid", points_per_cell=1,
                                   negatives="both", max_cells=None)
    inside = total = once = cells = 0
    for fg, centre, label in zip(trained["maps"]["foreground"], trained["maps"]["centre"],
                                 trained["labels"]):
        prompts = discriminate(fg, centre, settings)
        hit = [int(label[int(p.points[0, 1]), int(p.points[0, 0])]) for p in prompts]
        inside += sum(h > 0 for h in hit)
        total += len(prompts)
        ids, counts = np.unique([h for h in hit if h > 0], return_counts=True)
        once += int((counts == 1).sum())
        cells += len(np.unique(label)) - 1
    return inside / max(total, 1), once / cells, total


@pytest.mark.slow
def test_prompter_learns_foreground(trained):
    before, after = trained["bce_before"], trained["bce_after"]
    print(f"held-out foreground BCE {before:.4f} -> {after:.4f} (x{before / after:.1f}); "
          f"train loss first 10 {np.mean(trained['losses'][:10]):.4f}, last 10 "
          f"{np.mean(trained['losses'][-10:]):.4f}")
    # Measured: 0.785 -> 0.133 (x5.9); train loss 2.10 -> 1.02 (first / last 10 steps).
    assert after < before / 4
    assert np.mean(trained["losses"][-10:]) < 0.6 * np.mean(trained["losses"][:10])


@pytest.mark.slow
@pytest.mark.parametrize("split", ["centre", "distance", "none"])
def test_prompts_land_inside_true_nuclei(trained, split):
    precision, recall, total = prompt_hits(trained, split)
    print(f"split={split}: {total} prompts, {precision:.3f} inside a true nucleus, "
          f"{recall:.3f} of nuclei hit exactly once")
    # Measured on the 4 held-out images (109 nuclei): inside 0.948 / 0.957 / 0.944 and hit
    # exactly once 0.789 / 0.817 / 0.780 for centre / distance / none.
    assert precision >= 0.9
    assert recall >= 0.7


def test_true_maps_give_one_prompt_per_nucleus(shared_data):
    """Discrimination on perfect maps of the DSB image with the most nuclei (603 x 1272,
    375 nuclei, many touching): the foreground blurred by a 1.5-pixel Gaussian and the true
    centre map. Measured (prompts, inside a nucleus, distinct nuclei hit): centre 383,
    1.000, 374; distance 372, 0.995, 365; none 342, 0.985, 337."""
    import tifffile
    from scipy import ndimage

    root = shared_data / "dsb2018_fixed"
    meta = json.loads((root / "meta.json").read_text())
    name = max(meta, key=lambda m: m["n_objects"])["id"]
    label = tifffile.imread(root / "labels" / f"{name}.tif").astype(np.int64)
    n_cells = len(np.unique(label)) - 1
    fg = ndimage.gaussian_filter((label > 0).astype(np.float32), 1.5)
    centre = centre_map(label)
    distinct = {}
    for split in ("centre", "distance", "none"):
        settings = PointPromptSettings(threshold=0.5, min_area=15, split=split,
                                       selection="centroid", points_per_cell=3,
                                       negatives="both", max_cells=None)
        prompts = discriminate(fg, centre, settings)
        hit = np.array([label[int(p.points[0, 1]), int(p.points[0, 0])] for p in prompts])
        assert (hit > 0).mean() >= 0.98, split
        distinct[split] = len(set(hit[hit > 0].tolist()))
    assert n_cells == 375
    assert distinct["centre"] >= 0.98 * n_cells
    assert distinct["distance"] >= 0.95 * n_cells
    assert distinct["none"] < distinct["distance"] < distinct["centre"]
