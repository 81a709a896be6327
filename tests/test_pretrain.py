"""Contrastive pretraining (issue #8): the loss against explicit loops, multi-positive behaviour, the batch pipeline,
a few trainer steps on a tiny model with generated images, export/loading, and the embedded world-clip model."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_cl.pretrain import (
    WORLD_CLIP_CONFIG,
    CLIPPretrainTrainer,
    PretrainCollator,
    PretrainConfig,
    TimeBudgetCallback,
    TrainPart,
    WorldTrainDataset,
    clip_contrastive_loss,
    export_model,
    parse_pretrain_config,
    positive_targets,
)

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "examples" / "models" / "world-clip"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _reference_loss(img, txt, scale, groups=None):
    """CLIP's symmetric loss written with explicit Python loops (independent of the vectorised implementation)."""
    n = len(img)
    logits = [[scale * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    g = list(range(n)) if groups is None else [int(x) for x in groups]

    def direction(score):  # score(i, j): the logit of query i against candidate j
        total = 0.0
        for i in range(n):
            log_norm = math.log(sum(math.exp(score(i, k)) for k in range(n)))
            positives = [j for j in range(n) if g[j] == g[i]]
            total += -sum(score(i, j) - log_norm for j in positives) / len(positives)
        return total / n

    return (direction(lambda i, j: logits[i][j]) + direction(lambda i, j: logits[j][i])) / 2


def _embeds(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1))


@pytest.mark.parametrize("groups", [None, [0, 1, 0, 2, 1, 0], [5, 5, 5, 5, 5, 5]])
def test_contrastive_loss_matches_explicit_loops(groups):
    img, txt = _embeds()
    g = None if groups is None else torch.tensor(groups)
    got = clip_contrastive_loss(img, txt, 7.5, g)
    assert got.item() == pytest.approx(_reference_loss(img, txt, 7.5, groups), rel=1e-5)


def test_multi_positive_equals_plain_loss_when_groups_differ():
    img, txt = _embeds(seed=1)
    plain = clip_contrastive_loss(img, txt, 10.0)
    distinct = clip_contrastive_loss(img, txt, 10.0, torch.arange(6))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)


def test_positive_targets_rows_sum_to_one_and_symmetric():
    t = positive_targets(torch.tensor([3, 1, 3, 3, 1]))
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert torch.equal(t > 0, (t > 0).T)
    assert t[0, 2] == pytest.approx(1 / 3) and t[1, 4] == pytest.approx(1 / 2) and t[0, 1] == 0


def test_multi_positive_does_not_push_same_class_pairs_apart():
    # Two cat images and two cat captions (different templates) plus one dog pair: swapping the cat captions leaves
    # the multi-positive loss unchanged but changes the plain loss, which treats the other cat's text as a negative.
    img, txt = _embeds(n=3, seed=2)
    img = torch.cat([img, img[:1]])
    txt = torch.cat([txt, txt[1:2]])
    groups = torch.tensor([0, 0, 1, 0])
    swapped = txt[[1, 0, 2, 3]]
    assert clip_contrastive_loss(img, swapped, 10.0, groups).item() == pytest.approx(
        clip_contrastive_loss(img, txt, 10.0, groups).item(), rel=1e-6)
    assert clip_contrastive_loss(img, swapped, 10.0).item() != pytest.approx(
        clip_contrastive_loss(img, txt, 10.0).item(), rel=1e-3)
    # Along the other cat caption, a descent step moves image 0 closer with the multi-positive loss than with the
    # plain loss (orthonormal texts isolate that direction: the difference is scale * (T[0, 1] + T[1, 0])).
    ortho = torch.eye(8, dtype=torch.float64)[:4]
    pulls = []
    for g in (groups, None):
        img0 = img.clone().requires_grad_(True)
        clip_contrastive_loss(img0, ortho, 10.0, g).backward()
        pulls.append(float(-img0.grad[0] @ ortho[1]))
    assert pulls[0] - pulls[1] == pytest.approx(10.0 * (1 / 3 + 1 / 3) / (2 * 4), rel=1e-6)  # mean of 2 directions over B=4


