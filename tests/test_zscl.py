import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from clip_cl import ZSCLConfig, ZSCLTrainer
from clip_cl.merging import trainable_state
from clip_cl.methods import get_method
from clip_cl.losses import kd_kl_loss
from clip_cl.methods.zscl import l2_to_reference
from clip_cl.variants import tower_of
from helpers import collate, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(ROOT, "examples", "data", "coco_captions")


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=2, learning_rate=1e-2, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1, zscl_teacher="previous")
    base.update(kw)
    return ZSCLConfig(**base)


def make_trainer(tmp_path, tiny, random_images, n=8, reference=True, **kw):
    model, processor = tiny
    ref = random_images(6, [0], seed=1) if reference else None
    return ZSCLTrainer(model=model, args=make_args(tmp_path, **kw), train_dataset=random_images(n, [3, 7]),
                       processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7],
                       data_collator=collate, reference_dataset=ref)


def batch_of(random_images, n=4):
    ds = random_images(n, [3, 7], seed=5)
    return collate([ds[i] for i in range(n)])


# ---------------------------------------------------------------------------------------------------- config
def test_registered_with_zscl_defaults():
    spec = get_method("zscl")
    assert spec.config_cls is ZSCLConfig and spec.trainer_cls is ZSCLTrainer
    args = ZSCLConfig(output_dir="unused", use_cpu=True)
    assert args.label_smoothing_factor == 0.2 and args.zscl_temperature == 2.0
    assert (args.zscl_l2_weight, args.zscl_wa_every, args.zscl_teacher) == (1.0, 100, "initial")
    assert (args.zscl_image_loss_weight, args.zscl_text_loss_weight) == (1.0, 1.0)
    ref = ZSCLConfig(output_dir="unused", use_cpu=True, zscl_reference_dataset=f'{{"path": "{COCO}"}}')
    assert ref.zscl_reference_dataset == {"path": COCO, "name": "coco_captions", "split": "train"}
    with pytest.raises(ValueError, match="image_colum"):
        ZSCLConfig(output_dir="unused", use_cpu=True, zscl_reference_dataset={"path": COCO, "image_colum": "x"})
    from clip_cl import CLIPCLConfig

    with pytest.raises(TypeError, match="ZSCLConfig"):
        ZSCLTrainer(model=None, args=CLIPCLConfig(output_dir="unused", use_cpu=True))
    for bad in ({"zscl_teacher": "best"}, {"zscl_text_features": "both"}, {"zscl_wa_every": -1},
                {"zscl_temperature": 0}):
        with pytest.raises(ValueError):
            ZSCLConfig(output_dir="unused", use_cpu=True, **bad)


# ---------------------------------------------------------------------------------------------------- pure losses
def test_kd_loss_has_the_gradient_of_zscls_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    s.requires_grad_(True)
    T = 2.0
    loss = kd_kl_loss(s, t, T)
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T ** 2
    assert torch.allclose(loss, kl, atol=1e-6)
    # ZSCL's code: cross-entropy with soft targets; equal to the KL up to the teacher's entropy (same gradient)
    p = F.softmax(t / T, -1)
    official = F.cross_entropy(s / T, p) * T ** 2
    entropy = -(p * p.log()).sum(-1).mean() * T ** 2
    assert torch.allclose(loss, official - entropy, atol=1e-5)
    (g1,) = torch.autograd.grad(loss, s)
    (g2,) = torch.autograd.grad(official, s)
    assert torch.allclose(g1, g2, atol=1e-6)
    same = s.detach().clone().requires_grad_(True)
    zero = kd_kl_loss(same, same.detach(), T)
    (gz,) = torch.autograd.grad(zero, same)
    assert zero.abs() < 1e-7 and gz.abs().max() < 1e-7


def test_l2_term_is_the_sum_of_squared_differences(tmp_path, tiny, random_images):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, zscl_l2_weight=0.7, zscl_image_loss_weight=0,
                           zscl_text_loss_weight=0, variant="IO")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
    terms = trainer.method_losses(model, {}, None, None)
    expected = 0.0
    for name, p in model.named_parameters():  # independent: only the trainable (image) tower counts
        if tower_of(name) == "image":
            expected += ((p.detach().double() - start[name].double()) ** 2).sum().item()
    assert set(terms) == {"l2"}
    assert terms["l2"].item() == pytest.approx(0.7 * expected, rel=1e-5)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert torch.allclose(l2_to_reference(params, {n: start[n] for n in params}), terms["l2"] / 0.7)


