"""leakage-pipeline: audits an image dataset for train/test leakage, from manifest to metric."""

import os

# OpenMP threads (torch's CPU kernels) spin about 300,000 times at each barrier before they sleep. Where
# two computations share the cores (Dagster steps side by side, test workers), the spinning takes the cores
# from the other: two small-CNN trainings on 2 cores ran at 120-170 images/s each instead of about 340
# with this lower count, while one alone is as fast (about 970 vs 990 images/s). Set before torch loads
# its OpenMP library, so it is read here, in the first module any of our processes imports; an explicit
# setting in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
