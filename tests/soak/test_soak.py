"""The fault soak (bench/soak.py) for three minutes, seeded, as part of ``make test``.

Simulators, Mosquitto and ``devicehub serve`` as processes; every fault of every device,
cut links, pauses, aborts from both sides, a broker restart, a hub SIGKILL, at random
moments of real sessions. The seed is printed; ``DEVICEHUB_SOAK_SEED`` picks another,
``bench/soak.py --seed S --minutes 3`` replays it by hand.

Asserted here: every invariant (1: every stop ended with every output off within 50 ms
of its trigger by the simulators' clocks; 2: the record's totals are what the devices
counted, no point and no exposure above its plan; 3: every record verifies and ends
final, a hub restart marks its session failed with hub_restart; 4: the follower saw
every message, no seq gap per boot; 5: the last hub's RSS and descriptors did not grow,
judged when it served more than ten sessions), that the soak really ran its
disturbances, and that every session ended without the soak having to abort it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("DEVICEHUB_SOAK_SEED", "20261204"))
MINUTES = float(os.environ.get("DEVICEHUB_SOAK_MINUTES", "3"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(MINUTES * 60) + 300)]


def test_three_minute_fault_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "soak.json"
    with capsys.disabled():
        print(f"\nsoak: seed {SEED}, {MINUTES:g} min (replay: bench/soak.py --seed {SEED} --minutes {MINUTES:g})",
              flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seed", str(SEED),
                           "--minutes", str(MINUTES), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=MINUTES * 60 + 240)
    table = proc.stdout[proc.stdout.find("\nsoak seed"):]
    with capsys.disabled():
        print(table[-4000:], flush=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["seed"] == SEED
    where = f"seed {SEED}: {r['violation_details']}"

    # it ran: sessions from both sides, and disturbances of every sort
    assert r["sessions"] >= 10, r["end_states"]
    origins = {o["origin"] for o in r["outcomes"]}
    assert origins == {"mqtt", "console"}, origins
    kinds = {k.split(":")[0] for k in r["faults"]}
    assert {"fault", "cut", "pause", "abort"} <= kinds, r["faults"]
    assert sum(1 for o in r["outcomes"] if o["session"]) >= r["sessions"] - 2, r["end_states"]

    # no session left running by the hub: each ended by itself or by the soak's own stop
    # (seed 20261204, session 10: a point resumed with less than two shots to go waited for
    # ever on a gun that refused a shot larger than what was left of its cap)
    stuck = [(o["index"], n) for o in r["outcomes"] for n in o.get("notes", []) if n.startswith("stuck")]
    assert stuck == [], f"seed {SEED}: {stuck}"
    # invariant 3: every record verifies and ends in a final state; a hub restart: failed (hub_restart)
    assert r["violations"]["3_record"] == 0, where
    assert all(o["state"] in ("completed", "aborted", "failed") for o in r["outcomes"] if o["session"]), where
    # invariant 2: the record's totals are what the devices counted (settled from their counters,
    # late where a device could not be read at the stop), and no point above its plan
    assert r["violations"]["2_delivered"] == 0, where
    # invariant 4: the persistent follower saw every message of every boot (after the replays)
    assert r["violations"]["4_seq"] == 0, where
    # invariant 1: every stop ended with every output off within 50 ms of its trigger
    assert r["violations"]["1_safe_state"] == 0, where
    # invariant 2, the emitters: what each delivered in the session, never beyond the plan
    assert r["violations"]["2_exposure_plan"] == 0, where
    # invariant 5: the hub that lives at the end (after the SIGKILL's restart) holds no more
    # memory (10 MB) nor descriptors than after its first ten sessions; judged when it served
    # more than ten (the report is drawn in a child process: the hub never loads matplotlib)
    res = r["resources"]
    with capsys.disabled():
        print(f"invariant 5: {res}", flush=True)
    assert r["violations"]["5_resources"] == 0, f"seed {SEED}: {res}"
