#!/usr/bin/env python3
"""Pack/unpack the CIFAR-10 binary files so the whole dataset travels to a GPU machine in two
device calls (64 MiB each) instead of four: a lossless left/top-neighbour and cross-channel
difference per image, then xz. About 59% of the raw size. Unpacking checks each file's SHA-256.

  python3 bench/pack_cifar.py pack   SRC_DIR PACK_DIR FILE...   # here (needs numpy)
  python3 bench/pack_cifar.py unpack PACK_DIR DST_DIR           # on the GPU machine
"""
import hashlib, lzma, os, sys
import numpy as np

REC = 3073  # label byte + 3 x 32 x 32 pixels (official CIFAR-10 binary layout)

def encode(raw: bytes) -> bytes:
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, REC)
    px = a[:, 1:].reshape(-1, 3, 32, 32)
    d = px.copy()                                  # uint8 arithmetic wraps mod 256
    d[..., 1:] = px[..., 1:] - px[..., :-1]        # left neighbour
    d[..., 1:, 0] = px[..., 1:, 0] - px[..., :-1, 0]  # first column: top neighbour
    e = d.copy()
    e[:, 1] = d[:, 1] - d[:, 0]
    e[:, 2] = d[:, 2] - d[:, 1]
    return a[:, 0].tobytes() + e.tobytes()

def decode(enc: bytes) -> bytes:
    n = len(enc) // REC
    lab = np.frombuffer(enc[:n], dtype=np.uint8)
    e = np.frombuffer(enc[n:], dtype=np.uint8).reshape(n, 3, 32, 32)
    d = e.copy()
    d[:, 1] = e[:, 1] + d[:, 0]
    d[:, 2] = e[:, 2] + d[:, 1]
    d[..., :, 0] = np.cumsum(d[..., :, 0], axis=-1, dtype=np.uint8)
    px = np.cumsum(d, axis=-1, dtype=np.uint8)
    out = np.empty((n, REC), dtype=np.uint8)
    out[:, 0] = lab
    out[:, 1:] = px.reshape(n, -1)
    return out.tobytes()

def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "pack" and len(sys.argv) >= 5:
        src, dst = sys.argv[2], sys.argv[3]
        os.makedirs(dst, exist_ok=True)
        for name in sys.argv[4:]:
            raw = open(os.path.join(src, name), "rb").read()
            if len(raw) % REC:
                sys.exit(f"{name}: {len(raw)} bytes is not a whole number of {REC}-byte records")
            enc = encode(raw)
            assert decode(enc) == raw, f"{name}: round trip failed"
            sha = hashlib.sha256(raw).hexdigest().encode()
            with open(os.path.join(dst, name + ".pk"), "wb") as f:
                f.write(sha + b"\n" + lzma.compress(enc, preset=6))
            print(f"{name}: {len(raw)} -> {os.path.getsize(os.path.join(dst, name + '.pk'))} bytes")
    elif mode == "unpack" and len(sys.argv) == 4:
        src, dst = sys.argv[2], sys.argv[3]
        os.makedirs(dst, exist_ok=True)
        for pk in sorted(f for f in os.listdir(src) if f.endswith(".pk")):
            blob = open(os.path.join(src, pk), "rb").read()
            sha, body = blob[:64].decode(), blob[65:]
            raw = decode(lzma.decompress(body))
            if hashlib.sha256(raw).hexdigest() != sha:
                sys.exit(f"{pk}: SHA-256 mismatch after unpacking")
            name = pk[:-3]
            tmp = os.path.join(dst, name + ".tmp")
            open(tmp, "wb").write(raw)
            os.replace(tmp, os.path.join(dst, name))
            print(f"{name}: {len(raw)} bytes, sha256 {sha[:16]} ok")
    else:
        sys.exit(__doc__)

if __name__ == "__main__":
    main()
