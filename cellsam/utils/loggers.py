"""Loggers that keep a run's record whole when the run is resumed in the same folder."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class CSVLogger(_LightningCSVLogger):
    """Lightning's `CSVLogger`, except that a run started again in the same folder (a
    requeued or restarted job resuming from its checkpoint) keeps the rows already in
    `metrics.csv`; Lightning's deletes the file. Rows logged after the checkpoint by the
    interrupted start stay too, so a step can appear twice (the later row is the resumed one).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        experiment = super().experiment  # removes an existing metrics.csv
        if rows:
            keys = sorted(set().union(*rows))
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
            experiment.metrics_keys = keys  # later saves append, widening the header if needed
        return experiment
