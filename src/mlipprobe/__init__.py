"""mlipprobe: fine-tune pretrained interatomic potentials and probe their embeddings."""

__version__ = "0.1.0"
