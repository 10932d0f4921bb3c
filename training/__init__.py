"""training: datasets, LoRA training, evaluation and the finetune loop (needs the `train` extras).

Other packages never import it (lorafleet.registry is the hand-off); the CLI imports it lazily.
"""

from training.config import Balance, Precision, TrainConfig, load_config
from training.evaluate import Endpoint, EvalReport, evaluate, write_report
from training.pipeline import FinetuneResult, Stage, finetune
from training.scoring import Scores, normalize, score, verdict
from training.train import LossHistory, TrainResult, train

__all__ = [
    "Balance",
    "Endpoint",
    "EvalReport",
    "FinetuneResult",
    "LossHistory",
    "Precision",
    "Scores",
    "Stage",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "finetune",
    "load_config",
    "normalize",
    "score",
    "train",
    "verdict",
    "write_report",
]
