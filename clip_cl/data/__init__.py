"""Data for continual learning of CLIP: dataset specs, COCO builders, image transforms and the session protocol.

```python
from clip_cl.data import Protocol, with_image_transform, collate_classification

protocol = Protocol.from_dict({
    "update_train": {"name": "fashion_mnist", "path": "examples/data/fashion_mnist", "split": "train"},
    "update_test": {"name": "fashion_mnist", "path": "examples/data/fashion_mnist", "split": "test"},
    "num_sessions": 5,
})
train = with_image_transform(protocol.session_train(0), processor.image_processor, train=True, label_column="label")
```
"""

from .coco import CocoCaptions, CocoCaptionsConfig, CocoObjects, CocoObjectsConfig, load_coco
from .eurosat import EuroSAT, EuroSATConfig, load_eurosat
from .flickr30k import Flickr30k, Flickr30kConfig, load_flickr30k
from .protocol import Protocol, build_sessions
from .specs import BUILDERS, DatasetSpec, class_names_of, infer_builder, label_array, load_spec, subsample
from .tiered_imagenet import TieredImageNet, TieredImageNetConfig, load_tiered_imagenet, tiered_imagenet_classes
from .transforms import (
    CorruptImageError,
    EncodedImage,
    EncodedImages,
    EpochSampler,
    ImageTransform,
    KeyedTrainDataset,
    build_image_transform,
    collate_classification,
    collate_pixels,
    collate_retrieval,
    decode_rgb,
    normalize_pixels,
    pixels_to_device,
    verify_images,
    with_image_transform,
)

__all__ = [
    "BUILDERS",
    "CocoCaptions",
    "CocoCaptionsConfig",
    "CocoObjects",
    "CocoObjectsConfig",
    "CorruptImageError",
    "DatasetSpec",
    "EncodedImage",
    "EncodedImages",
    "EpochSampler",
    "EuroSAT",
    "EuroSATConfig",
    "Flickr30k",
    "Flickr30kConfig",
    "ImageTransform",
    "KeyedTrainDataset",
    "Protocol",
    "TieredImageNet",
    "TieredImageNetConfig",
    "build_image_transform",
    "build_sessions",
    "class_names_of",
    "collate_classification",
    "collate_pixels",
    "collate_retrieval",
    "decode_rgb",
    "infer_builder",
    "label_array",
    "load_coco",
    "load_eurosat",
    "load_flickr30k",
    "load_spec",
    "load_tiered_imagenet",
    "normalize_pixels",
    "pixels_to_device",
    "subsample",
    "tiered_imagenet_classes",
    "verify_images",
    "with_image_transform",
]
