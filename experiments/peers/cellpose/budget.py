"""How many cellpose epochs, of how many images, fit a wall-time budget (see run.py)."""

from __future__ import annotations

import math


def eval_epochs(n_epochs: int) -> int:
    """How many epochs train_seg runs its test-data loss on (iepoch == 5 or iepoch % 10 == 0)."""
    return sum(1 for e in range(n_epochs) if e == 5 or e % 10 == 0)


def plan(seconds: float, nimg: int, nval: int, bs: int, t_train: float, t_eval: float,
         min_epochs: int, max_epochs: int) -> dict:
    """Epochs, images per epoch and validation images per evaluation that fit `seconds`."""
    def cost(n_ep: int, per_ep: int, val: int) -> float:
        return (n_ep * math.ceil(per_ep / bs) * t_train
                + eval_epochs(n_ep) * math.ceil(val / bs) * t_eval)

    def val_for(per_ep: int) -> int:  # val batches cost about a third of a train batch
        return min(nval, max(bs, per_ep // 4)) if nval else 0

    n_full = 0
    while n_full < max_epochs and cost(n_full + 1, nimg, val_for(nimg)) <= seconds:
        n_full += 1
    if n_full >= min_epochs:
        return {"n_epochs": n_full, "nimg_per_epoch": nimg, "nimg_val_per_epoch": val_for(nimg),
                "full_epochs": True, "planned_s": cost(n_full, nimg, val_for(nimg))}
    n_ep = min_epochs
    while True:  # whole batches only: a partial last batch costs a full one
        per_ep = max(bs, nimg - nimg % bs)
        while per_ep > bs and cost(n_ep, per_ep, val_for(per_ep)) > seconds:
            per_ep -= bs
        if cost(n_ep, per_ep, val_for(per_ep)) <= seconds or n_ep <= 11:
            break
        n_ep -= 1
    # the time that whole batches per epoch leave over goes to more epochs of that size
    while n_ep < max_epochs and cost(n_ep + 1, per_ep, val_for(per_ep)) <= seconds:
        n_ep += 1
    return {"n_epochs": n_ep, "nimg_per_epoch": per_ep, "nimg_val_per_epoch": val_for(per_ep),
            "full_epochs": False, "planned_s": cost(n_ep, per_ep, val_for(per_ep))}
