import math

import pytest
import torch

from clip_cl import GeoDLConfig, GeoDLTrainer, get_method, tiny_clip
from clip_cl.features import image_features
from clip_cl.losses import geodesic_distillation_loss
from clip_cl.prompts import class_text_features
from clip_cl.variants import tower_of
from helpers import collate

TEMPLATE = ["this is a photo of {} in the scene ."]
NAMES = ["a", "b", "c", "d"]


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1)
    base.update(kw)
    return GeoDLConfig(**base)


def make_trainer(tmp_path, tiny, random_images, n=8, teacher_model=None, **kw):
    model, processor = tiny
    return GeoDLTrainer(model=model, args=make_args(tmp_path, **kw), train_dataset=random_images(n, [0, 1, 2, 3]),
                        processing_class=processor, class_names=NAMES, data_collator=collate,
                        teacher_model=teacher_model)


def test_config_defaults_and_validation():
    args = GeoDLConfig(output_dir="x", use_cpu=True)
    assert (args.geodl_weight, args.geodl_terms, args.geodl_form, args.geodl_subspace_dim) == (
        0.5, "auto", "distance", None)
    assert get_method("geodl").trainer_cls is GeoDLTrainer
    for bad in ({"geodl_form": "x"}, {"geodl_terms": "x"}, {"geodl_subspace_dim": 0}):
        with pytest.raises(ValueError):
            GeoDLConfig(output_dir="x", use_cpu=True, **bad)


@pytest.mark.parametrize("form", ["distance", "cosine"])
def test_terms_match_the_loss_on_independent_features(tmp_path, tiny, random_images, form):
    model, processor = tiny
    teacher, _ = tiny_clip(seed=1)
    trainer = make_trainer(tmp_path, tiny, random_images, teacher_model=teacher, geodl_form=form)
    batch = collate([trainer.train_dataset[i] for i in range(8)])
    outputs = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    with torch.no_grad():
        img = geodesic_distillation_loss(image_features(model, batch["pixel_values"]),
                                         image_features(teacher, batch["pixel_values"]), form=form)
        txt = geodesic_distillation_loss(class_text_features(model, processor.tokenizer, NAMES, TEMPLATE),
                                         class_text_features(teacher, processor.tokenizer, NAMES, TEMPLATE), form=form)
    assert terms["geodl_image"].item() == pytest.approx(0.5 * img.item(), rel=1e-3, abs=1e-6)
    assert terms["geodl_text"].item() == pytest.approx(0.5 * txt.item(), rel=1e-3, abs=1e-6)
    assert terms["geodl_image"].item() > 0 and terms["geodl_text"].item() > 0


@pytest.mark.parametrize("variant, terms, expected", [
    ("WM", "auto", {"geodl_image", "geodl_text"}), ("IO", "auto", {"geodl_image"}), ("TO", "auto", {"geodl_text"}),
    ("WM", "image", {"geodl_image"}), ("IO", "both", {"geodl_image", "geodl_text"})])
def test_terms_follow_variant(tmp_path, tiny, random_images, variant, terms, expected):
    model, _ = tiny
    trainer = make_trainer(tmp_path, tiny, random_images, variant=variant, geodl_terms=terms)
    batch = collate([trainer.train_dataset[i] for i in range(4)])
    outputs = trainer.student_forward(model, batch["pixel_values"])
    assert set(trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))) == expected


@pytest.mark.parametrize("form", ["distance", "cosine"])
def test_teacher_equal_student_gives_zero_loss_and_gradient(tmp_path, tiny, random_images, form):
    model, _ = tiny
    trainer = make_trainer(tmp_path, tiny, random_images, geodl_form=form)
    model.train()
    batch = collate([trainer.train_dataset[i] for i in range(8)])
    outputs = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    sum(terms.values()).backward()
    grad = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert all(abs(v.item()) < 1e-6 for v in terms.values()) and grad < 1e-5


@pytest.mark.parametrize("variant", ["WM", "IO", "TO"])
def test_variant_freezing_with_grad_accumulation(tmp_path, tiny, random_images, variant):
    """Batches of 2 (a 1-d subspace), with a last micro-batch of 1 sample (no subspace: the term is 0)."""
    model, _ = tiny
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = make_trainer(tmp_path, tiny, random_images, n=7, variant=variant, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, num_train_epochs=1)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    moved = {tower_of(k) for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert moved == {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    assert all(torch.equal(p, before[k]) for k, p in trainer.teacher.named_parameters())
