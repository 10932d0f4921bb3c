"""lorafleet: from a labelled dataset to a fine-tuned LoRA adapter in production."""

__version__ = "0.1.0"
__all__ = ["__version__"]
