"""docs/configuration.md is generated from the typed models: it must match the code."""

from pathlib import Path

from lorafleet.configdoc import render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "regenerate it: python -m lorafleet.configdoc > docs/configuration.md"
