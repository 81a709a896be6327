"""Contrastive pretraining of a small CLIP from scratch (issue #8): the world's data, the config, the trainer and the
`clip-cl pretrain` entry point. See `docs/pretraining.md`.

```python
from clip_cl.pretrain import PretrainConfig, run_pretrain

results = run_pretrain(PretrainConfig(output_dir="runs/pretrain", max_steps=100))
```
"""

from .config import (
    CAPTION_TEMPLATES,
    DEFAULT_TRAIN_PARTS,
    WORLD_CLIP_CONFIG,
    ZERO_SHOT_TEMPLATES,
    PretrainConfig,
)
from .data import (
    PretrainCollator,
    TrainPart,
    WorldTrainDataset,
    build_train_cache,
    load_train_parts,
)
from .run import (
    evaluate_pretrained,
    export_model,
    format_results,
    main,
    parse_pretrain_config,
    run_pretrain,
)
from .trainer import (
    CLIPPretrainTrainer,
    TimeBudgetCallback,
    clip_contrastive_loss,
    positive_targets,
)
from .world import WORLD_PARTS, check_disjoint, load_world, prepare_world, world_spec

__all__ = [
    "CAPTION_TEMPLATES",
    "DEFAULT_TRAIN_PARTS",
    "WORLD_CLIP_CONFIG",
    "WORLD_PARTS",
    "ZERO_SHOT_TEMPLATES",
    "CLIPPretrainTrainer",
    "PretrainCollator",
    "PretrainConfig",
    "TimeBudgetCallback",
    "TrainPart",
    "WorldTrainDataset",
    "build_train_cache",
    "clip_contrastive_loss",
    "evaluate_pretrained",
    "export_model",
    "format_results",
    "load_train_parts",
    "check_disjoint",
    "load_world",
    "main",
    "parse_pretrain_config",
    "positive_targets",
    "prepare_world",
    "run_pretrain",
    "world_spec",
]
