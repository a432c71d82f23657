"""leakage-pipeline: audits an image dataset for train/test leakage, from manifest to metric."""
