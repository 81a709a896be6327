import copy
import math

import pytest
import torch
from torch import nn

from clip_cl import RKRConfig, RKRTrainer
from clip_cl.features import image_features, text_features, tokenize
from clip_cl.methods import get_method
from clip_cl.tuners import TUNERS, get_tuner
from clip_cl.tuners.rkr import (RKRLinear, RKRTunerConfig, inject_rkr, load_rkr_state_dict, merge_rkr, rkr_layers,
                                rkr_state_dict, unload_rkr, unmerge_rkr)
from clip_cl.variants import tower_of
from helpers import collate


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1)
    base.update(kw)
    return RKRConfig(**base)


def features(model, tokenizer, seed=0):
    """Image and text features of fixed inputs (no normalisation, so nothing hides a difference)."""
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    tokens = tokenize(tokenizer, ["a photo of a cat", "this is a photo of trouser in the scene ."])
    with torch.no_grad():
        return image_features(model, pixels, normalize=False), text_features(model, **tokens, normalize=False)


@torch.no_grad()
def randomise_rectifiers(model, seed=0):
    """Non-trivial rectifiers (as after training): B A != 0 and s != 1."""
    g = torch.Generator().manual_seed(seed)
    for layer in rkr_layers(model).values():
        layer.rkr_B.copy_(0.05 * torch.randn(layer.rkr_B.shape, generator=g))
        layer.rkr_A.copy_(0.05 * torch.randn(layer.rkr_A.shape, generator=g))
        layer.rkr_scale.copy_(1 + 0.1 * torch.randn(layer.rkr_scale.shape, generator=g))


# ---------------------------------------------------------------- the layer, as pure tensor math
def test_rkr_linear_matches_reference_formula():
    base = nn.Linear(6, 5)
    layer = RKRLinear(base, r=2)
    with torch.no_grad():
        layer.rkr_B.normal_()
        layer.rkr_scale.uniform_(0.5, 1.5)
    x = torch.randn(4, 6)
    # independent reference: y = s * ((W + B A) x + b), i.e. the scaling applies to the bias too
    w_rect = base.weight + layer.rkr_B @ layer.rkr_A
    ref = (x @ w_rect.T + base.bias) * layer.rkr_scale
    assert torch.allclose(layer(x), ref, atol=1e-6)
    # merging writes exactly that affine map into a plain nn.Linear
    layer.merge()
    assert torch.allclose(base.weight, layer.rkr_scale[:, None] * w_rect.detach(), atol=1e-6)
    assert torch.allclose(layer(x), ref, atol=1e-5)


@pytest.mark.parametrize("init", ["lora", "cl-clip"])
def test_rkr_linear_starts_as_identity(init):
    base = nn.Linear(8, 8)
    layer = RKRLinear(base, r=4, init=init)
    assert torch.equal(layer.rkr_B @ layer.rkr_A, torch.zeros(8, 8)) and torch.equal(layer.rkr_scale, torch.ones(8))
    random = layer.rkr_A if init == "lora" else layer.rkr_B
    assert random.abs().sum() > 0  # the other factor is random, so the first step has a gradient
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), base(x))
    assert not base.weight.requires_grad and layer.rkr_A.requires_grad


# ---------------------------------------------------------------- the tuner on CLIP
@pytest.mark.parametrize("init", ["lora", "cl-clip"])
def test_exact_at_initialisation(tiny, init):
    model, processor = tiny
    img, txt = features(model, processor.tokenizer)
    names = inject_rkr(model, RKRTunerConfig(init=init))
    img2, txt2 = features(model, processor.tokenizer)
    assert torch.equal(img, img2) and torch.equal(txt, txt2)
    # every nn.Linear of both towers, projections included: 2 layers x 6 linears x 2 towers + 2 projections
    assert len(names) == 26 and "visual_projection" in names and "text_projection" in names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".rkr_" in n for n in trainable)


def test_merge_export_and_unmerge(tiny, tmp_path):
    model, processor = tiny
    keys = list(model.state_dict())
    original = {k: v.clone() for k, v in model.state_dict().items()}
    inject_rkr(model)
    randomise_rectifiers(model)
    img, txt = features(model, processor.tokenizer)

    # merge in place, wrappers kept: same function
    merge_rkr(model, unload=False)
    assert all(layer.merged for layer in rkr_layers(model).values())
    img_m, txt_m = features(model, processor.tokenizer)
    assert torch.allclose(img, img_m, atol=1e-5) and torch.allclose(txt, txt_m, atol=1e-5)

    # unmerge restores the original weights and the unmerged function
    unmerge_rkr(model)
    for name, layer in rkr_layers(model).items():
        assert torch.allclose(layer.base_layer.weight, original[f"{name}.weight"], atol=1e-6)
        if layer.base_layer.bias is not None:
            assert torch.allclose(layer.base_layer.bias, original[f"{name}.bias"], atol=1e-6)
    img_u, txt_u = features(model, processor.tokenizer)
    assert torch.allclose(img, img_u, atol=1e-5) and torch.allclose(txt, txt_u, atol=1e-5)

    # merge + unload: a plain CLIPModel with the original keys, exported and reloaded as safetensors
    merge_rkr(model)
    assert not rkr_layers(model) and list(model.state_dict()) == keys
    model.save_pretrained(tmp_path / "export")
    from transformers import CLIPModel

    reloaded = CLIPModel.from_pretrained(tmp_path / "export").eval()
    img_r, txt_r = features(reloaded, processor.tokenizer)
    assert torch.allclose(img, img_r, atol=1e-5) and torch.allclose(txt, txt_r, atol=1e-5)


