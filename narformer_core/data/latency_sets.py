"""Published per-device latency tables (read from the shared data folder, never copied).

- NB201 on 27 device settings (HW-NAS-Bench / HELP): every one of the 15,625 cells, in ms.
- NB201 on 4 edge devices measured by nn-Meter: 2,000 cells with test accuracy >= 90 %
  (1,999 on the VPU, where one measurement is missing), mean latency in ms.
- FBNet macro space (22 blocks, each a choice 0..8) on the HELP devices: 5,000 networks.

NB201 arrays are aligned with ``spaces.nb201.enumerate_all()`` order, NaN where unknown, so they
sit beside the accuracy labels of ``data.nb201.load_labels``. Some phone columns (pixel2,
essential_ph_1, samsung_*) were logged in whole milliseconds; they are kept as published.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from ..spaces import nb201
from . import data_dir as _resolve_dir
from . import shared_file

HELP_FILE = "nb201_latency_help_27devices.csv.gz"
NNMETER_FILE = "nb201_nnmeter_acc_ge90_and_latency.csv"
FBNET_FILE = "fbnet_latency_help.csv"

_GPUS = {"1080ti": "NVIDIA GTX 1080 Ti", "2080ti": "NVIDIA RTX 2080 Ti", "titan_rtx": "NVIDIA Titan RTX",
         "titanx": "NVIDIA GTX Titan X", "titanxp": "NVIDIA Titan Xp"}
_OTHERS = {
    "essential_ph_1": "Essential Phone PH-1 (whole ms)",
    "eyeriss": "Eyeriss ASIC accelerator (HW-NAS-Bench)",
    "fpga": "FPGA accelerator (HW-NAS-Bench)",
    "gold_6226": "Intel Xeon Gold 6226 CPU",
    "gold_6240": "Intel Xeon Gold 6240 CPU",
    "pixel2": "Google Pixel 2 phone (whole ms)",
    "pixel3": "Google Pixel 3 phone",
    "raspi4": "Raspberry Pi 4",
    "samsung_a50": "Samsung Galaxy A50 phone (whole ms)",
    "samsung_s7": "Samsung Galaxy S7 phone (whole ms)",
    "silver_4114": "Intel Xeon Silver 4114 CPU",
    "silver_4210r": "Intel Xeon Silver 4210R CPU",
}


def _gpu_settings(batches) -> dict[str, str]:
    return {f"{g}_{b}": f"{name}, batch {b}" for g, name in _GPUS.items() for b in batches}


def _ordered(columns: tuple[str, ...], descriptions: dict[str, str]) -> dict[str, str]:
    return {c: descriptions[c] for c in columns}


# Column order of the published files.
HELP_DEVICES: tuple[str, ...] = (
    "1080ti_1", "1080ti_256", "1080ti_32", "2080ti_1", "2080ti_256", "2080ti_32", "essential_ph_1",
    "eyeriss", "fpga", "gold_6226", "gold_6240", "pixel2", "pixel3", "raspi4", "samsung_a50",
    "samsung_s7", "silver_4114", "silver_4210r", "titan_rtx_1", "titan_rtx_256", "titan_rtx_32",
    "titanx_1", "titanx_256", "titanx_32", "titanxp_1", "titanxp_256", "titanxp_32")
# The FBNet table has the same devices but batch 64 where NB201 has 256.
FBNET_DEVICES: tuple[str, ...] = (
    "1080ti_1", "1080ti_32", "1080ti_64", "2080ti_1", "2080ti_32", "2080ti_64", "essential_ph_1",
    "eyeriss", "fpga", "gold_6226", "gold_6240", "pixel2", "pixel3", "raspi4", "samsung_a50",
    "samsung_s7", "silver_4114", "silver_4210r", "titan_rtx_1", "titan_rtx_32", "titan_rtx_64",
    "titanx_1", "titanx_32", "titanx_64", "titanxp_1", "titanxp_32", "titanxp_64")
NNMETER_DEVICES: tuple[str, ...] = ("cpu", "gpu", "gpu1", "vpu")

HELP_DESCRIPTIONS = _ordered(HELP_DEVICES, {**_gpu_settings((1, 32, 256)), **_OTHERS})
FBNET_DESCRIPTIONS = _ordered(FBNET_DEVICES, {**_gpu_settings((1, 32, 64)), **_OTHERS})
NNMETER_DESCRIPTIONS = {
    "cpu": "Cortex-A76 CPU (Pixel 4)",
    "gpu": "Adreno 640 GPU",
    "gpu1": "Adreno 630 GPU",
    "vpu": "Intel Myriad VPU",
}
# Every NB201 device name (the two sets do not overlap).
NB201_DEVICES: tuple[str, ...] = HELP_DEVICES + NNMETER_DEVICES
DEVICE_DESCRIPTIONS = {**HELP_DESCRIPTIONS, **NNMETER_DESCRIPTIONS}


def _key(data_dir) -> str:
    # Resolve now, so the cache keys on the folder actually read (not on None + a later env var).
    return str(_resolve_dir(data_dir).resolve())


@lru_cache(maxsize=None)
def _aligned(name: str, folder: str, prefix: str, devices: tuple[str, ...]) -> np.ndarray:
    """(15,625, len(devices)) float64, rows in enumeration order, NaN where the file has no value."""
    df = pd.read_csv(shared_file(name, folder))
    missing = [f"{prefix}{d}" for d in devices if f"{prefix}{d}" not in df.columns]
    if missing or "arch_str" not in df.columns:
        raise ValueError(f"{name} in {folder} lacks the expected columns "
                         f"{missing or ['arch_str']}: is it the published file?")
    out = np.full((nb201.N_ARCHS, len(devices)), np.nan)
    rows = [nb201.index_of(nb201.parse(s)) for s in df["arch_str"]]
    out[rows] = df[[f"{prefix}{d}" for d in devices]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    out.setflags(write=False)
    return out


def nb201_device_latency(device: str, data_dir=None) -> np.ndarray:
    """Latency in ms of all 15,625 NB201 cells on ``device`` (enumeration order, NaN = unknown).

    ``device`` is one of HELP_DEVICES (all cells known) or NNMETER_DEVICES (2,000 known). The
    array is read-only and shared between calls.
    """
    if device in HELP_DEVICES:
        table = _aligned(HELP_FILE, _key(data_dir), "", HELP_DEVICES)
        return table[:, HELP_DEVICES.index(device)]
    if device in NNMETER_DEVICES:
        table = _aligned(NNMETER_FILE, _key(data_dir), "lat_ms_", NNMETER_DEVICES)
        return table[:, NNMETER_DEVICES.index(device)]
    raise ValueError(f"unknown NB201 latency device {device!r}; known: {', '.join(NB201_DEVICES)}")


@lru_cache(maxsize=None)
def _fbnet(folder: str) -> tuple[tuple[tuple[int, ...], ...], pd.DataFrame]:
    df = pd.read_csv(shared_file(FBNET_FILE, folder))
    archs = []
    for i, text in enumerate(df["fbnet_arch_22blocks"]):
        blocks = tuple(int(x) for x in str(text).split())
        if len(blocks) != 22 or not all(0 <= b <= 8 for b in blocks):
            raise ValueError(f"{FBNET_FILE} row {i}: expected 22 block choices in 0..8, got {text!r}")
        archs.append(blocks)
    return tuple(archs), df


def fbnet_latency(device: str, data_dir=None) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The 5,000 FBNet networks (22 block choices each, 0..8) and their latency in ms on ``device``."""
    if device not in FBNET_DEVICES:
        raise ValueError(f"unknown FBNet latency device {device!r}; known: {', '.join(FBNET_DEVICES)}")
    archs, df = _fbnet(_key(data_dir))
    return list(archs), pd.to_numeric(df[device], errors="coerce").to_numpy(np.float64).copy()


def device_table(data_dir=None) -> pd.DataFrame:
    """One row per (space, device): where it comes from, how many values are known, and their range."""
    rows = []

    def add(space, source, device, desc, values):
        known = values[np.isfinite(values)]
        rows.append({"space": space, "device": device, "description": desc, "source": source,
                     "n_known": int(known.size), "n_total": int(values.size),
                     "min_ms": float(known.min()) if known.size else np.nan,
                     "median_ms": float(np.median(known)) if known.size else np.nan,
                     "max_ms": float(known.max()) if known.size else np.nan})

    for d in HELP_DEVICES:
        add("nb201", "HW-NAS-Bench / HELP", d, HELP_DESCRIPTIONS[d], nb201_device_latency(d, data_dir))
    for d in NNMETER_DEVICES:
        add("nb201", "nn-Meter", d, NNMETER_DESCRIPTIONS[d], nb201_device_latency(d, data_dir))
    for d in FBNET_DEVICES:
        add("fbnet", "HELP", d, FBNET_DESCRIPTIONS[d], fbnet_latency(d, data_dir)[1])
    return pd.DataFrame(rows)
