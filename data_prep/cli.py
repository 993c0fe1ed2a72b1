"""The command line every converter shares: `python -m data_prep.<name> --src ... --out ...`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from cellsam.data.io import ImageReadError
from cellsam.preprocess.channels import ChannelMap, parse_channel_map
from data_prep.common import DatasetInfo, DatasetLayoutError, SourceSample, open_source
from data_prep.pipeline import PrepSettings, convert

IterSamples = Callable[[Path, argparse.Namespace, bool], Iterator[SourceSample]]


def build_parser(info: DatasetInfo, doc: str | None) -> argparse.ArgumentParser:
    """Parser with the common flags: --src --out --workers --no-clahe --seed --channels --quiet."""
    p = argparse.ArgumentParser(
        prog=f"python -m data_prep.{info.name}",
        description=(doc or "").strip().split("\n\n")[0],
        epilog=f"Expected layout: {info.layout}. Source: {info.source}. Licence: {info.licence}.",
    )
    p.add_argument("--src", required=True, type=Path,
                   help="the downloaded folder or archive (zip/tar) as the publisher ships it")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("CELLSAM_DATA", "data")),
                   help=f"data root; the dataset is written to <out>/{info.name}/ "
                        "(default: $CELLSAM_DATA or ./data)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel worker processes (same output bytes as with 1)")
    p.add_argument("--no-clahe", dest="clahe", action="store_false",
                   help="skip CLAHE (on by default, as in the paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/10/10 and val splits")
    p.add_argument("--channels", default=None,
                   help="channel map overriding the converter's, e.g. 'nuclear=0,whole_cell=1', "
                        "'whole_cell=0+1+2' (mean) or 'nuclear=all'")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return p


def run_converter(
    info: DatasetInfo,
    iter_samples: IterSamples,
    argv: list[str] | None,
    *,
    converter: str,
    doc: str | None = None,
    channel_map: ChannelMap | None = None,
    scale: float = 1.0,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    extra_settings: Callable[[argparse.Namespace], dict] | None = None,
    info_from_args: Callable[[argparse.Namespace], DatasetInfo] | None = None,
    nested_archives: bool = False,
) -> int:
    """Parse `argv`, open the source, run the pipeline; 0 on success, 2 on a layout error.

    `iter_samples(root, args, with_labels)` yields the source samples (see `SourceSample`);
    `info_from_args` names the dataset from the arguments (the generic converter's --name).
    """
    parser = build_parser(info, doc)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cmap = parse_channel_map(args.channels) if args.channels else channel_map
    except ValueError as err:
        parser.error(str(err))
    settings = PrepSettings(
        channel_map=cmap, clahe=args.clahe, seed=args.seed,
        scale=getattr(args, "scale", scale),
    )
    if info_from_args is not None:
        info = info_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with open_source(args.src, work_dir=args.out, nested=nested_archives) as root:
            convert(
                info, partial(iter_samples, root, args), args.out, settings,
                converter=converter, workers=args.workers, progress=not args.quiet,
                extra_settings=extra_settings(args) if extra_settings else None,
            )
    except (DatasetLayoutError, ImageReadError) as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
