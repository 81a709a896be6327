import math
import sys

import pytest
import torch

pytest.importorskip("peft")

from clip_cl import LoRAConfig, LoRATrainer  # noqa: E402
from clip_cl.features import image_features, text_features, tokenize  # noqa: E402
from clip_cl.methods import get_method  # noqa: E402
from clip_cl.methods.lora import inject_lora, merge_and_unload_lora  # noqa: E402
from clip_cl.methods.lora.trainer import lora_layers  # noqa: E402
from clip_cl.variants import tower_of  # noqa: E402
from helpers import collate


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1)
    base.update(kw)
    return LoRAConfig(**base)


def features(model, tokenizer, seed=0):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    tokens = tokenize(tokenizer, ["a photo of a cat", "this is a photo of trouser in the scene ."])
    with torch.no_grad():
        return image_features(model, pixels, normalize=False), text_features(model, **tokens, normalize=False)


def test_registered_with_defaults():
    spec = get_method("lora")
    assert spec.config_cls is LoRAConfig and spec.trainer_cls is LoRATrainer
    args = LoRAConfig(output_dir="x", use_cpu=True)
    assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (8, 16, 0.0)
    assert args.lora_target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.mark.parametrize("variant", ["IO", "TO"])  # WM: test_training_moves_only_lora_then_merges_to_plain_clip
def test_exact_at_init_and_only_trainable_towers(tmp_path, tiny, random_images, variant):
    model, processor = tiny
    img, txt = features(model, processor.tokenizer)
    trainer = LoRATrainer(model=model, args=make_args(tmp_path, variant=variant),
                          train_dataset=random_images(4, [0, 1]), processing_class=processor,
                          class_names=["a", "b"], data_collator=collate)
    assert trainer.model is model  # injected in place, no PeftModel wrapper
    img2, txt2 = features(model, processor.tokenizer)
    assert torch.equal(img, img2) and torch.equal(txt, txt2)
    towers = {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    adapted = lora_layers(model)
    assert {tower_of(n + ".") for n in adapted} == towers
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert len(adapted) == 8 * len(towers)  # 4 projections x 2 layers per tower
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_training_moves_only_lora_then_merges_to_plain_clip(tmp_path, tiny, random_images):
    from transformers import CLIPModel

    model, processor = tiny
    original = {k: v.clone() for k, v in model.state_dict().items()}
    keys = list(original)
    args = make_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = LoRATrainer(model=model, args=args, train_dataset=random_images(8, [3, 7]), processing_class=processor,
                          class_names=["cat", "dog"], class_ids=[3, 7], data_collator=collate)
    trainer.on_session_end = lambda: None  # look at the model before the merge
    assert len(lora_layers(model)) == 16 and {tower_of(n + ".") for n in lora_layers(model)} == {"image", "text"}
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".lora_" in k for k in moved)  # base weights bitwise unchanged
    img, txt = features(model, processor.tokenizer)

    LoRATrainer.on_session_end(trainer)
    assert type(model) is CLIPModel and not lora_layers(model) and "peft_config" not in vars(model)
    assert list(model.state_dict()) == keys
    img_m, txt_m = features(model, processor.tokenizer)
    assert torch.allclose(img, img_m, atol=1e-5) and torch.allclose(txt, txt_m, atol=1e-5)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "out_proj") for k in changed)

    # a second session on the same model: fresh adapters, merged again at the end of train()
    trainer2 = LoRATrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=random_images(4, [0]),
                           processing_class=processor, class_names=["x"], data_collator=collate)
    assert lora_layers(model)
    trainer2.train()
    assert not lora_layers(model) and list(model.state_dict()) == keys


def test_all_linear_and_custom_targets(tiny):
    model, _ = tiny
    names = inject_lora(model, ("text",), ["all-linear"], r=2, alpha=4)
    assert "text_projection" in names and len(names) == 13 and all(tower_of(n + ".") == "text" for n in names)
    merge_and_unload_lora(model)
    names = inject_lora(model, ("image",), ["mlp.fc1"], r=2, alpha=4)
    assert names == [f"vision_model.encoder.layers.{i}.mlp.fc1" for i in range(2)]
    with pytest.raises(ValueError, match="already has peft adapters"):
        inject_lora(model, ("image",), ["q_proj"])


def test_missing_peft_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail as if it were not installed
    assert get_method("lora").config_cls is LoRAConfig  # the method stays listed
    with pytest.raises(ImportError, match=r"pip install 'clip-cl\[peft\]'"):
        LoRAConfig(output_dir="x", use_cpu=True)
    from clip_cl.methods.lora import require_peft

    with pytest.raises(ImportError, match="needs the optional dependency peft"):
        require_peft()
