"""scripts/outside_zoo_diagnosis.py: names the family a predictor misplaces as a block, and
refuses a file that is not a scored outside-zoo set with a message, not a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "outside_zoo_diagnosis.py"


def _scored(tmp_path) -> Path:
    """Three families ranked right within themselves; family 'b' predicted 2x too slow as a block."""
    rng = np.random.default_rng(0)
    rows = []
    for fam in ("a", "b", "c"):
        for ms in rng.uniform(1.0, 10.0, 8):
            rows.append({"family": fam, "measured_ms": float(ms), "macs": float(ms) * 1e8,
                         "checkpoint_ms": float(ms) * (2.0 if fam == "b" else 1.0)})
    path = tmp_path / "scored.json"
    path.write_text(json.dumps({"data": "unused.jsonl.gz", "networks": rows}))
    return path


def test_names_the_family_misplaced_as_a_block(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(_scored(tmp_path)), "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    res = json.loads(out.stdout)["ranking"]
    assert res["n"] == 24 and res["macs_tau"] == 1.0 and res["tau"] < 0.9
    fams = res["families"]
    assert fams["b"]["ratio_median"] == 2.0 and fams["a"]["ratio_median"] == 1.0
    assert fams["b"]["tau_without"] == 1.0                       # without b the ranking is perfect
    assert fams["a"]["tau_without"] < 1.0 and all(f["tau_within"] == 1.0 for f in fams.values())
    text = subprocess.run([sys.executable, str(SCRIPT), str(_scored(tmp_path))],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "24 networks: tau" in text and "tau without" in text


def test_bad_input_gets_a_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "is not a scored outside-zoo file" in out.stderr and "Traceback" not in out.stderr
