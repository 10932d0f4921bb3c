"""Model cards: README.md with YAML front matter in the Hugging Face convention, then prose.

The front matter carries `base_model`, `library_name: peft`, `license`, `tags`, `datasets` and a
`model-index` with the evaluation metrics, plus a `lorafleet` block (version, dataset hashes,
hyperparameters, base-vs-tuned metrics, date) that `ModelCard.parse` reads back.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml
from pydantic import BaseModel, Field

from lorafleet.baseid import BaseIdentity
from lorafleet.errors import RegistryError


class SplitMetrics(BaseModel):
    """Headline metrics of one model on the test split (of a label task: by constrained choice)."""

    accuracy: float
    macro_f1: float
    exact_match: float
    examples: int
    accuracy_free: float | None = Field(
        default=None, description="A label task's accuracy by free generation, beside the constrained one."
    )
    in_label_set: float | None = Field(
        default=None, description="Share of a label task's free answers that are one of its labels."
    )


class ModelCard(BaseModel):
    version: str
    task: str
    created_at: dt.datetime
    base_model: str = Field(description="The base model's folder (or name) training used.")
    base: BaseIdentity | None = Field(default=None, description="The base model's name and fingerprint.")
    license: str = "apache-2.0"
    datasets: list[str] = Field(default_factory=list, description="Names of the datasets trained on.")
    dataset_sha256: dict[str, str] = Field(default_factory=dict, description="Split name -> SHA-256.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, SplitMetrics] = Field(
        default_factory=dict, description="Model name ('base', 'tuned', ...) -> its test metrics."
    )
    labels: list[str] | None = None
    verdict: str = ""
    notes: str = ""

    def front_matter(self) -> dict[str, Any]:
        results = [
            {
                "task": {"type": "text-classification" if self.labels else "text-generation"},
                "dataset": {"name": self.datasets[0] if self.datasets else self.task, "type": self.task},
                "metrics": [
                    {"type": metric, "value": round(getattr(m, metric), 4), "name": f"{model} {metric}"}
                    for model, m in self.metrics.items()
                    for metric in ("accuracy", "macro_f1")
                ],
            }
        ]
        return {
            "base_model": self.base.name if self.base else self.base_model,
            "library_name": "peft",
            "license": self.license,
            "tags": ["lora", "peft", "lorafleet", self.task],
            "datasets": self.datasets,
            "model-index": [{"name": self.version, "results": results}],
            "lorafleet": self.model_dump(mode="json"),
        }

    def render(self) -> str:
        front = yaml.safe_dump(self.front_matter(), sort_keys=False, allow_unicode=True)
        lines = [
            "---",
            front.rstrip(),
            "---",
            "",
            f"# {self.version}",
            "",
            f"LoRA adapter for the task **{self.task}** on `{self.base.name if self.base else self.base_model}`"
            + (f" (fingerprint `{self.base.fingerprint}`)" if self.base else "")
            + f", registered {self.created_at:%Y-%m-%d %H:%M} UTC by lorafleet.",
            "",
        ]
        if self.metrics:
            free = any(m.accuracy_free is not None for m in self.metrics.values())
            lines += ["## Evaluation on the held-out test split", ""]
            if free:
                lines += [
                    "| model | accuracy (labels) | macro-F1 | accuracy (free) | free answers in labels | examples |",
                    "|---|---|---|---|---|---|",
                ]
            else:
                lines += ["| model | accuracy | macro-F1 | exact match | examples |", "|---|---|---|---|---|"]
            for model, m in self.metrics.items():
                if free:
                    share = "-" if m.in_label_set is None else f"{m.in_label_set:.0%}"
                    accuracy_free = "-" if m.accuracy_free is None else f"{m.accuracy_free:.3f}"
                    lines.append(
                        f"| {model} | {m.accuracy:.3f} | {m.macro_f1:.3f} | {accuracy_free} | {share} | {m.examples} |"
                    )
                else:
                    lines.append(
                        f"| {model} | {m.accuracy:.3f} | {m.macro_f1:.3f} | {m.exact_match:.3f} | {m.examples} |"
                    )
            if free:
                lines += ["", "Labels: constrained choice among the label set. Free: free generation."]
            lines.append("")
        if self.verdict:
            lines += [self.verdict, ""]
        if self.hyperparameters:
            lines += ["## Training", ""]
            lines += [f"- `{k}`: {v}" for k, v in self.hyperparameters.items()]
            lines.append("")
        if self.dataset_sha256:
            lines += ["## Data", ""]
            lines += [f"- {split}: sha256 `{digest}`" for split, digest in self.dataset_sha256.items()]
            lines.append("")
        if self.labels:
            lines += ["## Labels", "", ", ".join(f"`{label}`" for label in self.labels), ""]
        if self.notes:
            lines += [self.notes, ""]
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> ModelCard:
        if not text.startswith("---\n"):
            raise RegistryError("model card has no YAML front matter")
        end = text.find("\n---\n", 4)
        if end < 0:
            raise RegistryError("model card front matter is not closed by '---'")
        front = yaml.safe_load(text[4:end]) or {}
        if "lorafleet" not in front:
            raise RegistryError("model card has no 'lorafleet' block in its front matter")
        return cls.model_validate(front["lorafleet"])
