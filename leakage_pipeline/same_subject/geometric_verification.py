"""Does image B show the same physical subject as image A? Keypoints, a ratio test, and RANSAC.

Each image is reduced to grayscale at a bounded size, contrast-equalised with CLAHE (so lighting
and exposure change less of what SIFT sees), and described by at most ``max_keypoints`` SIFT
keypoints. A candidate pair is scored by the inliers of a similarity transform (rotation, scale,
shift) fitted with RANSAC to the ratio-test matches: two photographs of one subject agree on many
matches under one transform, two different subjects on a handful by chance.

SIFT is rotation- and scale-invariant but not mirror-invariant, so a pair is also scored with B
mirrored, and the better of the two counts. Mirroring needs no second extraction: a mirrored
keypoint's descriptor is a fixed permutation of its own (rows of the 4x4 grid reversed, gradient
orientations negated), see :func:`mirror_descriptors`.

Descriptors are stored as uint8 (SIFT's values are already whole numbers in 0..255), 128 bytes a keypoint.
cv2 is imported inside the functions: the Dagster code location must load without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leakage_pipeline.audit.pixel_limit import open_image

_GRID, _ORIENTATIONS = 4, 8  # SIFT's descriptor layout: a 4x4 grid of 8-bin orientation histograms


@dataclass(frozen=True)
class KeypointSettings:
    max_side: int = 256  # images are reduced to this longest side first: cost is bounded, whatever the source
    max_keypoints: int = 400
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    ratio: float = 0.8  # Lowe's ratio test: a match must be clearly better than the second best
    ransac_pixels: float = 4.0  # reprojection error of an inlier, in pixels at max_side

    def cache_tag(self) -> str:
        """What the cached keypoints depend on: change any of these and they are extracted again."""
        return f"sift{self.max_keypoints}_side{self.max_side}_clahe{self.clahe_clip}x{self.clahe_tiles}"


@dataclass(frozen=True)
class Keypoints:
    points: np.ndarray  # (n, 2) float32, x and y in the reduced image
    descriptors: np.ndarray  # (n, 128) uint8
    width: int  # of the reduced image, to mirror the points
    height: int

    def to_row(self) -> dict:
        return {"keypoints": self.points.shape[0], "width": self.width, "height": self.height,
                "points": self.points.astype(np.float32).tobytes(), "descriptors": self.descriptors.tobytes()}

    @classmethod
    def from_row(cls, row: dict) -> Keypoints:
        points = np.frombuffer(row["points"], np.float32).reshape(-1, 2)
        descriptors = np.frombuffer(row["descriptors"], np.uint8).reshape(-1, 128)
        return cls(points, descriptors, row["width"], row["height"])


def reduced_gray(image, max_side: int) -> np.ndarray:
    """The image (a PIL image) as 8-bit grayscale with its longest side at most ``max_side``."""
    gray = image.convert("L")
    scale = max_side / max(gray.size)
    if scale < 1:
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           resample=3, reducing_gap=2.0)  # 3: BICUBIC
    return np.asarray(gray)


def extract_keypoints(gray: np.ndarray, settings: KeypointSettings = KeypointSettings()) -> Keypoints:
    """SIFT keypoints of a contrast-equalised grayscale image (uint8, as from :func:`reduced_gray`)."""
    import cv2

    equalised = cv2.createCLAHE(settings.clahe_clip, (settings.clahe_tiles, settings.clahe_tiles)).apply(gray)
    found, descriptors = cv2.SIFT_create(nfeatures=settings.max_keypoints).detectAndCompute(equalised, None)
    if descriptors is None:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), gray.shape[1], gray.shape[0])
    # SIFT can return a few more than asked (ties in response); keep the layout bounded.
    found, descriptors = found[: settings.max_keypoints], descriptors[: settings.max_keypoints]
    points = np.array([k.pt for k in found], np.float32).reshape(-1, 2)
    return Keypoints(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8), gray.shape[1], gray.shape[0])


def keypoints_of_bytes(data: bytes, settings: KeypointSettings = KeypointSettings()) -> Keypoints:
    with open_image(data) as image:
        return extract_keypoints(reduced_gray(image, settings.max_side), settings)


def inlier_lines(query: bytes, reference: bytes, thumbnail_side: int) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The inlier keypoints of the pair of encoded images, paired, in the pixels of each image's thumbnail
    (shrunk to fit ``thumbnail_side``), for drawing the match."""
    query_keypoints, reference_keypoints = keypoints_of_bytes(query), keypoints_of_bytes(reference)
    found = match(query_keypoints, reference_keypoints)
    # Both the thumbnail and the reduced image keep the original's aspect ratio and only ever shrink it.
    scale_q, scale_r = (min(thumbnail_side, max(k.width, k.height)) / max(k.width, k.height)
                        for k in (query_keypoints, reference_keypoints))
    return [((qx * scale_q, qy * scale_q), (rx * scale_r, ry * scale_r))
            for (qx, qy), (rx, ry) in zip(found.query_points, found.reference_points)]


