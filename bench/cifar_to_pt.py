#!/usr/bin/env python3
"""Write CIFAR-10 from our binary files (data_batch_1..5.bin, test_batch.bin) as the
`train.pt` / `test.pt` dicts airbench94_muon loads ({'images': uint8 N×32×32×3 NHWC,
'labels': int64 N, 'classes': [...]}), so that the anchor and this trainer read the very same
images on the GPU machine (which has no network). Usage:

    python3 bench/cifar_to_pt.py data/cifar-10-batches-bin OUT_DIR

Checks: 50,000 + 10,000 records, labels 0..9, and prints per-channel means to compare with
our loader's (0.4914, 0.4822, 0.4465 for the training set)."""
import os
import sys

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORD = 1 + 3 * 32 * 32


def load(paths):
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8) for p in paths])
    if raw.size % RECORD:
        sys.exit(f"error: {paths} do not hold whole 3073-byte records")
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        sys.exit(f"error: label {labels.max()} > 9 in {paths}")
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # planar -> NHWC
    return images, labels


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    train = load([os.path.join(src, f"data_batch_{i}.bin") for i in range(1, 6)])
    test = load([os.path.join(src, "test_batch.bin")])
    if len(train[0]) != 50000 or len(test[0]) != 10000:
        sys.exit(f"error: expected 50000 + 10000 images, found {len(train[0])} + {len(test[0])}")
    print("train channel means:", (train[0].reshape(-1, 3).mean(0) / 255).round(4).tolist())
    import torch  # only needed to write the files (present on the GPU machine)

    os.makedirs(out, exist_ok=True)
    for name, (images, labels) in [("train.pt", train), ("test.pt", test)]:
        tmp = os.path.join(out, f".{name}.tmp")
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "classes": CLASSES}, tmp)
        os.replace(tmp, os.path.join(out, name))
        print(f"wrote {os.path.join(out, name)}: {len(labels)} images")


if __name__ == "__main__":
    main()
