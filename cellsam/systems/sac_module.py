"""The SAC stage (`stage=sac`): SAM with LoRA in its image encoder, prompted by points
sampled from the ground truth, and the auto-prompt network (prompter) in the same run.

Which SAM parts train is the config list `trainable` (`lora`, `neck`, `prompt_encoder`,
`mask_decoder`); `train_prompter` adds the prompter and its loss; `train_sam: false` trains
the prompter alone (no SAM forward pass at all when the prompter reads images), so the
prompter can be its own stage. Mask losses as stage 2 (`MaskCriterion`: focal + Dice +
IoU MSE); prompter losses from `PrompterCriterion` (BCE + Dice on the foreground, BCE on
the centre map); the step's loss is their sum.

With `train_with_prompts: false` (SAC's ablation "no prompts during fine-tuning") the
decoder sees no prompt and learns each tile's whole foreground, one mask per tile; inference
still prompts it with the prompter's points.

Point prompts per cell: `n_positive` inside the cell, `n_negative` outside it (a
`neighbour_fraction` of them on other cells), from `cellsam.data.point_sampling`. The
random draws are seeded by (global step, dataset, image index), so one process on a batch
and several ranks on its parts sample the same points, and a resumed run samples what the
uninterrupted one would have.

Checkpoints (`on_save_checkpoint`): when the base SAM comes from a file (or a package),
only what differs from it is stored (LoRA tensors, trained SAM parts, the prompter), with
the base's name and sha256 (`meta["sac"]`); loading refuses another base.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cellsam.data.point_sampling import sample_points
from cellsam.models.mask_criterion import MASK_LOSS_NAMES, MaskCriterion, mask_iou
from cellsam.models.prompter import PROMPTER_LOSS_NAMES, PrompterCriterion, prompter_targets
from cellsam.models.sac import SAC, key_part
from cellsam.systems.common import (
    CheckpointMetaMixin,
    log_step_scalars,
    trainable_adamw,
)
from cellsam.utils.checkpoint import META_KEY, CheckpointError
from cellsam.utils.distributed import all_reduce_mean, gather_records, world_size

SAC_SAM_PARTS = ("lora", "neck", "prompt_encoder", "mask_decoder")


def label_to_input_points(points: Tensor, label_hw: tuple[int, int], size: int) -> Tensor:
    """`(x, y)` label pixels (centres at integers) -> the same places in model-input pixels
    (`S x S`, centres at integers): `(p + 0.5) * S / W - 0.5`."""
    h, w = label_hw
    scale = points.new_tensor([size / w, size / h])
    return (points + 0.5) * scale - 0.5


def point_rng(step: int, dataset: str, index: int) -> np.random.Generator:
    """The generator of one image's prompts at one step (rank-independent, resumable)."""
    return np.random.default_rng([int(step), zlib.crc32(dataset.encode()), int(index)])


class SacModule(CheckpointMetaMixin, L.LightningModule):
    """See the module doc. Validation logs the mean mask IoU of ground-truth point prompts
    (fixed draws per image) per dataset and over all cells (`val/<dataset>/mask_iou`,
    `val/all/mask_iou`; 0 with `train_sam: false`), and the prompter's foreground Dice at
    probability 0.5 (`val/<dataset>/fg_dice`, `val/all/fg_dice`)."""

    stage = "sac"

    def __init__(
        self,
        model: SAC,
        *,
        trainable: Sequence[str],
        train_sam: bool,
        train_prompter: bool,
        train_with_prompts: bool,
        lr: float,
        weight_decay: float,
        max_cells_per_image: int,
        n_positive: int,
        n_negative: int,
        neighbour_fraction: float,
        loss_weights: Mapping[str, float],
        focal_alpha: float,
        focal_gamma: float,
        prompter_loss_weights: Mapping[str, float],
        val_cell_batch: int,
        loss_size: int | None,
        lr_drop: int | None,
        lr_drop_factor: float,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, SAC):
            raise TypeError(f"stage sac needs a SAC model (model=sac_tiny or model=sac_lite), "
                            f"got {type(model).__name__}")
        self.save_hyperparameters(ignore=["model", "run_config"])
        self.model = model
        self.run_config = dict(run_config or {})
        parts = list(trainable) if train_sam else []
        bad = sorted(set(parts) - set(SAC_SAM_PARTS))
        if bad:
            raise ValueError(f"stage sac cannot train {bad}; choose from {list(SAC_SAM_PARTS)}"
                             " (the prompter trains with train_prompter: true)")
        if train_sam and not parts:
            raise ValueError("stage sac: train_sam is true but `trainable` is empty")
        if "lora" in parts and not model.has_lora:
            raise ValueError("stage sac: `lora` is trainable but the model has no LoRA "
                             "adapters (model.lora is null)")
        if not parts and not train_prompter:
            raise ValueError("stage sac: nothing would train (train_sam and train_prompter "
                             "are both false)")
        if n_positive < 1 or n_negative < 0:
            raise ValueError(f"stage sac: n_positive must be >= 1 and n_negative >= 0, got "
                             f"{n_positive}, {n_negative}")
        for p in model.parameters():
            p.requires_grad_(False)
        for part in parts + (["prompter"] if train_prompter else []):
            for p in model.part_parameters(part):
                p.requires_grad_(True)
        if "prompt_encoder" in parts:
            # Point prompts use the positive, negative and not-a-point embeddings and the
            # no-mask embedding; the box-corner and mask-input weights would get no gradient
            # (DDP stops on them).
            pe = model.sam.prompt_encoder
            for p in [*pe.point_embeddings[2].parameters(), *pe.point_embeddings[3].parameters(),
                      *pe.mask_downscaling.parameters()]:
                p.requires_grad_(False)
        self.sam_parts = parts
        # Parts whose weights differ from the base checkpoint: what a checkpoint must store.
        self.saved_parts = sorted({*parts, "lora", "prompter"})
        self.strict_loading = False  # the base SAM weights are not in the checkpoint
        self.criterion = MaskCriterion(loss_weights, focal_alpha, focal_gamma)
        self.prompter_criterion = PrompterCriterion(prompter_loss_weights)
        self._val_records: list[dict[str, Any]] = []

    # -- shared ---------------------------------------------------------------------------------
    def trunk_features(self, images: Tensor) -> Tensor:
        """`[B, 3, S, S]` -> pre-neck features `[B, C, h, w]`; no graph unless LoRA trains."""
        grad = "lora" in self.sam_parts and self.training and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            return self.model.trunk(images)

    def prompter_losses(self, maps: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Prompter terms against `labels` `[B, H, W]` (logits resized to the labels)."""
        hw = tuple(labels.shape[-2:])
        if tuple(maps["foreground"].shape[-2:]) != hw:
            maps = {k: F.interpolate(v.float(), size=hw, mode="bilinear", align_corners=False)
                    for k, v in maps.items()}
        return self.prompter_criterion(maps, prompter_targets(labels))

    def cell_prompts(self, labels: np.ndarray, ids: np.ndarray, rng: np.random.Generator,
                     label_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Sampled prompts of cells `ids` as model-input points `[N, K, 2]` and labels `[N, K]`."""
        hp = self.hparams
        xy, lab = sample_points(labels, ids, hp.n_positive, hp.n_negative,
                                hp.neighbour_fraction, rng)
        xy = torch.as_tensor(np.asarray(xy), dtype=torch.float32, device=self.device)
        pts = label_to_input_points(xy, label_hw, self.model.image_size)
        return pts, torch.as_tensor(np.asarray(lab), dtype=torch.int64, device=self.device)

    def _decode_to_size(self, embedding: Tensor, points: Tensor | None, labels: Tensor | None,
                        size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Mask logits upsampled to `size` `[N, H, W]` and predicted IoU `[N]` (as stage 2:
        the loss compares upsampled logits with the masks as stored); `points` None: the
        unprompted decoding (N = 1)."""
        if points is None:
            low, iou = self.model.decode_unprompted(embedding)
        else:
            low, iou = self.model.decode_points(embedding, points, labels)
        logits = F.interpolate(low[:, None].float(), size=size, mode="bilinear",
                               align_corners=False)[:, 0]
        return logits, iou.float()

    def image_masks(self, labels: Tensor, labels_np: np.ndarray, ids: np.ndarray,
                    rng: np.random.Generator) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """One image's prompts and target masks `[N, H, W]`: each of the cells `ids` with its
        sampled points, or (training without prompts) no points and the whole foreground."""
        if not self.hparams.train_with_prompts:
            return None, None, (labels > 0).float()[None]
        pts, lab = self.cell_prompts(labels_np, ids, rng, tuple(labels.shape[-2:]))
        gt = labels[None] == torch.as_tensor(ids, device=self.device)[:, None, None]
        return pts, lab, gt.float()

    # -- training -------------------------------------------------------------------------------
    def mask_terms(self, batch: dict[str, Any], features: Tensor
                   ) -> tuple[dict[str, Tensor], Tensor | None, Tensor]:
        """SAM's mask terms over the batch's sampled cells, the weighted total (None when no
        rank-local cell), and the mask count averaged over ranks (one all-reduce)."""
        hp = self.hparams
        emb = self.model.embed(features)
        labels = batch["labels"].to(self.device)
        labels_np = batch["labels"].detach().cpu().numpy()
        label_hw = tuple(labels.shape[-2:])
        loss_hw = (hp.loss_size, hp.loss_size) if hp.loss_size else label_hw
        logits, iou_pred, targets = [], [], []
        for i, target in enumerate(batch["targets"]):
            ids = target["ids"].cpu().numpy()
            if ids.size == 0 and hp.train_with_prompts:
                continue
            rng = point_rng(self.global_step, batch["dataset"][i], int(batch["index"][i]))
            if hp.train_with_prompts and ids.size > hp.max_cells_per_image:
                ids = np.sort(rng.choice(ids, hp.max_cells_per_image, replace=False))
            pts, lab, gt = self.image_masks(labels[i], labels_np[i], ids, rng)
            if loss_hw != label_hw:  # fraction of each loss pixel covered by the cell
                gt = F.interpolate(gt[None], size=loss_hw, mode="area")[0]
            image_logits, image_iou = self._decode_to_size(emb[i:i + 1], pts, lab, loss_hw)
            logits.append(image_logits)
            iou_pred.append(image_iou)
            targets.append(gt)
        # As stage 2: normalise by the mask count averaged over ranks, so that DDP's gradient
        # average weighs every mask as one process on the global batch does.
        n_local = torch.tensor(float(sum(len(t) for t in targets)), device=self.device)
        n_mean = all_reduce_mean(n_local)
        if not targets:
            zero = torch.zeros((), device=self.device)
            return dict.fromkeys(MASK_LOSS_NAMES, zero), None, n_mean
        losses = self.criterion(torch.cat(logits), torch.cat(iou_pred), torch.cat(targets),
                                n_mean.clamp_min(1.0))
        return losses, self.criterion.weighted_total(losses), n_mean

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        images = batch["images"].to(self.device)
        features = None
        total = torch.zeros((), device=self.device)
        scalars: dict[str, Tensor] = {}
        if hp.train_sam or self.model.prompter_input == "features":
            features = self.trunk_features(images)
        if hp.train_sam:
            losses, mask_total, n_mean = self.mask_terms(batch, features)
            if mask_total is None:
                # No cell on this rank: a zero that touches every trainable SAM parameter, so
                # DDP's gradient all-reduce stays in step across ranks.
                mask_total = sum(p.sum() * 0.0 for part in self.sam_parts
                                 for p in self.model.part_parameters(part) if p.requires_grad)
            total = total + mask_total
            scalars.update({f"train/{k}": v for k, v in losses.items()})
            scalars["train/mask_loss"] = mask_total
            scalars["train/masks_per_step"] = n_mean * world_size()
        if hp.train_prompter:
            maps = self.model.prompt_maps(images, features)
            prompter = self.prompter_losses(maps, batch["labels"].to(self.device))
            total = total + prompter["loss"]
            scalars.update({f"train/{k}": prompter[k] for k in PROMPTER_LOSS_NAMES})
            scalars["train/prompter_loss"] = prompter["loss"]
        log_step_scalars(self, {"train/loss": total, **scalars}, len(batch["targets"]),
                         prog_bar=("train/loss",))
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        return trainable_adamw(self)

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def cell_ious(self, embedding: Tensor, labels: np.ndarray, ids: np.ndarray,
                  rng: np.random.Generator) -> Tensor:
        """IoU `[N]` of each cell's mask decoded from its sampled prompts with its true mask."""
        label_hw = labels.shape
        out = []
        step = self.hparams.val_cell_batch
        for j in range(0, ids.size, step):
            chunk = ids[j:j + step]
            pts, lab = self.cell_prompts(labels, chunk, rng, label_hw)
            logits, _ = self._decode_to_size(embedding, pts, lab, label_hw)
            gt = torch.from_numpy(labels[None] == chunk[:, None, None]).to(self.device)
            out.append(mask_iou(logits > 0, gt))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
                        ) -> None:
        hp = self.hparams
        images = batch["images"].to(self.device)
        labels = batch["labels"].to(self.device)
        labels_np = batch["labels"].cpu().numpy()
        features = emb = None
        if hp.train_sam or self.model.prompter_input == "features":
            features = self.model.trunk(images)
        if hp.train_sam:
            emb = self.model.embed(features)
        maps = self.model.prompt_maps(images, features)
        fg = maps["foreground"].float()
        if tuple(fg.shape[-2:]) != tuple(labels.shape[-2:]):
            fg = F.interpolate(fg, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        fg_pred, fg_true = (fg[:, 0] > 0), labels > 0
        for i, target in enumerate(batch["targets"]):
            ids = target["ids"].cpu().numpy()
            ious = torch.zeros(0)
            if emb is not None and ids.size:
                rng = point_rng(0, batch["dataset"][i], int(batch["index"][i]))
                ious = self.cell_ious(emb[i:i + 1], labels_np[i], ids, rng)
            self._val_records.append({
                "dataset": batch["dataset"][i], "index": int(batch["index"][i]),
                "iou_sum": float(ious.sum()), "cells": int(ious.numel()),
                "fg_inter": int((fg_pred[i] & fg_true[i]).sum()),
                "fg_total": int(fg_pred[i].sum() + fg_true[i].sum()),
            })

    def on_validation_epoch_end(self) -> None:
        records = gather_records(self._val_records)
        self._val_records = []
        totals: dict[str, list[float]] = {"all": [0.0, 0.0, 0.0, 0.0]}
        for r in records:
            for name in (r["dataset"], "all"):
                acc = totals.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                acc[0] += r["iou_sum"]
                acc[1] += r["cells"]
                acc[2] += r["fg_inter"]
                acc[3] += r["fg_total"]
        # Every rank holds the same gathered records: no further sync.
        for name, (iou_sum, cells, inter, tot) in totals.items():
            self.log(f"val/{name}/mask_iou", iou_sum / cells if cells else 0.0,
                     prog_bar=name == "all", sync_dist=False)
            self.log(f"val/{name}/fg_dice", 2 * inter / tot if tot else 1.0, sync_dist=False)

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        base = self.model.base
        if base is not None:
            keep = set(self.saved_parts)
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items()
                if not k.startswith("model.") or key_part(k[len("model."):]) in keep}
        checkpoint[META_KEY]["sac"] = {
            "base": base, "saved_parts": self.saved_parts if base is not None else "all"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume on another base SAM, or from a checkpoint lacking weights."""
        sac = checkpoint.get(META_KEY, {}).get("sac", {})
        want, have = sac.get("base"), self.model.base
        if (want or {}).get("sha256") != (have or {}).get("sha256"):
            raise CheckpointError(
                f"SAC checkpoint was trained on base {want} but this run's model.sam is {have}:"
                " refusing to resume on another base")
        saved = sac.get("saved_parts", "all")
        needed = {k for k in self.state_dict() if k.startswith("model.")
                  and (saved == "all" or key_part(k[len("model."):]) in saved)}
        missing = sorted(needed - set(checkpoint["state_dict"]))
        if missing:
            raise CheckpointError(f"SAC checkpoint lacks {len(missing)} weights it should hold "
                                  f"(e.g. {missing[:3]})")
