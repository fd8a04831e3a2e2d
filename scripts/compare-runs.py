#!/usr/bin/env python3
"""Compares two `ltrain train` run directories bit for bit, except for wall-clock times.

    python3 scripts/compare-runs.py RUN_A RUN_B [--added KEY=VALUE ...]

Checked: every tensor of checkpoint.safetensors (dtype, shape and raw bytes), its metadata, every
metrics.jsonl record and report.json. Timing fields (seconds, data_wait_seconds, train_seconds,
samples_per_second) differ from run to run and are left out. Exits 1 on the first difference.

--added KEY=VALUE: RUN_B was made by a newer ltrain with a configuration key (or checkpoint metadata
key `ltrain.KEY`) that RUN_A's lacks; where RUN_B has it at VALUE (as written in the TOML, e.g.
`sync_bn=false`, `world_size=1`), it is left out of the comparison.
"""
import json
import struct
import sys
from pathlib import Path

TIMING = {"seconds", "data_wait_seconds", "train_seconds", "samples_per_second"}
TIMING_META = {"ltrain.train_seconds", "ltrain.data_wait_seconds"}


def untimed(value):
    """`value` with every timing field removed, recursively."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def safetensors(path):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    meta = header.pop("__metadata__", {})
    tensors = {
        name: (t["dtype"], t["shape"], body[t["data_offsets"][0] : t["data_offsets"][1]])
        for name, t in header.items()
    }
    return tensors, meta


def fail(message):
    print(f"DIFFER: {message}")
    sys.exit(1)


def drop_added(meta, report, added):
    """RUN_B's metadata and report without the keys `added` says are new, where they hold the value."""
    for key, value in added:
        if meta.get(f"ltrain.{key}") == value:
            del meta[f"ltrain.{key}"]
        line = f"{key} = {value}"
        config = meta.get("ltrain.config", "").splitlines()
        meta["ltrain.config"] = "\n".join(l for l in config if l.strip() != line)
        if json.dumps(report.get("config", {}).get(key)) == value:
            del report["config"][key]


def main():
    args = sys.argv[1:]
    added = []
    while "--added" in args:
        i = args.index("--added")
        key, _, value = args[i + 1].partition("=")
        added.append((key, value))
        del args[i : i + 2]
    if len(args) != 2:
        print(__doc__.strip())
        sys.exit(2)
    a, b = Path(args[0]), Path(args[1])

    ta, ma = safetensors(a / "checkpoint.safetensors")
    tb, mb = safetensors(b / "checkpoint.safetensors")
    rb_full = json.loads((b / "report.json").read_text())
    drop_added(mb, rb_full, added)
    for meta in (ma, mb):
        meta["ltrain.config"] = "\n".join(meta.get("ltrain.config", "").splitlines())
    if ta.keys() != tb.keys():
        fail(f"checkpoint tensor names: {sorted(ta.keys() ^ tb.keys())[:5]}")
    for name in ta:
        if ta[name] != tb[name]:
            fail(f"checkpoint tensor {name}")
    for key in sorted(ma.keys() | mb.keys()):
        # The checksums follow from the tensors, compared byte for byte above (and an older
        # ltrain wrote none).
        if key in TIMING_META or key == "ltrain.checksums":
            continue
        va, vb = ma.get(key), mb.get(key)
        if key == "ltrain.history":
            va, vb = untimed(json.loads(va)), untimed(json.loads(vb))
        if va != vb:
            fail(f"checkpoint metadata {key}")

    lines_a = (a / "metrics.jsonl").read_text().splitlines()
    lines_b = (b / "metrics.jsonl").read_text().splitlines()
    if len(lines_a) != len(lines_b):
        fail(f"metrics.jsonl has {len(lines_a)} vs {len(lines_b)} records")
    for i, (la, lb) in enumerate(zip(lines_a, lines_b)):
        if untimed(json.loads(la)) != untimed(json.loads(lb)):
            fail(f"metrics.jsonl record {i + 1}")

    ra = untimed(json.loads((a / "report.json").read_text()))
    rb = untimed(rb_full)
    if ra != rb:
        fail("report.json")
    print(f"identical: {len(ta)} checkpoint tensors, {len(lines_a)} metrics records, report.json")


if __name__ == "__main__":
    main()
