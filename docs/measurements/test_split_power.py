"""How the 95% interval of a test rSum difference shrinks with the SynthScenes test split, scored
as one gallery or as folds of 200 images (docs/datasets.md, "Statistical power").

Trains one cpu-small pre-training and two fine-tunings (decoder depth 0 and 2, one epoch each,
seed 0) on 5000 generated test images, then evaluates both on the first n test images.

    python docs/measurements/test_split_power.py /tmp/power
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from core.data import build_splits
from core.evaluate import evaluate
from core.stages import BEST_CHECKPOINT
from core.train import load_model, train_stage
from harness.config import resolve
from harness.report._bootstrap import paired_bootstrap_rsum

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/power")
base = ["data.synthscenes.num_test=5000", "finetune.epochs=1"]
configs = {depth: resolve(overrides=[*base, f"model.decoder.depth={depth}"]) for depth in (0, 2)}
splits = build_splits(configs[0].data, out / "data")
if not (out / "pre" / BEST_CHECKPOINT).exists():
    train_stage(configs[0], "pretrain", out / "pre", splits=splits)
for depth, config in configs.items():
    if not (out / f"d{depth}" / BEST_CHECKPOINT).exists():
        train_stage(config, "finetune", out / f"d{depth}", init_from=out / "pre" / BEST_CHECKPOINT, splits=splits)
models = {depth: load_model(config, out / f"d{depth}" / BEST_CHECKPOINT) for depth, config in configs.items()}
test = splits["test"]
for folds, sizes in ((False, (200, 500, 1000, 2000, 5000)), (True, (1000, 2000, 5000))):
    protocol = ["eval.fold_size=200", "eval.test_on=folds"] if folds else []
    scoring = resolve(overrides=[*base, *protocol])
    for n in sizes:
        keep = test.caption_image < n
        sub = replace(test, images=[test.images[i] for i in range(n)], image_ids=test.image_ids[:n],
                      captions=[c for c, k in zip(test.captions, keep) if k], caption_image=test.caption_image[keep])
        results = {depth: evaluate(model, sub, scoring) for depth, model in models.items()}
        ranks = {d: dict(zip(("i2t", "t2i"), r.fold_ranks if folds else (r.i2t_ranks, r.t2i_ranks))) for d, r in results.items()}
        rsum = {d: (r.fold_metrics if folds else r.metrics)["rsum"] for d, r in results.items()}
        delta = paired_bootstrap_rsum({0: ranks[2]}, {0: ranks[0]})
        row = {"images": n, "folds": n // 200 if folds else 1, "rsum_depth0": rsum[0], "rsum_depth2": rsum[2],
               "difference": delta.estimate, "low": delta.low, "high": delta.high, "half_width": (delta.high - delta.low) / 2}
        print(json.dumps(row), flush=True)
