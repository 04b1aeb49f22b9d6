"""Dense caption generation, end to end with a tiny random LLaVA saved to disk and loaded by path."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from core.config import DataConfig
from core.data import build_splits
from core.data.densify import DensifyConfig, densify
from core.errors import UserError
from harness.densify import run_densify

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
WORDS = "a the red blue green small large circle square triangle on left right of above below and is in".split()
PROMPT_WORDS = ["USER", "ASSISTANT", ":", ".", "Describe", "this", "image", "detail"]
# LLaVA-1.5's template, in Jinja, as llava-hf processors ship it (shortened)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
NEW_TOKENS = 4


def _tiny_llava(folder: Path, chat_template: str | None) -> Path:
    """A randomly initialised LLaVA (CLIP vision tower + Llama) with its processor, saved to ``folder``."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + PROMPT_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    # 16 px images in 8 px patches: 4 patch tokens (+ CLS, which the "default" strategy drops)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=vocab["<pad>"],
            bos_token_id=vocab["<s>"],
            eos_token_id=vocab["</s>"],
        ),
        image_token_index=vocab["<image>"],
        image_seq_length=4,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # never emit special tokens, so every caption has words in it (a random model would stop anywhere)
    model.generation_config.suppress_tokens = [vocab[token] for token in SPECIALS]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    return _tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", CHAT_TEMPLATE)


def _images(n: int = 5) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    # sizes differ: the processor resizes and crops every image to the model's 16 px
    return [(f"img{i}.jpg", rng.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8)) for i in range(n)]


def _cfg(model: Path, **overrides) -> DensifyConfig:
    return DensifyConfig(**{"model": str(model), "max_new_tokens": NEW_TOKENS, "batch_size": 2, "device": "cpu"} | overrides)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _texts(path: Path) -> dict[str, str]:
    return {line["image"]: line["text"] for line in _lines(path)}


def test_writes_one_line_per_image_with_the_authors_keys_and_settings(llava, tmp_path):
    out = tmp_path / "dense.jsonl"
    calls = []
    cfg = _cfg(llava)
    stats = densify(_images(), out, cfg, progress=lambda done, total: calls.append((done, total)))

    lines = _lines(out)
    assert [line["image"] for line in lines] == [image_id for image_id, _ in _images()]
    for line in lines:
        assert set(line) == {"image", "text", "model_id", "metadata"}
        assert line["model_id"] == "tiny-llava"
        assert len(line["text"].split()) == NEW_TOKENS  # one word per token in this vocabulary
        assert set(line["text"].split()) <= set(WORDS + PROMPT_WORDS)
        meta = line["metadata"]
        assert (meta["prompt"], meta["top_p"], meta["temperature"]) == ("Describe this image in detail.", 0.9, 0.2)
        assert (meta["max_new_tokens"], meta["seed"], meta["template"]) == (NEW_TOKENS, 0, "chat")
        assert meta["model_input"] == "USER: <image>\nDescribe this image in detail.ASSISTANT:"
    assert (stats.written, stats.skipped, stats.dropped, stats.empty) == (5, 0, 0, 0)
    assert calls[0] == (2, 5) and calls[-1] == (5, 5)  # batches of 2: after each batch, then at the end


def test_defaults_are_the_authors_sampling_settings():
    cfg = DensifyConfig(model="m")
    assert (cfg.prompt, cfg.top_p, cfg.temperature, cfg.max_new_tokens) == ("Describe this image in detail.", 0.9, 0.2, 500)


def test_rerun_generates_nothing_new(llava, tmp_path):
    out = tmp_path / "dense.jsonl"
    densify(_images(), out, _cfg(llava))
    before = out.read_bytes()

    stats = densify(_images(), out, _cfg(llava))

    assert (stats.written, stats.skipped) == (0, 5)
    assert out.read_bytes() == before


def test_interrupted_run_resumes_to_the_captions_of_an_uninterrupted_run(llava, tmp_path):
    def crashing(after: int):
        for k, pair in enumerate(_images()):
            if k == after:
                raise KeyboardInterrupt
            yield pair

    out = tmp_path / "dense.jsonl"
    with pytest.raises(KeyboardInterrupt):
        densify(crashing(after=3), out, _cfg(llava))  # dies while the second batch is being filled
    assert [line["image"] for line in _lines(out)] == ["img0.jpg", "img1.jpg"]  # the first batch survived

    stats = densify(_images(), out, _cfg(llava))

    assert (stats.written, stats.skipped) == (3, 2)
    assert sorted(line["image"] for line in _lines(out)) == sorted(image_id for image_id, _ in _images())
    densify(_images(), tmp_path / "whole.jsonl", _cfg(llava))
    assert _texts(out) == _texts(tmp_path / "whole.jsonl")


def test_failing_progress_callback_keeps_the_batch_already_written(llava, tmp_path):
    def stop(done, total):
        raise RuntimeError("stop")

    out = tmp_path / "dense.jsonl"
    with pytest.raises(RuntimeError):
        densify(_images(), out, _cfg(llava), progress=stop)
    assert len(_lines(out)) == 2