def _parts(n_class=24, n_caption=6, size=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = TrainPart("shapes", torch.randint(0, 256, (n_class, 3, size, size), dtype=torch.uint8, generator=g),
                    labels=torch.arange(n_class) % 3, class_names=["cat", "dog", "truck"])
    cap = TrainPart("captions", torch.randint(0, 256, (n_caption, 3, size, size), dtype=torch.uint8, generator=g),
                    captions=[[f"a red square number {i}.", f"square {i} on grey"] for i in range(n_caption)],
                    repeat=2)
    return [cls, cap]


def test_world_dataset_and_collator(tiny):
    _, processor = tiny
    ds = WorldTrainDataset(_parts(), ["a photo of a {}.", "a blurry photo of the {}."])
    assert len(ds) == 24 + 2 * 6 and ds.part_sizes() == {"shapes": 24, "captions": 12}
    row = ds[0]
    assert row["text"] in ("a photo of a cat.", "a blurry photo of the cat.") and row["positive_key"] == "class:cat"
    assert ds[24]["positive_key"] == "image:captions:0"
    assert ds[24]["text"] in ("a red square number 0.", "square 0 on grey")
    collator = PretrainCollator(processor.tokenizer, 32, MEAN, STD, train=True)
    rows = [ds[i] for i in (0, 1, 3, 24, 30)]  # 0 and 3 are cats, 1 a dog; 24 and 30 the same captioned image
    batch = collator(rows)
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 5
    g = batch["positive_groups"].tolist()
    assert g[0] == g[2] != g[1] and g[3] != g[0]
    # Captioned pairs are grouped by image (the default): the same image drawn twice is one group, whatever captions.
    assert g[3] == g[4]
    # caption_positives="text" (the first world-clip's recipe): one group only with the identical caption.
    by_text = WorldTrainDataset(_parts(), ["a photo of a {}."], caption_positives="text")
    assert by_text[24]["positive_key"] in ("text:a red square number 0.", "text:square 0 on grey")
    with pytest.raises(ValueError, match="caption_positives"):
        WorldTrainDataset(_parts(), ["a photo of a {}."], caption_positives="caption")
    # Centre crop of an evaluation collator is deterministic and inside the stored image.
    center = PretrainCollator(processor.tokenizer, 32, MEAN, STD, train=False).crop(ds.parts[0].pixels[:2])
    assert torch.equal(center, ds.parts[0].pixels[:2, :, 2:34, 2:34])


def test_pretrain_a_few_steps_changes_weights_and_clamps_temperature(tmp_path, tiny):
    model, processor = tiny
    model.train()
    with torch.no_grad():
        model.logit_scale.fill_(6.0)  # above ln(100): must be clamped before the first step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = PretrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                          learning_rate=1e-3, warmup_steps=0, logging_steps=1, use_cpu=True, disable_tqdm=True,
                          torch_num_threads=None, seed=0)
    ds = WorldTrainDataset(_parts(), ["a photo of a {}."])
    collator = PretrainCollator(processor.tokenizer, 32, MEAN, STD)
    trainer = CLIPPretrainTrainer(model=model, args=args, train_dataset=ds, data_collator=collator,
                                  processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all("logit_scale" in h for h in trainer.state.log_history if "loss" in h)
    assert model.logit_scale.item() <= math.log(100) + 1e-4
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("vision_model" in n for n in changed) and any("text_model" in n for n in changed)
    decay = set(trainer.get_decay_parameter_names(model))
    assert "logit_scale" not in decay and not any(n.endswith("bias") for n in decay)
    assert "vision_model.embeddings.class_embedding" not in decay


def test_time_budget_callback_stops():
    cb = TimeBudgetCallback(0.0)
    control = SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(None, None, control)
    cb.on_step_end(None, SimpleNamespace(global_step=1), control)
    assert control.should_training_stop and cb.stopped_at == 1


def test_export_half_precision_loads_as_float32(tmp_path, tiny):
    from safetensors import safe_open

    from clip_cl.models import load_clip

    model, processor = tiny
    out = export_model(model, processor, tmp_path / "export", "float16", card="# card\n")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded, proc = load_clip(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.allclose(loaded.logit_scale, model.logit_scale, atol=1e-2)
    assert (out / "README.md").read_text() == "# card\n" and proc.tokenizer("a cat")["input_ids"][0] == 49406


def test_config_from_yaml_and_cli(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("max_steps: 7\nlearning_rate: 0.002\ntrain_parts: {cifar10_train: 1}\n"
                   "model_config:\n  vision_config: {num_hidden_layers: 2}\noutput_dir: %s\n" % (tmp_path / "o"))
    config = parse_pretrain_config(["--config", str(cfg), "--max_steps", "9", "--multi_positive", "false"])
    assert config.max_steps == 9 and config.learning_rate == 0.002 and config.multi_positive is False
    assert config.train_parts == {"cifar10_train": 1}
    assert config.model_overrides()["text_config"]["max_position_embeddings"] == 32
    with pytest.raises(Exception, match="max_step"):
        cfg.write_text("max_step: 3\n")
        parse_pretrain_config(["--config", str(cfg)])


@pytest.mark.skipif(not (EMBEDDED / "model.safetensors").is_file(), reason="embedded model not built yet")
def test_embedded_world_clip_loads_with_expected_config():
    from clip_cl.models import load_clip

    model, processor = load_clip(EMBEDDED)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    vc, tc = model.config.vision_config, model.config.text_config
    for key, value in WORLD_CLIP_CONFIG["vision_config"].items():
        assert getattr(vc, key) == value, key
    for key, value in WORLD_CLIP_CONFIG["text_config"].items():
        assert getattr(tc, key) == value, key
    assert tc.vocab_size == 49408 and model.config.projection_dim == WORLD_CLIP_CONFIG["projection_dim"]
    assert model.logit_scale.exp().item() <= 100.0 + 1e-3
    assert (EMBEDDED / "model.safetensors").stat().st_size < 16 * 2**20
    assert processor.image_processor.crop_size["height"] == vc.image_size
    # The card states the numbers of the run that made the checkpoint.
    assert "Held-out results" in (EMBEDDED / "README.md").read_text()


@pytest.mark.data
def test_prepare_world_is_deterministic_and_disjoint(tmp_path):
    import datasets

    from clip_cl.pretrain import prepare_world
    from tests.conftest import SHARED_DATA

    world = prepare_world(SHARED_DATA, tmp_path / "world", seed=0)
    again = prepare_world(SHARED_DATA, tmp_path / "world", seed=0)  # up to date: returned without rewriting
    assert again == json.loads((tmp_path / "world" / "world.json").read_text())
    parts = world["parts"]
    assert parts["pascal_heldout"]["rows"] == 200 and parts["pascal_train"]["rows"] == 800
    assert parts["coco_heldout"]["rows"] == 159 and parts["coco_heldout"]["captions"] == 795
    # The many-class zero-shot set: 10 of the 50 Tiny-ImageNet (train) images of each of the 200 classes.
    assert parts["tiny_imagenet_heldout"]["rows"] == 2000 and parts["tiny_imagenet_train"]["rows"] == 8000
    assert parts["tiny_imagenet_heldout"]["role"] == "heldout" and len(world["tiny_imagenet_heldout_indices"]) == 2000
    ti_file = tmp_path / "world" / parts["tiny_imagenet_heldout"]["path"]
    ti_held = datasets.load_dataset("parquet", data_files={"x": str(ti_file)}, split="x")
    assert ti_held.features["label"].num_classes == 200 and sorted(set(ti_held["label"])) == list(range(200))
    assert all(n == 10 for n in np.bincount(ti_held["label"]))
    # No held-out or outside image is a training image (by the SHA-256 of the encoded bytes).
    assert world["disjoint"]["train_images"] == 58880
    assert world["disjoint"]["checked"] == {"cifar10_test": 10000, "fashion_mnist_test": 10000,
                                            "tiny_imagenet_heldout": 2000, "pascal_heldout": 200, "coco_heldout": 159}
    held = datasets.load_dataset("parquet", data_files={"x": str(tmp_path / "world" / parts["pascal_heldout"]["path"])},
                                 split="x")
    train = datasets.load_dataset("parquet", data_files={"x": str(tmp_path / "world" / parts["pascal_train"]["path"])},
                                  split="x")
    assert sorted(held.unique("label")) == list(range(20)) and len(held.filter(lambda r: r["label"] == 0)) == 10
    assert not set(map(tuple, held["captions"])) & set(map(tuple, train["captions"]))
    assert isinstance(held.features["image"], datasets.Image)


def test_check_disjoint_catches_a_training_image_in_a_heldout_part(tmp_path):
    import datasets
    from PIL import Image as PILImage

    from clip_cl.pretrain import check_disjoint

    def write(name, colours):
        images = [PILImage.new("RGB", (4, 4), c) for c in colours]
        ds = datasets.Dataset.from_dict({"image": images, "label": list(range(len(images)))},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.Value("int64")}))
        (tmp_path / name).mkdir()
        ds.to_parquet(str(tmp_path / name / "x.parquet"))
        return {"path": f"{name}/x.parquet", "role": "heldout" if "held" in name else "train"}

    parts = {"a_train": write("a_train", ["red", "green"]), "a_held": write("a_held", ["blue"])}
    assert check_disjoint(tmp_path, parts) == {"train_images": 2, "checked": {"a_held": 1}}
    parts["b_held"] = write("b_held", ["white", "green"])  # "green" is also a training image
    with pytest.raises(ValueError, match="b_held.*shares 1 image"):
        check_disjoint(tmp_path, parts)
