"""Real-data layouts (Karpathy JSON, VSE/LAPS text files) on small fixtures written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from core.data import build_splits, eval_view
from core.errors import UserError

SPLITS = {"train": 3, "restval": 1, "val": 2, "test": 2}  # Karpathy JSON split -> images


def colour_of(n: int) -> tuple[int, int, int]:
    return (40 * n % 256, 90 + 13 * n % 150, 200 - 11 * n % 180)


def write_png(path: Path, n: int, size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour_of(n)).save(path)


@pytest.fixture
def karpathy(tmp_path) -> dict:
    """A Karpathy JSON with 8 images (2 captions each) and their PNGs under images/."""
    images, n = [], 0
    for split, count in SPLITS.items():
        for _ in range(count):
            name = f"{n:03d}.png"
            write_png(tmp_path / "images" / "sub" / name, n)
            sentences = [{"raw": f"caption {k} of {name}", "tokens": []} for k in range(2)]
            images.append({"filename": name, "filepath": "sub", "split": split, "sentences": sentences, "imgid": n})
            n += 1
    ann = tmp_path / "dataset_test.json"
    ann.write_text(json.dumps({"images": images}))
    return {"annotations": str(ann), "image_root": str(tmp_path / "images"), "images": images, "dir": tmp_path}


def kdata(fx: dict, **kw) -> DataConfig:
    return DataConfig(source="karpathy", annotations=fx["annotations"], image_root=fx["image_root"], image_size=16, **kw)


@pytest.fixture
def laps(tmp_path) -> dict:
    """A LAPS folder: train ids one per caption, dev ids one per image (2 captions each), testall."""
    mapping, n = {}, 0
    root = tmp_path / "imgs"
    def add_images(count):
        nonlocal n
        ids = []
        for _ in range(count):
            mapping[str(100 + n)] = f"f{n}.png"
            write_png(root / f"f{n}.png", n)
            ids.append(str(100 + n))
            n += 1
        return ids
    ann = tmp_path / "ann"
    ann.mkdir()
    train = add_images(3)
    per_caption = [train[0], train[0], train[1], train[2], train[2]]
    (ann / "train_caps.txt").write_text("".join(f"train caption {k} of {i}\n" for k, i in enumerate(per_caption)))
    (ann / "train_ids.txt").write_text("\n".join(per_caption) + "\n")
    for file_split, count in (("dev", 2), ("testall", 2)):
        ids = add_images(count)
        (ann / f"{file_split}_caps.txt").write_text("".join(f"{file_split} {k} of {i}\n" for i in ids for k in range(2)))
        (ann / f"{file_split}_ids.txt").write_text("\n".join(ids) + "\n")
    (ann / "id_mapping.json").write_text(json.dumps(mapping))
    return {"annotations": str(ann), "image_root": str(root), "dir": tmp_path, "mapping": mapping}


def ldata(fx: dict, **kw) -> DataConfig:
    return DataConfig(source="laps", annotations=fx["annotations"], image_root=fx["image_root"], image_size=16, **kw)


def mean_colour(image: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(c)) for c in image.reshape(-1, 3).mean(0))


# ------------------------------------------------------------------------------------ karpathy
def test_karpathy_splits_merge_restval_into_train_and_map_captions(karpathy, tmp_path):
    splits = build_splits(kdata(karpathy), tmp_path / "cache")
    assert {name: len(s.images) for name, s in splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert {name: len(s.captions) for name, s in splits.items()} == {"train": 8, "val": 4, "test": 4}
    train = splits["train"]
    assert train.image_ids == ["sub/000.png", "sub/001.png", "sub/002.png", "sub/003.png"]
    for caption, image in zip(train.captions, train.caption_image):
        assert caption.endswith(Path(train.image_ids[image]).name)
    assert train.images[3].shape == (19, 19, 3)  # ceil(16 * 1.15)
    assert mean_colour(train.images[3]) == colour_of(3)  # decoded in order
    assert mean_colour(splits["test"].images[1]) == colour_of(7)
    assert train.dense is None


def test_the_evaluation_view_of_a_landscape_image_keeps_an_object_at_its_left_edge(karpathy, tmp_path):
    """Flickr30K images are mostly 500 x 375: a centre crop would cut the sides off, in training
    and in evaluation; the cache keeps the whole field of view (resized, as the released code)."""
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 20))  # a red object at the left edge
    image.save(Path(karpathy["image_root"]) / "sub" / "006.png")  # the first test image
    test = build_splits(kdata(karpathy), tmp_path / "cache")["test"]
    view = eval_view(test.images[0], 16).numpy()  # (3, 16, 16)
    assert view[0, :, 0].min() > 200 and view[1:, :, 0].max() < 60  # red down the whole left edge
    assert view[0, :, -1].max() < 60  # and black at the right


def test_evaluation_splits_keep_the_first_captions_per_image_sentences(karpathy, tmp_path):
    """The VSE protocol: 5 sentences per test image (Karpathy's COCO test has a few with 6)."""
    obj = json.loads(Path(karpathy["annotations"]).read_text())
    for image in obj["images"]:
        image["sentences"] = [{"raw": f"sentence {k} of {image['filename']}"} for k in range(6)]
    Path(karpathy["annotations"]).write_text(json.dumps(obj))
    splits = build_splits(kdata(karpathy), tmp_path / "cache")
    assert len(splits["test"].captions) == 2 * 5 and len(splits["val"].captions) == 2 * 5
    assert splits["test"].captions[:5] == [f"sentence {k} of 006.png" for k in range(5)]
    assert len(splits["train"].captions) == 4 * 6  # training keeps every sentence
    every = build_splits(kdata(karpathy, captions_per_image=None), tmp_path / "cache")
    assert len(every["test"].captions) == 2 * 6


def test_karpathy_missing_image_file_is_named(karpathy, tmp_path):
    (Path(karpathy["image_root"]) / "sub" / "005.png").unlink()
    (Path(karpathy["image_root"]) / "sub" / "001.png").unlink()
    with pytest.raises(UserError, match=r"2 image files are missing.*train: 1 of 4.*001\.png.*val: 1 of 2.*005\.png"):
        build_splits(kdata(karpathy), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()]  # nothing half-written


def test_corrupt_images_are_all_reported_after_the_pass(karpathy, tmp_path):
    for name in ("002.png", "006.png"):
        (Path(karpathy["image_root"]) / "sub" / name).write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"2 image files are unreadable or corrupt: .*002\.png.*006\.png"):
        build_splits(kdata(karpathy), tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_karpathy_empty_split_is_a_user_error(karpathy, tmp_path):
    obj = json.loads(Path(karpathy["annotations"]).read_text())
    obj["images"] = [im for im in obj["images"] if im["split"] != "val"]
    Path(karpathy["annotations"]).write_text(json.dumps(obj))
    with pytest.raises(UserError, match="empty splits.*val"):
        build_splits(kdata(karpathy), tmp_path / "cache")


def test_karpathy_needs_image_root(karpathy, tmp_path):
    data = DataConfig(source="karpathy", annotations=karpathy["annotations"])
    with pytest.raises(UserError, match="data.image_root is required"):
        build_splits(data, tmp_path / "cache")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dense_captions_matched_by_file_name_key(karpathy, tmp_path):
    rows = [{"image": im["filename"], "text": f"dense {im['filename']}", "model_id": "llava"} for im in karpathy["images"]]
    dense = write_jsonl(tmp_path / "dense.jsonl", rows[::-1])  # order does not matter with keys
    splits = build_splits(kdata(karpathy, dense_captions=dense), tmp_path / "cache")
    for split in splits.values():
        assert split.dense == [f"dense {Path(i).name}" for i in split.image_ids]


def test_unkeyed_dense_lines_follow_train_order(karpathy, tmp_path):
    train = [im["filename"] for im in karpathy["images"] if im["split"] in ("train", "restval")]
    dense = write_jsonl(tmp_path / "d.jsonl", [{"text": f"long {n}", "model_id": "m", "metadata": {}} for n in train])
    splits = build_splits(kdata(karpathy, dense_captions=dense), tmp_path / "cache")
    assert splits["train"].dense == [f"long {n}" for n in train]
    assert splits["val"].dense is None


def test_missing_dense_caption_is_named_unless_skipped(karpathy, tmp_path):
    rows = [{"image_id": im["imgid"], "text": f"dense {im['imgid']}"} for im in karpathy["images"] if im["imgid"] != 1]
    dense = write_jsonl(tmp_path / "dense.jsonl", rows)
    with pytest.raises(UserError, match=r"dense captions missing for 1 of 4 train images.*sub/001\.png.*skip_missing_dense"):
        build_splits(kdata(karpathy, dense_captions=dense), tmp_path / "cache")
    splits = build_splits(kdata(karpathy, dense_captions=dense, skip_missing_dense=True), tmp_path / "cache")
    train = splits["train"]
    assert train.image_ids == ["sub/000.png", "sub/002.png", "sub/003.png"]
    assert train.dense == ["dense 0", "dense 2", "dense 3"]
    assert len(train.captions) == 6 and "001.png" not in " ".join(train.captions)
    for caption, image in zip(train.captions, train.caption_image):
        assert caption.endswith(Path(train.image_ids[image]).name)
    assert mean_colour(train.images[1]) == colour_of(2)


def test_dense_line_naming_unknown_image_is_a_user_error(karpathy, tmp_path):
    rows = [{"image": im["filename"], "text": "d"} for im in karpathy["images"]] + [{"image": "nope.png", "text": "d"}]
    dense = write_jsonl(tmp_path / "dense.jsonl", rows)
    with pytest.raises(UserError, match="1 lines name unknown images: 'nope.png'"):
        build_splits(kdata(karpathy, dense_captions=dense), tmp_path / "cache")


# ---------------------------------------------------------------------------------------- laps
def test_laps_reads_per_caption_and_per_image_ids(laps, tmp_path):
    splits = build_splits(ldata(laps), tmp_path / "cache")
    assert {name: len(s.images) for name, s in splits.items()} == {"train": 3, "val": 2, "test": 2}
    train, val = splits["train"], splits["val"]
    assert train.image_ids == ["100", "101", "102"]
    assert train.caption_image.tolist() == [0, 0, 1, 2, 2]
    assert val.image_ids == ["103", "104"]
    assert val.caption_image.tolist() == [0, 0, 1, 1]
    assert val.captions[2] == "dev 0 of 104"
    assert mean_colour(val.images[1]) == colour_of(4)
    assert splits["test"].captions[0].startswith("testall")


def test_laps_unknown_id_is_named(laps, tmp_path):
    ann = Path(laps["annotations"])
    (ann / "dev_ids.txt").write_text("103\n999\n")
    with pytest.raises(UserError, match=r"1 id lines name images not in id_mapping.json: dev_ids.txt:2 id 999"):
        build_splits(ldata(laps), tmp_path / "cache")


def test_laps_missing_dev_split_is_named(laps, tmp_path):
    (Path(laps["annotations"]) / "dev_caps.txt").unlink()
    with pytest.raises(UserError, match="missing dev_caps.txt"):
        build_splits(ldata(laps), tmp_path / "cache")


def test_laps_empty_split_is_a_user_error(laps, tmp_path):
    ann = Path(laps["annotations"])
    (ann / "dev_caps.txt").write_text("")
    (ann / "dev_ids.txt").write_text("")
    with pytest.raises(UserError, match="empty splits.*val"):
        build_splits(ldata(laps), tmp_path / "cache")


def test_laps_missing_and_corrupt_images(laps, tmp_path):
    root = Path(laps["image_root"])
    (root / "f0.png").unlink()
    with pytest.raises(UserError, match=r"1 image files are missing.*f0\.png"):
        build_splits(ldata(laps), tmp_path / "cache")
    write_png(root / "f0.png", 0)
    (root / "f4.png").write_bytes((root / "f4.png").read_bytes()[:40])  # truncated PNG
    with pytest.raises(UserError, match=r"1 image files are unreadable or corrupt: .*f4\.png"):
        build_splits(ldata(laps), tmp_path / "cache")


def test_laps_dense_files_per_split_in_line_order(laps, tmp_path):
    d = laps["dir"]
    write_jsonl(d / "x_train.jsonl", [{"text": f"dense train {k}"} for k in range(3)])
    write_jsonl(d / "x_dev.jsonl", [{"text": f"dense dev {k}"} for k in range(2)])
    splits = build_splits(ldata(laps, dense_captions=str(d / "x_{split}.jsonl")), tmp_path / "cache")
    assert splits["train"].dense == ["dense train 0", "dense train 1", "dense train 2"]
    assert splits["val"].dense == ["dense dev 0", "dense dev 1"]
    assert splits["test"].dense is None  # no x_testall.jsonl


def test_dense_line_count_mismatch_is_a_user_error(laps, tmp_path):
    d = laps["dir"]
    write_jsonl(d / "x_train.jsonl", [{"text": "only one"}])
    with pytest.raises(UserError, match="1 lines for 3 images"):
        build_splits(ldata(laps, dense_captions=str(d / "x_{split}.jsonl")), tmp_path / "cache")
