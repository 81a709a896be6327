import math

import numpy as np
import pytest
import torch

from clip_cl import LwFConfig, LwFTrainer, get_method, tiny_clip
from clip_cl.features import image_features
from clip_cl.prompts import class_text_features
from clip_cl.variants import tower_of
from helpers import collate, snapshot

TEMPLATE = ["this is a photo of {} in the scene ."]


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1)
    base.update(kw)
    return LwFConfig(**base)


def batch_of(dataset, n):
    return collate([dataset[i] for i in range(n)])


def kl_numpy(student, teacher):
    s, t = student.detach().double().numpy(), teacher.detach().double().numpy()
    ps = np.exp(s - s.max(1, keepdims=True))
    ps /= ps.sum(1, keepdims=True)
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    return float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


def test_config_defaults_and_registry():
    args = LwFConfig(output_dir="x", use_cpu=True)
    assert (args.lwf_alpha, args.lwf_temperature) == (0.5, 1.0)
    spec = get_method("lwf")
    assert spec.config_cls is LwFConfig and spec.trainer_cls is LwFTrainer
    assert args.method_name == "lwf"
    with pytest.raises(ValueError, match="lwf_temperature"):
        LwFConfig(output_dir="x", use_cpu=True, lwf_temperature=0)


def test_lwf_term_matches_independent_reference(tmp_path, tiny, random_images):
    model, processor = tiny
    teacher, _ = tiny_clip(seed=1)
    data = random_images(4, [5, 2])
    trainer = LwFTrainer(model=model, args=make_args(tmp_path), train_dataset=data, processing_class=processor,
                         class_names=["a", "b"], class_ids=[5, 2], teacher_model=teacher, data_collator=collate)
    batch = batch_of(data, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    with torch.no_grad():
        s_logits = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ class_text_features(
            model, processor.tokenizer, ["a", "b"], TEMPLATE).T
        t_logits = teacher.logit_scale.exp() * image_features(teacher, batch["pixel_values"]) @ class_text_features(
            teacher, processor.tokenizer, ["a", "b"], TEMPLATE).T
    assert terms["lwf"].item() == pytest.approx(0.5 * kl_numpy(s_logits, t_logits), rel=1e-4, abs=1e-7)
    # the whole loss is CE + alpha * KL
    loss = trainer.compute_loss(model, batch)
    ce = torch.nn.functional.cross_entropy(s_logits, torch.tensor([0, 1, 0, 1]))
    assert loss.item() == pytest.approx(ce.item() + terms["lwf"].item(), rel=1e-4)


def test_teacher_equal_student_gives_zero_loss_and_gradient(tmp_path, tiny, random_images):
    model, processor = tiny
    data = random_images(4, [0, 1])
    trainer = LwFTrainer(model=model, args=make_args(tmp_path, lwf_temperature=2.0), train_dataset=data,
                         processing_class=processor, class_names=["a", "b"], data_collator=collate)
    batch = batch_of(data, 4)
    model.train()
    outputs = trainer.student_forward(model, batch["pixel_values"])
    term = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))["lwf"]
    term.backward()
    grad = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert abs(term.item()) < 1e-6 and grad < 1e-5


@pytest.mark.parametrize("variant", ["WM", "IO", "TO"])
def test_variant_freezing_with_grad_accumulation(tmp_path, tiny, random_images, variant):
    model, processor = tiny
    before = snapshot(model)
    args = make_args(tmp_path, variant=variant, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     max_steps=2)
    trainer = LwFTrainer(model=model, args=args, train_dataset=random_images(8, [3, 7]), processing_class=processor,
                         class_names=["cat", "dog"], class_ids=[3, 7], data_collator=collate)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    moved = {tower_of(k) for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert moved == {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    # the teacher never trains: it is the model as it was when the trainer was created
    assert all(torch.equal(p, before[k]) for k, p in trainer.teacher.named_parameters())
    logged = [h for h in trainer.state.log_history if "loss_lwf" in h]
    assert logged and logged[-1]["loss_lwf"] > 0


def test_distill_class_names_adds_old_classes_in_one_student_call(tmp_path, tiny, random_images):
    model, processor = tiny
    teacher, _ = tiny_clip(seed=1)
    data = random_images(4, [0, 1])
    trainer = LwFTrainer(model=model, args=make_args(tmp_path), train_dataset=data, processing_class=processor,
                         class_names=["a", "b"], teacher_model=teacher, data_collator=collate,
                         distill_class_names=["old1", "a", "old2", "b"])
    assert trainer.distill_class_names == ["a", "b", "old1", "old2"]
    calls = []
    hook = model.text_model.register_forward_hook(lambda *a: calls.append(1))
    batch = batch_of(data, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    hook.remove()
    # one call with the class prompts, or (CPU, when that call would pad much) one of their own
    separate = trainer.separate_extra_text_call(model, trainer.extra_text_tokens(model))
    assert len(calls) == (2 if separate else 1) and outputs.logits.shape == (4, 2)  # CE over the session's classes
    term = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))["lwf"]
    names = ["a", "b", "old1", "old2"]
    with torch.no_grad():
        s_logits = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ class_text_features(
            model, processor.tokenizer, names, TEMPLATE).T
        t_logits = teacher.logit_scale.exp() * image_features(teacher, batch["pixel_values"]) @ class_text_features(
            teacher, processor.tokenizer, names, TEMPLATE).T
    assert term.item() == pytest.approx(0.5 * kl_numpy(s_logits, t_logits), rel=1e-4, abs=1e-7)


def test_distill_classes_with_template_ensemble(tmp_path, tiny, random_images):
    model, processor = tiny
    templates = ["a photo of {}.", "a {} in the scene."]
    data = random_images(4, [0, 1])
    trainer = LwFTrainer(model=model, args=make_args(tmp_path, train_templates=templates), train_dataset=data,
                         processing_class=processor, class_names=["a", "b"], data_collator=collate,
                         distill_class_names=["c"])
    batch = batch_of(data, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    student, teacher = trainer.distill_logits(outputs, trainer.teacher_image_features(batch["pixel_values"]))
    with torch.no_grad():
        ref = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ class_text_features(
            model, processor.tokenizer, ["a", "b", "c"], templates).T
    assert torch.allclose(student, ref, atol=1e-4) and torch.allclose(teacher, ref, atol=1e-4)
