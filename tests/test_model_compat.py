"""Models logged before the layout changed keep loading.

``tests/data/model_0_2_0`` is a model as echocmr 0.2.0 (main at b08f9aa, before ``echocmr.model``
existed) logged it: an MLflow models-from-code pyfunc whose copied ``model_code.py`` imports
``echocmr.eval.serving`` (kept as a one-line alias of ``echocmr.model.serving``), with the tensor artifact beside it. It was made with the registry
tests' ``fake_state(11)`` and downloaded as is. Both loaders — MLflow's own, as any MLflow user
calls it, and ours — must read it in a fresh Python and give the same network.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

OLD_MODEL = Path(__file__).parent / "data" / "model_0_2_0"


@pytest.mark.timeout(300)
def test_a_model_logged_by_echocmr_0_2_0_loads_and_predicts(tmp_path):
    code = textwrap.dedent(f"""
        import json, sys
        import mlflow, numpy as np, pandas as pd, torch
        from echocmr.model.store import load_model

        plain = mlflow.pyfunc.load_model({str(OLD_MODEL)!r})
        clip = np.random.default_rng(0).normal(size=(1, 4, 32, 32))
        served = plain.predict(pd.DataFrame({{"clip": [clip.tolist()]}}))
        model, spec = load_model({str(OLD_MODEL)!r})
        with torch.inference_mode():
            ours = torch.sigmoid(model(torch.from_numpy(clip[None]).float())).numpy()[0]
        print(json.dumps({{"served": served.filter(like="p_").iloc[0].tolist(),
                          "ours": ours.tolist(), "frames": spec.frames, "size": spec.size,
                          "legacy": sorted(m for m in sys.modules if m.split(".")[0] == "train")}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["frames"], result["size"]) == (4, 32)
    assert result["legacy"] == []
    assert len(result["served"]) == 5
    for a, b in zip(result["served"], result["ours"], strict=True):
        assert abs(a - b) < 1e-5
