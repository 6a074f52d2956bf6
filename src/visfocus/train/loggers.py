"""Where ``visfocus finetune`` logs each step and evaluation: ``train_log.jsonl`` always; TensorBoard and MLflow when
asked for (``--log_to``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.train.config import FinetuneConfig


class Loggers:
    """JSONL always; TensorBoard / MLflow when asked for (one clear error if the package is missing)."""

    def __init__(self, output_dir: Path, log_to: tuple[str, ...], config: FinetuneConfig) -> None:
        self.jsonl = (output_dir / "train_log.jsonl").open("a", encoding="utf-8")
        self.tensorboard = self.mlflow = None
        if "tensorboard" in log_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise VisfocusError("--log_to tensorboard needs the tensorboard package (pip install "
                                    "tensorboard)") from err
            self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"))
        if "mlflow" in log_to:
            try:
                import mlflow
            except ImportError as err:
                raise VisfocusError("--log_to mlflow needs the mlflow package (pip install mlflow)") from err
            self.mlflow = mlflow
            mlflow.start_run(run_name=output_dir.name)
            mlflow.log_params({k: str(v) for k, v in dataclasses.asdict(config).items()})

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.mlflow:
            self.mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow:
            self.mlflow.end_run()
