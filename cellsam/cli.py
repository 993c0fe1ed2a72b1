"""Console entry points (`cellsam-train`, `cellsam-eval`, ...) and the root scripts' mains.

Each main composes the Hydra config from the repository's `conf/` folder and hands it to a
plain function in `cellsam.tasks`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cellsam.utils.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "conf")


def _prepare() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from cellsam.tasks.train import train

    return train(cfg).get("objective")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _eval(cfg: DictConfig) -> None:
    from cellsam.tasks.evaluate import evaluate

    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def _predict(cfg: DictConfig) -> int:
    from cellsam.tasks.predict import predict

    failures = predict(cfg)
    if failures:
        sys.exit(1)
    return 0


def train_main() -> None:
    _prepare()
    _train()


def eval_main() -> None:
    _prepare()
    _eval()


def predict_main() -> None:
    _prepare()
    _predict()


def prep_main() -> None:
    """`cellsam-prep <converter> --src ... --out ...` runs `data_prep.<converter>`."""
    import importlib

    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print(
            "usage: cellsam-prep <dataset> --src SRC --out OUT [options]\n"
            "datasets: synthetic, pairs, tissuenet, deepbacs, brifiseg, cellpose, omnipose, "
            "yeastnet, yeaz, dsb2018, livecell",
            file=sys.stderr,
        )
        sys.exit(2)
    module = importlib.import_module(f"data_prep.{sys.argv[1]}")
    sys.exit(module.main(sys.argv[2:]))


def collect_main() -> None:
    from cellsam.tasks.collect import main

    sys.exit(main(sys.argv[1:]))
