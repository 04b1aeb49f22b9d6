"""Config resolution: setting -> layers -> --set, with errors that name key, value and source."""

import pytest

from core.config import Config
from core.errors import UserError
from harness.config import SETTINGS_DIR, flatten, parse_set, resolve


def test_default_setting_is_cpu_small():
    config = resolve()
    assert config.data.source == "synthscenes"
    assert config.model.embed_dim == 128  # from cpu-small.yaml, not the paper-scale default


def test_later_layers_override_earlier_ones():
    config = resolve(
        overrides=["model.decoder.depth=6"],
        layers=[("base", {"model.decoder.depth": 1, "finetune.epochs": 7}), ("arm", {"model.decoder.depth": 3})],
    )
    assert config.model.decoder.depth == 6
    assert config.finetune.epochs == 7


def test_set_values_are_parsed_as_yaml_scalars():
    assert parse_set("runtime.seed=3") == ("runtime.seed", 3)
    assert parse_set("model.image.pretrained=null") == ("model.image.pretrained", None)
    assert parse_set("data.crop_scale=[0.5, 1.0]") == ("data.crop_scale", [0.5, 1.0])
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set("model.decoder.depth")


def test_nested_mapping_layers_merge_instead_of_replacing_sections():
    config = resolve(layers=[("arm", {"model.decoder": {"placement": "prefix"}})])
    assert config.model.decoder.placement == "prefix"
    assert config.model.decoder.num_tokens == 16  # kept from the setting


def test_typo_suggests_the_closest_key():
    with pytest.raises(UserError, match=r"did you mean 'model\.decoder'\?"):
        resolve(overrides=["model.decodr.depth=1"])


def test_bad_choice_names_key_value_and_source():
    with pytest.raises(UserError) as err:
        resolve(overrides={"model.decoder.placement": "middle"})
    message = str(err.value)
    assert "model.decoder.placement" in message and "'middle'" in message and "--set" in message


def test_cross_field_error_names_the_layer_that_caused_it():
    with pytest.raises(UserError, match=r"crop_scale.*\(from arm x\)"):
        resolve(layers=[("arm x", {"data.crop_scale": [0.9, 0.2]})])


def test_dict_valued_fields_take_any_subkey():
    config = resolve(overrides=["model.image.backbone_args.depth=2"])
    assert config.model.image.backbone_args["depth"] == 2


def test_unknown_setting_lists_known_settings():
    with pytest.raises(UserError, match="cpu-small"):
        resolve("cpu-smal")


def test_setting_extends_another(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: cpu-small\nfinetune:\n  epochs: 9\n")
    config = resolve(child)
    assert config.finetune.epochs == 9 and config.model.embed_dim == 128


def test_config_is_frozen_and_flattens_to_dotted_keys():
    config = Config()
    with pytest.raises(Exception):
        config.runtime.seed = 5
    flat = flatten(config)
    assert flat["model.decoder.depth"] == 4
    assert flat["model.image.backbone_args"] == {}  # dict fields stay leaves


@pytest.mark.parametrize("name", sorted(p.stem for p in SETTINGS_DIR.glob("*.yaml")))
def test_every_named_setting_resolves(name):
    assert isinstance(resolve(name), Config)


@pytest.mark.parametrize("setting", ["flickr30k-vit224", "flickr30k-swin224", "coco-vit224"])
def test_paper_scale_settings_use_the_released_size_augmentation_crops_and_dense_length(setting):
    config = resolve(setting)
    assert (config.model.image.drop_patches, config.model.image.drop_patches_prob) == (0.2, 0.8)
    assert config.data.crop_scale == (0.6, 1.0)  # a share of each side, as the released sampling
    assert config.model.text.dense_max_length >= 180  # the longest LLaVA caption of Flickr30K test
    assert config.data.captions_per_image == 5


def test_the_stage_ablation_distils_from_a_pretrained_text_encoder_on_the_embedded_default():
    """Without pre-training, 'align + distill' distils from the initial model: on cpu-small-minilm
    its text encoder is the real all-MiniLM-L6-v2, as BERT-base is at paper scale."""
    from harness.study import load_study

    study = load_study(SETTINGS_DIR.parent / "stages.yaml")
    config = resolve(study.setting)
    assert config.model.text.backbone == "all-MiniLM-L6-v2" and config.model.text.pretrained
    assert config.model.text.config_overrides == {}
    assert "all-MiniLM-L6-v2" in study.description


def test_every_config_choice_is_exactly_the_keys_of_the_registry_that_implements_it():
    """A Literal in core/config.py and the dict that looks its value up must list the same names:
    a choice without an implementation, or an implementation the config cannot select, fails here."""
    import typing

    from core import metric_keys
    from core.data.sources import SOURCES
    from core.losses import ALIGN_LOSSES, DISTILL_METRICS, STRUCTURE_METRICS
    from core.model import PLACEMENTS, POOLS, RESIDUALS
    from core.runtime import AUTO_PRECISION, Precision
    from core.train import SCHEDULES
    from harness.config_doc import config_keys

    registries = {
        "data.source": SOURCES,
        "model.image.pool": POOLS,
        "model.text.pool": POOLS,
        "model.decoder.placement": PLACEMENTS,
        "model.decoder.residual": RESIDUALS,
        "align.loss": ALIGN_LOSSES,
        "finetune.distill.metric": DISTILL_METRICS,
        "structure.metric": STRUCTURE_METRICS,
        "optim.schedule": SCHEDULES,
        "runtime.precision": ("auto", *typing.get_args(Precision)),
        "eval.select_metric": metric_keys.SELECTABLE,
        "eval.test_on": ("whole", "folds"),  # a switch read in harness/_stages.py
    }
    assert set(AUTO_PRECISION.values()) <= set(typing.get_args(Precision))
    choices = [k for k in config_keys() if " | " in k.type and "None" not in k.type]
    assert choices, "no Literal fields found"
    for key in choices:
        registry = next((r for suffix, r in registries.items() if key.key.endswith(suffix)), None)
        assert registry is not None, f"{key.key}: a choice with no registry in this test"
        assert key.type.split(" | ") == list(registry), key.key
