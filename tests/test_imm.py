import math

import pytest
import torch

from clip_cl import IMMConfig, IMMTrainer
from clip_cl.merging import fisher_weighted_merge, trainable_state
from clip_cl.methods import get_method
from clip_cl.methods.imm import diagonal_fisher
from clip_cl.variants import tower_of
from helpers import collate, snapshot


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=2, learning_rate=1e-2, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                logging_steps=1)
    base.update(kw)
    return IMMConfig(**base)


class RecordingIMM(IMMTrainer):
    """Keeps the fine-tuned weights as they are just before the merge."""

    def on_session_end(self):
        self.finetuned = trainable_state(self.model, device="cpu")
        super().on_session_end()


def make_trainer(tmp_path, tiny, random_images, **kw):
    model, processor = tiny
    return RecordingIMM(model=model, args=make_args(tmp_path, **kw), train_dataset=random_images(8, [3, 7]),
                        processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7],
                        data_collator=collate)


def test_registered_with_paper_defaults():
    spec = get_method("imm")
    assert spec.config_cls is IMMConfig and spec.trainer_cls is IMMTrainer
    args = IMMConfig(output_dir="unused", use_cpu=True)
    assert (args.imm_alpha, args.imm_mode, args.method_name) == (0.5, "mean", "imm")
    from clip_cl import CLIPCLConfig

    with pytest.raises(TypeError, match="IMMConfig"):
        IMMTrainer(model=None, args=CLIPCLConfig(output_dir="unused", use_cpu=True))
    for bad in ({"imm_alpha": 1.5}, {"imm_mode": "median"}, {"imm_fisher_type": "x"}, {"imm_fisher_samples": 0}):
        with pytest.raises(ValueError):
            IMMConfig(output_dir="unused", use_cpu=True, **bad)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_mean_imm_merge_is_exact(tmp_path, tiny, random_images, alpha):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, imm_alpha=alpha)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and out.global_step == 2
    assert trainer.model is model
    moved = [k for k in trainer.finetuned if not torch.equal(trainer.finetuned[k], start[k])]
    assert moved, "training did not change any weight"
    for name, p in model.named_parameters():
        if name in trainer.finetuned:
            assert torch.equal(p.detach(), alpha * trainer.finetuned[name] + (1 - alpha) * start[name]), name
        else:
            assert torch.equal(p.detach(), start[name]), name


@pytest.mark.parametrize("variant", ["IO", "TO"])
def test_frozen_tower_identical_after_training_and_merge(tmp_path, tiny, random_images, variant):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, variant=variant)
    trainer.train()
    frozen = "text" if variant == "IO" else "image"
    assert {tower_of(k) for k in trainer.finetuned} == {"image" if variant == "IO" else "text"}
    for name, p in model.named_parameters():
        if tower_of(name) in (frozen, None):
            assert torch.equal(p, start[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if tower_of(n) not in (frozen, None))


def test_diagonal_fisher_matches_per_example_backward():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    xs = [torch.randn(4) for _ in range(5)]
    ys = [0, 2, 1, 1, 0]
    fisher = diagonal_fisher(lambda x: torch.log_softmax(lin(x), -1), dict(lin.named_parameters()), xs, labels=ys)
    ref = {n: torch.zeros_like(p) for n, p in lin.named_parameters()}
    for x, y in zip(xs, ys):  # independent: .backward() on each example's log-likelihood
        lin.zero_grad()
        torch.log_softmax(lin(x), -1)[y].backward()
        for n, p in lin.named_parameters():
            ref[n] += p.grad ** 2 / len(xs)
    for n in ref:
        assert torch.allclose(fisher[n], ref[n], atol=1e-7)
    # the true Fisher samples labels from the model: reproducible with a generator, non-negative
    f1 = diagonal_fisher(lambda x: torch.log_softmax(lin(x), -1), dict(lin.named_parameters()), xs,
                         generator=torch.Generator().manual_seed(1))
    f2 = diagonal_fisher(lambda x: torch.log_softmax(lin(x), -1), dict(lin.named_parameters()), xs,
                         generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(f1[n], f2[n]) and (f1[n] >= 0).all() for n in f1)


@pytest.mark.parametrize("fisher_type", ["true", "empirical"])
def test_mode_imm_is_the_fisher_weighted_merge(tmp_path, tiny, random_images, fisher_type):
    model = tiny[0]
    start = snapshot(model)
    trainer = make_trainer(tmp_path, tiny, random_images, imm_mode="mode", imm_fisher_samples=4,
                           imm_fisher_type=fisher_type, imm_alpha=0.4, variant="IO")
    trainer.train()
    fa, fb = trainer.fisher_finetuned, trainer.fisher_previous
    assert set(fa) == set(trainer.finetuned) == set(fb)
    assert all((f >= 0).all() for f in (*fa.values(), *fb.values()))
    assert sum(f.sum() for f in fa.values()) > 0 and sum(f.sum() for f in fb.values()) > 0
    prev = {k: start[k] for k in trainer.finetuned}
    expected = fisher_weighted_merge(trainer.finetuned, prev, fa, fb, alpha=0.4, eps=trainer.args.imm_fisher_eps)
    for name, p in model.named_parameters():
        if name in expected:
            assert torch.equal(p.detach(), expected[name]), name
        else:
            assert torch.equal(p, start[name]), name
    # the Fishers differ (different weights), so mode-IMM is not the mean merge
    assert any(not torch.allclose(fa[k], fb[k]) for k in fa)
