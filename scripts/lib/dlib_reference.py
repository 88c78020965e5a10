"""Reference 150x150 face chips and dlib's own 128-d descriptors for the face-trunk tests.

For every photo given: dlib's HOG face detector, its 5-point shape predictor, and
`get_face_chip(img, shape, 150, 0.25)` (the chips the network was trained on). Each chip and
its mirror image are written as PNG (lossless) with dlib-bin's descriptor of exactly that chip,
so the test compares networks on identical pixels. Writes OUT/chips/*.png and
OUT/reference.json: [{"chip": "NAME.png", "photo": ..., "face": i, "mirror": bool,
"landmarks": [[x, y] x 5] (photo pixels; mirror chips repeat their face's),
"descriptor": [128 floats]}].

usage: dlib_reference.py SHAPE_PREDICTOR.dat RECOGNITION.dat OUT PHOTO...
"""
import json
import os
import sys

import dlib
import numpy as np


def main():
    predictor_path, model_path, out = sys.argv[1:4]
    photos = sys.argv[4:]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(predictor_path)
    net = dlib.face_recognition_model_v1(model_path)
    os.makedirs(os.path.join(out, "chips"), exist_ok=True)
    entries = []
    for photo in photos:
        img = dlib.load_rgb_image(photo)
        stem = os.path.splitext(os.path.basename(photo))[0]
        # One upsampling finds the small faces of the group photo.
        for i, rect in enumerate(sorted(detector(img, 1), key=lambda r: (r.left(), r.top()))):
            shape = predictor(img, rect)
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            points = [[shape.part(k).x, shape.part(k).y] for k in range(shape.num_parts)]
            for mirror in (False, True):
                c = np.ascontiguousarray(chip[:, ::-1]) if mirror else chip
                name = f"{stem}-{i}{'-mirror' if mirror else ''}.png"
                dlib.save_image(c, os.path.join(out, "chips", name))
                entries.append({
                    "chip": name,
                    "photo": os.path.basename(photo),
                    "face": i,
                    "mirror": mirror,
                    "landmarks": points,
                    "descriptor": list(net.compute_face_descriptor(c)),
                })
    with open(os.path.join(out, "reference.json.partial"), "w") as f:
        json.dump(entries, f)
    os.replace(os.path.join(out, "reference.json.partial"), os.path.join(out, "reference.json"))
    print(f"dlib_reference: {len(entries)} chips from {len(photos)} photos -> {out}")


if __name__ == "__main__":
    main()
