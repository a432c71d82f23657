"""A synthetic image dataset that looks like the real problem, with leaks planted on purpose.

Three kinds of image, as in real clinical collections: smooth skin-like photographs with a
lesion, chest X-ray-like radiographs, and solid-colour frames (blank captures). Each patient
is imaged 3 to 8 times and has their own appearance (tone, texture, lighting, anatomy) and their
own lesion or infiltrate, which changes only a little from one shot to the next, so memorising a
patient helps a model; the label changes the lesion or the lung opacity only subtly, so a model
that has seen the patient in training scores visibly higher than one that must generalise.

Planted, and listed in ``planted.json`` so tests can check the audit finds each one:
exact byte copies across splits, re-encoded and resized copies, one patient re-enrolled
under a second id in another split, one patient whose images span two splits, and one
unreadable file. Added after those (their own random stream, so the cases above are unchanged):
a few skin patients whose lesion carries persistent fine texture, photographed several times in
training, and re-shots of their lesion (new crop, zoom, rotation, mirror, lighting) planted in
val and test under the same id or under a new one; ``planted.json`` lists each re-shot with its
source patient (the same-subject stage's ground truth). Last, from a stream of their own, a few % of
each split's ordinary images get a wrong label (``label_flips``), for the label-issue stage to find.
The other demo images have no detail that
persists from one shot to the next (a smooth field plus fresh noise per shot), so no keypoint
method could tell two of their shots apart from two patients; a re-photographed lesion does.
Smooth images with a strong lighting gradient make dHash collide across labels by coincidence,
which the report must expose.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from leakage_pipeline.audit.splitting import SplitPlan, assign_splits
from leakage_pipeline.progress import ProgressReporter, start_progress

SKIN_LABELS = {"nevus": 0.6, "melanoma": 0.25, "keratosis": 0.15}
XRAY_LABELS = {"normal": 0.65, "pneumonia": 0.35}
VENDORS = ("vendor-a", "vendor-b", "vendor-c")
# How much of a patient's lesion (or infiltrate) changes between two of their shots, as a share of
# how much it differs between patients: a patient's images resemble each other, so a model that has
# seen the patient can recognise them.
SHOT_VARIATION = 0.25


@dataclass(frozen=True)
class DemoSpec:
    patients: int = 600
    images_per_patient: tuple[int, int] = (3, 8)
    seed: int = 7
    # Scale factor on image sides; small values make a fast dataset for tests.
    scale: float = 1.0
    # Textured skin patients (photographed 2-4 times in training) per patient above, and the share
    # of them re-shot into val or test (a third of the re-shots under the same patient id).
    reshot_subjects_per_patient: float = 1 / 15
    reshot_share: float = 0.75
    # Share of the ordinary patients' images (each split) filed under a class of the other modality.
    label_flip_share: float = 0.03


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] of shape (h, w): coarse random cells upsampled smoothly."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0, 1)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return np.clip(1.0 - (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2), 0, 1)


@dataclass(frozen=True)
class Patient:
    patient_id: str
    kind: str
    label: str
    tone: tuple[float, float, float]
    texture_seed: int
    gradient: float  # lighting slope across the image; its sign is the light's side
    size: tuple[int, int]
    vendor: str


def _persistent(per_patient, per_shot):
    """A quantity that is mostly the patient's own (their lesion's size, their infiltrate) and varies a
    little from one shot to the next: ``per_shot`` is this shot's draw from the same distribution."""
    return per_patient + SHOT_VARIATION * (per_shot - per_patient)


def _skin(patient: Patient, rng: np.random.Generator) -> Image.Image:
    h, w = patient.size
    base = _smooth_field(np.random.default_rng(patient.texture_seed), (h, w), 6)
    lesion_rng = np.random.default_rng([patient.texture_seed, 1])  # the patient's own lesion
    light = np.linspace(-1, 1, w)[None, :] * patient.gradient
    shade = 0.6 + 0.15 * base + light + rng.normal(0, 0.01)
    cy = _persistent(lesion_rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)) * h
    cx = _persistent(lesion_rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)) * w
    size = {"nevus": 0.10, "melanoma": 0.125, "keratosis": 0.11}[patient.label] * min(h, w)
    lesion = _ellipse(h, w, cy, cx, size * _persistent(lesion_rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)),
                      size * _persistent(lesion_rng.uniform(0.8, 1.3), rng.uniform(0.8, 1.3)))
    if patient.label == "melanoma":
        lesion *= 0.6 + 0.4 * _persistent(_smooth_field(lesion_rng, (h, w), 12), _smooth_field(rng, (h, w), 12))
    darkness = {"nevus": 0.4, "melanoma": 0.48, "keratosis": 0.34}[patient.label] + _persistent(
        lesion_rng.normal(0, 0.04), rng.normal(0, 0.04))
    value = shade * (1 - darkness * np.clip(lesion * 3, 0, 1))
    rgb = np.stack([value * t for t in patient.tone], axis=-1) + rng.normal(0, 0.01, (h, w, 3))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")


