"""Writes the synthetic input sets (edgeopt `.npz` tasks) for the pretrained ONNX models of
rapidocr_onnxruntime 1.4.4 and nudenet 3.4.2 (benchmarks/real_models/README.md).

    .venv/bin/python benchmarks/real_models/make_tasks.py OUT_DIR

Writes OUT_DIR/ocr_rec.npz (1x3x48x320 rendered text lines, PaddleOCR's (x/255-0.5)/0.5,
right-padded with 0 as PaddleOCR pads; its `outputs` declares the CTC sequence), OUT_DIR/ocr_cls.npz (1x3x48x192 text lines, half of them
turned 180 degrees, labelled 0 / 1 as the classifier's label_list ['0', '180']), OUT_DIR/ocr_det.npz
(1x3x640x640 photo crops with text lines pasted on, normalized as rapidocr's det config:
mean 0.5, std 0.5) and OUT_DIR/yolo.npz (1x3x320x320, RGB x/255 as nudenet feeds it: canvases
with 1-9 faces pasted on photo crops, then plain photo crops as negatives; its `outputs` declares
output0 as boxes+scores with nudenet's thresholds). The photos are the two bundled with
scikit-learn and matplotlib's Grace Hopper portrait; the text uses Pillow's default font (no
files are downloaded). Every input is seeded, so a rerun writes the same arrays. OUT_DIR/texts.json
keeps the strings rendered for the recognizer and the classifier, in order.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

WORDS = ("edge", "model", "int8", "latency", "TVM", "Relax", "oneDNN", "photo", "text", "line",
         "Paris", "London", "invoice", "total", "price", "order", "ticket", "station", "hotel",
         "coffee", "river", "street", "north", "south", "open", "closed", "exit", "speed")


def text_lines(rng: np.random.Generator, n: int) -> list[str]:
    """Seeded short lines: words and numbers, as a receipt or a sign would carry."""
    lines = []
    for _ in range(n):
        parts = [str(rng.choice(WORDS)) for _ in range(rng.integers(1, 4))]
        if rng.random() < 0.6:
            parts.insert(int(rng.integers(0, len(parts) + 1)), str(int(rng.integers(0, 10000))))
        lines.append(" ".join(parts))
    return lines


def render_line(text: str, size: int, ink: int, paper: int) -> Image.Image:
    """The line in Pillow's default (FreeType) font, tightly cropped with a small margin."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    margin = max(2, size // 6)
    image = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), paper)
    ImageDraw.Draw(image).text((margin - left, margin - top), text, fill=ink, font=font)
    return image.convert("RGB")


def paddle_line_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """PaddleOCR's rec/cls resize: keep the aspect ratio at `height`, at most `width` wide,
    normalized to [-1, 1], zero (the normalized mid-grey) to the right."""
    ratio = image.width / image.height
    w = min(width, max(1, int(np.ceil(height * ratio))))
    resized = np.asarray(image.resize((w, height), Image.BILINEAR), np.float32)
    chw = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :w] = chw
    return out


def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(p, np.uint8) for p in load_sample_images().images]