# ---------------------------------------------------------------------------------------------------- distillation
@pytest.mark.parametrize("text_features", ["teacher", "student"])
def test_distillation_is_zero_with_zero_gradient_when_teacher_is_student(tmp_path, tiny, random_images, text_features):
    model = tiny[0]
    # "initial" loads model_name_or_path ("tiny-random" = tiny_clip(seed=0)), "previous" copies the student: here both
    # equal the student
    teacher = "initial" if text_features == "teacher" else "previous"
    trainer = make_trainer(tmp_path, tiny, random_images, zscl_teacher=teacher, zscl_l2_weight=0,
                           zscl_text_features=text_features)
    assert all(torch.equal(a, b) for a, b in zip(trainer.teacher.parameters(), model.parameters()))
    batch = batch_of(random_images)
    model.train()
    out = trainer.student_forward(model, batch["pixel_values"])
    assert out.logits.shape == (4, 2) and out.reference_image_embeds.shape == (2, 64)  # reference batch = train batch
    terms = trainer.method_losses(model, batch, out, trainer.map_labels(batch["labels"]))
    assert set(terms) == {"zscl_image", "zscl_text"}
    total = terms["zscl_image"] + terms["zscl_text"]
    assert total.abs().item() < 1e-6
    grads = torch.autograd.grad(total, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert max(g.abs().max().item() for g in grads if g is not None) < 1e-5


def test_distillation_pulls_toward_the_teacher(tmp_path, tiny, random_images):
    model = tiny[0]
    with torch.no_grad():  # the student drifted away from the teacher (a copy of the original)
        teacher = copy.deepcopy(model)
        for p in model.vision_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = make_args(tmp_path, zscl_l2_weight=0, zscl_reference_texts=["a cat", "a dog on a sofa", "a red car"])
    trainer = ZSCLTrainer(model=model, args=args, train_dataset=random_images(4, [0]),
                          processing_class=tiny[1], class_names=["a"], data_collator=collate, teacher_model=teacher,
                          reference_dataset=random_images(6, [0], seed=1))
    batch = batch_of(random_images)
    batch["labels"][:] = 0
    out = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, out, trainer.map_labels(batch["labels"]))
    # independent: features from separate encoder calls, KL written with kl_div
    from clip_cl.features import encode_texts, image_features

    ref_pixels = out.reference_pixel_values
    with torch.no_grad():
        texts = encode_texts(teacher, tiny[1].tokenizer, trainer.reference_texts())
        t_logits = teacher.logit_scale.exp() * image_features(teacher, ref_pixels) @ texts.T
        s_logits = model.logit_scale.exp() * image_features(model, ref_pixels) @ texts.T
    ref_img = F.kl_div(F.log_softmax(s_logits / 2, -1), F.softmax(t_logits / 2, -1), reduction="batchmean") * 4
    ref_txt = F.kl_div(F.log_softmax(s_logits.T / 2, -1), F.softmax(t_logits.T / 2, -1), reduction="batchmean") * 4
    assert terms["zscl_image"].item() == pytest.approx(ref_img.item(), rel=1e-4, abs=1e-7)
    assert terms["zscl_text"].item() == pytest.approx(ref_txt.item(), rel=1e-4, abs=1e-7)
    assert terms["zscl_image"].item() > 0 and terms["zscl_text"].item() > 0


def test_initial_teacher_is_the_zero_shot_model(tmp_path, tiny, random_images, pristine_tiny):
    model = tiny[0]
    with torch.no_grad():  # as after session 1
        for p in model.parameters():
            p.add_(0.01)
    initial = make_trainer(tmp_path, tiny, random_images, zscl_teacher="initial")
    assert all(torch.equal(a, b) for a, b in zip(initial.teacher.parameters(), pristine_tiny[0].parameters()))
    previous = make_trainer(tmp_path, tiny, random_images, zscl_teacher="previous")
    assert all(torch.equal(a, b) for a, b in zip(previous.teacher.parameters(), model.parameters()))


def test_text_features_mode_decides_which_tower_is_distilled(tmp_path, tiny, random_images):
    batch = batch_of(random_images)
    for mode, needs_grad in (("teacher", False), ("student", True)):
        model = copy.deepcopy(tiny[0])
        teacher = copy.deepcopy(model)
        with torch.no_grad():
            for p in model.text_model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        trainer = ZSCLTrainer(model=model, args=make_args(tmp_path, variant="TO", zscl_l2_weight=0,
                                                          zscl_text_features=mode, zscl_texts_per_step=3,
                                                          zscl_reference_texts=["a", "b c", "d", "e f g", "h"]),
                              train_dataset=random_images(4, [3, 7]), processing_class=tiny[1],
                              class_names=["cat", "dog"], class_ids=[3, 7], data_collator=collate,
                              teacher_model=teacher)
        out = trainer.student_forward(model, batch["pixel_values"])
        terms = trainer.method_losses(model, batch, out, trainer.map_labels(batch["labels"]))
        assert terms["zscl_image"].requires_grad is needs_grad, mode
        if mode == "student":
            assert out.extra_embeds.shape == (3, 64) and trainer._step_text_index.numel() == 3
            assert terms["zscl_image"].item() > 0


