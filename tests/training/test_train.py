"""`lorafleet train` and `lorafleet eval` on the embedded model: a few real steps on a tiny dataset."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lorafleet import basemodel
from lorafleet.cli import app
from lorafleet.errors import ConfigFileError
from training.config import Balance, TrainConfig, load_config
from training.evaluate import EvalReport
from training.train import LossHistory, class_weights, epoch_indices

LORAFLEET = Path(sys.executable).parent / "lorafleet"


def line(text: str, label: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]}
    )


def test_the_adapter_loads_in_peft_and_has_what_vllm_needs(tiny_adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = json.loads((tiny_adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    # The defaults chosen from the data (training/defaults.py): rank 16 on every projection.
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.05)
    assert set(cfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    base = Path(cfg["base_model_name_or_path"])
    assert base == basemodel.resolve(None) and (base / "config.json").is_file()
    assert not cfg.get("modules_to_save")

    weights = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    # vLLM's LoRA loader expects PEFT's key names: base_model.model.<module path>.lora_{A,B}.weight
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in weights
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in weights)
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at 0: it trained

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tiny_adapter
    )
    # r x (in + out) per projection, 30 layers: q, o 576->576; k, v 576->192; gate, up 576->1536; down back.
    per_layer = 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 30 * per_layer == 4_884_480

    saved = TrainConfig.model_validate_json((tiny_adapter / "train_config.json").read_text())
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert saved == TrainConfig(epochs=1, rank=16, alpha=32.0, learning_rate=5e-4, target_modules=projections)
    history = LossHistory.model_validate_json((tiny_adapter / "loss_history.json").read_text())
    assert len(history.train) == 3  # 24 examples, batches of 8, one epoch
    assert [p.epoch for p in history.val] == [0.0, 1.0]
    assert history.tokens > 0 and history.tokens_per_s > 0


def _reference_loss(model: Any, batch: list[Any]) -> Any:
    """Hugging Face's own loss: the whole sequence, labels -100 over the prompt, mean over answer tokens."""
    import torch

    total, count = 0, 0
    for e in batch:
        ids = torch.tensor([e.prompt + e.answer])
        labels = torch.tensor([[-100] * len(e.prompt) + e.answer])
        total = total + model(input_ids=ids, labels=labels).loss * len(e.answer)
        count += len(e.answer)
    return total / count


