"""Label/mask/RLE helpers against pycocotools on full masks."""

from __future__ import annotations

import numpy as np

from cellsam.data.format import label_to_coco_annotations
from cellsam.ops.masks import (
    decode_rle,
    encode_rle,
    label_boxes_xyxy,
    label_to_masks,
    masks_to_label,
    relabel_sequential,
)


def _label() -> np.ndarray:
    rng = np.random.default_rng(0)
    label = np.zeros((40, 50), np.int32)
    label[0:5, 0:3] = 4  # touches the top-left corner: RLE starts with a foreground run
    label[10:20, 10:15] = 7
    label[30:40, 45:50] = 9  # touches the bottom-right corner
    label[22:25, 20:30] = 2
    label[rng.random(label.shape) < 0.02] = 0  # holes
    return label


def test_rle_of_each_object_equals_full_mask_encoding():
    label = _label()
    anns = label_to_coco_annotations(label, image_id=3, start_id=10)
    assert [a["id"] for a in anns] == [10, 11, 12, 13]
    for ann, obj in zip(anns, [2, 4, 7, 9]):
        full = label == obj
        assert ann["segmentation"] == encode_rle(full)
        assert np.array_equal(decode_rle(ann["segmentation"]), full)
        assert ann["area"] == int(full.sum()) and ann["image_id"] == 3
    assert anns[1]["bbox"] == [0.0, 0.0, 3.0, 5.0]
    assert anns[3]["bbox"] == [45.0, 30.0, 5.0, 10.0]


def test_boxes_masks_and_relabel():
    label = _label()
    boxes, ids = label_boxes_xyxy(label)
    assert ids.tolist() == [2, 4, 7, 9]
    assert boxes[2].tolist() == [10, 10, 15, 20]
    masks, mids = label_to_masks(label)
    assert masks.shape == (4, 40, 50) and mids.tolist() == [2, 4, 7, 9]
    assert np.array_equal(masks_to_label(masks) > 0, label > 0)
    rel = relabel_sequential(label)
    assert sorted(np.unique(rel).tolist()) == [0, 1, 2, 3, 4]
    assert np.array_equal(rel == 3, label == 7)
    assert label_boxes_xyxy(np.zeros((4, 4), np.int32))[0].shape == (0, 4)