def test_unload_without_merge_restores_base(tiny):
    model, processor = tiny
    img, txt = features(model, processor.tokenizer)
    inject_rkr(model)
    randomise_rectifiers(model)
    unload_rkr(model)
    img2, txt2 = features(model, processor.tokenizer)
    assert not rkr_layers(model) and torch.equal(img, img2) and torch.equal(txt, txt2)


def test_state_dict_roundtrip_with_safetensors(tiny, pristine_tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    model, processor = tiny
    inject_rkr(model, RKRTunerConfig(towers=("image",)))
    randomise_rectifiers(model)
    sd = rkr_state_dict(model)
    assert sd and all(k.rsplit(".", 1)[-1] in ("rkr_A", "rkr_B", "rkr_scale") for k in sd)
    assert len(sd) == 3 * 13  # 12 vision linears + visual_projection
    save_file(sd, str(tmp_path / "rkr.safetensors"))
    img, txt = features(model, processor.tokenizer)

    other = copy.deepcopy(pristine_tiny[0])
    inject_rkr(other, RKRTunerConfig(towers=("image",)))
    loaded = load_rkr_state_dict(other, load_file(str(tmp_path / "rkr.safetensors")))
    assert sorted(loaded) == sorted(sd)
    img2, txt2 = features(other, processor.tokenizer)
    assert torch.equal(img, img2) and torch.equal(txt, txt2)
    with pytest.raises(KeyError, match="does not match"):
        load_rkr_state_dict(other, {"nope.rkr_A": torch.zeros(1)})


def test_inject_twice_and_bad_config(tiny):
    model, _ = tiny
    inject_rkr(model)
    with pytest.raises(ValueError, match="already has RKR rectifiers"):
        inject_rkr(model)
    with pytest.raises(ValueError, match="towers"):
        RKRTunerConfig(towers=("audio",))
    with pytest.raises(ValueError, match="init"):
        RKRTunerConfig(init="xavier")


def test_registries():
    assert get_tuner("rkr") is TUNERS["rkr"] and TUNERS["rkr"].layer_cls is RKRLinear
    spec = get_method("rkr")
    assert spec.config_cls is RKRConfig and spec.trainer_cls is RKRTrainer
    assert RKRConfig(output_dir="x", use_cpu=True).learning_rate == 1e-5 and RKRTrainer._paper["id"] == "2103.16597"


# ---------------------------------------------------------------- the trainer
@pytest.mark.parametrize("variant", ["WM", "IO", "TO"])
def test_trainer_rectifies_trainable_towers_only(tmp_path, tiny, random_images, variant):
    model, processor = tiny
    trainer = RKRTrainer(model=model, args=make_args(tmp_path, variant=variant),
                         train_dataset=random_images(8, [0, 1]), processing_class=processor,
                         class_names=["a", "b"], data_collator=collate)
    assert trainer.model is model  # injected in place
    towers = {tower_of(n + ".") for n in rkr_layers(model)}
    assert towers == {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".rkr_" in n for n in trainable)
    assert {tower_of(n) for n in trainable} == towers


def test_training_moves_only_rectifiers_then_merges(tmp_path, tiny, random_images):
    model, processor = tiny
    keys = list(model.state_dict())
    args = make_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = RKRTrainer(model=model, args=args, train_dataset=random_images(8, [3, 7]), processing_class=processor,
                         class_names=["cat", "dog"], class_ids=[3, 7], data_collator=collate)
    trainer.on_session_end = lambda: None  # look at the model before the merge
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".rkr_" in k for k in moved)  # base weights bitwise unchanged
    assert any(k.endswith("rkr_scale") for k in moved) and any(k.endswith("rkr_B") for k in moved)
    img, txt = features(model, processor.tokenizer)

    RKRTrainer.on_session_end(trainer)  # what train() does at the end of a session
    assert trainer.model is model and not rkr_layers(model) and list(model.state_dict()) == keys
    img_m, txt_m = features(model, processor.tokenizer)
    assert torch.allclose(img, img_m, atol=1e-5) and torch.allclose(txt, txt_m, atol=1e-5)

    # the next session (a new trainer on the same model) adds fresh rectifiers on top of the merged weights
    trainer2 = RKRTrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=random_images(4, [0]),
                          processing_class=processor, class_names=["x"], data_collator=collate)
    assert all(torch.equal(layer.rkr_scale, torch.ones_like(layer.rkr_scale)) for layer in rkr_layers(model).values())
    img_2, _ = features(model, processor.tokenizer)
    assert torch.equal(img_m, img_2)
    trainer2.train()
    assert not rkr_layers(model) and list(model.state_dict()) == keys


def test_resume_inside_a_session(tmp_path, pristine_tiny, random_images):
    """A Trainer checkpoint holds base weights + rectifiers; a resumed trainer re-injects, loads and finishes."""

    def trainer_for(**kw):
        model = copy.deepcopy(pristine_tiny[0])
        args = make_args(tmp_path, output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, **kw)
        return RKRTrainer(model=model, args=args, train_dataset=random_images(8, [0, 1]),
                          processing_class=pristine_tiny[1], class_names=["a", "b"], data_collator=collate), model

    trainer, full = trainer_for(save_strategy="steps", save_steps=1, save_total_limit=None)
    trainer.train()  # two steps, a checkpoint after each
    trainer, resumed = trainer_for()
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert trainer.state.global_step == 2 and not rkr_layers(resumed)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_wrong_config_type(tmp_path, tiny, random_images):
    from clip_cl import CLIPCLConfig

    model, processor = tiny
    with pytest.raises(TypeError, match="needs a RKRConfig"):
        RKRTrainer(model=model, args=CLIPCLConfig(output_dir=str(tmp_path), use_cpu=True),
                   train_dataset=random_images(2, [0]), processing_class=processor, class_names=["a"])
