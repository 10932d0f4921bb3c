"""`lorafleet base prepare` gives a folder that transformers loads and that answers a chat prompt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LORAFLEET = Path(sys.executable).parent / "lorafleet"


def test_the_prepared_base_model_answers_a_chat_prompt() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Prepared once in ~/.lorafleet (LORAFLEET_HOME); a later call finds it and only prints the folder.
    proc = subprocess.run(
        [LORAFLEET, "base", "prepare"], capture_output=True, text=True, timeout=600, check=True
    )
    folder = Path(proc.stdout.strip())
    assert (folder / "config.json").is_file() and (folder / "chat_template.jinja").is_file()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
