"""Measured pack rates, kept: what `ablate bench --pack` and `ablate doctor` measured, recorded in
results/rates.json, and read back by the dry run's estimate (runners/study/estimate.py) and by
`resources.pack: auto` (runners/study/pack.py), which then need not measure again.

An entry is one measurement (`bench_packed`'s result, trimmed): the device it ran on (its name,
"NVIDIA H200" or "cpu (2 cores)"), the model (its ArchSpec fields and name), the batch per model,
the precision, the packed step's compile mode ("eager" when not compiled), the torch version, when,
and per K the aggregate images/s packed, separate (one after another in one process) and, where
measured, K processes at once; and the K recommended. A new measurement of the same device,
model, batch, precision and mode replaces the old one.

`load` reads this file, a `bench --pack --json` file or a doctor JSON: any of them can be handed
to `ablate run --dry-run --rates FILE`. Torch-free: the dry run reads it on a laptop.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write
from ..paths import results_dir

KEEP = ("device_name", "device", "model", "model_name", "batch_size", "precision", "torch", "steps", "repeats",
        "threads", "recommended")


def rates_path() -> Path:
    return results_dir() / "rates.json"


def entry_of(result: dict) -> dict:
    """One entry from a `bench_packed` result."""
    e = {k: result.get(k) for k in KEEP}
    e["mode"] = (result.get("compile_mode") or "default") if result.get("compile") else "eager"
    e["packs"] = [{k: row[k] for k in ("k", "packed", "separate", "processes", "processes_error",
                                                  "out_of_memory", "skipped")
                   if k in row} for row in result["packs"]]
    e["measured_at"] = result.get("measured_at") or datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    return e


def key_of(e: dict) -> tuple:
    return (e["device_name"], json.dumps(e["model"], sort_keys=True), e["batch_size"], e["precision"], e["mode"])


def record(results: list[dict], path: Path | None = None) -> Path:
    """Merge `bench_packed` results into the rates file (atomically: a kill leaves the old file or
    the new). An unreadable file is set aside as rates.json.unreadable, not overwritten blind."""
    path = Path(path or rates_path())
    try:
        entries = read(path) if path.exists() else []
    except ConfigError:
        path.replace(path.with_name(path.name + ".unreadable"))
        entries = []
    merged = {key_of(e): e for e in entries}
    for r in results:
        e = entry_of(r)
        merged[key_of(e)] = e
    doc = {"what": "measured pack rates (ablate bench --pack, ablate doctor); aggregate images/s",
           "rates": list(merged.values())}
    return atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()), durable=False)


def read(path: Path) -> list[dict]:
    """The entries in a rates file, a `bench --pack --json` file or a doctor JSON."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read measured rates from {path} ({type(e).__name__}); give a file that "
                          "`ablate bench --pack --json`, `ablate doctor --json` or results/rates.json wrote") from None
    if isinstance(doc, dict) and isinstance(doc.get("rates"), list):
        found = doc["rates"]
    elif isinstance(doc, dict) and "packs" in doc:
        found = [entry_of(doc)]
    elif isinstance(doc, dict) and isinstance(doc.get("checks"), list):
        found = [entry_of(m) for c in doc["checks"] for m in (c.get("details") or {}).get("measurements", [])]
    else:
        found = None
    if found is None or not all(isinstance(e, dict) and _complete(e) for e in found):
        raise ConfigError(f"{path} holds no measured pack rates in the form `ablate bench --pack --json`, "
                          "`ablate doctor --json` or results/rates.json writes")
    return found


def _complete(e: dict) -> bool:
    return all(k in e for k in ("device_name", "model", "batch_size", "precision", "mode", "packs"))


def load(path: Path | None = None) -> list[dict]:
    """The recorded entries: of `path`, else results/rates.json ([] when there is none)."""
    if path is not None:
        return read(path)
    default = rates_path()
    return read(default) if default.exists() else []


def load_or_none() -> list[dict]:
    """results/rates.json's entries, [] when it is missing or unreadable (what reads it then
    measures again, and `record` sets the unreadable file aside)."""
    try:
        return load()
    except ConfigError:
        return []


def rate_at(entry: dict, k: int, kind: str = "packed") -> float | None:
    """The entry's aggregate images/s of `kind` at pack size k, None if not measured."""
    for row in entry["packs"]:
        if row["k"] == k and kind in row:
            return row[kind]
    return None
