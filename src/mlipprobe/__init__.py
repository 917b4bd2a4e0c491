"""mlipprobe: fine-tune pretrained interatomic potentials and probe their embeddings.

Python API::

    import mlipprobe
    backbone = mlipprobe.load_backbone("model.pt")                  # mlipprobe checkpoint
    backbone = mlipprobe.load_backbone("MACE-MP-0.model", trusted=True)  # runs pickled code
    features = backbone.embed(list_of_atoms, batch_size=32)
    features["backbone"].shape, features["last_layer"].shape       # (n_atoms, d), (n_atoms, d')
"""

__version__ = "0.1.0"

from mlipprobe.backbones import build_backbone, load_backbone  # noqa: E402

__all__ = ["__version__", "build_backbone", "load_backbone"]