def test_truncated_last_line_is_dropped_and_its_image_captioned_again(llava, tmp_path, caplog):
    out = tmp_path / "dense.jsonl"
    densify(_images(), out, _cfg(llava))
    whole = out.read_bytes()
    out.write_bytes(whole[:-25])  # a crash in the middle of writing the last line

    with caplog.at_level(logging.WARNING, logger="core.data.densify"):
        stats = densify(_images(), out, _cfg(llava))

    assert "cut short" in caplog.text
    assert (stats.written, stats.skipped, stats.dropped) == (1, 4, 1)
    assert [line["image"] for line in _lines(out)] == [image_id for image_id, _ in _images()]


def test_same_seed_gives_same_texts_and_another_seed_other_texts(llava, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        densify(_images(), tmp_path / f"{name}.jsonl", _cfg(llava, seed=seed, temperature=1.0, top_p=1.0))

    assert _texts(tmp_path / "a.jsonl") == _texts(tmp_path / "b.jsonl")
    assert _texts(tmp_path / "a.jsonl") != _texts(tmp_path / "c.jsonl")


def test_temperature_zero_decodes_greedily_whatever_the_seed(llava, tmp_path):
    for seed in (0, 1):
        densify(_images(), tmp_path / f"{seed}.jsonl", _cfg(llava, seed=seed, temperature=0.0))

    assert _texts(tmp_path / "0.jsonl") == _texts(tmp_path / "1.jsonl")


def test_caption_does_not_disturb_the_callers_random_state(llava, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    densify(_images(2), tmp_path / "dense.jsonl", _cfg(llava))

    assert torch.equal(torch.rand(3), expected)


def test_pil_images_and_arrays_give_the_same_captions(llava, tmp_path):
    pil = [(image_id, Image.fromarray(array)) for image_id, array in _images()]
    densify(pil, tmp_path / "pil.jsonl", _cfg(llava))
    densify(_images(), tmp_path / "array.jsonl", _cfg(llava))

    assert _texts(tmp_path / "pil.jsonl") == _texts(tmp_path / "array.jsonl")


def test_processor_without_chat_template_uses_the_llava_prompt_format(llava, tmp_path):
    plain = tmp_path / "plain-llava"
    shutil.copytree(llava, plain)
    (plain / "chat_template.jinja").unlink()

    densify(_images(2), tmp_path / "dense.jsonl", _cfg(plain))

    meta = _lines(tmp_path / "dense.jsonl")[0]["metadata"]
    assert meta["template"] == "fallback"
    assert meta["model_input"] == "USER: <image>\nDescribe this image in detail. ASSISTANT:"


def test_hub_name_without_local_folder_is_a_user_error_saying_how_to_download(tmp_path):
    with pytest.raises(UserError, match="not a local folder.*hf download llava-hf/llava-1.5-13b-hf"):
        densify(_images(), tmp_path / "dense.jsonl", DensifyConfig(model="llava-hf/llava-1.5-13b-hf"))


def test_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        densify(_images(), tmp_path / "dense.jsonl", DensifyConfig(model=str(tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_user_error(llava, tmp_path):
    with pytest.raises(UserError, match="CUDA is not available"):
        densify(_images(), tmp_path / "dense.jsonl", _cfg(llava, device="cuda"))


def test_resuming_with_other_sampling_settings_is_a_user_error(llava, tmp_path):
    out = tmp_path / "dense.jsonl"
    densify(_images(2), out, _cfg(llava))

    with pytest.raises(UserError, match="other settings.*temperature: file 0.2, now 0.7"):
        densify(_images(), out, _cfg(llava, temperature=0.7))


def test_repeated_image_id_is_a_user_error(llava, tmp_path):
    images = _images(2) + _images(1)
    with pytest.raises(UserError, match="'img0.jpg' occurs twice"):
        densify(images, tmp_path / "dense.jsonl", _cfg(llava))


def _karpathy(root: Path) -> DataConfig:
    """A four-image Karpathy dataset on disk: two train images, one val, one test."""
    (root / "images").mkdir(parents=True)
    entries = []
    for k, (split, (_, array)) in enumerate(zip(("train", "train", "val", "test"), _images(4))):
        Image.fromarray(array).save(root / "images" / f"{k}.png")
        entries.append({"filename": f"{k}.png", "split": split, "imgid": k, "sentences": [{"raw": f"picture {k}"}]})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return DataConfig(source="karpathy", annotations=str(root / "dataset.json"), image_root=str(root / "images"), image_size=16)


def test_harness_captions_every_split_into_a_file_the_karpathy_source_reads_back(llava, tmp_path):
    data = _karpathy(tmp_path / "f30k")
    out = tmp_path / "dense.jsonl"

    stats = run_densify(data, _cfg(llava), out, tmp_path / "cache")

    assert (stats.written, stats.skipped) == (4, 0)
    splits = build_splits(data.model_copy(update={"dense_captions": str(out)}), tmp_path / "cache")
    texts = _texts(out)
    for split in splits.values():
        assert split.dense == [texts[image_id] for image_id in split.image_ids]


def test_harness_rejects_an_unknown_split_by_name(llava, tmp_path):
    with pytest.raises(UserError, match="unknown splits dev"):
        run_densify(_karpathy(tmp_path / "f30k"), _cfg(llava), tmp_path / "dense.jsonl", tmp_path / "cache", splits=("dev",))
