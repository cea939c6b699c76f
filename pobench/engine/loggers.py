"""Optional experiment trackers beside metrics.jsonl: TensorBoard and Weights & Biases, imported lazily."""
from __future__ import annotations

from pathlib import Path

from pobench.errors import PobenchError


class Trackers:
    def __init__(self, cfg, run_dir: Path):
        self.writers = []
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PobenchError("train.tensorboard: needs the tensorboard package (pip install 'pobench[tensorboard]')") from None
            tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            self.writers.append(("tb", tb))
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError:
                raise PobenchError("train.wandb: needs the wandb package (pip install 'pobench[wandb]')") from None
            run = wandb.init(project="pobench", name=f"{cfg.suite}-{cfg.algorithm_name}-seed{cfg.seed}",
                             config=cfg.to_dict(), dir=str(run_dir), reinit=True)
            self.writers.append(("wandb", run))

    def log(self, row: dict) -> None:
        step = row["step"]
        for kind, writer in self.writers:
            if kind == "tb":
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "step":
                        writer.add_scalar(k, v, step)
            else:
                writer.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            writer.close() if kind == "tb" else writer.finish()
