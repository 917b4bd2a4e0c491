"""Fine-tune, transfer-learn or train interatomic potentials, and save their embeddings.

    python train.py                                  # the embedded demo (strategy=full)
    python train.py strategy=head trainer.max_epochs=5
    python train.py -m experiment=demo_full,demo_head
    python train.py task=embed backbone=mace backbone.checkpoint=model.pt data=extxyz data.path=x.xyz

`python train.py --help` lists the config groups; `--cfg job` prints the composed config.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("MLIPPROBE_ROOT", str(ROOT))

from mlipprobe.cli import task_wrapper  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mlipprobe.tasks import run

    return task_wrapper(run)(cfg)


if __name__ == "__main__":
    main()
