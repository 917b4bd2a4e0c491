"""Compare and probe embedding files written by train.py.

    python probe.py                       # every embedding file under outputs/demo
    python probe.py inputs=multirun/...   # a sweep folder, a glob or a list of .h5 files
    python probe.py experiment=pretraining_bias   # the report of `train.py -m experiment=pretraining_bias`

`python probe.py --help` shows the options; the report goes to outputs/probe/<time>/.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("MLIPPROBE_ROOT", str(Path(__file__).resolve().parent))

from mlipprobe.cli import task_wrapper  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="probe")
def main(cfg: DictConfig) -> None:
    from mlipprobe.probing import probe

    task_wrapper(probe)(cfg)


if __name__ == "__main__":
    # train.py and probe.py share conf/, whose experiment/ holds training experiments:
    # probe.py's `experiment=NAME` selects conf/probe_experiment/NAME.yaml
    sys.argv = [f"probe_{a}" if a.startswith("experiment=") else a for a in sys.argv]
    main()
