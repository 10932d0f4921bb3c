"""Production data becomes the next version: answers with feedback written as a training set.

    export_feedback(store, out, ...) -> ExportManifest

Each answer with a verdict becomes one chat example: the system prompt as served (when the request
had one), the user's text, and the right answer as the assistant's turn: the feedback's label, or
the answer itself when the feedback said it was correct. An answer judged wrong without a label,
or whose input was not kept (`log_inputs: false`), cannot become an example: it is counted, not
written. Against the live version's own splits (the registry keeps them), inputs already in its
test split are left out (training on them would inflate the next evaluation) and those in its
training split are counted, both with the data audit's matching (exact or near). The manifest
beside the file says where every row came from. `data check` and `finetune` take the file as is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field

from lorafleet import __version__
from lorafleet.registry import Version
from monitor.feedback import FeedbackStore, LabelledAnswer


class ExportManifest(BaseModel):
    """FILE.manifest.json: the provenance of an exported training set."""

    file: str
    sha256: str
    store: str = Field(description="The feedback store read (a URL without its password, or a path).")
    route: str | None
    version: str | None
    since: dt.datetime | None
    until: dt.datetime | None
    corrected_only: bool
    exported: int
    skipped_no_input: int = Field(description="Answers whose input was not kept (log_inputs: false).")
    skipped_no_answer: int = Field(description="Judged wrong without the right label: no answer to learn.")
    left_out_test_leaks: int = Field(description="Inputs already in the live version's test split.")
    in_training_split: int = Field(description="Inputs already in its training split (kept, counted).")
    checked_against: list[str] = Field(default_factory=list)
    labels: dict[str, int] = Field(default_factory=dict, description="Examples per assistant answer.")
    created_at: dt.datetime
    lorafleet: str = __version__


def _example(row: LabelledAnswer) -> dict[str, object] | None:
    a, f = row.answer, row.feedback
    if a.input is None:
        return None
    if f.label is not None:
        right = f.label
    elif f.correct:
        right = a.label if a.label is not None else a.answer
    else:
        return None
    messages = [{"role": "system", "content": a.system}] if a.system else []
    messages += [{"role": "user", "content": a.input}, {"role": "assistant", "content": right}]
    return {"messages": messages}


def export_feedback(
    store: FeedbackStore,
    out: Path,
    *,
    route: str | None = None,
    version: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    corrected_only: bool = False,
    against: Version | None = None,
) -> ExportManifest:
    """Write the labelled answers as chat JSONL to `out` and its manifest beside it."""
    from training.audit import leaked_lines
    from training.dataset import read_jsonl

    rows = store.labelled(
        route=route, version=version, since=since, until=until, corrected_only=corrected_only
    )
    examples = [(_example(r), r) for r in rows]
    no_input = sum(1 for e, r in examples if e is None and r.answer.input is None)
    no_answer = sum(1 for e, r in examples if e is None and r.answer.input is not None)
    kept = [e for e, _ in examples if e is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept))
    checked: list[str] = []
    test_leaks = in_train = 0
    if against is not None and kept:
        parsed, _ = read_jsonl(out)
        test, train = against.split("test"), against.split("train")
        drop = leaked_lines(parsed, test) if test is not None else set()
        if train is not None:
            in_train = len(leaked_lines(parsed, train) - drop)
        checked = [str(p) for p in (train, test) if p is not None]
        if drop:
            kept = [e for i, e in enumerate(kept, start=1) if i not in drop]
            out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept))
        test_leaks = len(drop)
    data = out.read_bytes()
    labels: dict[str, int] = {}
    for e in kept:
        answer = str(e["messages"][-1]["content"])  # type: ignore[index]
        labels[answer] = labels.get(answer, 0) + 1
    manifest = ExportManifest(
        file=str(out),
        sha256=hashlib.sha256(data).hexdigest(),
        store=store.describe(),
        route=route,
        version=version,
        since=since,
        until=until,
        corrected_only=corrected_only,
        exported=len(kept),
        skipped_no_input=no_input,
        skipped_no_answer=no_answer,
        left_out_test_leaks=test_leaks,
        in_training_split=in_train,
        checked_against=checked,
        labels=dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[:200]),
        created_at=dt.datetime.now(dt.UTC),
    )
    out.with_name(out.name + ".manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest
