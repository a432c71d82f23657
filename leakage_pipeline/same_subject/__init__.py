"""The same-subject stage: the same patient's subject photographed again, found by a learned embedding
(candidates) and confirmed by keypoint geometry (verification), with a threshold calibrated on the data."""
