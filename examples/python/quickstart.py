"""Trains a dictionary on the bundled MiniLM activations, codes held-out rows and exports it for
SAELens. Run after `pip install ./python` from the repository root:

    python examples/python/quickstart.py
"""

import json
import struct
from pathlib import Path

import numpy as np

import dbksvd

DATA = Path(__file__).resolve().parents[2] / "data" / "minilm_rustbook_L4_small.safetensors"


def activations(path: Path) -> np.ndarray:
    """The one F32 tensor of a safetensors file (the `safetensors` package reads it as well)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    (info,) = [v for k, v in header.items() if k != "__metadata__"]
    start, end = info["data_offsets"]
    data = np.frombuffer(raw[8 + size + start : 8 + size + end], dtype=np.float32)
    return data.reshape(info["shape"])


acts = activations(DATA)
train, held_out = acts[:3584], acts[3584:]
print("adapters:", [a["name"] for a in dbksvd.devices()])
d = dbksvd.train(train, atoms=512, k=16, epochs=5, eval=held_out, out="out/python-quickstart", force=True)
print(d)
print(f"training FVU {d.metrics[-1]['fvu']:.4f}, held-out FVU {d.fvu(held_out):.4f}")
indices, values = d.encode(held_out[:4])
print("atoms of the first held-out row:", indices[0], values[0].round(3))
d.to_saelens("out/python-quickstart-sae", model_name="sentence-transformers/all-MiniLM-L6-v2",
             hook_name="blocks.4.hook_resid_post", context_size=256, prepend_bos=True)
