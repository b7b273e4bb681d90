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


# ---- import -> folds --------------------------------------------------------------------------------------------
C = "C0003@2-02-2023@ZZ0000AA@sz_v1_1.mp4"


def test_an_s3_labels_file_imported_reaches_the_folds_stage_on_pseudonyms(tmp_path, monkeypatch):
    """`semioflow labels import --format s3`: aliases resolved, a consensus label without annotators, not
    assessable kept out of the labels and counted, onsets carried, patients parsed from S3's names."""
    import datetime as dt

    from click.testing import CliRunner

    from flows.cli import cli
    from tasks import folds
    from tasks.identity import ID_MAP, patient_pseudonym
    from tasks.params import FoldsParams, Params
    from tasks.schema import SEIZURE, read_table, write_table
    from tests.test_folds import KEY, _deid_row, _manifest_row

    key_file = tmp_path / "id_key"
    key_file.write_bytes(KEY)
    monkeypatch.setenv("SEMIOFLOW_ID_KEY_FILE", str(key_file))
    csv_text = LABELS + f"{C},,,,,no,,,,no,\n"
    src = _write(tmp_path, "s3_labels.csv", csv_text)
    out = tmp_path / "annotations"
    dx = _write(tmp_path, "s3_dx.csv", f"file_name,label\n{A},ES\n{B},NES\n{C},ES\n")
    res = CliRunner().invoke(cli, ["labels", "import", "--format", "s3", str(src), "--out", str(out),
                                   "--diagnoses", str(dx)])
    assert res.exit_code == 0, res.output
    assert "3 files of 3 patients, 3 yes, 4 no, 2 not assessable, 2 with an onset" in res.output
    assert "diagnoses: 3 files, 2 ES, 1 NES" in res.output
    data, now = tmp_path / "data", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rids = {A: "R000000000a", B: "R000000000b", C: "R000000000c"}
    write_table("id_map", [dict(recording_id=r, source_path=f"/secure/s3/{n}", content_sha256="0" * 64, size_bytes=1,
                                mtime_ns=0, status="accepted", ingested_at=now) for n, r in rids.items()],
                data / "01_ingest" / ID_MAP)
    write_table("manifest", [_manifest_row(r, now, SEIZURE) for r in rids.values()],
                data / "01_ingest" / "manifest.parquet")
    write_table("deidentified", [_deid_row(r, "ok") for r in rids.values()],
                data / "02_deidentify" / "deidentified.parquet")
    params = Params(folds=FoldsParams(labels=str(out / "labels.parquet"), recordings=str(out / "patients.parquet"),
                                      diagnoses=str(out / "diagnoses.parquet"), n_folds=2))
    summary = folds.run(data, data / "11_folds", params)
    assert summary["recordings"] == 3 and summary["patients"] == 2 + 1 and summary["diagnosed"] == 3
    assert {r["recording_id"]: r["diagnosis"] for r in read_table("recording_diagnoses", data / "11_folds" / folds.DIAGNOSES
                                                                  ).to_pylist()} == {rids[A]: "ES", rids[B]: "NES", rids[C]: "ES"}
    assert summary["not_assessable"]["verbal_responsiveness"] == 1 and summary["not_assessable"]["closed_eyes"] == 1
    labels = {(r["recording_id"], r["feature_id"]): r["label"]
              for r in read_table("recording_labels", data / "11_folds" / folds.LABELS).to_pylist()}
    assert labels == {(rids[A], "closed_eyes"): True, (rids[A], "figure4_arms"): False,
                      (rids[B], "closed_eyes"): False, (rids[B], "figure4_arms"): True,
                      (rids[B], "verbal_responsiveness"): True,
                      (rids[C], "figure4_arms"): False, (rids[C], "verbal_responsiveness"): False}
    onsets = {(r["recording_id"], r["feature_id"]): r["onset_s"]
              for r in read_table("onsets", data / "11_folds" / folds.ONSETS).to_pylist()}
    assert onsets == {(rids[A], "closed_eyes"): 12.0, (rids[B], "figure4_arms"): 40.0}
    patients = {r["recording_id"]: r["patient_id"] for r in read_table("folds", data / "11_folds" / folds.FOLDS).to_pylist()}
    assert patients[rids[A]] == patient_pseudonym("A0002", KEY)
    for f in (data / "11_folds").rglob("*"):
        if f.is_file():
            assert b"A0002" not in f.read_bytes() and b"UA6693LK" not in f.read_bytes(), f
    # annotators' words: only in private/ (owner-only, never tracked), for the justification agreement
    why = data / "11_folds" / folds.JUSTIFICATIONS
    assert {(r["recording_id"], r["feature_id"]): r["justification"]
            for r in read_table("label_justifications", why).to_pylist()} == \
        {(rids[A], "closed_eyes"): "eyes shut throughout", (rids[B], "figure4_arms"): "left arm extended over flexed right",
         (rids[B], "verbal_responsiveness"): "answers questions"}
    assert why.stat().st_mode & 0o777 == 0o600 and why.parent.stat().st_mode & 0o777 == 0o700
    assert not [f for f in (data / "11_folds").rglob("*") if f.is_file() and "private" not in f.parts
                and b"eyes shut throughout" in f.read_bytes()]

    # and back out: the aggregated answers in S3's layout, under the original names, read like its labels
    said = {(A, "closed_eyes"): True, (B, "closed_eyes"): False, (C, "closed_eyes"): True,
            (A, "verbal_responsiveness"): False, (B, "verbal_responsiveness"): True}
    arm = {"closed_eyes": "raw", "verbal_responsiveness": "audio_raw"}
    preds = [dict(recording_id=rids[n], feature_id=f, arm=arm[f], model_id="m", rule="any_yes", predicted=v,
                  score=float(v), n_windows=2, n_yes=int(v), evidence_windows=[1] if v else [],
                  n_not_assessable=0) for (n, f), v in said.items()]
    preds.append(dict(preds[0], arm="face_crop", predicted=False))  # another arm: not exported
    # C's recording has no audio: not assessable, an empty cell (S3's "not assessable"), never "no"
    preds.append(dict(preds[-2], recording_id=rids[C], predicted=None, score=0.0, n_windows=0, n_yes=0,
                      evidence_windows=[], n_not_assessable=2))
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    write_table("evidence", [dict(recording_id=rids[A], feature_id="closed_eyes", arm="raw", model_id="m", window_index=1,
                                  yes_prob=None, justification="eyes shut")], data / "10_aggregate" / "evidence.parquet")
    res = CliRunner().invoke(cli, ["--data-dir", str(data), "export", "--format", "s3", "--out", str(tmp_path / "ours.csv")])
    assert res.exit_code == 0 and "1 not assessable" in res.output, res.output
    back = {(r.file_name, r.feature_id): r for r in s3.read_labels(tmp_path / "ours.csv", CAT)}
    assert {k: r.state for k, r in back.items()} == {**{k: "yes" if v else "no" for k, v in said.items()},
                                                     (C, "verbal_responsiveness"): "not_assessable"}
    assert back[(A, "closed_eyes")].justification == "eyes shut"
    assert (tmp_path / "ours.csv").stat().st_mode & 0o777 == 0o600


