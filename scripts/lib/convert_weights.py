"""Converts a PyTorch checkpoint (.pth/.pt) into safetensors for `dmue-train fit --init`.

Loads with torch.load(weights_only=True): tensors and plain containers only, no code runs.
Takes the state dict from the file itself or from its "state_dict", "model", "net" or
"model_state_dict" entry. Writes the safetensors format directly (8-byte little-endian header
length, JSON header, raw little-endian data), so no extra package is needed.
"""
import json
import struct
import sys

import torch

DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def state_dict(obj):
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net", "model_state_dict"):
            if key in obj:
                return state_dict(obj[key])
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise SystemExit("convert-weights: no state dict found (expected a dict of tensors, or one under "
                     "state_dict / model / net / model_state_dict)")


def main(src, dst):
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the message is the point
        raise SystemExit(f"convert-weights: cannot read {src} as a PyTorch checkpoint: {e}")
    sd = state_dict(obj)
    header, blobs, offset = {}, [], 0
    for name, t in sd.items():
        if t.dtype not in DTYPES:
            raise SystemExit(f"convert-weights: {name} has unsupported dtype {t.dtype}")
        data = t.detach().contiguous().cpu().numpy().tobytes() if t.dtype != torch.bfloat16 else \
            t.detach().contiguous().view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt", "source": src.split("/")[-1]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(dst + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    import os
    os.replace(dst + ".tmp", dst)
    print(f"convert-weights: wrote {dst} ({len(sd)} tensors)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: convert_weights.py IN.pth OUT.safetensors")
    main(sys.argv[1], sys.argv[2])
