import copy
import math

import pytest
import torch

from clip_cl import WiSEFTConfig, WiSEFTTrainer
from clip_cl.methods import get_method
from clip_cl.variants import tower_of
from helpers import collate, snapshot


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=2, learning_rate=1e-2, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1)
    base.update(kw)
    return WiSEFTConfig(**base)


def make_trainer(tmp_path, tiny, random_images, **kw):
    model, processor = tiny
    return WiSEFTTrainer(model=model, args=make_args(tmp_path, **kw), train_dataset=random_images(8, [3, 7]),
                         processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7],
                         data_collator=collate)


def test_registered_and_defaults():
    spec = get_method("wise_ft")
    assert spec.config_cls is WiSEFTConfig and spec.trainer_cls is WiSEFTTrainer
    args = WiSEFTConfig(output_dir="unused", use_cpu=True)
    assert args.wise_alpha == 0.5 and args.wise_alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert WiSEFTConfig(output_dir="unused", use_cpu=True, wise_alphas="[0.1, 0.9]").wise_alphas == [0.1, 0.9]
    from clip_cl import CLIPCLConfig

    with pytest.raises(TypeError, match="WiSEFTConfig"):
        WiSEFTTrainer(model=None, args=CLIPCLConfig(output_dir="unused", use_cpu=True))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        WiSEFTConfig(output_dir="unused", use_cpu=True, wise_alpha=1.2)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_merge_is_exact(tmp_path, tiny, random_images, alpha):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, wise_alpha=alpha)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and out.global_step == 2
    ft = trainer.finetuned_state
    assert any(not torch.equal(ft[k], start[k]) for k in ft)
    for name, p in model.named_parameters():
        if name in ft:  # alpha is the weight of the fine-tuned model
            assert torch.equal(p.detach(), alpha * ft[name] + (1 - alpha) * start[name]), name
        else:
            assert torch.equal(p, start[name]), name


@pytest.mark.parametrize("variant", ["IO", "TO"])
def test_frozen_tower_identical_after_training_and_merge(tmp_path, tiny, random_images, variant):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, variant=variant)
    trainer.train()
    frozen = "text" if variant == "IO" else "image"
    for name, p in model.named_parameters():
        if tower_of(name) in (frozen, None):
            assert torch.equal(p, start[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if tower_of(n) not in (frozen, None))


def test_sweep_evaluates_each_alpha_and_restores_the_model(tmp_path, tiny, random_images):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, wise_alphas=[0.0, 0.25, 1.0])
    trainer.train()
    merged = snapshot(model)
    ft = trainer.finetuned_state
    seen = []

    def evaluate(m):
        weights = snapshot(m)
        seen.append(weights)
        n = len(seen)
        return {"seen": 1, "ut": {"acc": 10.0 * n}, "zero_shot": {"a": {"top1": 1.0 * n}, "b": {"top1": 3.0 * n}},
                "retrieval": {}}

    extra = trainer.extra_evaluations(evaluate)
    sweep = extra["wise_sweep"]
    assert [s["alpha"] for s in sweep] == [0.0, 0.25, 1.0]
    assert [s["ut_acc"] for s in sweep] == [10.0, 20.0, 30.0]
    assert [s["zs_acc"] for s in sweep] == [2.0, 4.0, 6.0]
    assert sweep[1]["eval"]["ut"]["acc"] == 20.0
    for alpha, weights in zip([0.0, 0.25, 1.0], seen):
        for k in ft:
            assert torch.equal(weights[k], alpha * ft[k] + (1 - alpha) * start[k]), (alpha, k)
    assert all(torch.equal(seen[0][k], start[k]) for k in ft)  # alpha 0: the starting model
    assert all(torch.equal(seen[2][k], ft[k]) for k in ft)  # alpha 1: plain FT
    # the wise_alpha model is back, bit for bit
    assert all(torch.equal(p, merged[n]) for n, p in model.named_parameters())


def test_sweep_restores_even_if_evaluation_fails(tmp_path, tiny, random_images):
    model = tiny[0]
    trainer = make_trainer(tmp_path, tiny, random_images)
    trainer.train()
    merged = snapshot(model)

    def broken(m):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trainer.extra_evaluations(broken)
    assert all(torch.equal(p, merged[n]) for n, p in model.named_parameters())
    trainer.args.wise_alphas = []
    assert trainer.extra_evaluations(broken) == {}


def test_same_model_as_mean_imm_over_sessions(tmp_path, tiny, random_images):
    # Both merge each session's fine-tuned weights with the weights the session started from (ZSCL's WiSE-FT baseline
    # does too, `--wise_ft_model n`), so with equal alphas they stay bit-identical session after session.
    from clip_cl import IMMConfig, IMMTrainer

    model, processor = tiny
    start = snapshot(model)
    models = {"wise": model, "imm": copy.deepcopy(model)}
    common = dict(per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2, save_strategy="no",
                  report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    for session, ids in enumerate(([3, 7], [1, 5])):
        for name, (config_cls, trainer_cls, key) in {"wise": (WiSEFTConfig, WiSEFTTrainer, "wise_alpha"),
                                                     "imm": (IMMConfig, IMMTrainer, "imm_alpha")}.items():
            args = config_cls(output_dir=str(tmp_path / f"{name}{session}"), **common, **{key: 0.7})
            trainer_cls(model=models[name], args=args, train_dataset=random_images(8, ids), processing_class=processor,
                        class_names=["a", "b"], class_ids=ids, data_collator=collate).train()
        wise, imm = snapshot(models["wise"]), snapshot(models["imm"])
        assert all(torch.equal(wise[k], imm[k]) for k in wise), session
    assert any(not torch.equal(wise[k], start[k]) for k in wise)  # they trained and merged, not stayed put
