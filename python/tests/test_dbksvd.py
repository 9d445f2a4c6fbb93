"""The Python package against the library and the command line, on the bundled activations.

Run by python/run-tests.sh (the README's test command) on lavapipe in CI. A GPU test fails,
not skips, without an adapter when DBKSVD_REQUIRE_GPU=1; the CLI comparison needs the
`dbksvd` binary (DBKSVD_BIN).
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dbksvd

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "minilm_rustbook_L4_small.safetensors"
# Small enough for lavapipe: 1 024 rows, K = 32, k = 4, 2 epochs.
ROWS, ATOMS, K = 1024, 32, 4
FAST = {"epochs": 2, "batch": 256, "progress": False}


def read_safetensors(path):
    """Tensors of a safetensors file as NumPy arrays (F32, I32), and its metadata."""
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    dtypes = {"F32": np.float32, "I32": np.int32, "F16": np.float16}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors, header.get("__metadata__", {})


@pytest.fixture(scope="module")
def acts():
    tensors, _ = read_safetensors(BUNDLED)
    (values,) = tensors.values()
    return np.ascontiguousarray(values[:ROWS], dtype=np.float32)


@pytest.fixture(scope="module")
def rows_file(acts, tmp_path_factory):
    """The same rows as a .npy file."""
    path = tmp_path_factory.mktemp("data") / "acts.npy"
    np.save(path, acts)
    return path


@pytest.fixture(scope="module")
def gpu():
    """Skips (or fails under DBKSVD_REQUIRE_GPU=1) without an adapter."""
    if not dbksvd.devices():
        if os.environ.get("DBKSVD_REQUIRE_GPU") == "1":
            pytest.fail("DBKSVD_REQUIRE_GPU=1 but wgpu finds no adapter")
        pytest.skip("no GPU adapter")


@pytest.fixture(scope="module")
def trained(acts, gpu):
    return dbksvd.train(acts, ATOMS, K, **FAST)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def test_an_array_and_its_file_train_the_same_dictionary(acts, rows_file, trained):
    from_file = dbksvd.train(rows_file, ATOMS, K, **FAST)
    assert np.array_equal(bits(trained.atoms), bits(from_file.atoms))
    assert np.array_equal(bits(trained.mean), bits(from_file.mean))
    assert trained.k == K and trained.atoms.shape == (ATOMS, acts.shape[1])
    assert len(trained.metrics) == 2 and 0 < trained.metrics[-1]["fvu"] < 1
    assert trained.config["atoms"] == ATOMS


def test_encode_equals_the_command_line(acts, rows_file, trained, tmp_path):
    binary = os.environ.get("DBKSVD_BIN")
    if not binary:
        if os.environ.get("DBKSVD_REQUIRE_GPU") == "1":
            pytest.fail("DBKSVD_BIN names no dbksvd binary")
        pytest.skip("DBKSVD_BIN not set")
    path = tmp_path / "dictionary.safetensors"
    trained.save(path)
    out = tmp_path / "codes.safetensors"
    subprocess.run(
        [binary, "encode", "--dict", path, "--data", rows_file, "--out", out],
        check=True,
        capture_output=True,
    )
    cli, _ = read_safetensors(out)
    indices, values = dbksvd.load(path).encode(acts)
    assert indices.dtype == np.int32 and values.dtype == np.float32
    assert np.array_equal(indices, cli["indices"])
    assert np.array_equal(bits(values), bits(cli["values"]))
    # Decoding reconstructs the rows as the FVU says.
    xhat = trained.decode(indices, values)
    fvu = np.square(acts - xhat).sum() / np.square(acts - acts.mean(0)).sum()
    assert abs(fvu - trained.fvu(acts)) < 1e-6 and fvu < 0.9


def test_other_dtypes_and_layouts_code_like_float32(acts, trained):
    x = acts[:64]
    want = trained.encode(x)
    # Exactly representable inputs: float64, Fortran order, a strided view.
    for other in (x.astype(np.float64), np.asfortranarray(x), np.repeat(x, 2, axis=0)[::2]):
        got = trained.encode(other)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    half = x.astype(np.float16)
    got = trained.encode(half)
    assert np.array_equal(got[0], trained.encode(half.astype(np.float32))[0])


def test_bfloat16_via_ml_dtypes(acts, trained):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
    x = acts[:32].astype(ml_dtypes.bfloat16)
    got = trained.encode(x)
    want = trained.encode(x.astype(np.float32))
    assert np.array_equal(got[0], want[0])


def test_torch_tensors(acts, trained):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.from_numpy(acts[:32])
    for tensor in (x, x.to(torch.bfloat16), x.T.contiguous().T):
        got = trained.encode(tensor)
        want = trained.encode(tensor.float().numpy())
        assert np.array_equal(got[0], want[0])


def test_bad_input_raises_clear_errors(acts, trained):
    x = acts[:50].copy()
    x[37, 5] = np.nan
    with pytest.raises(dbksvd.InputError, match="row 37"):
        trained.encode(x)
    with pytest.raises(ValueError, match="row 37"):
        dbksvd.train(x, 8, 2, **FAST)
    with pytest.raises(dbksvd.InputError, match="d = 100"):
        trained.encode(acts[:10, :100])
    with pytest.raises(dbksvd.InputError, match="no rows"):
        trained.encode(acts[:0])
    with pytest.raises(dbksvd.InputError, match="dtype int64"):
        trained.encode(np.ones((4, acts.shape[1]), dtype=np.int64))
    with pytest.raises(dbksvd.InputError, match="shape"):
        trained.encode(acts[0])
    with pytest.raises(dbksvd.DbksvdError):
        dbksvd.train(acts, ATOMS, K, coder="lasso", **FAST)
    with pytest.raises(dbksvd.FileError, match="missing.npy"):
        dbksvd.train("missing.npy", ATOMS, K, **FAST)
    with pytest.raises(dbksvd.InputError):
        dbksvd.load(BUNDLED)  # activations, not a dictionary


def test_a_raising_callback_stops_and_the_checkpoint_resumes_bit_identically(
    acts, gpu, tmp_path
):
    whole = dbksvd.train(acts, ATOMS, K, **FAST)

    class Stop(Exception):
        pass

    def stop_at_5(metrics):
        if metrics["done"] == 5:
            raise Stop()

    out = tmp_path / "run"
    with pytest.raises(Stop):
        dbksvd.train(acts, ATOMS, K, out=out, callback=stop_at_5, **FAST)
    assert (out / "checkpoint.safetensors").exists()
    assert not (out / "dictionary.safetensors").exists()
    resumed = dbksvd.train(acts, ATOMS, K, out=out, resume=True, **FAST)
    assert np.array_equal(bits(whole.atoms), bits(resumed.atoms))
    assert (out / "sae" / "cfg.json").exists() and (out / "trace.csv").exists()
    # A folder holding someone else's files is refused.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(dbksvd.InputError, match="notes.txt"):
        dbksvd.train(acts, ATOMS, K, out=out, **FAST)


def test_ctrl_c_stops_at_the_next_batch_and_keeps_the_checkpoint(acts, gpu, tmp_path):
    import signal

    seen = []

    def interrupt_at_3(metrics):
        seen.append(metrics["done"])
        if metrics["done"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    # Python keeps SIGINT ignored when it starts ignored (a job started in the background by a
    # non-interactive shell): install the default handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            dbksvd.train(acts, ATOMS, K, out=out, callback=interrupt_at_3, **FAST)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen[-1] <= 4, seen
    assert (out / "checkpoint.safetensors").exists()
    whole = dbksvd.train(acts, ATOMS, K, **FAST)
    resumed = dbksvd.train(acts, ATOMS, K, out=out, resume=True, **FAST)
    assert np.array_equal(bits(whole.atoms), bits(resumed.atoms))


def test_to_saelens_writes_the_saebench_fields(acts, trained, tmp_path):
    folder = tmp_path / "sae"
    trained.to_saelens(
        folder,
        model_name="sentence-transformers/all-MiniLM-L6-v2",
        hook_name="blocks.4.hook_resid_post",
        context_size=128,
        prepend_bos=False,
    )
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "matching_pursuit"
    assert (cfg["d_in"], cfg["d_sae"], cfg["max_iterations"]) == (acts.shape[1], 2 * ATOMS, K)
    meta = cfg["metadata"]
    assert meta["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (meta["hook_name"], meta["hook_layer"]) == ("blocks.4.hook_resid_post", 4)
    assert (meta["context_size"], meta["prepend_bos"]) == (128, False)
    weights, _ = read_safetensors(folder / "sae_weights.safetensors")
    assert np.array_equal(weights["W_dec"][:ATOMS], -weights["W_dec"][ATOMS:])


def test_the_saelens_folder_loads_and_reconstructs(acts, trained, tmp_path):
    pytest.importorskip("sae_lens", reason="sae_lens is not installed")
    import torch
    from sae_lens import SAE

    folder = tmp_path / "sae"
    trained.to_saelens(folder)
    sae = SAE.load_from_disk(str(folder), device="cpu")
    x = torch.from_numpy(acts[:64])
    xhat = sae.decode(sae.encode(x)).detach().numpy()
    fvu = np.square(acts[:64] - xhat).sum() / np.square(acts[:64] - acts[:64].mean(0)).sum()
    assert fvu < 1.0


def test_the_estimator_follows_scikit_learn(acts, gpu):
    model = dbksvd.DictionaryLearning(n_components=ATOMS, k=K, epochs=2, batch=256)
    dense = model.fit_transform(acts)
    assert model.components_.shape == (ATOMS, acts.shape[1])
    assert dense.shape == (ROWS, ATOMS) and (np.count_nonzero(dense, axis=1) <= K).all()
    indices, values = model.transform(acts, sparse=True)
    back = model.inverse_transform(dense)
    assert np.allclose(back, model.inverse_transform((indices, values)), atol=1e-4)
    assert model.get_params()["n_components"] == ATOMS
    assert model.set_params(k=2).k == 2


def test_matryoshka_groups_train_and_code_by_prefix(acts, gpu):
    d = dbksvd.train(acts, ATOMS, K, matryoshka=8, **FAST)
    assert d.groups == [8, 16, 32]
    indices, _ = d.encode(acts[:20], groups=1)
    used = indices[indices >= 0]
    assert used.size > 0 and (used < 8).all()


def test_devices_name_adapters_and_limits():
    found = dbksvd.devices()
    if not found:
        pytest.skip("no GPU adapter")
    assert all("name" in a and "backend" in a for a in found)
    assert any("max_buffer_size" in a for a in found)