def test_the_fast_loss_equals_the_plain_answer_only_loss_and_its_gradients(
    tiny_data: dict[str, Path],
) -> None:
    """Shared prefix and answer-only output layer change the cost, not the loss or its gradients."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.check import read_valid
    from training.train import LossComputer, cpu_threads, encode, load_base_model, load_tokenizer

    cpu_threads()  # as the trainer does: 2 threads on 2 busy cores run many times slower
    base = basemodel.resolve(None)
    tok = load_tokenizer(base)
    batch = [encode(tok, e, 1024) for e in read_valid(tiny_data["train"])[:5]]
    assert all(e.answer[-2:] == tok("<|im_end|>\n", add_special_tokens=False).input_ids for e in batch)
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(base, torch.float32, torch.device("cpu")),
        LoraConfig(
            r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # B starts at zero; make the adapter matter

    def loss_and_grads(fn: Any) -> tuple[float, list[Any]]:
        model.zero_grad()
        loss = fn()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ref, ref_grads = loss_and_grads(lambda: _reference_loss(model, batch))
    for share in (False, True):
        compute = LossComputer(model, int(tok.pad_token_id), torch.device("cpu"), share_prefix=share)
        assert (compute.shared_prefix(batch) > 0) == share
        total_fn = lambda c=compute: (lambda s, n: s / n)(*c(batch))  # noqa: E731
        got, grads = loss_and_grads(total_fn)
        assert got == pytest.approx(ref, rel=1e-4)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g, r, rtol=1e-3, atol=1e-6)


def test_upsampling_and_class_weights_even_out_the_labels() -> None:
    labels = ["a"] * 6 + ["b"] * 2 + ["c"]
    epoch = epoch_indices(labels, Balance.UPSAMPLE, random.Random(0))
    assert Counter(labels[i] for i in epoch) == {"a": 6, "b": 6, "c": 6}
    assert sorted(epoch_indices(labels, Balance.NONE, random.Random(0))) == list(range(9))
    w = class_weights(labels)
    assert w["c"] == pytest.approx(6 * w["a"]) and w["b"] == pytest.approx(3 * w["a"])
    assert sum(w[lab] for lab in labels) == pytest.approx(len(labels))


def test_config_errors_name_the_field_and_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"rank: .*greater than or equal to 1.*\(got 0\)"):
        load_config(None, {"rank": 0})
    bad = tmp_path / "train.yaml"
    bad.write_text("learning_rate: fast\nepochs: 2\nranks: 4\n")
    with pytest.raises(ConfigFileError) as err:
        load_config(bad)
    assert f"{bad}: learning_rate" in err.value.message and "'fast'" in err.value.message
    assert f"{bad}: ranks: Extra inputs are not permitted" in err.value.message
    good = tmp_path / "train.json"
    good.write_text('{"rank": 16, "target_modules": ["q_proj", "k_proj"], "balance": "weights"}')
    cfg = load_config(good, {"rank": 4, "epochs": None})
    assert (cfg.rank, cfg.target_modules, cfg.balance, cfg.epochs) == (
        4,
        ["q_proj", "k_proj"],
        Balance.WEIGHTS,
        None,  # chosen from the data when training starts
    )

    proc = subprocess.run(
        [LORAFLEET, "train", "--train", "x.jsonl", "--out", str(tmp_path / "o"), "--dropout", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "dropout" in proc.stderr and "1.5" in proc.stderr and "Traceback" not in proc.stderr


def test_keep_last_trains_the_whole_schedule_and_keeps_its_end(
    tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    from training.train import train

    out = tmp_path / "adapter"
    result = train(
        TrainConfig(epochs=2, rank=4, keep="last"), tiny_data["train"], tiny_data["val"], out, progress=False
    )
    h = result.history
    assert [p.epoch for p in h.val] == [0, 1, 2] and h.stopped_at_epoch is None
    assert h.best_epoch == 2
    assert TrainConfig.model_validate_json((out / "train_config.json").read_text()).keep == "last"


def test_train_cli_with_class_weights_on_imbalanced_labels(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [line("Where is my card?", "card_arrival")] * 6 + [line("I lost my card", "lost_card")] * 2
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--train",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--balance",
            "weights",
            "--rank",
            "4",
            "--quiet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 1 and summary["adapter"] == str(out)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert TrainConfig.model_validate_json((out / "train_config.json").read_text()).balance == Balance.WEIGHTS


def test_eval_reports_base_few_shot_and_tuned_side_by_side(
    tiny_data: dict[str, Path], tiny_adapter: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "eval", "--test", str(tiny_data["test"]), "--adapter", str(tiny_adapter), "--train", str(tiny_data["train"]),
            "--few-shot", "2", "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(result.stdout)
    assert list(report.models) == ["base", "base-few-shot", "tuned"]
    # A label task: the headline is constrained choice, free generation beside it.
    assert set(report.summary["tuned"]) == {
        "accuracy",
        "macro_f1",
        "exact_match",
        "examples",
        "accuracy_free",
        "in_label_set",
    }
    assert report.examples == 4 and report.labels == [
        "card_arrival",
        "change_pin",
        "exchange_rate",
        "lost_card",
    ]
    tests = [json.loads(x) for x in tiny_data["test"].read_text().splitlines()]
    for name, r in report.models.items():
        assert len(r.answers) == 4 and r.choice is not None
        assert set(r.choice.answers) <= set(report.labels)
        wrong = [
            t["messages"][1]["content"]
            for t, a in zip(tests, r.choice.answers, strict=True)
            if a != t["messages"][2]["content"]
        ]
        assert [w.input for w in r.errors] == wrong, name
        assert r.accuracy == pytest.approx(1 - len(wrong) / 4)
        assert report.summary[name]["accuracy_free"] == r.scores.accuracy
    assert report.models["tuned"].entropies is not None and all(
        e is not None for e in report.models["tuned"].entropies
    )
    assert report.verdict.startswith(("fine-tuning helped", "fine-tuning did not help"))
    assert {p.name for p in out.iterdir()} == {"eval.json", "confusion.png", "loss.png"}
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.render()
    assert "verdict:" in text and "wrong answers of base:" in text and "per-label precision" in text
    assert "Classify the customer message" not in text  # inputs are the user texts, not the prompt


@pytest.mark.engine
def test_eval_compares_with_an_openai_compatible_endpoint(
    engine: Any,
    tiny_data: dict[str, Path],
    tiny_adapter: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real vLLM engine (tests/conftest.py) serving the base model, asked as an endpoint baseline."""
    monkeypatch.setenv("TEST_ENDPOINT_KEY", "not-checked-by-vllm")
    result = CliRunner().invoke(
        app,
        [
            "eval", "--test", str(tiny_data["test"]), "--adapter", str(tiny_adapter), "--out", str(tmp_path / "e"),
            "--endpoint", f"base={engine.url},model=base,key-env=TEST_ENDPOINT_KEY", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(result.stdout)
    assert list(report.models) == ["base", "endpoint:base", "tuned"]
    remote = report.models["endpoint:base"]
    assert remote.kind == "endpoint" and len(remote.answers) == 4 and all(remote.answers)
    assert len(remote.errors) == round(4 * (1 - remote.scores.accuracy))
    assert remote.usage is not None and remote.usage.prompt_tokens > 0 and remote.usage.retries == 0
    assert set(report.summary) == {"base", "endpoint:base", "tuned"}


def test_train_and_eval_refuse_bad_outputs_and_layers_before_the_work(
    tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")

    def lorafleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LORAFLEET, *map(str, args)], capture_output=True, text=True, timeout=300)

    proc = lorafleet("train", "--train", tiny_data["train"], "--out", a_file)
    assert (proc.returncode, proc.stderr.splitlines()[0]) == (
        1,
        f"error: --out {a_file} is a file, not a folder",
    )
    proc = lorafleet("train", "--train", tiny_data["train"], "--out", a_file / "adapter")
    assert (
        proc.stderr.splitlines()[0]
        == f"error: --out {a_file / 'adapter'} cannot be created: {a_file} is a file"
    )
    proc = lorafleet("eval", "--test", tiny_data["test"], "--adapter", tmp_path, "--out", a_file)
    assert (proc.returncode, proc.stderr.splitlines()[0]) == (
        1,
        f"error: --out {a_file} is a file, not a folder",
    )
    proc = lorafleet(
        "train", "--train", tiny_data["train"], "--out", tmp_path / "o", "--target-modules", "qproj"
    )
    assert proc.returncode == 1 and proc.stderr.splitlines()[1].startswith(
        "error: --target-modules: qproj is not a layer of SmolLM2-135M-Instruct; its layers LoRA can adapt are: "
    )
    assert a_file.read_text() == "mine" and not (tmp_path / "o").exists()
    assert "Traceback" not in proc.stderr
