"""training: datasets, LoRA training, evaluation and the finetune loop (needs the `train` extras).

Other packages never import it (lorafleet.registry is the hand-off); the CLI imports it lazily.
"""

from training.config import Balance, Precision, TrainConfig, load_config
from training.endpoints import Endpoint
from training.evaluate import EvalReport, baseline, evaluate, write_report
from training.pipeline import FinetuneResult, Stage, finetune
from training.scoring import Scores, normalize, score
from training.significance import Comparison, compare, mcnemar, paired_bootstrap
from training.train import LossHistory, TrainResult, train

__all__ = [
    "Balance",
    "Comparison",
    "Endpoint",
    "EvalReport",
    "FinetuneResult",
    "LossHistory",
    "Precision",
    "Scores",
    "Stage",
    "TrainConfig",
    "TrainResult",
    "baseline",
    "compare",
    "evaluate",
    "finetune",
    "load_config",
    "mcnemar",
    "normalize",
    "paired_bootstrap",
    "score",
    "train",
    "write_report",
]
