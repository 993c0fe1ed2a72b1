"""Omnipose: bacterial phase-contrast and fluorescence images (Cutler et al., Nature Methods 2022).

Source: https://osf.io/xmury/ (Omnipose datasets: `bact_phase`, `bact_fluor`).
Licence: as stated on the OSF project (check before redistributing converted data).

Expected layout (a folder, or the zip OSF serves)::

    <src>/bact_phase/train_sorted/<species>/<name>.tif   with <name>_masks.tif beside it
    <src>/bact_phase/test_sorted/<species>/...
    <src>/bact_fluor/train_sorted/<species>/...           (same for fluorescence)

`*_flows.tif` and other non-mask extras are ignored. Both modalities are converted (one
channel each, to the whole-cell slot); `--modality` keeps one. The fluorescence images are
the same fields as phase images, so the group id is `<species>/<name>` without the
modality: a field and its other-modality twin always share a split. The publisher's
train/test split is kept; val is 10% of the train groups (seeded).

    python -m data_prep.omnipose --src omnipose_datasets --out data     # then data=omnipose
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    SourceSample,
    layout_error,
    match_pairs,
    read_image,
    read_label,
)

INFO = DatasetInfo(
    name="omnipose",
    source="https://osf.io/xmury/ (bact_phase, bact_fluor)",
    licence="see the OSF project xmury",
    layout="bact_phase/ and/or bact_fluor/ with {train,test}_sorted/<species>/<name>.tif "
    "and <name>_masks.tif",
)
MODALITIES = ("bact_phase", "bact_fluor")
SPLIT_DIRS = {"train_sorted": "train", "test_sorted": "test"}


def find_modalities(root: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """`(modality, folder)` of the modality folders under `root` (any depth)."""
    found = {}
    for m in wanted:
        hits = sorted(p for p in ([root / m] if (root / m).is_dir() else root.rglob(m))
                      if p.is_dir() and any((p / s).is_dir() for s in SPLIT_DIRS))
        if hits:
            found[m] = hits[0]
    if not found:
        raise layout_error(root, f"{' and/or '.join(wanted)} folders holding "
                                 "train_sorted/ and test_sorted/")
    return [(m, found[m]) for m in wanted if m in found]


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    wanted = list(MODALITIES) if args.modality == "both" else [args.modality]
    for modality, folder in find_modalities(root, wanted):
        for split_dir, split in SPLIT_DIRS.items():
            base = folder / split_dir
            if not base.is_dir():
                continue
            for species in sorted(p for p in base.iterdir() if p.is_dir()):
                pairs = match_pairs(species, species, label_suffix="_masks",
                                    exclude=("_masks", "_flows", "_dist", "_bd", "_heat"))
                for key, img_path, lab_path in pairs:
                    group = f"{species.name}/{key}"
                    yield SourceSample(
                        name=f"{modality}/{split}/{group}", group=group, split=split,
                        image=read_image(img_path),
                        label=read_label(lab_path) if with_labels else None,
                    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", choices=("both", *MODALITIES), default="both",
                   help="which image type(s) to convert (default both)")


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.omnipose", doc=__doc__,
                         add_arguments=add_arguments,
                         extra_settings=lambda a: {"modality": a.modality})


if __name__ == "__main__":
    raise SystemExit(main())
