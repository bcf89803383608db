"""Dequantizes ggml blocks with llama.cpp's own Python package `gguf` (an independent reference).

Usage: dequantize.py DIR
For every file DIR/<tag>.<TYPE>.bin (TYPE a ggml type name such as Q4_K), writes
DIR/<tag>.<TYPE>.f32: the blocks dequantized by `gguf.quants.dequantize`, little-endian f32.
"""

import pathlib
import sys
from importlib.metadata import version

import gguf
import numpy as np
from gguf.quants import dequantize


def main() -> None:
    folder = pathlib.Path(sys.argv[1])
    done = 0
    for path in sorted(folder.glob("*.bin")):
        qtype = gguf.GGMLQuantizationType[path.stem.split(".")[-1]]
        block_len, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if raw.size % block_bytes:
            raise SystemExit(f"{path}: {raw.size} bytes is not whole {qtype.name} blocks of {block_bytes}")
        values = dequantize(raw.reshape(-1, block_bytes), qtype).astype("<f4", copy=False)
        assert values.size == raw.size // block_bytes * block_len
        path.with_suffix(".f32").write_bytes(values.tobytes())
        done += 1
    print(f"gguf {version('gguf')}: dequantized {done} files")


if __name__ == "__main__":
    main()
