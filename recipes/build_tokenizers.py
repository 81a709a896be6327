"""Build the small SigLIP / SigLIP 2 tokenizer fixtures in `clip_cl/assets/` from captions in `../shared/data`.

The tiny SigLIP models (`tiny-random-siglip`, `tiny-random-siglip2`) need tokenizers of their families' kinds, built
offline (no Hub access here): a SentencePiece unigram model read by `SiglipTokenizer` (T5-style ids: `<pad>` 0,
`</s>` 1, `<unk>` 2, no start token), and a byte-fallback BPE read by `Siglip2Tokenizer` (Gemma-style ids: `<pad>` 0,
`<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4). Both are trained on the lower-cased captions of Pascal Sentences and
COCO-mini plus the class names of CIFAR-10 and Tiny-ImageNet, with a vocabulary of 2,000 pieces.

Run from the repository root (takes a few seconds)::

    python recipes/build_tokenizers.py --data_dir ../shared/data

It rewrites `clip_cl/assets/siglip_tokenizer/spiece.model` and `clip_cl/assets/siglip2_tokenizer/tokenizer.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "clip_cl" / "assets"
VOCAB_SIZE = 2000


def corpus(data_dir: Path) -> list[str]:
    """Lower-cased captions and class names, in a fixed order."""
    import datasets

    texts: list[str] = []
    ps = datasets.load_dataset("parquet", data_files={"test": str(data_dir / "pascal_sentences" / "test.parquet")},
                               split="test")
    for caps in ps["captions"]:
        texts.extend(caps)
    texts.extend(ps.features["label"].names)
    for split in ("train", "val"):
        with open(data_dir / "coco_mini" / "annotations" / f"captions_{split}2017.json", encoding="utf-8") as f:
            texts.extend(a["caption"] for a in json.load(f)["annotations"])
    for name in ("cifar10", "tiny_imagenet"):
        path = data_dir / name / ("test.parquet" if name == "cifar10" else "train.parquet")
        if path.exists():
            feats = datasets.load_dataset("parquet", data_files={"x": str(path)}, split="x").features
            texts.extend(feats["label"].names)
    texts.append("this is a photo of {} in the scene .")
    return [" ".join(t.lower().split()) for t in texts if t.strip()]


def build_siglip(texts: list[str]) -> None:
    import sentencepiece as spm

    out = ASSETS / "siglip_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=VOCAB_SIZE, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, num_threads=1, seed_sentencepiece_size=100000, minloglevel=2)
    (out / "spiece.model").write_bytes(buf.getvalue())
    from transformers import SiglipTokenizer

    SiglipTokenizer(vocab_file=str(out / "spiece.model"), model_max_length=64).save_pretrained(str(out))


def build_siglip2(texts: list[str]) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    out = ASSETS / "siglip2_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]  # Gemma's byte fallback pieces
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = tok.get_vocab()
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    from transformers import Siglip2Tokenizer

    hf = Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=64, padding_side="right")
    hf.save_pretrained(str(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data", help="Folder with pascal_sentences/ and coco_mini/.")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if not (data_dir / "pascal_sentences" / "test.parquet").exists():
        print(f"error: {data_dir} has no pascal_sentences/test.parquet; pass --data_dir pointing at shared/data.",
              file=sys.stderr)
        return 2
    texts = corpus(data_dir)
    build_siglip(texts)
    build_siglip2(texts)
    for p in sorted(ASSETS.glob("siglip*_tokenizer/*")):
        print(f"{p.relative_to(ASSETS.parent.parent)}: {os.path.getsize(p):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