def photo_crop(rng: np.random.Generator, photo: np.ndarray, side: int) -> Image.Image:
    """A random square of the photo between `side` and its full height, resized to `side`."""
    h, w = photo.shape[:2]
    crop = int(rng.integers(min(side, h) // 2, h + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return Image.fromarray(photo[y:y + crop, x:x + crop]).resize((side, side), Image.BILINEAR)


#: What the recognizer's output is: (1, 40 steps, 6,625 symbols) softmax, read by CTC greedy
#: decoding with the blank first, as PaddleOCR's CTCLabelDecode reads it; the study scores it
#: by the share of decoded strings identical to fp32's.
REC_OUTPUT = {"name": "text", "kind": "sequence", "decode": "ctc", "blank": 0}


def rec_and_cls(rng: np.random.Generator, n: int):
    texts = text_lines(rng, n)
    rec, cls, turned = [], [], []
    for i, text in enumerate(texts):
        paper = int(rng.integers(200, 256))
        image = render_line(text, int(rng.integers(24, 44)), int(rng.integers(0, 70)), paper)
        rec.append(paddle_line_input(image, 48, 320))
        flip = i % 2 == 1
        cls.append(paddle_line_input(image.rotate(180) if flip else image, 48, 192))
        turned.append(int(flip))
    return texts, np.stack(rec), np.stack(cls), np.asarray(turned, np.int64)


def det_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    pics, out = photos(), []
    for i in range(n):
        canvas = photo_crop(rng, pics[i % len(pics)], 640)
        for text in text_lines(rng, int(rng.integers(2, 6))):
            paper = int(rng.integers(180, 256))
            line = render_line(text, int(rng.integers(20, 48)), int(rng.integers(0, 60)), paper)
            if line.width >= 620:
                continue
            canvas.paste(line, (int(rng.integers(0, 640 - line.width)), int(rng.integers(0, 640 - line.height))))
        out.append((np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
    return np.stack(out)


#: What nudenet's output0 is, for the study's per-output quality: (1, 4 + 18, 2,100), xywh boxes
#: in pixels and sigmoid class scores; nudenet keeps scores above 0.25 (cv2.dnn.NMSBoxes' score
#: threshold, after its own >= 0.2) and suppresses overlaps above IoU 0.45.
YOLO_OUTPUT = {"name": "output0", "kind": "boxes+scores", "classes": 18, "score_threshold": 0.25, "nms_iou": 0.45}


def portrait() -> Image.Image:
    """Matplotlib's bundled Grace Hopper portrait (512x600): a face nudenet finds (FACE_FEMALE,
    0.81 letterboxed as nudenet feeds it)."""
    from matplotlib import cbook

    return Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


def vary(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Flipped half the time, brightness, contrast and colour varied, one in six grey, one in
    four turned up to 15 degrees."""
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.3)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.7, 1.3)))
    image = ImageEnhance.Color(image).enhance(0.0 if rng.random() < 1 / 6 else float(rng.uniform(0.6, 1.4)))
    if rng.random() < 0.25:
        image = image.rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
    return image


def head_crop(rng: np.random.Generator, face: Image.Image, size: int) -> Image.Image:
    """A square of the portrait's upper part (head and shoulders, 45-100% of its width),
    varied, at `size`."""
    w, h = face.size
    crop = int(rng.integers(int(w * 0.45), w + 1))
    x, y = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, min(h - crop, 120) + 1))
    return vary(rng, face.crop((x, y, x + crop, y + crop))).resize((size, size), Image.BILINEAR)


def face_canvas(rng: np.random.Generator, face: Image.Image, background: np.ndarray, side: int = 320) -> Image.Image:
    """A photo crop with 1, up to 4 or up to 9 heads pasted on a 1x1, 2x2 or 3x3 grid (each cell
    filled with probability 0.8, each head 75-100% of its cell, placed at random within it)."""
    canvas = photo_crop(rng, background, side)
    grid = int(rng.choice([1, 2, 2, 3]))
    cell = side // grid
    for row in range(grid):
        for col in range(grid):
            if grid > 1 and rng.random() < 0.2:
                continue
            size = int(cell * rng.uniform(0.75, 1.0))
            canvas.paste(head_crop(rng, face, size), (col * cell + int(rng.integers(0, cell - size + 1)),
                                                      row * cell + int(rng.integers(0, cell - size + 1))))
    return canvas


def letterbox(image: Image.Image, side: int = 320) -> Image.Image:
    """nudenet's `_read_image`: pad right and bottom with black to a square, resize to `side`."""
    square = Image.new("RGB", (max(image.size),) * 2)
    square.paste(image, (0, 0))
    return square.resize((side, side), Image.BILINEAR)


def yolo_inputs(rng: np.random.Generator, n: int, faces: int, seed: int) -> np.ndarray:
    """`faces` canvases with heads on them (every tenth the whole portrait letterboxed, varied)
    from their own seeded generator, then `n` plain photo crops (nothing nudenet's classes
    describe: negatives), all RGB x/255 as nudenet feeds its model."""
    pics, face = photos(), portrait()
    face_rng = np.random.default_rng([seed, 320])
    images = []
    for i in range(faces):
        if i % 10 == 9:  # the whole portrait, stretched 0.8-1.2 in width
            w, h = face.size
            images.append(letterbox(vary(face_rng, face).resize((int(w * face_rng.uniform(0.8, 1.2)), h),
                                                                Image.BILINEAR)))
        else:
            images.append(face_canvas(face_rng, face, pics[i % len(pics)]))
    images += [photo_crop(rng, pics[i % len(pics)], 320) for i in range(n)]
    return np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0 for im in images])



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the .npz tasks into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lines", type=int, default=200, help="text lines for rec and cls")
    parser.add_argument("--det", type=int, default=40, help="640x640 text-on-photo inputs")
    parser.add_argument("--yolo", type=int, default=40, help="320x320 photo crops without faces")
    parser.add_argument("--yolo-faces", type=int, default=80, help="320x320 canvases with faces")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    texts, rec, cls, turned = rec_and_cls(rng, args.lines)
    np.savez(args.out / "ocr_rec.npz", x=rec, outputs=json.dumps([REC_OUTPUT]))
    np.savez(args.out / "ocr_cls.npz", x=cls, y=turned, metric="top1")
    np.savez(args.out / "ocr_det.npz", x=det_inputs(rng, args.det))
    np.savez(args.out / "yolo.npz", x=yolo_inputs(rng, args.yolo, args.yolo_faces, args.seed),
             outputs=json.dumps([YOLO_OUTPUT]))
    (args.out / "texts.json").write_text(json.dumps(texts, indent=0))
    print(f"wrote {args.out}/ocr_rec.npz {rec.shape}, ocr_cls.npz {cls.shape}, ocr_det.npz, yolo.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
