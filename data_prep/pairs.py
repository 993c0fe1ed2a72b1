"""Generic converter: a folder of image/label pairs (users' own data, Phase400).

Source: your own data. Licence: yours.

Expected layout (names matched by stem; TIFF, PNG or JPEG images; TIFF, PNG or `.npy`
instance labels, 0 = background)::

    <src>/images/<id>.tif|png          <src>/labels/<id><label-suffix>.tif|png|npy
  or, with the splits fixed by you:
    <src>/{train,val,test}/images/...  <src>/{train,val,test}/labels/...

Without split folders the pipeline splits 80/10/10 (seeded) by group: every image is its
own group unless `--group-regex` extracts a group id from the image name (its first
capturing group, else the whole match), e.g. `--group-regex '^(pos\\d+)_'` keeps all frames
of one position together. A label stack `[T, H, W]` with an image stack of the same length
gives one sample per frame, all in one group.

    python -m data_prep.pairs --src my_cells --out data --name my_cells \\
        --channels nuclear=0,whole_cell=1
    python -m data_prep.pairs --src phase400 --out data --name phase400   # then data=phase400
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    DatasetLayoutError,
    ImageReadError,
    SourceSample,
    ensure_instances,
    layout_error,
    match_pairs,
    read_image,
    read_label,
    stack_frames,
)

INFO = DatasetInfo(
    name="pairs",
    source="user data",
    licence="as set by the data's owner",
    layout="<src>/images/<id>.<ext> with <src>/labels/<id><label-suffix>.<ext> "
    "(or the same under train/, val/, test/)",
)
SPLIT_DIRS = ("train", "val", "test")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="dataset name: output folder and data=<name> (default: src folder name)")
    p.add_argument("--images-dir", default="images", help="image sub-folder (default: images)")
    p.add_argument("--labels-dir", default="labels", help="label sub-folder (default: labels)")
    p.add_argument("--image-suffix", default="", help="end of image stems, e.g. _img")
    p.add_argument("--label-suffix", default="", help="end of label stems, e.g. _masks")
    p.add_argument("--group-regex", default=None,
                   help="regex on the image stem giving the group id (same group, same split)")
    p.add_argument("--semantic", action="store_true",
                   help="labels are binary masks: objects are their connected components")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor before preparation")
    p.add_argument("--source", default="user data", help="source address for the manifest")
    p.add_argument("--licence", default="as set by the data's owner",
                   help="licence for the manifest")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out image/label pairs that cannot be read or do not fit, and "
                        "list them in the manifest (default: report them all and stop)")


def group_of(stem: str, pattern: re.Pattern | None) -> str:
    """Group id of an image stem: the regex's first group (or whole match), else the stem."""
    if pattern is None:
        return stem
    m = pattern.search(stem)
    if m is None:
        raise DatasetLayoutError(
            f"--group-regex {pattern.pattern!r} does not match image name {stem!r}"
        )
    return m.group(1) if m.groups() else m.group(0)


def find_pairs(root: Path, args: argparse.Namespace) -> list[tuple[str | None, str, Path, Path]]:
    """`(split or None, key, image, label)` for every pair under `root`."""
    splits = [s for s in SPLIT_DIRS if (root / s / args.images_dir).is_dir()]
    folders = [(s, root / s) for s in splits] if splits else [(None, root)]
    if not (folders[0][1] / args.images_dir).is_dir():
        raise layout_error(root, f"{args.images_dir}/ and {args.labels_dir}/ folders "
                                 f"(or train/, val/, test/ holding them)")
    out = []
    for split, folder in folders:
        for key, img, lab in match_pairs(
            folder / args.images_dir, folder / args.labels_dir,
            image_suffix=args.image_suffix, label_suffix=args.label_suffix,
        ):
            out.append((split, key, img, lab))
    return out


def read_pair(img_path: Path, lab_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pair's frames; `DatasetLayoutError` naming both files when it is unusable."""
    try:
        image, label = read_image(img_path), read_label(lab_path)
        if label.ndim == 2 and label.shape not in (image.shape[:2], image.shape[-2:]):
            raise DatasetLayoutError(f"label shape {label.shape} does not match image shape "
                                     f"{image.shape}")
        return stack_frames(image, label)
    except (ImageReadError, DatasetLayoutError) as err:
        raise DatasetLayoutError(f"{img_path} + {lab_path}: {err}") from err


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    """Every pair's frames. A bad pair is collected, not raised at once: the run stops after
    the last pair with one error listing them all, or with `--skip-bad` leaves them out and
    lists them in the manifest (`skipped`)."""
    pattern = re.compile(args.group_regex) if args.group_regex else None
    skipped: list[dict[str, str]] = getattr(args, "skipped", [])
    skipped.clear()
    for split, key, img_path, lab_path in find_pairs(root, args):
        try:
            frames = read_pair(img_path, lab_path)
        except DatasetLayoutError as err:
            skipped.append({"image": str(img_path), "label": str(lab_path),
                            "reason": str(err).split(": ", 1)[-1]})
            continue
        name = key if split is None else f"{split}/{key}"
        group = group_of(key, pattern)
        for t, (img, lab) in enumerate(frames):
            if args.semantic and with_labels:
                lab = ensure_instances(lab)
            yield SourceSample(
                name=name if len(frames) == 1 else f"{name}_t{t:04d}",
                group=group if split is None else f"{split}/{group}",
                split=split,
                image=img,
                label=lab if with_labels else None,
            )
    if skipped and not args.skip_bad:
        listed = "\n  ".join(f"{s['image']} + {s['label']}: {s['reason']}" for s in skipped)
        raise DatasetLayoutError(f"{len(skipped)} bad image/label pair(s) (pass --skip-bad to "
                                 f"leave them out):\n  {listed}")


def info_for(args: argparse.Namespace) -> DatasetInfo:
    name = args.name or Path(args.src).name.split(".")[0]
    return DatasetInfo(name=name, source=args.source, licence=args.licence, layout=INFO.layout)


def _manifest_settings(args: argparse.Namespace) -> dict:
    # `skipped` is filled while the pairs are read, before the manifest is written.
    args.skipped = []
    return {"group_regex": args.group_regex, "semantic": args.semantic,
            "skipped": args.skipped}


def main(argv: list[str] | None = None) -> int:
    return run_converter(
        INFO, iter_samples, argv, converter="data_prep.pairs", doc=__doc__,
        add_arguments=add_arguments, info_from_args=info_for,
        extra_settings=_manifest_settings,
    )


if __name__ == "__main__":
    raise SystemExit(main())
