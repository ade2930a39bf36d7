"""The PyTorch benchmark app (scenario f): one small training run per job, as in #20.

    python torch_train.py --multirun x='range(0,4)' stamp_file=/tmp/stamps \
        hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=/tmp/sweep

torch is imported at the script's top, as training scripts do. Each job trains a
small MLP for ``epochs`` epochs on a ``TensorDataset`` of ``samples`` random rows,
through a ``DataLoader`` with ``workers`` worker processes; PyTorch starts them
anew for every epoch (``persistent_workers=False``, its default). Each job appends
``time.time()`` to ``stamp_file`` when its task starts, and the launching process
reports its own usage at exit, as ``bench_app.py`` does.
"""

import os
import time

import hydra
import torch
from bench_app import _report_self_usage_at_exit
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset


@hydra.main(version_base=None, config_path=".", config_name="train")
def train(cfg: DictConfig) -> float:
    if cfg.stamp_file:
        with open(cfg.stamp_file, "a", encoding="ascii") as f:
            f.write(f"{time.time():.6f} {os.getpid()}\n")
    torch.manual_seed(int(cfg.x))
    inputs = torch.randn(int(cfg.samples), int(cfg.features))
    data = TensorDataset(inputs, inputs.sum(dim=1, keepdim=True).sin())
    model = torch.nn.Sequential(
        torch.nn.Linear(int(cfg.features), int(cfg.hidden)),
        torch.nn.ReLU(),
        torch.nn.Linear(int(cfg.hidden), 1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.zeros(())
    for _ in range(int(cfg.epochs)):
        loader = DataLoader(data, batch_size=int(cfg.batch_size), shuffle=True, num_workers=int(cfg.workers))
        for batch, target in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch), target)
            loss.backward()
            optimizer.step()
    return float(loss)


if __name__ == "__main__":
    _report_self_usage_at_exit()
    train()