def test_our_own_csv_format_imports_too_and_a_twice_labelled_pair_is_refused(tmp_path):
    from tasks.annotations import import_labels
    from tasks.schema import read_table

    text = ("source_name,patient_id,feature_id,label,annotator_1,annotator_2,annotator_3,onset_s\n"
            "a.mp4,P1,tonic,yes,yes,yes,no,4.5\n"
            "a.mp4,P1,close_eyes,,,,,\n"
            "b.mp4,P2,tonic,no,no,no,no,\n")
    counts = import_labels("semioflow", _write(tmp_path, "l.csv", text), tmp_path / "out")
    assert (counts["files"], counts["yes"], counts["no"], counts["not_assessable"]) == (2, 1, 1, 1)
    rows = {(r["source_name"], r["feature_id"]): r for r in read_table("labels", tmp_path / "out" / "labels.parquet").to_pylist()}
    assert rows[("a.mp4", "tonic")]["annotator_3"] is False and rows[("a.mp4", "tonic")]["onset_s"] == 4.5
    assert rows[("a.mp4", "closed_eyes")]["label"] is None
    with pytest.raises(Exception, match="labelled twice"):
        import_labels("semioflow", _write(tmp_path, "l.csv", text + "b.mp4,P2,tonic,yes,,,,\n"), tmp_path / "out")


