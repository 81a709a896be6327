import math

import numpy as np
import pytest
import torch

from clip_cl import VRLwFConfig, VRLwFTrainer, get_method, tiny_clip
from clip_cl.features import image_features, text_features
from clip_cl.prompts import class_text_features
from clip_cl.variants import tower_of
from helpers import collate

TEMPLATE = ["this is a photo of {} in the scene ."]
SPECIAL = [49406, 49407]


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1, vr_num_pseudo_classes=16)
    base.update(kw)
    return VRLwFConfig(**base)


def batch_of(dataset, n):
    return collate([dataset[i] for i in range(n)])


def make_trainer(tmp_path, tiny, random_images, n=8, **kw):
    model, processor = tiny
    trainer_kw = {k: kw.pop(k) for k in ("teacher_model", "distill_class_names") if k in kw}
    return VRLwFTrainer(model=model, args=make_args(tmp_path, **kw), train_dataset=random_images(n, [0, 1]),
                        processing_class=processor, class_names=["a", "b"], data_collator=collate, **trainer_kw)


def record_draws(trainer):
    """Wrap draw_pseudo_classes to keep (global_step, tokens) of every call."""
    draws, original = [], trainer.draw_pseudo_classes

    def wrapped(model):
        tokens = original(model)
        draws.append((trainer.state.global_step, tokens["input_ids"].clone()))
        return tokens

    trainer.draw_pseudo_classes = wrapped
    return draws


def kl_numpy(student, teacher):
    s, t = student.detach().double().numpy(), teacher.detach().double().numpy()
    ps = np.exp(s - s.max(1, keepdims=True))
    ps /= ps.sum(1, keepdims=True)
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    return float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


def test_config_defaults_and_validation():
    args = VRLwFConfig(output_dir="x", use_cpu=True)
    assert (args.vr_lambda, args.vr_num_pseudo_classes, args.vr_pseudo_length, args.vr_temperature) == (0.5, 100, 8, 1.0)
    assert args.vr_pool_size is None and args.vr_seed is None
    assert get_method("vr_lwf").trainer_cls is VRLwFTrainer
    with pytest.raises(ValueError, match="vr_pool_size"):
        VRLwFConfig(output_dir="x", use_cpu=True, vr_pool_size=10)


def test_pseudo_tokens_wrapped_without_special_ids(tmp_path, tiny, random_images):
    trainer = make_trainer(tmp_path, tiny, random_images, vr_num_pseudo_classes=200, vr_pseudo_length=8)
    tokens = trainer.draw_pseudo_classes(trainer.model)
    ids = tokens["input_ids"]
    assert ids.shape == (200, 10)
    assert (ids[:, 0] == 49406).all() and (ids[:, -1] == 49407).all()
    assert not torch.isin(ids[:, 1:-1], torch.tensor(SPECIAL)).any()
    assert ids[:, 1:-1].max() < 49408 and ids.min() >= 0


def test_same_seed_same_tokens(tmp_path, tiny, random_images):
    # draws depend on the seeds only, so the trainers may share one model
    a = make_trainer(tmp_path, tiny, random_images, seed=3)
    b = make_trainer(tmp_path, tiny, random_images, seed=3)
    c = make_trainer(tmp_path, tiny, random_images, seed=3, vr_seed=4)
    a.model.train(), b.model.train()
    first_a, first_b = a.draw_pseudo_classes(a.model), b.draw_pseudo_classes(b.model)
    assert torch.equal(first_a["input_ids"], first_b["input_ids"])
    # a second micro-batch of the same step, and another step, draw different pseudo-classes
    assert not torch.equal(a.draw_pseudo_classes(a.model)["input_ids"], first_a["input_ids"])
    a.state.global_step = 5
    assert not torch.equal(a.draw_pseudo_classes(a.model)["input_ids"], first_a["input_ids"])
    assert not torch.equal(c.draw_pseudo_classes(c.model)["input_ids"], first_a["input_ids"])


