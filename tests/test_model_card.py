"""The model card's YAML header as the Hub reads it (parsed with huggingface_hub's own model-card tools), its
readable hyper-parameters, and its settings block that reproduces the run."""

import re

import pytest
from huggingface_hub import ModelCard

from clip_cl import VRLwFConfig
from clip_cl.cli import parse_config
from clip_cl.hub import invocation, model_card, optimizer_name
from clip_cl.runner import result_config

EVAL = {"ut": {"acc": 81.25}, "zero_shot": {"cifar10": {"top1": 40.5}, "pets": {"top1": 12.0}},
        "retrieval": {"coco": {"tr@1": 30.0, "ir@1": 20.0}}}


def make_results(model="openai/clip-vit-base-patch32", cifar_path="uoft-cs/cifar10"):
    return {
        "method": "vr_lwf", "method_display": "VR-LwF", "variant": "WM", "protocol": "mst", "num_sessions": 2,
        "model": model, "seed": 3,
        "splits": {
            "update_task": {"train": {"name": "fashion_mnist", "path": "examples/data/fashion_mnist", "split": "train"},
                            "test": {"name": "fashion_mnist", "path": "examples/data/fashion_mnist", "split": "test"}},
            "zero_shot": [{"name": "cifar10", "path": cifar_path, "split": "test"},
                          {"name": "pets", "path": "/data/pets", "split": "test"}],
            "retrieval": [{"name": "coco", "path": "examples/data/coco_captions", "split": "test"}],
        },
        "before": EVAL,
        "sessions": [{"session": 1, "classes": ["a", "b"], "eval": EVAL},
                     {"session": 2, "classes": ["c"], "eval": EVAL}],
        "status": "complete",
    }


@pytest.fixture
def config(tmp_path):
    return VRLwFConfig(output_dir=str(tmp_path / "run"), use_cpu=True, learning_rate=1e-5, protocol="mst",
                       num_sessions=2, vr_lambda=0.25, report_to="none", max_steps=7,
                       update_dataset={"name": "fashion_mnist", "path": "examples/data/fashion_mnist"})


def test_header_parses_with_huggingface_hub(config):
    text = model_card(make_results(), config, command="python recipes/train.py --config my.yaml --vr_lambda 0.25")
    card = ModelCard(text)  # the Hub's parser
    data = card.data
    assert data.base_model == "openai/clip-vit-base-patch32"
    assert data.datasets == ["uoft-cs/cifar10"]  # local folders are not Hub datasets
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert "vr_lwf" in data.tags and "arxiv:2207.09248" in data.tags
    assert data.model_name == "clip-vit-base-patch32-vr_lwf-mst"
    found = {(r.metric_name, r.dataset_name): (r.metric_value, r.task_type, r.dataset_type, r.dataset_split)
             for r in data.eval_results}
    assert found == {
        ("UT-Acc (%)", "fashion_mnist"): (81.25, "image-classification", "fashion_mnist", "test"),
        ("ZS-Acc top-1 (%)", "cifar10"): (40.5, "zero-shot-image-classification", "uoft-cs/cifar10", "test"),
        ("ZS-Acc top-1 (%)", "pets"): (12.0, "zero-shot-image-classification", "pets", "test"),
        ("TR@1, image-to-text Recall@1 (%)", "coco"): (30.0, "image-text-retrieval", "coco", "test"),
        ("IR@1, text-to-image Recall@1 (%)", "coco"): (20.0, "image-text-retrieval", "coco", "test"),
    }
    body = card.text
    assert "AdamW (PyTorch)" in body and "OptimizerNames" not in body
    assert "github.com" not in text and "https://arxiv.org/abs/2207.09248" in body
    assert "python recipes/train.py --config my.yaml --vr_lambda 0.25" in body
    assert "MST (several sessions" in body and "VR-LwF" in body and "| after session 2 |" in body


def test_settings_block_reproduces_the_run(config, tmp_path):
    text = model_card(make_results(), config, command="clip-cl train --config x.yaml")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    saved = tmp_path / "config.yaml"
    saved.write_text(block)
    again = parse_config(["--config", str(saved), "--output_dir", str(tmp_path / "again")])
    assert type(again) is VRLwFConfig and result_config(again) == result_config(config)
    assert "vr_lambda: 0.25" in block and "learning_rate: 1.0e-05" in block and "seed:" not in block  # defaults left out


def test_local_or_test_base_model_is_not_claimed():
    for model in ("tiny-random", "examples/models/world-clip", "/abs/path/model"):
        data = ModelCard(model_card(make_results(model=model, cifar_path="examples/data/cifar10"))).data
        assert data.base_model is None and data.datasets is None and data.eval_results


def test_readable_names_and_command():
    from transformers.training_args import OptimizerNames

    assert optimizer_name(OptimizerNames.ADAMW_TORCH) == "AdamW (PyTorch)" == optimizer_name("adamw_torch")
    assert optimizer_name("sgd") == "SGD" and optimizer_name("some_new_optim") == "some_new_optim"
    assert invocation(["/usr/local/bin/clip-cl", "train", "--config", "a b.yaml"]) == "clip-cl train --config 'a b.yaml'"
    assert invocation(["recipes/train.py", "--config", "c.yaml"]) == "python recipes/train.py --config c.yaml"


def test_method_defaults_leave_the_runs_accelerate_state_alone():
    """A bare config resets accelerate's process-wide state; inside a run (here: a configured CPU state standing in
    for a DDP run's) the defaults of the model card must not, or every rank takes itself for the main process."""
    from accelerate import PartialState

    from clip_cl.hub import method_defaults
    from clip_cl.methods import get_method

    method_defaults.cache_clear()
    try:
        state = PartialState(cpu=True)
        before = dict(PartialState._shared_state)
        defaults = method_defaults("lwf")
        assert PartialState._shared_state == before and state.is_main_process
        assert defaults == result_config(get_method("lwf").config_cls(output_dir="clip-cl-defaults"))
    finally:
        method_defaults.cache_clear()
