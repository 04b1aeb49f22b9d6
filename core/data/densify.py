"""Dense captions: one detailed description per image from a local vision-language model.

The D2S-VSE authors captioned every image with LLaVA v1 13B, prompt "Describe this image in
detail.", top-p 0.9, temperature 0.2, at most 500 new tokens, and published JSONL lines
``{"text", "model_id", "metadata"}`` (paper-notes.md). ``densify`` does the same with any
image-text-to-text model that transformers loads through ``AutoProcessor`` +
``AutoModelForImageTextToText`` from a local folder. The authors' LLaVA v1 checkpoint is in the
original LLaVA repository's format, which transformers does not load; the nearest transformers
model is LLaVA-1.5 13B (``llava-hf/llava-1.5-13b-hf``), downloaded once, e.g.
``hf download llava-hf/llava-1.5-13b-hf --local-dir models/llava-1.5-13b-hf``.

Each output line is ``{"image": image_id, "text", "model_id", "metadata"}``: the authors' keys
plus ``image``, which names the image so that ``data.dense_captions`` matches lines by key, not by
order. The file is the checkpoint: lines are appended and flushed after every batch, a re-run
skips the image ids already in it, and a last line cut short by a crash is dropped (with a
warning) and its image captioned again.

Sampling is seeded per batch from ``(seed, the batch's image ids)``: a caption depends only on the
settings and its batch, so a resumed run writes the same captions as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from core.config import DensifyConfig
from core.errors import UserError
from core.runtime import precision_dtype, resolve_device, resolve_precision

__all__ = ["DensifyConfig", "DensifyStats", "densify"]

log = logging.getLogger(__name__)

# Used when the processor has no chat template: LLaVA-1.5's conversation format.
FALLBACK_TEMPLATE = "USER: {image}\n{prompt} ASSISTANT:"
# Settings that decide a caption: a file's lines must agree on them, so a resumed run cannot
# mix captions made with different settings into one file.
SAMPLING_KEYS = ("prompt", "top_p", "temperature", "max_new_tokens", "seed")

ImageLike = Image.Image | np.ndarray
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class DensifyStats:
    """What one ``densify`` call did."""

    written: int  # captions generated and appended by this call
    skipped: int  # images whose id was already in the file
    dropped: int  # truncated last lines removed before resuming (0 or 1)
    empty: int  # written captions with no text (the model stopped at once)
    seconds: float


def densify(
    images: Iterable[tuple[str, ImageLike]],
    out_jsonl: Path,
    cfg: DensifyConfig,
    progress: Progress | None = None,
) -> DensifyStats:
    """Caption every image whose id is not yet in ``out_jsonl``, appending one line per image.

    Args:
        images: ``(image_id, image)`` pairs; an image is a PIL image or a uint8 ``(H, W, 3)``
            array. Read lazily, one batch at a time; ids must be unique.
        out_jsonl: the output file, created if absent, resumed if present.
        cfg: model folder and generation settings.
        progress: called as ``progress(done, total)`` after every batch and at the end; ``done``
            counts images handled so far (skipped ones included), ``total`` is ``len(images)``
            when ``images`` has a length, else None.
    Returns:
        counts of written, skipped and dropped lines, and the time taken.
    """
    started = time.perf_counter()
    out_jsonl = Path(out_jsonl)
    folder = _model_folder(cfg.model)
    model_id = cfg.model_id or folder.name
    done, dropped = _resume(out_jsonl, model_id, cfg)
    captioner: _Captioner | None = None
    total = len(images) if isinstance(images, Sized) else None
    pending = _Pending(images, done)
    written = empty = 0
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    for batch in pending.batches(cfg.batch_size):
        captioner = captioner or _Captioner(folder, cfg)  # loaded only when something is left to caption
        metadata = {key: getattr(cfg, key) for key in SAMPLING_KEYS} | captioner.provenance()
        image_ids = [image_id for image_id, _ in batch]
        texts = captioner([image for _, image in batch], image_ids)
        _append(out_jsonl, list(zip(image_ids, texts)), model_id, metadata)
        written += len(batch)
        empty += sum(not text for text in texts)
        if progress is not None:
            progress(written + pending.skipped, total)
    if progress is not None:
        progress(written + pending.skipped, total)
    if empty:
        log.warning("%s: %d of %d new captions are empty (the model stopped at once)", out_jsonl, empty, written)
    return DensifyStats(written, pending.skipped, dropped, empty, time.perf_counter() - started)


class _Pending:
    """The images whose ids are not in the file yet, in input order, in batches; counts the rest."""

    def __init__(self, images: Iterable[tuple[str, ImageLike]], done: set[str]):
        self.images = images
        self.done = done
        self.skipped = 0

    def batches(self, size: int) -> Iterator[list[tuple[str, Image.Image]]]:
        seen: set[str] = set()
        batch: list[tuple[str, Image.Image]] = []
        for image_id, image in self.images:
            image_id = str(image_id)
            if image_id in seen:
                raise UserError(f"image id {image_id!r} occurs twice in the images to caption; ids must be unique")
            seen.add(image_id)
            if image_id in self.done:
                self.skipped += 1
                continue
            batch.append((image_id, _rgb(image_id, image)))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def _model_folder(model: str) -> Path:
    """The model as a local folder, or a UserError that says how to get one."""
    folder = Path(model).expanduser()
    if not folder.exists():
        hint = (
            f" It looks like a hub name: download it first, e.g. `hf download {model} --local-dir models/{Path(model).name}`,"
            " and pass that folder."
            if "/" in model and not model.startswith((".", "/", "~"))
            else ""
        )
        raise UserError(f"densify model '{model}' is not a local folder; models are loaded from local files only.{hint}")
    if not (folder / "config.json").is_file():
        raise UserError(
            f"densify model '{model}' has no config.json: expected a folder written by save_pretrained "
            "(config.json, weights, processor and tokenizer files)"
        )
    return folder


def _resume(path: Path, model_id: str, cfg: DensifyConfig) -> tuple[set[str], int]:
    """The image ids already captioned in ``path``; a truncated last line is cut off first.

    Returns:
        the ids, and the number of lines dropped (1 when the last line was cut short, else 0).
    """
    if not path.exists():
        return set(), 0
    done: set[str] = set()
    good_bytes = 0
    truncated = False
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            # the writer ends every line with its newline, so a line without one is a cut write
            if not raw.endswith(b"\n"):
                truncated = True
                break
            good_bytes += len(raw)
            if raw.strip():
                done.add(_check_line(path, number, raw, model_id, cfg))
    if truncated:
        log.warning("%s: the last line was cut short (interrupted write); dropping it and captioning its image again", path)
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done, int(truncated)


def _check_line(path: Path, number: int, raw: bytes, model_id: str, cfg: DensifyConfig) -> str:
    """The image id of one existing line, after checking it was made with the same settings."""
    try:
        line = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} line {number} is not JSON ({err}); is it a densify output file?") from None
    if not isinstance(line, dict) or "image" not in line or not isinstance(line.get("metadata"), dict):
        raise UserError(f"{path} line {number} has no 'image' and 'metadata' keys; is it a densify output file?")
    ours = {"model_id": model_id} | {key: getattr(cfg, key) for key in SAMPLING_KEYS}
    theirs = {"model_id": line.get("model_id")} | {key: line["metadata"].get(key) for key in SAMPLING_KEYS}
    differ = [f"{key}: file {theirs[key]!r}, now {ours[key]!r}" for key in ours if theirs[key] != ours[key]]
    if differ:
        raise UserError(
            f"{path} was written with other settings ({'; '.join(differ)}); "
            "use the same settings to resume it, or write to a new file"
        )
    return str(line["image"])


def _append(path: Path, captions: list[tuple[str, str]], model_id: str, metadata: dict[str, Any]) -> None:
    """Append one batch's lines and push them to disk, so a crash loses at most this batch."""
    lines = "".join(
        json.dumps({"image": image_id, "text": text, "model_id": model_id, "metadata": metadata}, ensure_ascii=False) + "\n"
        for image_id, text in captions
    )
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def _rgb(image_id: str, image: ImageLike) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"image {image_id!r}: expected a uint8 array, got {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise UserError(f"image {image_id!r}: expected a PIL image or a uint8 array, got {type(image).__name__}")
    return image.convert("RGB")