def test_resume_draws_the_same_pseudo_classes(tmp_path, tiny, random_images):
    args = dict(max_steps=3, save_strategy="steps", save_steps=2, save_total_limit=None)
    full = make_trainer(tmp_path, tiny, random_images, **args)
    full_draws = record_draws(full)
    full.train()
    assert [s for s, _ in full_draws] == [0, 1, 2]
    resumed = make_trainer(tmp_path / "r", tiny, random_images, **args)  # weights come from the checkpoint
    resumed_draws = record_draws(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert [s for s, _ in resumed_draws] == [2]
    assert torch.equal(resumed_draws[0][1], full_draws[2][1])


def test_vr_term_matches_independent_reference(tmp_path, tiny, random_images):
    model, processor = tiny
    teacher, _ = tiny_clip(seed=1)
    trainer = make_trainer(tmp_path, tiny, random_images, teacher_model=teacher)
    batch = batch_of(trainer.train_dataset, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    assert set(terms) == {"vr"}  # OST: no LwF term
    pseudo = trainer._step_pseudo
    with torch.no_grad():
        s = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ text_features(model, **pseudo).T
        t = teacher.logit_scale.exp() * image_features(teacher, batch["pixel_values"]) @ text_features(
            teacher, **pseudo).T
    assert terms["vr"].item() == pytest.approx(0.5 * kl_numpy(s, t), rel=1e-4, abs=1e-7)


def test_mst_adds_lwf_over_distilled_classes(tmp_path, tiny, random_images):
    model, processor = tiny
    teacher, _ = tiny_clip(seed=1)
    trainer = make_trainer(tmp_path, tiny, random_images, teacher_model=teacher, protocol="mst", num_sessions=2,
                           distill_class_names=["a", "b", "old"])
    assert trainer.use_lwf and trainer.distill_class_names == ["a", "b", "old"]
    calls = []
    hook = model.text_model.register_forward_hook(lambda *a: calls.append(1))
    batch = batch_of(trainer.train_dataset, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    hook.remove()
    # old prompt + pseudo-classes, in the class prompts' call (a call of their own would save no padding here)
    assert len(calls) == 1 and outputs.extra_embeds.shape[0] == 1 + 16
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    with torch.no_grad():
        names = ["a", "b", "old"]
        s = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ class_text_features(
            model, processor.tokenizer, names, TEMPLATE).T
        t = teacher.logit_scale.exp() * image_features(teacher, batch["pixel_values"]) @ class_text_features(
            teacher, processor.tokenizer, names, TEMPLATE).T
        ps = model.logit_scale.exp() * image_features(model, batch["pixel_values"]) @ text_features(
            model, **trainer._step_pseudo).T
        pt = teacher.logit_scale.exp() * image_features(teacher, batch["pixel_values"]) @ text_features(
            teacher, **trainer._step_pseudo).T
    assert terms["lwf"].item() == pytest.approx(0.5 * kl_numpy(s, t), rel=1e-4, abs=1e-7)
    assert terms["vr"].item() == pytest.approx(0.5 * kl_numpy(ps, pt), rel=1e-4, abs=1e-7)


def test_lwf_term_by_protocol(tmp_path, tiny, random_images):
    # MST without seen classes: LwF over the session's classes; MST first session (no old class known): no LwF
    assert make_trainer(tmp_path, tiny, random_images, protocol="mst", num_sessions=2).use_lwf
    first = make_trainer(tmp_path, tiny, random_images, protocol="mst", num_sessions=2, distill_class_names=["a", "b"])
    assert not first.use_lwf
    assert not make_trainer(tmp_path, tiny, random_images).use_lwf


@pytest.mark.parametrize("protocol", ["ost", "mst"])
def test_teacher_equal_student_gives_zero_loss_and_gradient(tmp_path, tiny, random_images, protocol):
    model, _ = tiny
    trainer = make_trainer(tmp_path, tiny, random_images, protocol=protocol, vr_temperature=2.0,
                           **({"num_sessions": 2, "distill_class_names": ["old"]} if protocol == "mst" else {}))
    model.train()
    batch = batch_of(trainer.train_dataset, 4)
    outputs = trainer.student_forward(model, batch["pixel_values"])
    terms = trainer.method_losses(model, batch, outputs, trainer.map_labels(batch["labels"]))
    assert set(terms) == ({"vr", "lwf"} if protocol == "mst" else {"vr"})
    sum(terms.values()).backward()
    grad = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert all(abs(v.item()) < 1e-6 for v in terms.values()) and grad < 1e-5


@pytest.mark.parametrize("variant", ["WM", "IO", "TO"])
def test_variant_freezing_with_grad_accumulation(tmp_path, tiny, random_images, variant):
    model, _ = tiny
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = make_trainer(tmp_path, tiny, random_images, variant=variant, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, max_steps=2, protocol="mst", num_sessions=2)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    moved = {tower_of(k) for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert moved == {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    assert any(h.get("loss_vr", 0) > 0 for h in trainer.state.log_history)


@pytest.mark.parametrize("separate", [False, True])
def test_encoder_calls_per_step(tmp_path, tiny, random_images, monkeypatch, separate):
    """Student text-encoder calls per micro-batch: one (class prompts + extra texts, padded), or two plus the extra
    texts' recomputation in the backward when they get a call of their own. One teacher call per micro-batch (its
    class features are cached)."""
    model, _ = tiny
    trainer = make_trainer(tmp_path, tiny, random_images, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, max_steps=2, protocol="mst", num_sessions=2,
                           distill_class_names=["a", "b", "old"], vr_recompute_pseudo_texts=True)
    monkeypatch.setattr(trainer, "separate_extra_text_call", lambda model, extra: separate)
    student, checkpointed, teacher = [], [], []
    model.text_model.register_forward_hook(lambda *a: student.append(1))
    trainer.teacher.text_model.register_forward_hook(lambda *a: teacher.append(1))
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: checkpointed.append(1) or original(*a, **k))
    trainer.train()
    # 2 steps x 2 micro-batches; a separate call's text layers keep only their inputs (recomputed in the backward)
    n_layers = len(model.text_model.encoder.layers)
    assert len(student) == (2 if separate else 1) * 4 and len(checkpointed) == (n_layers * 4 if separate else 0)
    assert len(teacher) == 4


def _step_loss_and_grads(trainer, model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    trainer._key_step = None  # the same pseudo-classes for every call (same step, first micro-batch)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_separate_call_where_it_saves_padding(tmp_path, tiny, random_images):
    """On the CPU, OST's pseudo-texts (10 tokens) get their own call next to the longer class prompts; in MST with
    old-class prompts (as long as the class prompts) in the same block there is nothing to save: one call."""
    model, _ = tiny
    ost = make_trainer(tmp_path, tiny, random_images)
    assert ost.separate_extra_text_call(model, ost.draw_pseudo_classes(model))
    mst = make_trainer(tmp_path, tiny, random_images, protocol="mst", num_sessions=2,
                       distill_class_names=["a", "b", "old"])
    assert not mst.separate_extra_text_call(model, mst.extra_text_tokens(model))


@pytest.mark.parametrize("protocol", ["ost", "mst"])
def test_text_call_choices_give_the_same_loss(tmp_path, tiny, random_images, monkeypatch, protocol):
    """Two student text calls (CPU) with the pseudo-texts recomputed in the backward, two calls keeping their
    activations, and one padded call: the same loss and gradients (bit-equal between the two-call paths)."""
    model, _ = tiny
    teacher, _ = tiny_clip(seed=1)
    trainer = make_trainer(tmp_path, tiny, random_images, teacher_model=teacher, protocol=protocol,
                           vr_recompute_pseudo_texts=True,
                           **({"num_sessions": 2, "distill_class_names": ["a", "b", "old"]} if protocol == "mst"
                              else {}))
    assert trainer._recompute_extra_texts and not make_trainer(tmp_path, tiny, random_images)._recompute_extra_texts
    batch = batch_of(trainer.train_dataset, 4)
    monkeypatch.setattr(trainer, "separate_extra_text_call", lambda model, extra: True)
    recomputed = _step_loss_and_grads(trainer, model, batch)
    monkeypatch.setattr(trainer, "_recompute_extra_texts", False)
    kept = _step_loss_and_grads(trainer, model, batch)
    monkeypatch.setattr(trainer, "separate_extra_text_call", lambda model, extra: False)
    padded = _step_loss_and_grads(trainer, model, batch)
    assert recomputed[0].item() > 0 and torch.equal(recomputed[0], kept[0])
    assert recomputed[1].keys() == kept[1].keys() == padded[1].keys()
    assert all(torch.equal(recomputed[1][k], kept[1][k]) for k in kept[1])
    # one padded call: the same arithmetic on differently shaped matrices (float rounding only)
    assert padded[0].item() == pytest.approx(kept[0].item(), rel=1e-5)
    assert all(torch.allclose(padded[1][k], kept[1][k], rtol=1e-4, atol=1e-6) for k in kept[1])


def test_pool_encodes_teacher_once(tmp_path, tiny, random_images):
    model, _ = tiny
    trainer = make_trainer(tmp_path, tiny, random_images, vr_pool_size=40, max_steps=3, per_device_train_batch_size=2)
    pool = trainer._pool_tokens["input_ids"]
    assert pool.shape == (40, 10) and not torch.isin(pool[:, 1:-1], torch.tensor(SPECIAL)).any()
    with torch.no_grad():
        ref = text_features(trainer.teacher, **trainer._pool_tokens)
    assert torch.allclose(trainer._pool_teacher, ref, atol=1e-6)
    teacher_calls, draws = [], record_draws(trainer)
    trainer.teacher.text_model.register_forward_hook(lambda *a: teacher_calls.append(1))
    trainer.train()
    assert not teacher_calls and len(draws) == 3
    pool_rows = {tuple(r) for r in pool.tolist()}
    for _, ids in draws:
        rows = [tuple(r) for r in ids.tolist()]
        assert len(rows) == 16 and len(set(rows)) == 16 and set(rows) <= pool_rows
    # the pool is the same in a new trainer with the same seed (a resumed session)
    again = make_trainer(tmp_path, tiny, random_images, vr_pool_size=40)
    assert torch.equal(again._pool_tokens["input_ids"], pool)
