"""Tests of `clip_cl.data.Protocol` on the quickstart sample in `examples/data/`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_cl.data import Protocol, collate_classification, collate_retrieval, label_array, with_image_transform

try:
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import CLIPImageProcessor

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data"
FASHION = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _config(tmp_path, **overrides) -> dict:
    config = {
        "update_train": {"name": "fashion_mnist", "path": str(SAMPLE / "fashion_mnist"), "split": "train"},
        "update_test": {"name": "fashion_mnist", "path": str(SAMPLE / "fashion_mnist"), "split": "test"},
        "num_sessions": 3,
        "class_order_seed": 7,
        "zero_shot": [{"name": "cifar10", "path": str(SAMPLE / "cifar10")}],
        "retrieval": [{"name": "coco", "path": str(SAMPLE / "coco_captions")}],
        "cache_dir": str(tmp_path / "cache"),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def protocol(tmp_path_factory) -> Protocol:
    return Protocol.from_dict(_config(tmp_path_factory.mktemp("protocol")))


def test_sessions_partition_the_classes(protocol):
    assert protocol.class_names == FASHION
    sessions = protocol.sessions
    assert [len(s) for s in sessions] == [4, 3, 3]
    assert sorted(c for s in sessions for c in s) == list(range(10))
    assert protocol.session_class_names(1) == [FASHION[i] for i in sessions[1]]


def test_session_filtering_is_exact(protocol):
    train_labels = label_array(protocol.joint_train(protocol.num_sessions - 1))
    for t, classes in enumerate(protocol.sessions):
        rows = protocol.session_train(t)
        labels = label_array(rows)
        assert set(labels.tolist()) == set(classes)
        assert len(rows) == int(np.isin(train_labels, classes).sum()) == 40 * len(classes)
    seen = [c for s in protocol.sessions[:2] for c in s]
    assert set(label_array(protocol.joint_train(1)).tolist()) == set(seen) and len(protocol.joint_train(1)) == 280
    assert set(label_array(protocol.seen_test(1)).tolist()) == set(seen) and len(protocol.seen_test(1)) == 140
    assert len(protocol.seen_test(2)) == len(protocol.update_test_dataset()) == 200
    with pytest.raises(IndexError, match="3 session"):
        protocol.session_train(3)


def test_describe_is_json_serialisable(protocol):
    record = json.loads(json.dumps(protocol.describe()))
    assert record["setting"] == "MST" and record["num_sessions"] == 3 and record["class_order_seed"] == 7
    assert [s["train_rows"] for s in record["sessions"]] == [160, 120, 120]
    assert [s["test_rows"] for s in record["sessions"]] == [80, 60, 60]
    assert record["class_order"] == [FASHION[i] for s in protocol.sessions for i in s]
    assert record["update_task"]["train"]["num_rows"] == 400 and record["update_task"]["test"]["split"] == "test"
    assert record["zero_shot"][0]["name"] == "cifar10" and record["zero_shot"][0]["num_rows"] == 200
    assert record["retrieval"][0]["num_rows"] == 60 and record["retrieval"][0]["num_captions"] == 300


def test_evaluation_sets_use_canonical_columns(protocol):
    dataset, names = protocol.zero_shot_datasets()["cifar10"]
    assert names[0] == "airplane" and {"image", "label"} <= set(dataset.column_names)
    retrieval = protocol.retrieval_datasets()["coco"]
    assert {"image", "captions"} <= set(retrieval.column_names)
    assert protocol.retrieval_datasets()["coco"] is retrieval  # loaded once


def test_end_to_end_batches(protocol):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    train = with_image_transform(protocol.session_train(0), processor, train=True, label_column="label",
                                 dataset_name="fashion_mnist")
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8, shuffle=True,
                                                  collate_fn=collate_classification)))
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    assert set(batch["labels"].tolist()) <= set(protocol.sessions[0])
    retrieval = with_image_transform(protocol.retrieval_datasets()["coco"], processor, train=False,
                                     captions_column="captions", dataset_name="coco")
    batch = collate_retrieval(retrieval.__getitems__([0, 1]))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and len(batch["captions"][0]) == 5


def test_one_session_is_ost(tmp_path):
    protocol = Protocol.from_dict(_config(tmp_path, num_sessions=1, zero_shot=[], retrieval=[]))
    assert sorted(protocol.sessions[0]) == list(range(10))
    assert len(protocol.session_train(0)) == 400
    assert protocol.describe()["setting"] == "OST"


def test_empty_session_fails_before_training(tmp_path):
    config = _config(tmp_path, num_sessions=10)
    config["update_train"] = {**config["update_train"], "max_samples": 4}
    protocol = Protocol.from_dict(config)
    with pytest.raises(ValueError, match=r"Session \d \(classes .*\) has no training rows"):
        protocol.sessions


def test_protocol_config_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'num_sessions'"):
        Protocol.from_dict(_config(tmp_path, num_session=2))
    with pytest.raises(ValueError, match="did you mean 'max_samples'"):
        Protocol.from_dict(_config(tmp_path, zero_shot=[{"name": "c", "path": "x", "max_sample": 3}]))
    with pytest.raises(ValueError, match="duplicate dataset names"):
        Protocol.from_dict(_config(tmp_path, zero_shot=[{"name": "c", "path": "x"}, {"name": "c", "path": "y"}]))
    with pytest.raises(TypeError, match="wrap it in a list"):
        Protocol.from_dict(_config(tmp_path, retrieval={"name": "c", "path": "x"}))
    renamed = _config(tmp_path)
    renamed["update_test"] = {**renamed["update_test"], "class_names": [f"c{i}" for i in range(10)]}
    with pytest.raises(ValueError, match="name their classes differently"):
        Protocol.from_dict(renamed).class_names
    assert Protocol.from_dict(_config(tmp_path)).to_dict()["zero_shot"][0]["name"] == "cifar10"
