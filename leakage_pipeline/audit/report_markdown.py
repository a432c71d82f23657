"""The leakage report as markdown, for report.md and the Dagster UI."""

from __future__ import annotations

from leakage_pipeline.audit.demographics import DEMOGRAPHIC_COLUMNS
from leakage_pipeline.audit.leak_reasons import LEAK_REASONS
from leakage_pipeline.markdown_tables import markdown_table

# Long lists are cut here in markdown; leakage_audit.json has every row.
_SHOWN_ROWS = 20


def _criterion(row: dict) -> str:
    return "sha256 (exact bytes)" if row["radius"] is None else f"{row['criterion']} ≤ {row['radius']}"


def threshold_markdown(report: dict) -> str:
    return markdown_table(
        ["criterion", "query split", "against", "matched", "of", "share"],
        [[_criterion(r), r["query_split"], r["against"], r["query_images_matched"], r["query_images"],
          f"{r['share']:.1%}"] for r in report["thresholds"]],
    )


def same_subject_markdown(section: dict | None) -> list[str]:
    """The same-subject stage's decision: skipped and why, or its calibrated threshold and what it accepted."""
    if not section or section["status"] == "not_run":
        return []
    parts = ["## Same subject photographed again (learned matcher + keypoint verification)"]
    if section["status"] == "skipped":
        return parts + [f"Skipped: {section['reason']}."]
    calibration = section["calibration"]
    counts = (f"{calibration['true_pairs']} same-patient and {calibration['false_pairs']} different-patient "
              f"candidate pairs within training ({calibration['calibration_queries']} training images, "
              f"top {section['top_k']} neighbours each)")
    if calibration["threshold"] is None:
        return parts + [f"**Nothing accepted:** {section['reason']}. Calibration: {counts}."]
    review = ("" if calibration["review_threshold"] is None else
              f" Review band: {section['review_pairs']} pair(s) with {calibration['review_threshold']} to "
              f"{calibration['threshold'] - 1} inliers (calibrated precision below the target, at least "
              "0.5): worth a look, not counted.")
    return parts + [
        f"Accepted: {section['accepted_pairs']} of {section['candidate_pairs']} candidate pairs "
        f"({section['accepted_query_images']} images), at ≥ {calibration['threshold']} RANSAC inliers. "
        f"Threshold calibrated to {calibration['target_precision']:.0%} precision on {counts}: at it, precision "
        f"{calibration['precision']:.3f} ({calibration['true_accepted']} true, {calibration['false_accepted']} "
        f"false), recall {calibration['recall']:.3f} of same-patient pairs; estimated precision on the audited "
        f"pairs' own mix of true and false candidates {calibration['audited_precision']:.3f}.{review}"]


def link_demographics_markdown(section: dict | None) -> list[str]:
    """Identity links whose two images disagree on sex, body site or age: a table to review, with both images."""
    if not section:
        return []
    parts = ["## Demographics of linked patient ids"]
    if not section["checked"]:
        return parts + [f"Not checked: {section['reason']}."]
    parts.append(
        f"Of {section['links']} linked pairs of patient ids, {section['conflict']} disagree on "
        f"{', '.join(c.replace('_', ' ') for c in section['columns_given'])} (age by more than {section['age_tolerance_years']:g} years): "
        f"review them; {section['consistent']} agree; {section['not_comparable']} could not be compared (a value not "
        "given). Links are kept either way: demographics neither merge nor split identities.")
    conflicts = [r for r in section["link_rows"] if r["status"] == "conflict"]

    def values(row: dict, side: str) -> str:
        return ", ".join(f"{c.replace('_', ' ')} {row[f'{side}_{c}']}" for c in DEMOGRAPHIC_COLUMNS
                         if row[f"{side}_{c}"] is not None)

    if conflicts:
        parts.append(markdown_table(
            ["patient", "image", "values", "linked patient", "image", "values", "disagree on", "linked by"],
            [[r["query_patient_id"], r["query_image_uri"], values(r, "query"), r["reference_patient_id"],
              r["reference_image_uri"], values(r, "reference"), ", ".join(r["disagree"]), ", ".join(r["links"])]
             for r in conflicts[:_SHOWN_ROWS]]))
    return parts


