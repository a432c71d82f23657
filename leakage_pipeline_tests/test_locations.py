"""Finding 4: one file has one canonical location, and a location outside the image root is refused."""

import os

import pytest

from leakage_pipeline.audit.image_source import is_within, resolve_uri
from leakage_pipeline.audit.manifest import LocationRules, ManifestError, add_locations, load_manifest
from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, EXIT_RAN, main
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.runner import AuditFailed, run_audit
from leakage_pipeline_tests.conftest import write_image, write_manifest


def _manifest(tmp_path, uris, splits=None):
    rows = [{"image_uri": uri, "patient_id": f"p{i}", "label": "a", "split": (splits or ["train"] * len(uris))[i]}
            for i, uri in enumerate(uris)]
    return write_manifest(tmp_path / "m.csv", rows)


def _locations(tmp_path, uris, **rules):
    frame = load_manifest(_manifest(tmp_path, uris))
    return add_locations(frame, LocationRules(image_root=str(tmp_path), **rules), "m.csv")["location"].to_list()


def test_one_file_under_two_spellings_is_refused_naming_both_rows(tmp_path):
    write_image(tmp_path / "good_00.jpg", 0)
    for spellings in (["good_00.jpg", "./good_00.jpg"], ["good_00.jpg", "sub/../good_00.jpg"],
                      ["good_00.jpg", str(tmp_path / "good_00.jpg")], ["good_00.jpg", ".//good_00.jpg"]):
        with pytest.raises(ManifestError, match=r"same file under different spellings in 2 row\(s\): 1, 2: "
                                                r"rows \[1, 2\] \('good_00.jpg', '.*good_00.jpg'\)"):
            _locations(tmp_path, spellings)


def test_the_audit_refuses_two_spellings_instead_of_doubling_rows(tmp_path):
    """The hostile pass: ``good_00.jpg`` in train and ``./good_00.jpg`` in test inflated split counts
    and repeated one pair four times; now the audit stops and names both rows."""
    write_image(tmp_path / "good_00.jpg", 0)
    write_image(tmp_path / "good_01.jpg", 1)
    manifest = _manifest(tmp_path, ["good_00.jpg", "good_01.jpg", "./good_00.jpg"], ["train", "train", "test"])
    with pytest.raises(AuditFailed, match=r"rows \[1, 3\] \('good_00.jpg', './good_00.jpg'\)"):
        run_audit(AuditSettings(manifest_path=str(manifest), output_dir=str(tmp_path / "out")))


@pytest.mark.parametrize("uri", ["../../../../etc/passwd", "/etc/passwd", "images/../../outside.png"])
def test_a_path_outside_the_image_root_is_refused_unless_allowed(tmp_path, uri):
    root = tmp_path / "root"
    root.mkdir()
    (root / "m.csv").write_text(f"image_uri,patient_id,label\nok.png,p0,a\n{uri},p1,a\n")
    frame = load_manifest(root / "m.csv")
    with pytest.raises(ManifestError, match=rf"outside the image root {root} in 1 row\(s\): 2"):
        add_locations(frame, LocationRules(image_root=str(root)), "m.csv")
    allowed = add_locations(frame, LocationRules(image_root=str(root), allow_outside_root=True), "m.csv")
    assert allowed["location"][1] == os.path.normpath(os.path.join(root, uri))


def test_the_cli_flag_allows_outside_paths(tmp_path):
    root = tmp_path / "root"
    outside = write_image(tmp_path / "elsewhere" / "x.png", 1)
    write_image(root / "a.png", 2)
    manifest = _manifest(root, ["a.png", str(outside)], ["train", "test"])
    assert main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "out1")]) == EXIT_COULD_NOT_RUN
    assert main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "out2"),
                 "--allow-outside-root"]) == EXIT_RAN


def test_absolute_paths_inside_the_root_are_fine_and_canonical(tmp_path):
    assert _locations(tmp_path, [str(tmp_path / "a" / ".." / "b.png"), "c//d.png"]) == [
        str(tmp_path / "b.png"), str(tmp_path / "c" / "d.png")]


def test_gcs_uris_are_normalised_and_kept_under_a_gcs_root():
    assert resolve_uri("gs://b//a/./c/../d.png", None) == "gs://b/a/d.png"
    assert resolve_uri("x//0.png", "gs://scans/") == "gs://scans/x/0.png"
    assert resolve_uri("../../other/0.png", "gs://scans/ct") == "gs://scans/other/0.png"
    root = resolve_uri(".", "gs://scans/ct")
    assert root == "gs://scans/ct"
    assert is_within("gs://scans/ct/0.png", root)
    assert not is_within("gs://scans/other/0.png", root) and not is_within("gs://scans/ctx/0.png", root)
    assert not is_within("/local/0.png", root)


def test_symlinks_are_one_image_when_resolved(tmp_path):
    write_image(tmp_path / "real.png", 0)
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert len(set(_locations(tmp_path, ["real.png", "link.png"]))) == 2
    with pytest.raises(ManifestError, match="same file under different spellings"):
        _locations(tmp_path, ["real.png", "link.png"], resolve_symlinks=True)


def test_a_symlinked_image_folder_stays_inside_the_root_without_resolution(tmp_path):
    write_image(tmp_path / "storage" / "a.png", 0)
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(tmp_path / "storage")
    frame = load_manifest(_manifest(root, ["images/a.png"]))
    assert add_locations(frame, LocationRules(image_root=str(root)), "m.csv")["location"].to_list() == [
        str(root / "images" / "a.png")]
    with pytest.raises(ManifestError, match="outside the image root"):  # resolved, the target is elsewhere
        add_locations(frame, LocationRules(image_root=str(root), resolve_symlinks=True), "m.csv")