# ---------------------------------------------------------------------------------------------------- reference data
def test_reference_texts_sources_and_teacher_cache(tmp_path, tiny, random_images):
    trainer = make_trainer(tmp_path, tiny, random_images)
    assert trainer.reference_texts() == ["this is a photo of cat in the scene .",
                                         "this is a photo of dog in the scene ."]
    feats = trainer.teacher_reference_text_features()
    assert feats.shape == (2, 64) and trainer.teacher_reference_text_features() is feats  # once per session
    names = make_trainer(tmp_path, tiny, random_images, zscl_reference_class_names=["car", "ship"],
                         zscl_reference_templates=["a {}.", "the {}!"])
    assert names.reference_texts() == ["a car.", "the car!", "a ship.", "the ship!"]
    file = tmp_path / "captions.txt"
    file.write_text("a dog on a sofa\n\nthe sky\n")
    texts = make_trainer(tmp_path, tiny, random_images, zscl_reference_texts=str(file))
    assert texts.reference_texts() == ["a dog on a sofa", "the sky"]


def test_reference_dataset_spec_is_loaded_lazily_and_cycled(tmp_path, tiny, random_images):
    spec = {"path": COCO, "split": "test", "max_samples": 6}
    trainer = make_trainer(tmp_path, tiny, random_images, reference=False, zscl_reference_dataset=spec,
                           zscl_reference_batch_size=4)
    assert trainer._reference_loader is None  # nothing read before the first step
    sizes = [trainer.reference_batch("cpu").shape for _ in range(3)]
    assert sizes == [(4, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32)]
    out = trainer.student_forward(tiny[0], batch_of(random_images)["pixel_values"])
    assert out.logits.shape == (4, 2) and out.reference_image_embeds.shape[0] in (2, 4)


# ---------------------------------------------------------------------------------------------------- training
class RecordSteps(TrainerCallback):
    def __init__(self, model):
        self.model, self.steps = model, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[state.global_step] = trainable_state(self.model, device="cpu")


def test_training_and_weight_ensemble(tmp_path, tiny, random_images):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, n=12, max_steps=3, zscl_wa_every=2)
    record = RecordSteps(model)
    trainer.add_callback(record)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and out.global_step == 3
    logged = [h for h in trainer.state.log_history if "loss_zscl_image" in h]
    assert logged and all(k in logged[-1] for k in ("loss_ce", "loss_zscl_text", "loss_l2"))
    # the average of: the starting weights, step 2 (every 2 steps) and the final step 3
    assert trainer.weight_ensemble_count == 3
    for name, p in model.named_parameters():
        if name not in record.steps[3]:  # frozen (logit_scale): untouched
            assert torch.equal(p, start[name])
            continue
        expected = (start[name] + record.steps[2][name] + record.steps[3][name]) / 3
        assert torch.allclose(p, expected, atol=1e-6), name
    assert not torch.allclose(record.steps[3]["vision_model.embeddings.patch_embedding.weight"],
                              model.vision_model.embeddings.patch_embedding.weight)


def test_weight_ensemble_off_keeps_the_last_weights(tmp_path, tiny, random_images):
    model = tiny[0]
    trainer = make_trainer(tmp_path, tiny, random_images, zscl_wa_every=0)
    record = RecordSteps(model)
    trainer.add_callback(record)
    trainer.train()
    assert all(torch.equal(p, record.steps[2][n]) for n, p in model.named_parameters() if n in record.steps[2])


@pytest.mark.parametrize("variant", ["IO", "TO"])
def test_frozen_tower_identical_after_training_and_ensemble(tmp_path, tiny, random_images, variant):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, variant=variant, zscl_wa_every=1,
                           zscl_text_features="student")
    trainer.train()
    frozen = "text" if variant == "IO" else "image"
    for name, p in model.named_parameters():
        if tower_of(name) in (frozen, None):
            assert torch.equal(p, start[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if tower_of(n) not in (frozen, None))


def test_weight_ensemble_survives_resume(tmp_path, tiny, random_images, pristine_tiny):
    kw = dict(n=16, reference=False, gradient_accumulation_steps=1, max_steps=4, zscl_wa_every=1,
              save_strategy="steps", save_steps=2, save_total_limit=None)
    full = make_trainer(tmp_path / "a", tiny, random_images, **kw)
    full.train()
    ckpt = tmp_path / "a" / "out" / "checkpoint-2"
    assert (ckpt / "zscl_weight_ensemble.safetensors").is_file()
    resumed_model = copy.deepcopy(pristine_tiny[0])
    resumed = make_trainer(tmp_path / "b", (resumed_model, pristine_tiny[1]), random_images, **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.weight_ensemble_count == full.weight_ensemble_count == 5
    for (n, a), b in zip(full.model.named_parameters(), resumed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_label_smoothing(tmp_path, tiny, random_images):
    trainer = make_trainer(tmp_path, tiny, random_images)
    logits, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(trainer.classification_loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.2))
