"""Test helpers for sweeps: an interruption in the middle of training, and a reader of the
records in a wandb offline run file."""

from __future__ import annotations

import struct
from pathlib import Path

import lightning as L


class InterruptAfterEpoch(L.Callback):
    """Stops the job with an exception at the start of epoch ``epoch + 1``, once the
    checkpoint callback has written ``last.ckpt`` of epoch ``epoch``: a job killed by its
    scheduler."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch + 1:
            raise RuntimeError(f"interrupted after epoch {self.epoch}")


def wandb_records(path: str | Path) -> list:
    """The protobuf records of a wandb ``run-<id>.wandb`` file (LevelDB log format: 7-byte
    header, then 32 KiB blocks of chunks with a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
