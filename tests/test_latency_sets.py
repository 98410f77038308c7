"""The published latency tables load aligned with the NB201 enumeration, with the right counts."""
import csv
import gzip

import numpy as np
import pytest

from narformer_core.data import DataUnavailable, data_dir, shared_file
from narformer_core.data import latency_sets as L
from narformer_core.spaces import nb201

try:
    HELP = shared_file(L.HELP_FILE)
    NNMETER = shared_file(L.NNMETER_FILE)
    FBNET = shared_file(L.FBNET_FILE)
except DataUnavailable as e:  # pragma: no cover - only without the shared data folder
    pytest.skip(str(e), allow_module_level=True)

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _raw_rows(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_device_names_match_the_file_headers():
    with gzip.open(HELP, "rt") as f:
        assert tuple(f.readline().strip().split(",")[2:]) == L.HELP_DEVICES
    with open(FBNET) as f:
        assert tuple(f.readline().strip().split(",")[2:]) == L.FBNET_DEVICES
    assert len(L.HELP_DEVICES) == 27 and len(L.FBNET_DEVICES) == 27
    assert L.NNMETER_DEVICES == ("cpu", "gpu", "gpu1", "vpu")
    assert L.DEVICE_DESCRIPTIONS["1080ti_32"] == "NVIDIA GTX 1080 Ti, batch 32"
    assert L.DEVICE_DESCRIPTIONS["cpu"] == "Cortex-A76 CPU (Pixel 4)"
    assert all(L.DEVICE_DESCRIPTIONS[d] for d in L.NB201_DEVICES)


@pytest.mark.parametrize("device", L.HELP_DEVICES)
def test_help_device_has_every_cell(device):
    lat = L.nb201_device_latency(device)
    assert lat.shape == (nb201.N_ARCHS,)
    assert np.isfinite(lat).sum() == 15_625
    assert (lat > 0).all()
    assert not lat.flags.writeable


# The nn-Meter file really has 1,999 VPU values: one cell was measured on cpu/gpu/gpu1 only.
@pytest.mark.parametrize("device,known", [("cpu", 2000), ("gpu", 2000), ("gpu1", 2000), ("vpu", 1999)])
def test_nnmeter_device_known_counts(device, known):
    lat = L.nb201_device_latency(device)
    assert lat.shape == (nb201.N_ARCHS,)
    finite = lat[np.isfinite(lat)]
    assert finite.size == known
    assert (finite > 0).all()


def test_values_match_the_raw_files_for_an_arch_string():
    i = nb201.index_of(nb201.parse(ARCH))
    help_row = next(r for r in _raw_rows(HELP) if r["arch_str"] == ARCH)
    for d in ("pixel3", "titanxp_256", "eyeriss"):
        assert L.nb201_device_latency(d)[i] == pytest.approx(float(help_row[d]))
    assert L.nb201_device_latency("pixel3")[i] == pytest.approx(17.2381)
    nn_row = next(r for r in _raw_rows(NNMETER) if r["arch_str"] == ARCH)
    for d in L.NNMETER_DEVICES:
        assert L.nb201_device_latency(d)[i] == pytest.approx(float(nn_row[f"lat_ms_{d}"]))
    assert L.nb201_device_latency("cpu")[i] == pytest.approx(16.4499)


def test_alignment_holds_across_many_rows():
    # Every 500th row of the raw table lands at index_of(parse(arch)) with its value.
    rows = _raw_rows(HELP)[::500]
    lat = L.nb201_device_latency("raspi4")
    for r in rows:
        assert lat[nb201.index_of(nb201.parse(r["arch_str"]))] == pytest.approx(float(r["raspi4"]))
    # A cell missing from the nn-Meter subset stays NaN.
    present = {nb201.index_of(nb201.parse(r["arch_str"])) for r in _raw_rows(NNMETER) if r["lat_ms_cpu"]}
    absent = next(k for k in range(nb201.N_ARCHS) if k not in present)
    assert np.isnan(L.nb201_device_latency("cpu")[absent])


def test_fbnet_latency():
    archs, lat = L.fbnet_latency("pixel3")
    assert len(archs) == 5000 and lat.shape == (5000,)
    assert all(len(a) == 22 and all(0 <= b <= 8 for b in a) for a in archs)
    assert (lat > 0).all()
    raw = _raw_rows(FBNET)[7]
    assert archs[7] == tuple(int(x) for x in raw["fbnet_arch_22blocks"].split())
    assert lat[7] == pytest.approx(float(raw["pixel3"]))


def test_unknown_device_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown NB201 latency device"):
        L.nb201_device_latency("tpu")
    with pytest.raises(ValueError, match="unknown FBNet latency device"):
        L.fbnet_latency("1080ti_256")
    with pytest.raises(DataUnavailable, match="not found"):
        L.nb201_device_latency("pixel3", data_dir=tmp_path)


def test_explicit_data_dir_gives_the_same_array():
    a = L.nb201_device_latency("fpga")
    b = L.nb201_device_latency("fpga", data_dir=str(data_dir()))
    np.testing.assert_array_equal(a, b)


def test_device_table():
    t = L.device_table()
    assert len(t) == 27 + 4 + 27
    nb = t[t.space == "nb201"].set_index("device")
    assert (nb.loc[list(L.HELP_DEVICES), "n_known"] == 15_625).all()
    assert nb.loc["vpu", "n_known"] == 1999 and nb.loc["cpu", "source"] == "nn-Meter"
    assert (t.min_ms > 0).all() and (t.min_ms <= t.median_ms).all() and (t.median_ms <= t.max_ms).all()
