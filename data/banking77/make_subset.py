"""Make the demo subsets of BANKING77: demo.csv (10 intents) and shifted.csv (10 other intents).

    .venv/bin/python data/banking77/make_subset.py [BANKING77_FOLDER]

BANKING77_FOLDER holds the dataset's train.csv and test.csv (columns text,category); default
/work/shared/datasets/banking77. The sample is deterministic (SEED): running it again gives
byte-identical files. See SOURCE.md for what was chosen and why.
"""

from __future__ import annotations

import csv
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 77
HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/work/shared/datasets/banking77")

# One coherent task: questions about a payment card and about transfers. Near-synonymous pairs of
# BANKING77 were left out (card_arrival kept, card_delivery_estimate not; cancel_transfer kept,
# pending_transfer and transfer_timing not; lost_or_stolen_card kept, compromised_card not).
DEMO_INTENTS = (
    "activate_my_card",
    "beneficiary_not_allowed",
    "cancel_transfer",
    "card_about_to_expire",
    "card_arrival",
    "change_pin",
    "declined_card_payment",
    "lost_or_stolen_card",
    "transfer_fee_charged",
    "transfer_not_received_by_recipient",
)
DEMO_PER_INTENT = 60

# Traffic the demo model was not trained for (top-ups, cash, identity, the app and the account),
# used to show data drift.
SHIFTED_INTENTS = (
    "apple_pay_or_google_pay",
    "atm_support",
    "cash_withdrawal_charge",
    "edit_personal_details",
    "exchange_rate",
    "lost_or_stolen_phone",
    "pending_top_up",
    "terminate_account",
    "top_up_failed",
    "verify_my_identity",
)
SHIFTED_PER_INTENT = 20


def read_rows(path: Path) -> dict[str, list[str]]:
    """Texts per intent, in file order, stripped of surrounding whitespace."""
    by_intent: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_intent[row["category"]].append(row["text"].strip())
    return by_intent


def sample(
    by_intent: dict[str, list[str]], intents: tuple[str, ...], n: int, rng: random.Random
) -> list[list[str]]:
    rows = []
    for intent in intents:
        rows.extend([text, intent] for text in rng.sample(by_intent[intent], n))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    assert not set(DEMO_INTENTS) & set(SHIFTED_INTENTS)
    rng = random.Random(SEED)
    write_csv(HERE / "demo.csv", sample(read_rows(source / "train.csv"), DEMO_INTENTS, DEMO_PER_INTENT, rng))
    write_csv(
        HERE / "shifted.csv",
        sample(read_rows(source / "test.csv"), SHIFTED_INTENTS, SHIFTED_PER_INTENT, rng),
    )
    print(f"wrote {HERE / 'demo.csv'} and {HERE / 'shifted.csv'}")


if __name__ == "__main__":
    main()
