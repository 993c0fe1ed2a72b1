"""Label-image edits of the labelling loop: delete, merge, renumber, paint (hand-computed),
and `CellLabels`, which keeps the per-cell records in step with them."""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.labelling import edits

LABELS = np.array([[0, 1, 1, 0, 4],
                   [0, 1, 0, 0, 4],
                   [7, 7, 0, 9, 9],
                   [7, 0, 0, 9, 0]], np.uint16)


def test_delete_one_and_many_cells():
    out = edits.delete_cells(LABELS, 7)
    want = LABELS.copy()
    want[want == 7] = 0
    np.testing.assert_array_equal(out, want)
    assert out.dtype == LABELS.dtype and (LABELS == 7).sum() == 3  # input untouched
    out = edits.delete_cells(LABELS, [1, 9, 123])  # an absent id is ignored
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 4],
                                        [0, 0, 0, 0, 4],
                                        [7, 7, 0, 0, 0],
                                        [7, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="positive"):
        edits.delete_cells(LABELS, [0])


def test_merge_into_smallest_or_given_id():
    out = edits.merge_cells(LABELS, [9, 4])
    np.testing.assert_array_equal(out, [[0, 1, 1, 0, 4],
                                        [0, 1, 0, 0, 4],
                                        [7, 7, 0, 4, 4],
                                        [7, 0, 0, 4, 0]])
    out = edits.merge_cells(LABELS, [1, 7, 9], into=20)
    assert set(np.unique(out)) == {0, 4, 20}
    assert (out == 20).sum() == 3 + 3 + 3
    with pytest.raises(ValueError, match="at least two"):
        edits.merge_cells(LABELS, [4, 4])
    with pytest.raises(ValueError, match="does not fit"):
        edits.merge_cells(LABELS, [1, 4], into=70000)


def test_renumber_keeps_order_and_returns_the_mapping():
    out, mapping = edits.renumber(LABELS)
    assert mapping == {1: 1, 4: 2, 7: 3, 9: 4}
    np.testing.assert_array_equal(out, [[0, 1, 1, 0, 2],
                                        [0, 1, 0, 0, 2],
                                        [3, 3, 0, 4, 4],
                                        [3, 0, 0, 4, 0]])
    assert out.dtype == LABELS.dtype
    empty, m = edits.renumber(np.zeros((2, 2), np.int32))
    assert m == {} and not empty.any()


def test_paint_cell_replace_and_overwrite():
    mask = np.array([[1, 1], [1, 1]], bool)
    # new id 10 at rows 1-2, cols 0-1: takes one pixel of 1 ((1, 1)) and two of 7
    out = edits.paint_cell(LABELS, mask, 1, 0, 10)
    assert (out[1:3, 0:2] == 10).all() and (out == 1).sum() == 2 and (out == 7).sum() == 1
    # background only: the other cells keep their pixels
    out = edits.paint_cell(LABELS, mask, 1, 0, 10, overwrite=False)
    np.testing.assert_array_equal(out[1:3, 0:2], [[10, 1], [7, 7]])
    # re-segmenting cell 4: its old pixels go, the new ones come
    out = edits.paint_cell(LABELS, mask, 2, 2, 4)
    assert (out == 4).sum() == 4 and (out[0:2, 4] == 0).all()
    assert (out[2:4, 2:4] == 4).all() and (out == 9).sum() == 1  # (2, 4) stays 9
    with pytest.raises(ValueError, match="leaves the image"):
        edits.paint_cell(LABELS, mask, 3, 4, 2)


def test_next_id_and_areas():
    assert edits.next_id(LABELS) == 10 and edits.next_id(np.zeros((3, 3), np.int32)) == 1
    assert edits.cell_areas(LABELS) == {1: 3, 4: 2, 7: 3, 9: 3}
    with pytest.raises(ValueError, match="integer label image"):
        edits.next_id(np.zeros((2, 2), np.float32))


def test_cell_labels_keep_their_records_consistent():
    """`CellLabels` (no model): every edit keeps labels, per-cell records, prompt states and
    the selection in step."""
    from cellsam.labelling import CellInfo, CellLabels

    book = CellLabels(LABELS.shape, LABELS)
    assert book.labels.dtype == np.int32 and sorted(book.cells) == [1, 4, 7, 9]
    assert all(c.origin == "labels" for c in book.cells.values())
    book.cells[4] = CellInfo(score=0.9, origin="segment_all")
    book.cells[9] = CellInfo(score=0.6, origin="segment_all")
    book._prompts[9] = "state of 9"
    book.select(9)
    assert book.cell_at(4.2, 2.4) == 9 and book.cell_at(2.0, 3.0) is None
    assert book.cell_at(-1, 0) is None
    # merging 4 into 9: one record, the best score, origin merge, the prompt state dropped
    assert book.merge([9, 4], into=4) == 4 and book.selected == 4
    assert sorted(book.cells) == [1, 4, 7] and book.cells[4].score == 0.9
    assert book.cells[4].origin == "merge" and 9 not in book._prompts
    assert np.count_nonzero(book.labels == 4) == 2 + 3
    book.delete(1)
    assert sorted(book.cells) == [4, 7] and not (book.labels == 1).any()
    assert book.renumber() == {4: 1, 7: 2}
    assert sorted(book.cells) == [1, 2] and book.cells[1].origin == "merge"
    assert book.selected == 1
    # labels painted elsewhere: a new id gets a record, a gone one loses its own
    painted = book.labels.copy()
    painted[painted == 2] = 0
    painted[3, 2] = 5
    book.set_labels(painted)
    assert sorted(book.cells) == [1, 5] and book.cells[5].origin == "labels"
    with pytest.raises(KeyError, match="cell 2"):
        book.select(2)
    with pytest.raises(ValueError, match="integers of shape"):
        book.set_labels(np.zeros((2, 2), np.int32))
    feats = book.features()
    assert feats["index"].tolist() == [1, 5] and feats["area"].tolist() == [5, 1]
    pred = book.to_prediction()
    assert pred.num_cells == 2 and pred.labels.max() == 2