def _xray(patient: Patient, rng: np.random.Generator) -> Image.Image:
    h, w = patient.size
    anatomy = np.random.default_rng(patient.texture_seed)  # the same body every visit
    # Positioning varies a little per visit, build and technique per patient.
    cy = h * (anatomy.uniform(0.5, 0.62) + rng.normal(0, 0.01))
    cx = w * (anatomy.uniform(0.42, 0.58) + rng.normal(0, 0.01))
    build = anatomy.uniform(0.8, 1.1)
    body = _ellipse(h, w, cy, cx, h * 0.6 * build, w * 0.48 * build)
    lungs = sum(
        _ellipse(h, w, cy - h * anatomy.uniform(0.05, 0.15), cx + side * w * anatomy.uniform(0.14, 0.26) * build,
                 h * anatomy.uniform(0.22, 0.36) * build, w * anatomy.uniform(0.1, 0.18) * build)
        for side in (-1, 1)
    )
    value = 0.15 + 0.6 * np.clip(body * 2, 0, 1) - 0.45 * np.clip(lungs * 2, 0, 1)
    value += 0.12 * (_smooth_field(anatomy, (h, w), 9) - 0.5)
    value += np.linspace(0.1, -0.1, h)[:, None] * patient.gradient * 4
    if patient.label == "pneumonia":  # the patient's own infiltrate, a little different on each film
        infiltrate = _persistent(_smooth_field(np.random.default_rng([patient.texture_seed, 1]), (h, w), 5),
                                 _smooth_field(rng, (h, w), 5))
        value += 0.1 * np.clip(lungs * 2, 0, 1) * infiltrate ** 2
    value = np.clip(value + rng.normal(0, 0.015, (h, w)) + rng.normal(0, 0.02), 0, 1) ** anatomy.uniform(0.7, 1.4)
    if anatomy.random() < 0.5:  # collimator edges
        margin = int(w * anatomy.uniform(0.03, 0.1))
        value[:, :margin] = value[:, w - margin:] = 0.05
    marker_y, marker_x = int(h * anatomy.uniform(0.05, 0.2)), int(w * anatomy.choice([0.08, 0.85]))
    value[marker_y:marker_y + h // 20, marker_x:marker_x + w // 20] = 0.95  # the side marker
    return Image.fromarray((value * 255).astype(np.uint8), mode="L")


def _frame(patient: Patient, rng: np.random.Generator) -> Image.Image:
    colour = tuple(int(c * 255 * rng.uniform(0.2, 1.0)) for c in patient.tone)
    return Image.new("RGB", (patient.size[1], patient.size[0]), colour)


def _encode(image: Image.Image, fmt: str, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _make_patient(index: int, rng: np.random.Generator, scale: float) -> Patient:
    kind = "skin" if rng.random() < 0.5 else "xray"
    labels = SKIN_LABELS if kind == "skin" else XRAY_LABELS
    label = str(rng.choice(list(labels), p=list(labels.values())))
    side = int(rng.integers(160, 320) * scale) if kind == "skin" else int(rng.integers(224, 384) * scale)
    aspect = rng.uniform(0.75, 1.0) if kind == "skin" else rng.uniform(0.9, 1.1)
    return Patient(
        patient_id=f"P{index:05d}", kind=kind, label=label,
        tone=tuple(rng.uniform(0.7, 1.0) * rng.uniform(0.95, 1.05, 3) * np.array([1.0, 0.74, 0.6])),
        texture_seed=int(rng.integers(2**31)),
        gradient=float(rng.choice([-1, 1]) * rng.uniform(0.12, 0.22)),
        size=(max(32, int(side * aspect)), max(32, side)), vendor=str(rng.choice(VENDORS)),
    )


def build_demo_dataset(root: Path, spec: DemoSpec = DemoSpec(), progress: ProgressReporter | None = None) -> Path:
    """Write images, ``manifest.csv`` and ``planted.json`` under ``root``; return the manifest path.

    ``progress`` hears how many patients' images are written.
    """
    rng = np.random.default_rng(spec.seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def write(name: str, data: bytes, patient: Patient, case: str) -> str:
        (images_dir / name).write_bytes(data)
        uri = f"images/{name}"
        rows.append({"image_uri": uri, "patient_id": patient.patient_id, "label": patient.label,
                     "case_id": case, "vendor": patient.vendor, "modality": patient.kind})
        return uri

    patients = [_make_patient(i, rng, spec.scale) for i in range(spec.patients)]
    renderers = {"skin": _skin, "xray": _xray}
    writing = start_progress(progress, len(patients), "patients")
    frames: set[str] = set()  # blank captures: no label can be read from them, so none is flipped
    for patient in patients:
        for shot in range(int(rng.integers(*spec.images_per_patient, endpoint=True))):
            case = f"{patient.patient_id}-V{shot // 3}"
            if rng.random() < 0.04:
                frames.add(write(f"{patient.patient_id}_{shot}.png", _encode(_frame(patient, rng), "PNG"), patient, case))
            else:
                fmt = "PNG" if rng.random() < 0.1 else "JPEG"
                image = renderers[patient.kind](patient, rng)
                write(f"{patient.patient_id}_{shot}.{'png' if fmt == 'PNG' else 'jpg'}", _encode(image, fmt),
                      patient, case)
        writing.advance()
    writing.finish()

    manifest = pl.DataFrame(rows)
    split = assign_splits(
        manifest.with_columns(split=pl.lit(None, pl.String)), SplitPlan(seed=spec.seed)
    ).select("image_uri", "split")
    split_of = dict(split.iter_rows())
    planted = _plant_leaks(rng, rows, split_of, patients, images_dir)
    planted["reshots"] = _plant_reshots(np.random.default_rng([spec.seed, 14]), spec, rows, split_of, images_dir)
    planted["label_flips"] = _plant_label_flips(np.random.default_rng([spec.seed, 24]), spec, rows, split_of,
                                                planted, frames)
    manifest = pl.DataFrame(rows).with_columns(
        split=pl.col("image_uri").replace_strict(split_of, default=None)
    )
    manifest_path = root / "manifest.csv"
    manifest.write_csv(manifest_path)
    (root / "planted.json").write_text(json.dumps(planted, indent=2))
    return manifest_path


def _plant_leaks(rng, rows, split_of, patients, images_dir) -> dict:
    """Add the leaks a careless data pipeline makes; return what was planted where."""
    by_patient: dict[str, list[dict]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    patient_of = {p.patient_id: p for p in patients}
    train_rows = [r for r in rows if split_of[r["image_uri"]] == "train" and r["image_uri"].endswith(".jpg")]
    picks = [train_rows[i] for i in rng.choice(len(train_rows), 12, replace=False)]
    planted: dict = {"exact_copies": [], "reencoded_copies": []}

    def add_copy(source: dict, data: bytes, ext: str, split: str, new_id: str, kind: str) -> None:
        patient = patient_of[source["patient_id"]]
        clone = Patient(**{**patient.__dict__, "patient_id": new_id})
        name = f"{new_id}_0.{ext}"
        (images_dir / name).write_bytes(data)
        uri = f"images/{name}"
        rows.append({**source, "image_uri": uri, "patient_id": new_id, "case_id": f"{new_id}-V0",
                     "vendor": clone.vendor})
        split_of[uri] = split
        planted[kind].append({"image_uri": uri, "split": split, "source": source["image_uri"]})

    for k, source in enumerate(picks[:5]):
        data = (images_dir / Path(source["image_uri"]).name).read_bytes()
        add_copy(source, data, "jpg", "test" if k < 4 else "val", f"X{k:04d}", "exact_copies")
    for k, source in enumerate(picks[5:]):
        with Image.open(images_dir / Path(source["image_uri"]).name) as image:
            smaller = image.resize((int(image.width * 0.8), int(image.height * 0.8)), Image.Resampling.BILINEAR)
            data = _encode(smaller, "JPEG", quality=70) if k % 2 else _encode(smaller, "PNG")
        add_copy(source, data, "jpg" if k % 2 else "png", "test" if k < 5 else "val", f"R{k:04d}",
                 "reencoded_copies")

    # One person enrolled twice: a train patient's images again, re-encoded, under a new id in test.
    original = next(p for p in patients if split_of[by_patient[p.patient_id][0]["image_uri"]] == "train"
                    and len(by_patient[p.patient_id]) >= 4 and p.kind == "skin")
    twin_id = "E00001"
    for k, source in enumerate(by_patient[original.patient_id]):
        with Image.open(images_dir / Path(source["image_uri"]).name) as image:
            data = _encode(image.convert("RGB"), "JPEG", quality=80)
        name = f"{twin_id}_{k}.jpg"
        (images_dir / name).write_bytes(data)
        rows.append({**source, "image_uri": f"images/{name}", "patient_id": twin_id, "case_id": f"{twin_id}-V0"})
        split_of[f"images/{name}"] = "test"
    planted["reenrolled_patient"] = {"original": original.patient_id, "second_id": twin_id, "split": "test"}

    # One patient's images in two splits: move one image of a test patient into train.
    spanning = next(pid for pid, items in by_patient.items()
                    if len(items) >= 3 and split_of[items[0]["image_uri"]] == "test")
    moved = by_patient[spanning][0]["image_uri"]
    split_of[moved] = "train"
    planted["patient_spanning_splits"] = {"patient_id": spanning, "moved_image": moved, "to": "train"}

    # One unreadable file: a JPEG cut off after its header.
    victim = next(r for r in rows if split_of[r["image_uri"]] == "test" and r["image_uri"].endswith(".jpg")
                  and r["patient_id"].startswith("P"))
    path = images_dir / Path(victim["image_uri"]).name
    path.write_bytes(path.read_bytes()[:600])
    planted["unreadable"] = victim["image_uri"]
    return planted


def _fine_field(rng: np.random.Generator, side: int, cell: int) -> np.ndarray:
    """Noise in [0, 1] of shape (side, side) varying over about ``cell`` pixels."""
    coarse = rng.random((side // cell + 3, side // cell + 3)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize((side + 3 * cell, side + 3 * cell), Image.Resampling.BICUBIC)
    return np.asarray(big)[cell:cell + side, cell:cell + side]


def _lesion_surface(rng: np.random.Generator, side: int) -> np.ndarray:
    """The physical subject, (side, side, 3) in [0, 1]: skin with pores and creases at several scales, a
    lesion with an irregular border and pigment network, and a few smaller moles around it, each patient
    with their own skin tone, lesion colour and layout. It is the same on every photograph."""
    tone = rng.uniform(0.6, 1.0) * rng.uniform(0.9, 1.1, 3) * np.array([1.0, rng.uniform(0.6, 0.85),
                                                                       rng.uniform(0.45, 0.7)])
    pigment = rng.uniform(0.2, 0.6, 3)  # the lesion's own colour, mixed into the skin where it is dark
    texture = sum(weight * (_fine_field(rng, side, cell) - 0.5)
                  for weight, cell in ((0.5, max(2, side // 170)), (0.35, max(3, side // 73)),
                                       (0.25, max(4, side // 32)), (0.2, max(6, side // 13))))
    y, x = np.ogrid[:side, :side]

    def blob(cy: float, cx: float, rx: float, ry: float, roughness: float) -> np.ndarray:
        angle = rng.uniform(0, np.pi)
        u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / rx
        v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / ry
        border = 1 + roughness * (_fine_field(rng, side, max(6, side // 20)) - 0.5)
        return np.clip((border - (u * u + v * v)) * 3, 0, 1)

    cy, cx = side / 2 + rng.normal(0, side * 0.05, 2)
    lesion = blob(cy, cx, side * rng.uniform(0.1, 0.24), side * rng.uniform(0.08, 0.18), 1.0)
    for _ in range(int(rng.integers(1, 4, endpoint=True))):  # satellite moles
        radius = side * rng.uniform(0.02, 0.05)
        lesion = np.maximum(lesion, blob(*rng.uniform(0.1, 0.9, 2) * side, radius, radius * rng.uniform(0.7, 1), 0.3))
    network = (_fine_field(rng, side, max(3, side // 100)) > 0.55).astype(np.float32)
    value = 0.62 + 0.18 * texture
    darkness = (lesion * (0.35 + 0.3 * network))[..., None]
    skin = np.stack([value * t for t in tone], axis=-1)
    return np.clip(skin * (1 - darkness) + darkness * skin * pigment, 0, 1)


def _photograph(surface: np.ndarray, rng: np.random.Generator, out: int) -> Image.Image:
    """One photograph of ``surface``: any rotation, a mirror now and then, a crop of 60-95% of what
    fits, new framing, exposure, contrast, a lighting gradient and sensor noise."""
    side = surface.shape[0]
    image = Image.fromarray((surface * 255).astype(np.uint8))
    angle = rng.uniform(0, 360)
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC)
    radians = np.deg2rad(angle)
    fits = side / (abs(np.cos(radians)) + abs(np.sin(radians)))  # the largest upright square inside
    crop = fits * rng.uniform(0.6, 0.95)
    cx, cy = side / 2 + rng.uniform(-0.5, 0.5, 2) * (fits - crop)
    view = rotated.crop((int(cx - crop / 2), int(cy - crop / 2), int(cx + crop / 2), int(cy + crop / 2)))
    view = view.resize((out, out), Image.Resampling.BILINEAR)
    if rng.random() < 0.25:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(view).astype(np.float32) / 255
    light = np.linspace(-1, 1, out)[None, :, None] * rng.uniform(-0.12, 0.12)
    pixels = np.clip(pixels * rng.uniform(0.8, 1.15) + light, 0, 1) ** rng.uniform(0.8, 1.25)
    pixels = np.clip(pixels + rng.normal(0, 0.01, pixels.shape), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), mode="RGB")


def _plant_reshots(rng: np.random.Generator, spec: DemoSpec, rows: list[dict], split_of: dict, images_dir: Path
                   ) -> list[dict]:
    """Textured skin patients photographed 2-4 times in train, and re-shots of some of them in val and
    test, a third under the same id, the rest under a new one; returns the re-shots with their source."""
    subjects = max(4, round(spec.patients * spec.reshot_subjects_per_patient))
    out = max(64, int(224 * spec.scale))
    reshots = []
    for number in range(subjects):
        patient_id = f"S{number:05d}"
        label = str(rng.choice(list(SKIN_LABELS), p=list(SKIN_LABELS.values())))
        vendor = str(rng.choice(VENDORS))
        surface = _lesion_surface(rng, 2 * out)

        def add(pid: str, name: str, split: str) -> str:
            uri = f"images/{name}"
            (images_dir / name).write_bytes(_encode(_photograph(surface, rng, out), "JPEG", quality=90))
            rows.append({"image_uri": uri, "patient_id": pid, "label": label, "case_id": f"{pid}-V0",
                         "vendor": vendor, "modality": "skin"})
            split_of[uri] = split
            return uri

        for shot in range(int(rng.integers(2, 4, endpoint=True))):
            add(patient_id, f"{patient_id}_{shot}.jpg", "train")
        if number < round(subjects * spec.reshot_share):
            same_id = number % 3 == 0
            split = "val" if number % 3 == 1 else "test"
            filed_as = patient_id if same_id else f"Q{number:05d}"
            uri = add(filed_as, f"{filed_as}_reshot.jpg", split)
            reshots.append({"image_uri": uri, "split": split, "patient_id": filed_as, "source_patient_id": patient_id,
                            "same_id": same_id})
    return reshots


def _plant_label_flips(rng: np.random.Generator, spec: DemoSpec, rows: list[dict], split_of: dict, planted: dict,
                       frames: set[str]) -> list[dict]:
    """File ``label_flip_share`` of each split's ordinary images under a class of the other modality (a skin
    photograph filed as pneumonia: a label taken from the wrong source); return each flip.

    The demo's classes within a modality differ only subtly on purpose (the leak effect needs it), so a flip
    within one would be invisible to any model; one across modalities is what a model can be asked to find.
    Planted copies and their sources, the re-enrolled and the spanning patient, re-shots, blank frames and
    the unreadable file keep their labels, so the other planted cases and the hashes' label agreement stand.
    """
    untouched = set(frames) | {planted["unreadable"]}
    for copy in planted["exact_copies"] + planted["reencoded_copies"]:
        untouched |= {copy["image_uri"], copy["source"]}
    special = {planted["reenrolled_patient"]["original"], planted["patient_spanning_splits"]["patient_id"]}
    other_classes = {"skin": list(XRAY_LABELS), "xray": list(SKIN_LABELS)}
    flips = []
    for split in ("train", "val", "test"):
        eligible = [row for row in rows if split_of[row["image_uri"]] == split and row["patient_id"].startswith("P")
                    and row["patient_id"] not in special and row["image_uri"] not in untouched]
        for index in sorted(rng.choice(len(eligible), round(spec.label_flip_share * len(eligible)), replace=False)):
            row = eligible[index]
            flipped = str(rng.choice(other_classes[row["modality"]]))
            flips.append({"image_uri": row["image_uri"], "split": split, "true_label": row["label"], "given_label": flipped})
            row["label"] = flipped
    return flips
