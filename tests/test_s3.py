"""S³ (Seizure-Semiology-Suite) files: labels with aliases, not-assessable cells and onset times; diagnoses;
per-segment outputs merged by any-yes; our predictions written in its layout.  The fixtures are written here in
S³'s format (no S³ data ships)."""

from __future__ import annotations

import pytest

from tasks import s3
from tasks.catalog import load_catalog

CAT = load_catalog()
A = "A0002@5-13-2021@UA6693LK@sz_v1_1.mp4"
B = "B0107@1-02-2022@XK1100PQ@sz_v2_3.mp4"

LABELS = (
    "file_name,close_eyes,justification_for_close_eyes,start_time_for_close_eyes,end_time_for_close_eyes,"
    "figure4,justification_for_figure4,start_time_for_figure4,end_time_for_figure4,"
    "verbal_responsiveness,justification_for_verbal_responsiveness\n"
    f"{A},yes,eyes shut throughout,00:12:00,01:05:50,no,,,,,\n"
    f"{B},No,,,,Yes,left arm extended over flexed right,00:40:00,00:52:00,yes,answers questions\n"
)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_labels_resolve_aliases_keep_not_assessable_and_read_onsets(tmp_path):
    rows = {(r.file_name, r.feature_id): r for r in s3.read_labels(_write(tmp_path, "labels.csv", LABELS), CAT)}
    assert len(rows) == 6
    a_eyes = rows[(A, "closed_eyes")]  # close_eyes is S3's name for closed_eyes
    assert (a_eyes.state, a_eyes.justification, a_eyes.onset_s, a_eyes.offset_s) == \
        ("yes", "eyes shut throughout", 12.0, 65.5)
    assert rows[(A, "figure4_arms")].state == "no" and rows[(A, "figure4_arms")].onset_s is None
    assert rows[(A, "verbal_responsiveness")].state == "not_assessable"  # empty cell
    assert rows[(B, "closed_eyes")].state == "no"  # case-insensitive
    assert rows[(B, "figure4_arms")].onset_s == 40.0 and rows[(B, "figure4_arms")].offset_s == 52.0


@pytest.mark.parametrize("text, match", [
    (LABELS.replace("close_eyes", "closed_eye"), "unknown feature 'closed_eye'"),
    (LABELS.replace(",yes,eyes", ",maybe,eyes"), r"line 2: close_eyes is 'maybe'"),
    (LABELS.replace("00:12:00", "12s"), r"line 2 start_time_for_close_eyes: time '12s'"),
    (LABELS.replace("00:40:00,00:52:00", "00:52:00,00:40:00"), "line 3: figure4 ends before it starts"),
    (LABELS + f"{A},yes,,,,no,,,,,\n", "line 4: a video listed twice"),
    ("video,close_eyes\nx.mp4,yes\n", "no 'file_name' column"),
])
def test_bad_labels_fail_naming_the_column_or_line_never_the_file(tmp_path, text, match):
    with pytest.raises(s3.S3FormatError, match=match) as err:
        s3.read_labels(_write(tmp_path, "labels.csv", text), CAT)
    assert "A0002" not in str(err.value) and "UA6693LK" not in str(err.value)


def test_diagnoses_are_es_or_nes(tmp_path):
    assert s3.read_diagnoses(_write(tmp_path, "dx.csv", f"file_name,label\n{A},ES\n{B},nes\n")) == {A: "ES", B: "NES"}
    with pytest.raises(s3.S3FormatError, match="line 3: label 'PNES'"):
        s3.read_diagnoses(_write(tmp_path, "dx.csv", f"file_name,label\n{A},ES\n{B},PNES\n"))


def test_segment_outputs_merge_by_any_yes_and_fail_or_na_is_not_yes(tmp_path):
    stem = A[:-4]
    text = ("file_name,close_eyes,justification_for_close_eyes,tonic,justification_for_tonic\n"
            f"{stem}_segment_0.mp4,no,open,fail,\n"
            f"{stem}_segment_1.mp4,yes,shut,na,\n"
            f"{stem}_segment_2.mp4,no,open,no,\n"
            f"{B[:-4]}_segment_0.mp4,fail,,na,\n")
    merged = s3.read_segment_outputs(_write(tmp_path, "out.csv", text), CAT)
    assert merged == {A: {"closed_eyes": True, "tonic": False}, B: {"closed_eyes": False, "tonic": False}}
    with pytest.raises(s3.S3FormatError, match="line 2: tonic is 'unsure'"):
        s3.read_segment_outputs(_write(tmp_path, "out.csv", text.replace(",fail,\n", ",unsure,\n", 1)), CAT)
    with pytest.raises(s3.S3FormatError, match="line 2: file_name is not"):
        s3.read_segment_outputs(_write(tmp_path, "out.csv", text.replace("_segment_0", "", 1)), CAT)


def test_patient_codes_come_from_a_configurable_pattern():
    assert s3.patient_of(A) == "A0002" and s3.patient_of(B) == "B0107"
    assert s3.patient_of("site3_P17_night2.mp4", r"_(P\d+)_") == "P17"
    with pytest.raises(s3.S3FormatError, match="does not match"):
        s3.patient_of("nopattern.mp4")


def test_our_predictions_written_in_s3_layout_read_back_as_its_labels(tmp_path):
    preds = {A: {"closed_eyes": (True, "eyes shut from 0:12"), "figure4_arms": (False, None), "tonic": (True, "stiff")},
             B: {"closed_eyes": (False, "open"), "figure4_arms": (True, "figure-of-four, left")}}
    path = s3.write_predictions(tmp_path / "pred.csv", preds, CAT)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["file_name", "close_eyes", "justification_for_close_eyes"]  # S3's own names
    assert "figure4" in header and "figure4_arms" not in header
    back = {(r.file_name, r.feature_id): r for r in s3.read_labels(path, CAT)}
    assert back[(A, "closed_eyes")].state == "yes" and back[(A, "closed_eyes")].justification == "eyes shut from 0:12"
    assert back[(B, "tonic")].state == "not_assessable"  # not predicted for B: an empty cell
    assert back[(B, "figure4_arms")].state == "yes"


def test_times_are_minutes_seconds_and_hundredths():
    assert s3.parse_time("01:05:50", "x") == 65.5 and s3.parse_time("00:00:00", "x") == 0.0
    assert s3.parse_time("", "x") is None and s3.parse_time("02:03", "x") == 123.0
    with pytest.raises(s3.S3FormatError):
        s3.parse_time("00:61:00", "x")
