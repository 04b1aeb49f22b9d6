"""The config reference is generated from the config tree and cannot drift from it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from core.config import Config
from harness.cli import app
from harness.config import flatten
from harness.config_doc import config_keys, config_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_config_key_is_listed_once_with_its_default_and_a_description():
    keys = config_keys()
    defaults = flatten(Config())
    assert [k.key for k in keys] == list(defaults)
    for key in keys:
        assert json.loads(json.dumps(key.default)) == defaults[key.key] and key.description, key.key


def test_docs_config_md_is_what_harness_config_prints():
    assert DOC.read_text() == config_markdown(), "regenerate: harness config --markdown > docs/config.md"


def test_harness_config_filters_by_prefix_and_refuses_an_unknown_one():
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "model.decoder"])
    assert shown.exit_code == 0 and "model.decoder.placement" in shown.output and "data.source" not in shown.output
    unknown = runner.invoke(app, ["config", "modle"])
    assert unknown.exit_code == 1 and "no config key starts with 'modle'" in unknown.output