def test_s3_task1_scores_by_hand_with_macro_f1_for_verbal_responsiveness(tmp_path):
    """tonic: truth Y Y N N (NA) Y, any-yes outputs Y N(fail,na) Y N (V5 ignored) and V6 missing (not-yes):
    tp 1, fp 1, fn 2, tn 1 -> F1 2/5.  verbal responsiveness (macro F1): truth Y N Y N Y, said Y Y Y N N:
    F1(yes) 4/6, F1(no) 2/4 -> 7/12."""
    from click.testing import CliRunner

    from flows.cli import cli

    v = [f"V{i}@x.mp4" for i in range(1, 7)]
    labels = ("file_name,tonic,verbal_responsiveness\n" + f"{v[0]},yes,yes\n{v[1]},yes,no\n{v[2]},no,yes\n"
              f"{v[3]},no,no\n{v[4]},,yes\n{v[5]},yes,\n")
    seg = lambda i, n: f"{v[i][:-4]}_segment_{n}.mp4"  # noqa: E731
    outputs = ("file_name,tonic,verbal_responsiveness\n" + f"{seg(0, 0)},no,no\n{seg(0, 1)},yes,yes\n"
               f"{seg(1, 0)},fail,yes\n{seg(1, 1)},na,no\n{seg(2, 0)},yes,yes\n{seg(3, 0)},no,no\n{seg(4, 0)},yes,no\n")
    rows = {r["feature_id"]: r for r in s3.score_outputs(s3.read_labels(_write(tmp_path, "l.csv", labels), CAT),
                                                         s3.read_segment_outputs(_write(tmp_path, "o.csv", outputs), CAT),
                                                         CAT)}
    assert rows["tonic"] == dict(feature_id="tonic", metric="f1_yes", f1=pytest.approx(0.4), n=5, positives=3,
                                 not_assessable=1, missing=1)
    assert rows["verbal_responsiveness"]["f1"] == pytest.approx(7 / 12)
    assert rows["verbal_responsiveness"]["metric"] == "macro_f1" and rows["verbal_responsiveness"]["not_assessable"] == 1
    res = CliRunner().invoke(cli, ["labels", "score-s3", str(tmp_path / "l.csv"), str(tmp_path / "o.csv")])
    assert res.exit_code == 0 and "| Tonic | f1_yes | 0.400 | 5 | 3 | 1 | 1 |" in res.output, res.output


def test_our_diagnoses_csv_imports_like_s3s(tmp_path):
    from tasks.annotations import import_diagnoses
    from tasks.schema import read_table

    src = _write(tmp_path, "dx.csv", "source_name,diagnosis\na.mp4,ES\nb.mp4,nes\n")
    assert import_diagnoses(src, tmp_path / "out") == {"diagnosed": 2, "es": 1}
    assert read_table("diagnoses", tmp_path / "out" / "diagnoses.parquet").to_pylist() == [
        dict(source_name="a.mp4", diagnosis="ES"), dict(source_name="b.mp4", diagnosis="NES")]
    with pytest.raises(s3.S3FormatError, match="line 2: diagnosis 'PNES'"):
        import_diagnoses(_write(tmp_path, "dx.csv", "source_name,diagnosis\na.mp4,PNES\n"), tmp_path / "out")
