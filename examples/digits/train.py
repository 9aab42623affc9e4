"""Train the multi-exit digits CNN and export it to ONNX (the demo's model asset).

Why this model looks the way it does: the 8×8 scikit-learn digits are upsampled to
48×48 inside the network so that compute, not messaging, dominates a request
(about 234 MFLOPs, a few ms per image on one core), which makes splitting it across
devices and stopping early measurable. Three exits (``exit1`` after ~9% of the
FLOPs, ``exit2`` after ~55%, ``final``) give the early-exit machinery something
to choose between; stage 3 has a residual connection so cuts there must carry a
skip tensor.

Run (PyTorch CPU, about three minutes on two shared cores)::

    .venv/bin/python examples/digits/train.py

It writes, next to this file: ``digits_exits.onnx`` (input ``image`` [batch,1,8,8]
float32, outputs ``exit1``, ``exit2``, ``final`` logits), ``test_split.npz`` and
``calibration.npz`` (images float32, labels int64) and ``metrics.json`` (accuracy
per exit on the test split). Everything is seeded, so a rerun reproduces the files
up to floating-point nondeterminism of the CPU kernels.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SEED = 0
EXITS = ("exit1", "exit2", "final")
# Loss weight of each exit: the early heads are trained jointly (BranchyNet style),
# weighted lower so they do not pull the shared trunk away from the final exit.
EXIT_WEIGHTS = (0.5, 0.7, 1.0)


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DigitsExits(nn.Module):
    """CNN with three exits over 8×8 digits upsampled to 32×32."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(conv_bn(1, 16), conv_bn(16, 32))  # 48×48
        self.head1 = nn.Sequential(nn.MaxPool2d(6), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
        self.block2 = nn.Sequential(
            nn.MaxPool2d(2), conv_bn(32, 64), conv_bn(64, 64), conv_bn(64, 64)
        )  # 24×24
        self.head2 = nn.Sequential(nn.MaxPool2d(6), nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
        self.block3a = nn.Sequential(nn.MaxPool2d(2), conv_bn(64, 128))  # 12×12
        self.block3b = nn.Sequential(conv_bn(128, 128), conv_bn(128, 128))
        self.head3 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(image, scale_factor=6.0, mode="nearest")
        x = self.block1(x)
        exit1 = self.head1(x)
        x = self.block2(x)
        exit2 = self.head2(x)
        x = self.block3a(x)
        x = x + self.block3b(x)  # residual: a skip tensor crosses every cut inside block3b
        final = self.head3(x)
        return exit1, exit2, final


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """60% train, 20% calibration, 20% test; stratified and seeded."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=0.4, random_state=SEED, stratify=labels
    )
    x_cal, x_test, y_cal, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=SEED, stratify=y_rest
    )
    return {"train": (x_train, y_train), "calibration": (x_cal, y_cal), "test": (x_test, y_test)}


def train(model: DigitsExits, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64)
    )
    generator = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            batch = xt[idx]
            # small random shifts: a cheap augmentation that helps the early exits
            shift = torch.randint(-1, 2, (2,), generator=generator)
            batch = torch.roll(batch, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            outputs = model(batch)
            loss = sum(
                w * F.cross_entropy(o, yt[idx]) for w, o in zip(EXIT_WEIGHTS, outputs, strict=True)
            )
            optimiser.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimiser.step()
            scheduler.step()
            total += float(loss) * len(idx)
        log.info("epoch %d loss %.4f", epoch + 1, total / len(xt))


def accuracy(model: DigitsExits, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(x))
    return {
        name: float((o.argmax(1).numpy() == y).mean())
        for name, o in zip(EXITS, outputs, strict=True)
    }


def export(model: DigitsExits, path: Path) -> None:
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=list(EXITS),
        dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in EXITS}},
        opset_version=17,
        dynamo=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    splits = load_splits()
    model = DigitsExits()
    started = time.perf_counter()
    train(model, *splits["train"], epochs=args.epochs)
    log.info("trained in %.1f s", time.perf_counter() - started)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    export(model, out / "digits_exits.onnx")
    for split in ("test", "calibration"):
        images, labels = splits[split]
        name = "test_split.npz" if split == "test" else "calibration.npz"
        np.savez_compressed(out / name, images=images, labels=labels)
    metrics = {
        "seed": SEED,
        "epochs": args.epochs,
        "test_accuracy": accuracy(model, *splits["test"]),
        "calibration_accuracy": accuracy(model, *splits["calibration"]),
        "sizes": {k: len(v[1]) for k, v in splits.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test accuracy per exit: %s", metrics["test_accuracy"])


if __name__ == "__main__":
    main()
