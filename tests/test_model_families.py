"""SigLIP and SigLIP 2 through the model adapter (clip_cl.adapters): features, tokenisation, VR-LwF pseudo-texts,
parameter groups, every method end to end, and an exported run in transformers' zero-shot pipeline."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clip_cl.adapters import ADAPTERS, get_adapter, naflex_inputs, size_for_patch_budget
from clip_cl.cli import train_main
from clip_cl.data import build_image_transform, normalize_pixels
from clip_cl.features import image_features, text_features, tokenize
from clip_cl.losses import sample_pseudo_texts, sigmoid_kd_loss
from clip_cl.methods import list_methods
from clip_cl.models import TINY_MODEL_NAMES, load_model, tiny_model
from clip_cl.tuners.targets import find_linear_targets
from clip_cl.variants import apply_variant

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
SIGLIPS = ("tiny-random-siglip", "tiny-random-siglip2")
TEXTS = ["this is a photo of a dog in the scene .", "cat", "a man riding a horse on the beach"]


def _image(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_adapter_features_equal_the_models_own(name):
    model, processor = tiny_model(name)
    image = _image()
    # The model's own path: its processor, then get_image_features / get_text_features.
    own_inputs = processor.image_processor(images=[image], return_tensors="pt")
    own_inputs = {k: v for k, v in own_inputs.items() if k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
    padding = {} if name == "tiny-random" else {"padding": "max_length", "max_length": 64}
    own_text = processor.tokenizer(TEXTS, return_tensors="pt", truncation=True, **({"padding": True} | padding))
    with torch.no_grad():
        own_image = model.get_image_features(**own_inputs).pooler_output
        own_txt = model.get_text_features(input_ids=own_text["input_ids"],
                                          attention_mask=own_text.get("attention_mask")).pooler_output
        # clip-cl's path: its evaluation transform, then the adapter.
        pixels = normalize_pixels(build_image_transform(processor.image_processor, train=False)(image)[None],
                                  processor.image_processor)
        ours_image = image_features(model, pixels, normalize=False)
        ours_txt = text_features(model, **tokenize(processor.tokenizer, TEXTS), normalize=False)
    torch.testing.assert_close(ours_image, own_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_txt, own_txt, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw", [(32, 32), (48, 32), (100, 30), (7, 9)])
def test_naflex_patch_budget_and_layout_match_the_siglip2_processor(hw):
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

    assert size_for_patch_budget(*hw, 8, 16) == tuple(get_image_size_for_max_num_patches(*hw, 8, 16))
    model, processor = tiny_model("tiny-random-siglip2")
    ip = processor.image_processor
    h, w = size_for_patch_budget(*hw, 8, 16)
    image = _image(1).resize((w, h))  # already at the budget size: no resize on either side
    ref = ip(images=[image], return_tensors="pt")
    pixels = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    ours = naflex_inputs(pixels[None], 8, 16)
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"].float(), atol=1e-5, rtol=0)
    assert torch.equal(ours["pixel_attention_mask"].long(), ref["pixel_attention_mask"].long())
    assert torch.equal(ours["spatial_shapes"].long(), ref["spatial_shapes"].long())


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_pseudo_texts_never_sample_special_ids_and_pad_as_the_family_requires(name):
    model, processor = tiny_model(name)
    tok = processor.tokenizer
    adapter = get_adapter(model)
    rules = adapter.pseudo_text_rules(tok, model)
    batch = sample_pseudo_texts(4000, 5, rules.allowed, rules.prefix, rules.suffix, rules.pad_id, rules.length,
                                rules.padding_side, generator=torch.Generator().manual_seed(0))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_frame = len(rules.prefix) + 5 + len(rules.suffix)
    words = ids[:, len(rules.prefix):len(rules.prefix) + 5]
    forbidden = set(tok.all_special_ids) | {tok.pad_token_id} | set(range(len(tok), model.config.text_config.vocab_size))
    forbidden |= {i for t, i in tok.get_vocab().items() if t in ("<pad>", "<unk>", "<mask>", "<bos>", "<eos>")}
    assert not (set(words.unique().tolist()) & forbidden)
    # The frame is the tokenizer's own: what it adds around real words.
    real = tokenize(tok, ["a photo"])
    if name == "tiny-random":  # CLIP: [bos, words, eos], no padding (the tower pools the first eos)
        assert ids.shape[1] == n_frame and bool(mask.all())
        assert (ids[:, 0] == tok.bos_token_id).all() and (ids[:, -1] == tok.eos_token_id).all()
    else:  # SigLIP families: every text padded to 64, the length real texts get
        assert ids.shape[1] == real["input_ids"].shape[1] == 64
        assert (ids[:, n_frame:] == tok.pad_token_id).all() and (mask[:, n_frame:] == 0).all()
        assert bool(mask[:, :n_frame].all())
        if rules.suffix:
            assert (ids[:, n_frame - 1] == rules.suffix[-1]).all()


def test_a_tokenizer_tagged_with_the_models_family_follows_its_rules():
    from transformers import PreTrainedTokenizerFast

    from clip_cl.adapters import tag_tokenizer
    from clip_cl.adapters.siglip import SIGLIP2_TOKENIZER_DIR

    model, _ = tiny_model("tiny-random-siglip2")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(SIGLIP2_TOKENIZER_DIR / "tokenizer.json"), pad_token="<pad>")
    assert tokenize(tok, ["a cat"])["input_ids"].shape[1] < 64  # a class of no family: padding to the longest
    tag_tokenizer(tok, model)
    assert tokenize(tok, ["a cat"])["input_ids"].shape[1] == 64


def test_unknown_models_fail_with_the_supported_families(tmp_path):
    with pytest.raises(TypeError, match="clip.*siglip.*siglip2"):
        get_adapter(torch.nn.Linear(2, 2))
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not supported.*siglip2"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", SIGLIPS)
def test_towers_and_linear_targets(name):
    model, _ = tiny_model(name)
    trainable = apply_variant(model, "IO")
    assert trainable and all(n.startswith("vision_model.") for n in trainable)
    assert not model.logit_bias.requires_grad and not model.logit_scale.requires_grad
    apply_variant(model, "WM", train_logit_scale=True)
    assert model.logit_bias.requires_grad and model.logit_scale.requires_grad
    names = find_linear_targets(model, ("image", "text"))
    # nn.MultiheadAttention reads out_proj.weight directly: a wrapper there would never run.
    assert "vision_model.head.attention.out_proj" not in names and "text_model.head" in names
    assert "text_model.head" not in find_linear_targets(model, ("text",), include_projections=False)
    assert all(n.startswith("text_model.") for n in find_linear_targets(model, ("text",), ["q_proj"]))


def test_sigmoid_distillation():
    s = torch.randn(4, 6, requires_grad=True)
    assert sigmoid_kd_loss(s, s.detach()).abs().item() < 1e-6
    loss = sigmoid_kd_loss(s, torch.randn(4, 6))
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    # CLIP keeps its softmax form; SigLIP families distil per-pair sigmoids.
    assert ADAPTERS["clip"].pair_loss == "softmax" and ADAPTERS["siglip"].pair_loss == ADAPTERS["siglip2"].pair_loss == "sigmoid"


def _train(out, model, method, *extra):
    more = []
    if method == "zscl":  # a reference image set: the CIFAR-10 sample
        more = ["--zscl_reference_dataset", json.dumps({"path": str(DATA / "cifar10"), "split": "test",
                                                        "max_samples": 8})]
    return train_main([
        "--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--method", method, "--model_name_or_path", model,
        "--output_dir", str(out), "--protocol", "mst", "--num_sessions", "2", "--max_steps", "1",
        "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
        "--max_eval_samples", "8", "--eval_before_training", "false", "--learning_rate", "1e-4",
        "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
        "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
        "--retrieval_datasets", "[]", *more, *extra])


@pytest.mark.parametrize("model_name", SIGLIPS)
@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_method_runs_two_sessions_on_siglip_families(tmp_path, model_name, method):
    out = tmp_path / method
    results = _train(out, model_name, method)
    assert results["status"] == "complete" and len(results["sessions"]) == 2
    if list_methods()[method].trainer_cls is None:  # Original: evaluation only
        return
    for session in results["sessions"]:
        assert session["train_steps"] == 1 and math.isfinite(session["train_loss"])
    plain = set(tiny_model(model_name)[0].state_dict())
    assert set(load_file(str(out / "model" / "model.safetensors"))) == plain  # adapters merged, nothing extra
    if method == "vr_lwf":  # the export loads back as its own family
        loaded, _ = load_model(out / "model")
        assert get_adapter(loaded) is get_adapter(tiny_model(model_name)[0])


def test_exported_siglip_run_gives_its_own_zero_shot_accuracy_in_the_transformers_pipeline(tmp_path):
    """The run's zero-shot top-1 (its template "this is a photo of {} .", the same 40 CIFAR-10 images) equals the
    accuracy of `pipeline("zero-shot-image-classification")` on the exported folder with that template."""
    from transformers import pipeline

    from clip_cl.data.specs import subsample
    import datasets

    out = tmp_path / "run"
    results = train_main([
        "--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--method", "ft", "--model_name_or_path",
        "tiny-random-siglip", "--output_dir", str(out), "--protocol", "ost", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--max_eval_samples", "8",
        "--eval_before_training", "false", "--learning_rate", "1e-3",
        "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
        "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test",
                                             "max_samples": 40}]),
        "--retrieval_datasets", "[]"])
    run_acc = results["sessions"][-1]["eval"]["zero_shot"]["cifar10"]["top1"]
    ds = datasets.load_dataset("parquet", data_files={"test": str(DATA / "cifar10" / "test.parquet")},
                               split="test")
    ds = subsample(ds, 40, 0)
    names = ds.features["label"].names
    template = results["config"]["zero_shot_templates"][0]
    classifier = pipeline("zero-shot-image-classification", model=str(out / "model"), device="cpu")
    preds = classifier([row["image"].convert("RGB") for row in ds], candidate_labels=names,
                       hypothesis_template=template)
    hits = [p[0]["label"] == names[y] for p, y in zip(preds, ds["label"])]
    assert 100.0 * sum(hits) / len(hits) == pytest.approx(run_acc, abs=1e-6)
    # Stronger than equal accuracies: the same prediction on every image (clip-cl's features of the export).
    from clip_cl.prompts import class_text_features

    model, processor = load_model(out / "model")
    transform = build_image_transform(processor.image_processor, train=False)
    with torch.no_grad():
        pixels = torch.stack([transform(row["image"].convert("RGB")) for row in ds])
        feats = image_features(model, normalize_pixels(pixels, processor.image_processor))
        text = class_text_features(model, processor.tokenizer, names, [template])
    ours = [names[i] for i in (feats @ text.t()).argmax(-1).tolist()]
    assert ours == [p[0]["label"] for p in preds]