def _label_agreement_markdown(report: dict) -> list[str]:
    """How far each hash's matched pairs agree on the label beyond chance, and which radius is trusted."""
    agreement = report["label_agreement"]
    parts = [
        "## Label agreement of matched pairs",
        f"Chance that two random images share a label: {agreement[0]['chance']:.3f}. "
        "A hash whose pairs agree on the label barely more often than their own label mix predicts "
        "(kappa near 0) is matching by coincidence. "
        f"{report['blank_frames']['pairs_excluded']} pairs between "
        f"{report['blank_frames']['images']} blank frames are left out: they match by construction.",
        markdown_table(
            ["criterion", "pairs", "same label", "chance (pair labels)", "kappa", "coincidental"],
            [[_criterion(r), r["pairs"], r["same_label_share"], r["pair_chance"], r["kappa"],
              "yes" if r["coincidental"] else ""] for r in agreement],
        ),
    ]
    if report["coincidental_hashes"]:
        parts.append(
            f"**{', '.join(report['coincidental_hashes'])}** collides by coincidence at some radius on this data; "
            "its matches beyond the trusted radius are not counted as leakage."
        )
    parts.append(
        "Trusted radius: " + ", ".join(
            f"{name} {'not trusted' if radius is None else f'≤ {radius}'}"
            for name, radius in report["trusted_radius"].items()
        ) + " (sha256 always)."
    )
    return parts


def _patient_links_markdown(links: dict) -> list[str]:
    """Patient ids tied into one identity by their images or case ids, and the pairs of them across splits."""
    parts = ["## Patients linked across splits by their images",
             f"{links['identities_with_several_ids']} identities hold more than one patient id (tied by exact "
             "copies, trusted near-duplicates in any splits, or a shared case id)."]
    parts.append(
        markdown_table(
            ["query patient", "split", "reference patient", "split", "query images", "pairs", "same label"],
            [[r["query_patient_id"], r["query_split"], r["reference_patient_id"], r["reference_split"],
              r["query_images"], r["matched_pairs"], r["same_label_share"]] for r in links["pairs"][:_SHOWN_ROWS]],
        ) if links["pairs"] else "None."
    )
    if links["clusters"]:
        parts.append("Clusters of more than two ids: " + "; ".join("{" + ", ".join(c) + "}" for c in links["clusters"]))
    return parts


def report_markdown(report: dict) -> str:
    verdict = report["verdict"]
    integrity = report["split_integrity"]
    counts = report["counts"]
    parts = ["# Leakage audit"]
    if not report["patient_ids_given"]:
        parts.append("**Patient-level leakage cannot be checked:** the manifest gives no patient ids, so each image "
                     "(or case id) stands in for its patient, and the verdict is a lower bound.")
    flagged = report["flagged"]
    parts += [
        f"**Verdict.** {verdict['text']}",
        "## Leak reasons",
        "Images read of each later split with a twin in an earlier one, per reason (an image can have several); "
        "flagged images that could not be read are counted apart.",
        markdown_table(["split", *LEAK_REASONS, "any reason", "flagged, not read"],
               [[split, *by_reason.values(), flagged["per_split"][split], flagged["per_split_not_read"][split]]
                for split, by_reason in flagged["per_split_reason"].items()]),
        markdown_table(["reasons (test images read)", "images"], [[k, v] for k, v in verdict["reason_overlap"].items()])
        if verdict["reason_overlap"] else "",
        "## Coverage",
        "Images read (hashed) per split. Images that could not be read are not audited: they are never counted "
        "as clean, and shares are over the images read.",
        markdown_table(["split", "images", "read", "not audited", "read share"],
               [[r["split"], r["images"], r["read"], r["not_audited"],
                 "–" if r["read_share"] is None else f"{r['read_share']:.1%}"] for r in report["coverage"]]),
        markdown_table(["status", "images"], [[k, v] for k, v in counts["per_status"].items()]),
        "## Split integrity (from the manifest alone)",
        markdown_table(
            ["finding", "count"],
            [[name.replace("_", " "), section["count"]] for name, section in integrity.items() if name != "counts"],
        ),
    ]
    spanning = integrity["patients_spanning_splits"]["examples"]
    if spanning:
        parts.append(markdown_table(["patient", "splits", "images"], [[r["patient_id"], r["splits"], r["images"]] for r in spanning]))
    parts += ["## Threshold table: query images with a match in an earlier split", threshold_markdown(report)]
    parts += _label_agreement_markdown(report)
    parts += _patient_links_markdown(report["patient_links"])
    parts += same_subject_markdown(report.get("same_subject"))
    parts += link_demographics_markdown(report.get("link_demographics"))
    parts += [
        f"## Flagged images ({flagged['count']})",
        markdown_table(
            ["image", "split", "patient", "reasons", "evidence"],
            [[r["image_uri"], r["split"], r["patient_id"], r["reasons"],
              "; ".join(e["evidence"] for e in r["evidence"])] for r in flagged["images"][:_SHOWN_ROWS]],
        ) if flagged["images"] else "None.",
    ]
    return "\n\n".join(part for part in parts if part) + "\n"
