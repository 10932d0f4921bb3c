"""Training defaults chosen from the data, and early stopping: pure functions, checked by hand."""

from __future__ import annotations

import pytest

from training.config import TrainConfig
from training.defaults import DataShape, adapted_layers, choose, epochs_for, rank_for, target_steps
from training.stopping import best_epoch, kept_epoch, should_stop, still_falling

LLAMA = [
    "embed_tokens",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
]


@pytest.mark.parametrize(
    ("shape", "epochs"),
    [
        # 77 intents x 10 examples, batch 8: 97 steps an epoch; 12 steps a label = 924 steps -> 10 epochs.
        (DataShape(examples=770, labels=77, batch_size=8), 10.0),
        # The demo's 10 intents x 48: 60 steps an epoch; the 300-step floor -> 5 epochs.
        (DataShape(examples=480, labels=10, batch_size=8), 5.0),
        # The full BANKING77 train split: 1,232 steps an epoch is more than 924 -> the 2-epoch floor.
        (DataShape(examples=9849, labels=77, batch_size=8), 2.0),
        # 300 labels x 2 examples: 75 steps an epoch; 3,000-step ceiling -> 40 epochs, capped at 20.
        (DataShape(examples=600, labels=300, batch_size=8), 20.0),
        # Not a label task: 3 epochs, whatever its size.
        (DataShape(examples=200, labels=None, batch_size=8), 3.0),
    ],
)
def test_epochs_follow_the_label_count_and_the_data_size(shape: DataShape, epochs: float) -> None:
    assert epochs_for(shape) == epochs


def test_steps_per_label_within_bounds() -> None:
    assert [target_steps(n) for n in (2, 25, 77, 250, 1000)] == [300, 300, 924, 3000, 3000]


def test_every_projection_is_adapted_and_other_models_get_their_linear_layers() -> None:
    assert adapted_layers(LLAMA) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert adapted_layers(["wte", "c_attn", "c_proj", "c_fc", "lm_head"]) == [
        "c_attn",
        "c_fc",
        "c_proj",
        "wte",
    ]


def test_only_unset_fields_are_chosen_and_each_says_why() -> None:
    shape = DataShape(examples=770, labels=77, batch_size=8)
    chosen, why = choose(TrainConfig(), shape, LLAMA)
    assert (chosen.rank, chosen.alpha, chosen.learning_rate, chosen.epochs) == (64, 128.0, 5e-4, 10.0)
    assert chosen.target_modules == adapted_layers(LLAMA)
    assert len(why) == 5 and "rank: 64 (77 labels, more than 32)" in why
    mine, why = choose(TrainConfig(rank=8, epochs=1.0, target_modules=["q_proj"]), shape, LLAMA)
    assert (mine.rank, mine.alpha, mine.epochs, mine.target_modules) == (8, 16.0, 1.0, ["q_proj"])
    assert [w.split(":")[0] for w in why] == ["alpha", "learning_rate"]


def test_the_rank_is_16_but_64_for_a_label_set_of_more_than_32_labels() -> None:
    assert [rank_for(n) for n in (None, 2, 10, 32, 33, 77, 150)] == [16, 16, 16, 16, 64, 64, 64]
    few, why = choose(TrainConfig(), DataShape(examples=480, labels=10, batch_size=8), LLAMA)
    assert (few.rank, few.alpha) == (16, 32.0) and "rank: 16" in why


# Validation losses as recorded: before training, then after each epoch.
PLATEAU = [2.70, 1.25, 0.90, 0.95, 0.97]
FALLING = [2.70, 1.60, 1.25]
FLAT_END = [2.70, 1.00, 0.995]


def test_early_stopping_on_recorded_histories() -> None:
    assert best_epoch(PLATEAU) == 2
    assert not should_stop(PLATEAU[:4], patience=2)  # one epoch without a better loss
    assert should_stop(PLATEAU, patience=2)  # two: stop, keep epoch 2
    assert not should_stop(PLATEAU, patience=3)
    assert not should_stop(PLATEAU, patience=0)  # 0: never stop early
    assert best_epoch([1.0, 0.5, 0.5]) == 1  # the earlier of two equal losses


def test_the_kept_epoch_may_be_a_later_one_within_the_noise() -> None:
    three = [4.485, 0.063, 0.0397, 0.0404]  # BANKING77's full set, 3 epochs
    assert kept_epoch(three) == 2  # 0: the lowest's own
    assert kept_epoch(three, within=0.02) == 3  # 1.8% over it: the last
    assert kept_epoch(three, within=0.01) == 2
    assert kept_epoch(PLATEAU, within=0.1) == 4  # 0.97 is within 10% of 0.90
    assert kept_epoch(PLATEAU, within=0.06) == 3  # 0.95, not 0.97
    assert kept_epoch([1.0, 0.5, 0.5]) == 1  # ties: the earlier, as before
    assert kept_epoch(PLATEAU, last=True) == 4  # keep=last: whatever the losses


def test_keep_last_runs_every_epoch_and_refuses_the_settings_of_keep_best() -> None:
    cfg = TrainConfig(keep="last")
    assert cfg.early_stopping_patience == 0  # the whole schedule runs
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg  # train_config.json reloads
    with pytest.raises(ValueError, match=r"keep=last .* early_stopping_patience=2 apply only to keep=best"):
        TrainConfig(keep="last", early_stopping_patience=2)
    with pytest.raises(ValueError, match=r"keep_within=0.02"):
        TrainConfig(keep="last", keep_within=0.02)
    assert TrainConfig(keep="last", early_stopping_patience=0).keep == "last"
    assert TrainConfig().early_stopping_patience == 2  # keep=best, as before


def test_a_loss_still_falling_at_the_end_is_flagged() -> None:
    assert still_falling(FALLING)
    assert not still_falling(FLAT_END)  # the last epoch helped by 0.5%: flat
    assert not still_falling(PLATEAU)
    assert not still_falling([2.7])
