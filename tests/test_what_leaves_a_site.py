"""Everything a site sends to the server over a real simulator run, searched for identifiers.

Site-1's cases carry patient-like file names inside a folder with a recognisable name; site-2's
data came from a PACS-like DICOM export (patient names and IDs in every file, in folder and file
names, and the study, series, frame and instance UIDs) through ``fedseg data import-dicom``;
site-3's data fails preflight. A recording filter at each client writes down every outgoing
result; nothing in it may contain a file name, path, folder, patient-like token or DICOM
identifier, while the failed site's reason must reach the server without file names.
"""

import json
import shutil
from pathlib import Path

import pytest

from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from fedseg.cli import main
from fedseg.data.local_manifest import manifest_path
from fedseg.data.msd import read_json, write_dataset_json
from fedseg.data.phantoms.abdomen import ORGANS, PhantomOptions, synth_abdomen
from fedseg.data.phantoms.dicom import ct_series, write_series
from fedseg.data.phantoms.nifti import save_nifti
from fedseg.data.split import split_dataset
from fedseg.data.synth import synthesize
from fedseg.tasks import phantom_labels
from fedseg.flare.jobs import JobSpec, export_job
from fedseg.flare.simulate import run_simulator
from fedseg.flare.results import read_job_results
from fedseg.site_config import write_site_config

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
FORBIDDEN = ["PAT-00", "DOE", "JOHN", "ROE", "JANE", "19650412", "HOSPITAL_A_PACS", ".nii", "imagesTr",
             "labelsTr", "/tmp", "site_configs"]
# Streamed logs hold NVFlare's own workspace paths; what must never be in them is the data's.
DATA_TOKENS = ["PAT-00", "DOE_JOHN", "ROE_JANE", "19650412", "HOSPITAL_A_PACS", ".nii", "imagesTr", "labelsTr"]
STREAMER = "nvflare.app_common.logging.job_log_streamer.JobLogStreamer"
RECEIVER = "nvflare.app_common.logging.job_log_receiver.JobLogReceiver"
STREAMED = ("log.txt", "log.json", "error_log.txt")


# Coarse phantoms: DICOM writing and import stay quick; the tiny recipe resamples them anyway.
DICOM_PHANTOM = PhantomOptions(inplane_spacing=(5.0, 6.0), slice_thickness=(6.0, 8.0), fov_mm=(360.0, 420.0),
                               z_extent_mm=(170.0, 210.0))


def _dicom_hospital(tmp: Path) -> tuple[Path, set[str]]:
    """3 phantom CT series exported as from a PACS and imported with ``fedseg data import-dicom``.

    Returns the imported dataset and every identifier the export held: patient names and IDs (also
    in folder and file names), and study, series, frame-of-reference and SOP instance UIDs.
    """
    src, labels, identifiers = tmp / "PACS_B_EXPORT", tmp / "pacs_b_masks", set()
    for i in range(3):
        ph = synth_abdomen(60 + i, DICOM_PHANTOM)
        name, pid = f"SMITHERS^ALICIA{i}", f"MRN55{i:03d}"
        datasets = ct_series(ph.image, ph.grid.affine, patient_name=name, patient_id=pid, series_number=7 + i,
                             seed=60 + i)
        folder = src / f"{pid}_SMITHERS_ALICIA{i}" / "CT_ABDOMEN_PV"
        write_series(datasets, folder, JPEG2000Lossless if i == 0 else ExplicitVRLittleEndian,
                     names=[f"{pid}_IMG{k:04d}.dcm" for k in range(len(datasets))])
        save_nifti(labels / f"{pid}_spleen.nii.gz", (ph.organs == ORGANS["spleen"]).astype("uint8"), ph.grid.affine)
        first = datasets[0]
        identifiers |= {pid, f"SMITHERS^ALICIA{i}", f"ALICIA{i}", first.StudyInstanceUID, first.SeriesInstanceUID,
                        first.FrameOfReferenceUID, *(ds.SOPInstanceUID for ds in datasets), folder.parent.name}
    identifiers.add("SMITHERS")
    out = tmp / "imported"
    assert main(["data", "import-dicom", "--src", str(src), "--out", str(out), "--labels", str(labels),
                 "--classes", "spleen"]) == 0
    # The identifiers are really at the site: the site-local manifest maps the cases back to them.
    manifest = manifest_path(out).read_text()
    assert all(token in manifest for token in ("MRN55000", "SMITHERS^ALICIA2", datasets[0].SeriesInstanceUID))
    return out, identifiers


