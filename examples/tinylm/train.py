"""Train tinylm: a small byte-level Llama-architecture model, saved as a Hugging Face checkpoint.

Why this exists: the demo and the README must show `edge-runtime` generating readable
text without any download. The training text is what every Debian/Ubuntu machine
carries: the license texts under /usr/share/common-licenses (plain English prose).

The vocabulary is bytes (ids 0-255) plus three specials (<bos>=256, <eos>=257,
<pad>=258), so any text encodes; `tokenizer.json` (built with the `tokenizers`
library: byte-level BPE with no merges) maps text to exactly these ids, which lets the
engine encode prompts and decode tokens.

PyTorch is used here only, never by the runtime. Run (CPU, one thread, a few minutes):

    .venv/bin/python examples/tinylm/train.py --minutes 4 --out examples/tinylm/checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259
TEXT_DIR = Path("/usr/share/common-licenses")


def load_corpus() -> bytes:
    """All license texts concatenated (symlinks skipped so no text counts twice)."""
    parts = []
    for path in sorted(TEXT_DIR.iterdir()):
        if path.is_file() and not path.is_symlink():
            parts.append(path.read_bytes())
    if not parts:
        raise SystemExit(f"no training text under {TEXT_DIR}")
    return b"\n\n".join(parts)


def build_tokenizer() -> Tokenizer:
    """Byte-level tokenizer whose ids are the raw byte values, plus the specials."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins
    # ByteLevel maps byte b to a fixed unicode char; recover that map to give char(b) id b.
    mapping = _bytes_to_unicode()
    assert set(mapping.values()) == set(byte_chars)
    vocab = {mapping[b]: b for b in range(256)}
    vocab.update({"<bos>": BOS, "<eos>": EOS, "<pad>": PAD})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<bos>", "<eos>", "<pad>"])
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (the one `ByteLevel` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "checkpoint")
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    data = np.frombuffer(load_corpus(), dtype=np.uint8).astype(np.int64)
    split = int(len(data) * 0.95)
    train, val = data[:split], data[split:]
    print(f"corpus: {len(data)} bytes from {TEXT_DIR}")

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=160,
        intermediate_size=448,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))

    def batch(source: np.ndarray) -> torch.Tensor:
        starts = rng.integers(0, len(source) - args.seq - 1, size=args.batch)
        return torch.from_numpy(np.stack([source[s : s + args.seq] for s in starts]))

    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    step = 0
    log: list[dict[str, float]] = []
    est_steps = 400  # cosine schedule horizon; refined from the measured step time
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > budget:
            break
        if step == 5:
            est_steps = max(10, int(budget / (elapsed / 5)))
        lr = (
            3e-3
            * (min(1.0, (step + 1) / 20))
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / est_steps))))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch(train)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                model.eval()
                v = batch(val)
                vl = float(model(input_ids=v, labels=v).loss)
                model.train()
            print(
                f"step {step:4d}  {elapsed:6.1f}s  lr {lr:.2e}  "
                f"train {loss.item():.3f}  val {vl:.3f}",
                flush=True,
            )
            log.append(
                {
                    "step": step,
                    "seconds": round(elapsed, 1),
                    "train_loss": round(loss.item(), 4),
                    "val_loss": round(vl, 4),
                }
            )
        step += 1

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    build_tokenizer().save(str(args.out / "tokenizer.json"))
    (args.out / "training_log.json").write_text(
        json.dumps({"steps": step, "log": log}, indent=1) + "\n"
    )
    prompt = b"Permission is hereby granted"
    ids = torch.tensor([list(prompt)])
    out = model.generate(ids, max_new_tokens=120, do_sample=False)
    print("greedy sample:", bytes(t for t in out[0].tolist() if t < 256).decode("utf-8", "replace"))


if __name__ == "__main__":
    main()
