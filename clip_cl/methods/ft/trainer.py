from ..base.trainer import CLIPCLTrainer

__all__ = ["CLIPFineTuneTrainer"]


class CLIPFineTuneTrainer(CLIPCLTrainer):
    """Plain fine-tuning (FT): the paper's baseline that forgets.

    The loss is the cross-entropy of `logit_scale * cos(f_img(x), f_txt(prompt(c)))` over the session's classes `c`,
    computed in [`CLIPCLTrainer.compute_loss`]; the text of each class comes from the training templates
    (`train_templates`). Which encoder trains follows `variant` (WM / IO / TO).

    Example:
    ```python
    from clip_cl import CLIPFineTuneTrainer, FTConfig, tiny_clip

    model, processor = tiny_clip()
    args = FTConfig(output_dir="runs/ft", num_train_epochs=1, per_device_train_batch_size=8)
    trainer = CLIPFineTuneTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                  class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()
    ```
    """

    _name = "FT"
    _method = "ft"