def _hospital(tmp: Path) -> Path:
    """9 phantoms renamed like a PACS export: PAT-00NN_DOE_JOHN_19650412.nii.gz."""
    src = tmp / "raw"
    synthesize("spleen", src, cases=9, seed=6, workers=2)
    root = tmp / "HOSPITAL_A_PACS" / "spleen"
    items = []
    for i, entry in enumerate(read_json(src / "dataset.json", "x")["training"]):
        name = f"PAT-00{i:02d}_{'DOE_JOHN' if i % 2 else 'ROE_JANE'}_19650412.nii.gz"
        for key in ("image", "label"):
            target = root / ("imagesTr" if key == "image" else "labelsTr") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / entry[key], target)
        items.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    write_dataset_json(root, name="x", description="x", modalities=("CT",), labels=phantom_labels("spleen"), training=items)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leak")
    root = _hospital(tmp)
    splits = split_dataset(root, 3, root / "splits", seed=1)
    imported, dicom_ids = _dicom_hospital(tmp)
    data = {1: (root, splits["site-1"]), 2: (imported, split_dataset(imported, 1, imported / "splits", seed=0)["site-1"]),
            3: (root, splits["site-3"])}
    # site-3's first training image is corrupt: it must fail preflight and say so without naming it.
    bad = root / json.loads(splits["site-3"].read_text())["training"][0]["image"]
    bad.write_bytes(bad.read_bytes()[:5000])
    configs = tmp / "configs"
    for k in (1, 2, 3):
        write_site_config(configs / f"site-{k}.yaml", f"site-{k}", {"spleen": data[k]},
                          device="cpu", num_threads=1)
    job_dir = export_job(JobSpec("spleen", num_rounds=2, local_epochs=1), tmp / "job")
    client_cfg = job_dir / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(client_cfg.read_text())
    cfg["task_result_filters"] = [{"tasks": ["train", "validate", "submit_model"],
                                   "filters": [{"path": "recording_filter.RecordOutgoing", "args": {}}]}]
    # A job may ask NVFlare to stream the sites' logs to the server (allowed unless a site forbids it):
    # this one asks for every log file, so the logs are searched too.
    cfg["components"] += [{"id": f"log_streamer_{i}", "path": STREAMER, "args": {"log_file_name": name}}
                          for i, name in enumerate(STREAMED)]
    client_cfg.write_text(json.dumps(cfg, indent=2))
    server_cfg = job_dir / "app" / "config" / "config_fed_server.json"
    scfg = json.loads(server_cfg.read_text())
    scfg["components"].append({"id": "log_receiver", "path": RECEIVER, "args": {"dest_dir": str(tmp / "streamed")}})
    server_cfg.write_text(json.dumps(scfg, indent=2))
    (job_dir / "app" / "custom").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "faults" / "recording_filter.py", job_dir / "app" / "custom" / "recording_filter.py")
    record = tmp / "record"
    record.mkdir()
    import os

    os.environ["FEDSEG_TEST_RECORD"] = str(record)
    try:
        run_simulator(job_dir, tmp / "ws", 3, site_config_dir=configs, log_path=tmp / "sim.log")
    finally:
        os.environ.pop("FEDSEG_TEST_RECORD")
    return tmp, record, bad, dicom_ids


def test_recorder_saw_weights_and_metrics(run):
    tmp, record, _, _ = run
    sent = {p.stem: p.read_text() for p in record.glob("*.jsonl")}
    assert set(sent) == {"site-1", "site-2", "site-3"}
    for site in ("site-1", "site-2"):
        assert '"array"' in sent[site] and "val_dice" in sent[site] and "test_dice_spleen" in sent[site]


def test_nothing_sent_names_a_file_path_or_patient(run):
    tmp, record, _, dicom_ids = run
    for path in record.glob("*.jsonl"):
        text = path.read_text()
        for token in [*FORBIDDEN, *dicom_ids]:
            assert token not in text, f"{path.stem} sent {token!r}"


def test_dicom_identifiers_reach_no_log(run):
    """Site-2 trained on DICOM-imported cases: no patient name, ID or UID in its log or the server's."""
    tmp, _, _, dicom_ids = run
    site_log = (tmp / "ws" / "site-2" / "log.txt").read_text()
    assert "fedseg site-2" in site_log  # it did run
    logs = [tmp / "ws" / "site-2" / "log.txt", tmp / "sim.log", *(tmp / "ws" / "server").rglob("log*.txt"),
            *(p for p in (tmp / "streamed").rglob("*") if p.is_file())]
    for path in logs:
        text = path.read_text(errors="replace")
        for token in dicom_ids:
            assert token not in text, f"{path.relative_to(tmp)} holds {token!r}"


def test_failed_site_is_named_at_the_server_without_file_names(run):
    tmp, _, bad, _ = run
    server_log = (tmp / "ws" / "server" / "log.txt").read_text()
    assert ("fedseg: update from site-3 in round 0 excluded from the average: site site-3 cannot train: "
            "data check failed: 1 fatal problem(s)") in server_log
    assert "truncated_file x1" in server_log and bad.name not in server_log
    # The site's own log names no file; the private report beside its YAML has the details an IT
    # person needs, and it never travels.
    assert bad.name not in (tmp / "ws" / "site-3" / "log.txt").read_text()
    report = tmp / "configs" / ".fedseg_cache" / "site-3" / "reports" / "spleen_data_check.txt"
    assert bad.name in report.read_text()
    results = read_job_results(tmp / "ws")
    assert [sorted(s["name"] for s in r["sites"]) for r in results.rounds] == [["site-1", "site-2"]] * 2


def test_streamed_site_logs_name_no_data_file_or_patient(run):
    tmp, _, _, _ = run
    received = [p for p in (tmp / "streamed").rglob("*") if p.is_file()]
    assert {p.parent.name for p in received} >= {"site-1", "site-2"}, "the job asked for the sites' logs"
    assert any("fedseg site-1" in p.read_text(errors="replace") for p in received)  # fedseg's own lines came too
    for path in [*received, *(tmp / "ws" / "server").rglob("log*.txt")]:
        text = path.read_text(errors="replace")
        for token in DATA_TOKENS:
            assert token not in text, f"{path.relative_to(tmp)} holds {token!r}"


def test_the_poc_kits_fedseg_writes_forbid_log_streaming(tmp_path):
    from fedseg.flare.poc import PocDeployment

    poc = PocDeployment(tmp_path / "deployment", 2)
    poc.prepare()
    for site in poc.sites:
        resources = json.loads((poc.kit(site) / "local" / "resources.json").read_text())
        assert resources["allow_log_streaming"] is False
        assert "fedseg.flare.controller.ConsortiumFedAvg" in resources["class_allow_list"]
