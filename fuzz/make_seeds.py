#!/usr/bin/env python3
"""Writes the small seed files under seeds/<target>/ (standard library only, no numpy).

Run from anywhere: python3 fuzz/make_seeds.py. The output is deterministic.
"""
import json
import struct
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "seeds"


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def f64(values):
    return struct.pack(f"<{len(values)}d", *values)


def f16(values):
    return struct.pack(f"<{len(values)}e", *values)


def bf16(values):
    # The top half of each f32.
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def u32(values):
    return struct.pack(f"<{len(values)}I", *values)


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes); data laid out in list order."""
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def npy(descr, shape, raw, version=1):
    dims = "".join(f"{n}, " for n in shape) if len(shape) == 1 else ", ".join(map(str, shape))
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    magic = b"\x93NUMPY" + bytes([version, 0])
    size = 2 if version == 1 else 4
    body = len(magic) + size + len(text) + 1
    text += " " * (-body % 64) + "\n"
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    return magic + length + text.encode("latin-1" if version < 3 else "utf-8") + raw


def config(**changes):
    """A TrainConfig as serde_json writes it (src/train.rs; `init` is not serialised)."""
    c = {
        "atoms": 2,
        "k": 1,
        "epochs": 2,
        "batch_size": 4,
        "atom_batch": 32,
        "power_iterations": 1,
        "atom_memory": 0.5,
        "coder": "omp",
        "center": True,
        "seed": 7,
        "time_limit": None,
        "tolerance": None,
        "checkpoint_every": None,
        "shuffle_window": 16,
        "duplicate_threshold": 0.99,
        "rare_atom_fraction": 0.05,
        "profile": False,
    }
    c.update(changes)
    return json.dumps(c, separators=(",", ":"))


def position(with_history):
    """A Position (private in src/train.rs) as serde_json writes it."""
    batch = {
        "epoch": 0, "batch": 0, "step": 0, "samples": 4, "fvu": 0.5,
        "relative_residual": 0.6, "l0": 1.0, "unused_atoms": 0, "gemm_s": 0.0,
        "coding_s": 0.001, "update_s": 0.002, "host_s": 0.0,
    }
    epoch = {
        "epoch": 0, "batches": 2, "samples": 8, "fvu": 0.45, "relative_residual": 0.55,
        "l0": 1.0, "dead_atoms": 0, "rare_atoms": 0, "reseeded": 0, "duplicates": 0,
        "purged": 0, "coherence": 0.3,
        "eval": {"rows": 8, "fvu": 0.4, "relative_residual": 0.5, "l0": 1.0},
        "seconds": 0.01,
    }
    p = {
        "rows": 8,
        "epoch": 1 if with_history else 0,
        "batch": 1,
        "step": 3 if with_history else 1,
        "seconds": 0.02,
        "sums": {"batches": 1, "samples": 4, "residual": 1.5, "variance": 3.0,
                 "relative": 2.4, "l0": 4.0, "seconds": 0.003},
        "batches": [batch] if with_history else [],
        "epochs": [epoch] if with_history else [],
    }
    return json.dumps(p, separators=(",", ":"))


def checkpoint(cfg, pos):
    s = 0.6
    atoms = [1.0, 0.0, 0.0, 0.0, s, 0.8]
    return safetensors(
        [
            ("dictionary", "F32", [2, 3], f32(atoms)),
            ("memory", "F32", [2, 3], f32([0.1, 0.0, 0.2, 0.0, 0.3, -0.1])),
            ("mean", "F32", [3], f32([0.5, -0.25, 0.0])),
            ("epoch_usage", "U32", [2], u32([3, 5])),
        ],
        {"format": "dbksvd-checkpoint", "dbksvd_version": "0.1.0", "config": cfg, "position": pos},
    )


def main():
    grid = [float(i) / 4 - 1 for i in range(12)]
    files = {
        "safetensors_reader": {
            "f32_activations.safetensors": safetensors(
                [("activations", "F32", [4, 3], f32(grid))], {"layer": "4"}),
            "f16_only_2d.safetensors": safetensors(
                [("bias", "F32", [2], f32([1.0, 2.0])), ("x", "F16", [2, 4], f16(grid[:8]))]),
            "bf16_named.safetensors": safetensors(
                [("activations", "BF16", [3, 2], bf16(grid[:6])), ("ids", "I64", [3], b"\0" * 24)]),
            "f64_activations.safetensors": safetensors(
                [("activations", "F64", [2, 2], f64([1.5, -2.0, 1e-3, 7.0]))]),
            "empty_rows.safetensors": safetensors([("activations", "F32", [0, 5], b"")]),
        },
        "npy_reader": {
            "f4_v1.npy": npy("<f4", [4, 3], f32(grid)),
            "f2_v1.npy": npy("<f2", [2, 4], f16(grid[:8])),
            "f8_v2.npy": npy("<f8", [3, 2], f64(grid[:6]), version=2),
            "f4_v3.npy": npy("<f4", [1, 5], f32(grid[:5]), version=3),
        },
        "checkpoint_loader": {
            "checkpoint_omp.safetensors": checkpoint(config(), position(False)),
            "checkpoint_mp.safetensors": checkpoint(
                config(coder={"mp": {"refit": True}}, time_limit={"secs": 60, "nanos": 0},
                       tolerance=0.001, checkpoint_every=10, center=False),
                position(True)),
            "dictionary.safetensors": safetensors(
                [("dictionary", "F32", [2, 3], f32([1.0, 0.0, 0.0, 0.0, 0.6, 0.8])),
                 ("mean", "F32", [3], f32([0.5, -0.25, 0.0]))],
                {"format": "dbksvd-dictionary", "dbksvd_version": "0.1.0", "config": config()}),
        },
    }
    for target, seeds in files.items():
        folder = SEEDS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
            print(f"{folder / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