def _batch_seed(seed: int, image_ids: list[str]) -> int:
    digest = hashlib.sha256("\n".join([str(seed), *image_ids]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


class _Captioner:
    """A loaded processor + model that turns a batch of images into captions."""

    def __init__(self, folder: Path, cfg: DensifyConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device, option="densify device")
        self.dtype = precision_dtype(resolve_precision(cfg.dtype, self.device))
        try:
            self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError) as err:
            raise UserError(
                f"densify model '{folder}' could not be loaded as an image-text-to-text model with its processor "
                f"(e.g. a LLaVA folder written by save_pretrained): {err}"
            ) from None
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None or getattr(self.processor, "image_processor", None) is None:
            raise UserError(f"densify model '{folder}': its processor needs both an image processor and a tokenizer")
        tokenizer.padding_side = "left"  # decoder-only batches: every prompt must end where generation starts
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        self.prompt, self.template = self._prompt()

    def _prompt(self) -> tuple[str, str]:
        """The full model input text for one image, and which template made it."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.cfg.prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False), "chat"
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        return FALLBACK_TEMPLATE.format(image=image_token, prompt=self.cfg.prompt), "fallback"

    def provenance(self) -> dict[str, Any]:
        """What besides the sampling settings went into a caption (recorded, not checked on resume)."""
        return {
            "model_input": self.prompt,
            "template": self.template,
            "batch_size": self.cfg.batch_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "transformers": transformers.__version__,
        }

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image], image_ids: list[str]) -> list[str]:
        inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, self.dtype)  # casts only floating tensors (pixel values)
        sampling = self.cfg.temperature > 0
        options: dict[str, Any] = {"do_sample": sampling}
        if sampling:
            # nucleus sampling as in LLaVA's own code: top_k=0 turns off transformers' default top-k of 50
            options |= {"top_p": self.cfg.top_p, "temperature": self.cfg.temperature, "top_k": 0}
        # seed inside a forked RNG state: the caller's random streams are left as they were
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_batch_seed(self.cfg.seed, image_ids))
            output = self.model.generate(
                **inputs, max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **options
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (B, T): left padding aligns the prompts' ends
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
