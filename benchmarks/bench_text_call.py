"""One padded text-encoder call for the class prompts + VR-LwF's pseudo-texts against two unpadded calls (and the
padded call without its padding mask): forward + backward of the student's text encoder, CPU time (or wall time on
GPU), round-robin.

    python benchmarks/bench_text_call.py --model vitb32 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    CLASS_NAMES,
    HelpFormatter,
    build_model,
    markdown_table,
    pick_device,
    run_interleaved,
)


def bench(model_name: str, device, rounds: int = 3, num_pseudo: int = 100, log=print) -> dict:
    from clip_cl.features import concat_tokens, text_features, tokenize
    from clip_cl.losses import sample_pseudo_tokens
    from clip_cl.prompts import DEFAULT_TRAIN_TEMPLATES, format_prompts

    model, processor = build_model(model_name)
    model.to(device).train()
    tok = processor.tokenizer
    prompts = tokenize(tok, format_prompts(CLASS_NAMES, DEFAULT_TRAIN_TEMPLATES), device)
    pseudo = sample_pseudo_tokens(num_pseudo, 8, model.config.text_config.vocab_size, tok.bos_token_id,
                                  tok.eos_token_id, tok.all_special_ids, torch.Generator().manual_seed(0))
    pseudo = {k: v.to(device) for k, v in pseudo.items()}
    both = concat_tokens(prompts, pseudo, tok.pad_token_id)

    def one_call():
        text_features(model, **both).sum().backward()
        model.zero_grad(set_to_none=True)

    def one_call_no_mask():  # right padding never reaches the pooled output of CLIP's causal text tower
        text_features(model, both["input_ids"], None).sum().backward()
        model.zero_grad(set_to_none=True)

    def two_calls():
        torch.cat([text_features(model, **prompts), text_features(model, **pseudo)]).sum().backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        same = (text_features(model, **both) - text_features(model, both["input_ids"], None)).abs().max().item()
    t = run_interleaved({"one_padded_call": one_call, "one_call_no_mask": one_call_no_mask, "two_calls": two_calls},
                        rounds=rounds, warmup=1, device=device, log=log)
    return {"shapes": {"prompts": list(prompts["input_ids"].shape), "pseudo": list(pseudo["input_ids"].shape),
                       "one_call": list(both["input_ids"].shape)},
            "seconds": t.seconds, "one_over_two": t.ratio("one_padded_call", "two_calls"),
            "no_mask_over_two": t.ratio("one_call_no_mask", "two_calls"), "max_abs_diff_no_mask": same}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="vitb32", choices=["tiny", "vitb32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = bench(a.model, pick_device(a.device), a.rounds)
    rows = [[k, " / ".join(f"{x:.2f}" for x in v)] for k, v in res["seconds"].items()]
    print(f"text encoder forward + backward, {a.model}, token shapes {res['shapes']}:\n"
          + markdown_table(["case", "seconds per round"], rows)
          + f"\none padded call / two calls: {res['one_over_two']:.2f}x (median of per-round ratios)"
          + f"\nthe same call without the padding mask / two calls: {res['no_mask_over_two']:.2f}x "
            f"(pooled features differ by at most {res['max_abs_diff_no_mask']:.1e})")


if __name__ == "__main__":
    main()
