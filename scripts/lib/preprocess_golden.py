"""Writes the preprocessing golden files of deploy/tests/preprocess_golden.rs with Pillow and
NumPy, independently of dmue's code: the classifier transform as torchvision computes it on a
PIL image (bilinear resize with Pillow's filter, crop, scale to [0, 1], (x - mean) / std,
planar CHW float32).

Run once, after a deliberate change of the transform, and commit the output:
    .venv/bin/pip install pillow==11.3.0
    .venv/bin/python scripts/lib/preprocess_golden.py deploy/tests/data/preprocess

Pillow resizes the width first, dmue (fast_image_resize) the height first, so about a fifth
of the bytes differ by one level: the test allows that and nothing more.

The crop offset is floor((resize - crop) / 2), as dmue defines the centre crop. torchvision's
CenterCrop rounds half to even instead, which moves the window by one pixel when the margin is
odd and its half rounds up (a margin of 7: offset 3 here, 4 there).
"""
import json
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

# A source with smooth gradients, hard edges and noise, in a shape that is neither square nor
# a multiple of the outputs (anisotropic downscale and upscale both happen).
rng = np.random.RandomState(7)
h, w = 53, 61
y, x = np.mgrid[0:h, 0:w]
r = (x * 255 / (w - 1))
g = np.where(((x // 6) + (y // 5)) % 2 == 0, 220.0, 35.0)
b = 128 + 100 * np.sin(x / 4.0) * np.cos(y / 3.0)
src = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))
src = np.clip(np.rint(src), 0, 255).astype(np.uint8)
Image.fromarray(src).save(os.path.join(out, "source.png"))

dlib_mean = [122.782879 / 255, 117.001652 / 255, 104.298177 / 255]
cases = [
    # name, resize, crop, mean, std, (x0, y0) or None for the centre, flip
    ("centre-40-32", 40, 32, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], None, False),
    ("centre-45-38", 45, 38, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25], None, False),
    ("window-72-32-flip", 72, 32, dlib_mean, [256 / 255] * 3, (5, 2), True),
]
manifest = []
for name, resize, crop, mean, std, at, flip in cases:
    img = Image.open(os.path.join(out, "source.png")).convert("RGB")
    img = img.resize((resize, resize), Image.BILINEAR)
    x0, y0 = at if at else ((resize - crop) // 2,) * 2
    img = img.crop((x0, y0, x0 + crop, y0 + crop))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - np.array(mean, np.float32)) / np.array(std, np.float32)
    a = np.ascontiguousarray(a.transpose(2, 0, 1), dtype="<f4")
    a.tofile(os.path.join(out, name + ".f32"))
    manifest.append({"name": name, "resize": resize, "crop": crop, "mean": mean, "std": std,
                     "x0": x0, "y0": y0, "flip": flip, "centre": at is None})
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(manifest, f, indent=1)
print("wrote", out)
