"""``python -m core.data.synthscenes --card``: print the dataset card's numbers as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from core.config import DataConfig
from core.data.synthscenes.card import card


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.data.synthscenes", description="SynthScenes tools")
    parser.add_argument("--card", action="store_true", help="print the dataset card's numbers as JSON")
    parser.add_argument("--setting", type=Path, help="a setting YAML whose `data` section is used (default: DataConfig())")
    parser.add_argument("--cache-dir", type=Path, help="data cache folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.card:
        parser.error("nothing to do (use --card)")
    raw = yaml.safe_load(args.setting.read_text()) if args.setting else {}
    if "extends" in (raw or {}):
        parser.error(f"{args.setting} extends another setting; resolve it with the harness")
    data_cfg = DataConfig.model_validate((raw or {}).get("data", {}))
    fold_size = ((raw or {}).get("eval") or {}).get("fold_size")
    if args.cache_dir is not None:
        result = card(data_cfg, args.cache_dir, fold_size)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = card(data_cfg, Path(tmp), fold_size)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    _main()
