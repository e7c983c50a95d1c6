"""Push benchmark: time from the last instance received to the SR stored in the PACS.

A real Orthanc (``tests/integration/orthanc.py``) is the PACS, a real ``lesionlens serve``
(``tests/integration/service.py``) receives the study from dcmtk's ``storescu`` (a separate
process, one association) and sends its results to Orthanc. Prints: storescu transfer time,
then the time from storescu's last acknowledged instance to (a) the job being done, (b) the SR in
Orthanc, split into the configured stable wait and the rest, plus the job's own stage timings.
Usage::

    python bench/bench_push.py [--slices 300] [--size 512] [--stable-seconds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integration.orthanc import OrthancServer  # noqa: E402
from integration.service import ServiceProcess  # noqa: E402

from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--stable-seconds", type=float, default=2.0)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work-push"))
    args = ap.parse_args()
    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    ph = generate_ct(7, CTPhantomConfig(matrix=(args.size, args.size), n_slices=args.slices))
    folder = write_ct_study(ph, work / "study")
    files = sorted(folder.glob("CT_*.dcm"))
    print(f"generated {len(files)} slices of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
    orthanc = OrthancServer(work / "orthanc").start()
    svc = ServiceProcess(work / "svc", send_to=[orthanc.peer], stable_seconds=args.stable_seconds)
    try:
        svc.start()
        t_send = time.perf_counter()
        r = subprocess.run(["storescu", "-aet", "SCANNER", "-aec", svc.ae_title, "127.0.0.1", str(svc.dicom_port),
                            *map(str, files)], capture_output=True, text=True)
        t_last = time.perf_counter()
        if r.returncode != 0:
            raise SystemExit(f"storescu failed: {r.stderr[-500:]}")
        print(f"storescu: {len(files)} instances in {t_last - t_send:.1f} s ({len(files) / (t_last - t_send):.0f}/s)")
        study = ph.uids["study"]
        t_done = t_sr = None
        job: dict = {}
        while time.perf_counter() - t_last < 600:
            if t_done is None:
                jobs = svc.get("/v1/jobs", params={"study_uid": study}).json()["jobs"]
                if jobs and jobs[0]["state"] == "done":
                    t_done = time.perf_counter()
                    job = svc.get(f"/v1/jobs/{jobs[0]['id']}").json()
            found = orthanc.rest_post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study,
                                                                                   "Modality": "SR"}})
            if found:
                t_sr = time.perf_counter()
                break
            time.sleep(0.1)
        if t_sr is None:
            raise SystemExit("no SR reached Orthanc within 600 s:\n" + svc.log_tail())
        print(f"last instance → job done: {(t_done or t_sr) - t_last:.1f} s "
              f"(of which the stable wait {args.stable_seconds:.0f} s and up to 1 s of worker polling)")
        print(f"last instance → SR stored in Orthanc: {t_sr - t_last:.1f} s")
        timings = (job.get("result") or {}).get("timings", {})
        if timings:
            print("job stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        svc.stop()
        orthanc.stop(graceful=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