def _mirror_permutation() -> np.ndarray:
    """Index map from a descriptor to its mirror image's: grid rows reversed, orientation bins negated."""
    row, column, orientation = np.meshgrid(np.arange(_GRID), np.arange(_GRID), np.arange(_ORIENTATIONS),
                                           indexing="ij")
    source = ((_GRID - 1 - row) * _GRID + column) * _ORIENTATIONS + (-orientation) % _ORIENTATIONS
    return source.reshape(-1)


_MIRROR = _mirror_permutation()


def mirror_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """The descriptors the same keypoints would have in the horizontally mirrored image."""
    return descriptors[:, _MIRROR]


def mirrored(keypoints: Keypoints) -> Keypoints:
    points = keypoints.points.copy()
    points[:, 0] = keypoints.width - 1 - points[:, 0]
    return Keypoints(points, mirror_descriptors(keypoints.descriptors), keypoints.width, keypoints.height)


@dataclass(frozen=True)
class Match:
    inliers: int
    mirrored: bool  # the better fit was with the second image mirrored
    query_points: np.ndarray  # (inliers, 2), for drawing
    reference_points: np.ndarray  # in the reference image's own (unmirrored) coordinates


_NO_MATCH = Match(0, False, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))


def _fit(query: Keypoints, reference: Keypoints, settings: KeypointSettings) -> tuple[int, np.ndarray, np.ndarray]:
    import cv2

    if query.points.shape[0] < 2 or reference.points.shape[0] < 2:
        return 0, _NO_MATCH.query_points, _NO_MATCH.reference_points
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query.descriptors.astype(np.float32),
                                                  reference.descriptors.astype(np.float32), k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < settings.ratio * m[1].distance]
    # One reference keypoint may take only one match, so a repeated pattern cannot pile up inliers.
    best: dict[int, cv2.DMatch] = {}
    for match in good:
        if match.trainIdx not in best or match.distance < best[match.trainIdx].distance:
            best[match.trainIdx] = match
    good = list(best.values())
    if len(good) < 3:
        return 0, _NO_MATCH.query_points, _NO_MATCH.reference_points
    source = query.points[[m.queryIdx for m in good]]
    target = reference.points[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                          ransacReprojThreshold=settings.ransac_pixels, maxIters=2000)
    if mask is None:
        return 0, _NO_MATCH.query_points, _NO_MATCH.reference_points
    inlier = mask.ravel().astype(bool)
    return int(inlier.sum()), source[inlier], np.array([m.trainIdx for m in good])[inlier]


def match(query: Keypoints, reference: Keypoints, settings: KeypointSettings = KeypointSettings()) -> Match:
    """The pair's inliers, as it is and with the reference mirrored; the better of the two."""
    plain = _fit(query, reference, settings)
    flipped = _fit(query, mirrored(reference), settings)
    use_mirror = flipped[0] > plain[0]
    inliers, query_points, reference_index = flipped if use_mirror else plain
    if inliers == 0:
        return _NO_MATCH
    return Match(inliers, use_mirror, query_points, reference.points[reference_index])


def count_inliers(query: Keypoints, reference: Keypoints, settings: KeypointSettings = KeypointSettings()) -> int:
    return match(query, reference, settings).inliers
