import copy
import math

import pytest
import torch

from clip_cl import CLIPCLConfig, CLIPFineTuneTrainer
from clip_cl.variants import tower_of
from helpers import collate, snapshot


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1)
    base.update(kw)
    return CLIPCLConfig(**base)


@pytest.mark.parametrize("variant", ["WM", "IO", "TO"])
def test_variant_freezing_after_steps(tmp_path, tiny, random_images, variant):
    model, processor = tiny
    before = snapshot(model)
    trainer = CLIPFineTuneTrainer(model=model, args=make_args(tmp_path, variant=variant, max_steps=2),
                                  train_dataset=random_images(8, [3, 7]), processing_class=processor,
                                  class_names=["cat", "dog"], class_ids=[3, 7], data_collator=collate)
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    moved = {tower_of(k) for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    expected = {"WM": {"image", "text"}, "IO": {"image"}, "TO": {"text"}}[variant]
    assert moved == expected
    assert torch.equal(model.logit_scale, before["logit_scale"])  # the temperature is frozen by default


def test_loss_is_cross_entropy_over_session_classes(tmp_path, tiny, random_images):
    model, processor = tiny
    trainer = CLIPFineTuneTrainer(model=model, args=make_args(tmp_path), train_dataset=random_images(4, [5, 2]),
                                  processing_class=processor, class_names=["a", "b"], class_ids=[5, 2],
                                  data_collator=collate)
    batch = collate([random_images(4, [5, 2])[i] for i in range(4)])
    loss = trainer.compute_loss(model, batch)
    # independent reference: encode the prompts and the images separately
    from clip_cl.prompts import class_text_features
    from clip_cl.features import image_features

    with torch.no_grad():
        txt = class_text_features(model, processor.tokenizer, ["a", "b"], ["this is a photo of {} in the scene ."])
        img = image_features(model, batch["pixel_values"])
        logits = model.logit_scale.exp() * img @ txt.T
        ref = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(loss, ref, atol=1e-5)


def test_template_ensemble_in_training(tmp_path, tiny, random_images):
    model, processor = tiny
    args = make_args(tmp_path, train_templates=["a photo of {}.", "a {} in the scene."])
    trainer = CLIPFineTuneTrainer(model=model, args=args, train_dataset=random_images(4, [0, 1]),
                                  processing_class=processor, class_names=["x", "y"], data_collator=collate)
    out = trainer.student_forward(model, torch.randn(2, 3, 32, 32))
    from clip_cl.prompts import class_text_features

    ref = class_text_features(model, processor.tokenizer, ["x", "y"], args.train_templates)
    assert torch.allclose(out.class_embeds, ref, atol=1e-5)


def test_label_outside_session_is_an_error(tmp_path, tiny, random_images):
    model, processor = tiny
    trainer = CLIPFineTuneTrainer(model=model, args=make_args(tmp_path), train_dataset=random_images(4, [0, 9]),
                                  processing_class=processor, class_names=["a"], class_ids=[0], data_collator=collate)
    with pytest.raises(ValueError, match=r"labels \[9\] that are not among this session's classes"):
        trainer.compute_loss(model, collate([random_images(4, [0, 9])[i] for i in range(2)]))


@pytest.mark.parametrize("names, match", [([], "class_names is empty"), (["a", "a"], "duplicates")])
def test_bad_class_names(tmp_path, tiny, random_images, names, match):
    model, processor = tiny
    with pytest.raises(ValueError, match=match):
        CLIPFineTuneTrainer(model=model, args=make_args(tmp_path), train_dataset=random_images(2, [0]),
                            processing_class=processor, class_names=names, data_collator=collate)


def test_step_lr_schedule_and_grad_accumulation(tmp_path, tiny, random_images):
    model, processor = tiny
    # 8 rows, batch 2, accumulation 2 -> 2 optimiser steps per epoch; StepLR every epoch, 2 epochs.
    args = make_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=2,
                     step_lr_epochs=1, step_lr_gamma=0.5, learning_rate=1e-3)
    trainer = CLIPFineTuneTrainer(model=model, args=args, train_dataset=random_images(8, [0, 1]),
                                  processing_class=processor, class_names=["a", "b"], data_collator=collate)
    out = trainer.train()
    assert out.global_step == 4
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-4)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # with accumulation the logged loss stays a per-example mean (no double scaling): ~log(2) for random features
    assert all(0.05 < l < 5 for l in losses)
    assert any("loss_ce" in h for h in trainer.state.log_history)


def test_nan_loss_stops_with_a_message(tmp_path, tiny, random_images):
    model, processor = tiny
    trainer = CLIPFineTuneTrainer(model=model, args=make_args(tmp_path), train_dataset=random_images(4, [0, 1]),
                                  processing_class=processor, class_names=["a", "b"], data_collator=collate)
    batch = collate([random_images(4, [0, 1])[i] for i in range(2)])
    batch["pixel_values"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="Non-finite loss"):
        trainer.compute_loss(model, batch)


def _jpeg_dataset(n: int, labels):
    """`n` random RGB images of odd sizes (JPEG bytes) with cycling labels, as a `datasets.Dataset`."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (37 + i % 5, 45 - i % 3, 3), dtype=np.uint8)).save(buf, "JPEG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": [labels[i % len(labels)] for i in range(n)]},
                                      features=features)


@pytest.mark.parametrize("checkpoint", [2, 4])  # inside the first epoch, inside the second
def test_resume_mid_epoch_trains_on_the_same_augmented_pixels(tmp_path, tiny, checkpoint):
    # 48 rows, batch 16: 3 steps per epoch, 2 epochs, a checkpoint every 2 steps. The resumed trainer starts from a
    # different global RNG state (another process's history): the result must still be bit-identical.
    from clip_cl.data import with_image_transform

    model, processor = tiny
    pristine = snapshot(model)
    data = with_image_transform(_jpeg_dataset(48, [3, 7]), processor.image_processor, train=True,
                                label_column="label", seed=5)
    args = dict(per_device_train_batch_size=16, num_train_epochs=2, save_strategy="steps", save_steps=2,
                save_total_limit=None)
    full = CLIPFineTuneTrainer(model=model, args=make_args(tmp_path, **args), train_dataset=data,
                               processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7])
    full.train()
    reference = snapshot(full.model)

    resumed_model = copy.deepcopy(tiny[0])
    resumed_model.load_state_dict({**resumed_model.state_dict(), **pristine})
    torch.manual_seed(1234)
    torch.rand(17)
    resumed = CLIPFineTuneTrainer(model=resumed_model, args=make_args(tmp_path / "r", **args), train_dataset=data,
                                  processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7])
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / f"checkpoint-{checkpoint}"))
    after = snapshot(resumed.model)
    assert resumed.session_train_loss == full.session_train_loss
    assert all(torch.equal(after[k], reference[k]) for k in reference)
