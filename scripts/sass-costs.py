#!/usr/bin/env python3
"""Reads every CUDA kernel's compiled sm_90 code and writes what the cost model needs to know of it:
src/backend/cost/sm90_kernels.tsv (one row per kernel, included by src/backend/cost.rs).

  scripts/sass-costs.py --write        regenerate the table
  scripts/sass-costs.py --check        fail if the table differs from the compiled code
  scripts/sass-costs.py --parse FILE   the loop columns of every function in a SASS listing (tests)

How: `cargo check` runs build.rs, which compiles kernels/*.cu to the fatbins the crate embeds; their
SASS comes from `cuobjdump -sass`. Registers, spills and static shared memory come from ptxas
(`-Xptxas -v`), compiling each file again with build.rs's flags for sm_90 alone; the registers must
agree with the fatbin's (`cuobjdump -res-usage`), so the two compilations cannot drift apart unseen.
Needs nvcc 13.0 (scripts/install-nvcc.sh) and cuobjdump (scripts/install-sass-tools.sh).

The hot loop of a kernel: the smallest loop (from backward branches) holding both FMAs (FFMA or HMMA)
and a block barrier, i.e. one step of a shared-memory tiled product (and at least half the FMA
instructions of the loop holding most, so not an epilogue's small loop); else the innermost loop holding
FMAs; else the innermost loop with the most global loads and stores. Its instructions are counted
per iteration by class; a loop nested in it counts times its trips per iteration. The SASS gives no
trip count for thread-strided loops, so TRIPS below says, per kernel, how much work one hot-loop
iteration does per thread; a nested loop then runs (its share of that work) / (its work per pass).
A kernel without an entry there whose hot loop nests loops counts each nested loop once, with a
warning: a lower bound on its instructions per FMA until TRIPS says more.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "src/backend/cost/sm90_kernels.tsv"
ARCH = "90"

# Work per thread in one hot-loop iteration (a K step of BK = 16), for the kernels whose hot loop
# nests loops: useful FMAs, and the elements the nested gather loops store to shared memory (A tile
# first, then B), from kernels/conv.cu: BM x BN tiles over CONV_THREADS = 256 threads, so
# FMAs = BM * BN * 16 / 256, A = BM * 16 / 256, B = 16 * BN / 256.
# kernels/conv_mma.cu: BM x BN tiles, one tf32 m16n8k8 = 1024 FMAs a warp (32 a thread); the A tile
# of the `any` forward and data kernels is a loop (16 elements a step, one row a thread); their other
# gathers, and every gather of the compiled-filter and weight-gradient kernels, are unrolled.
TRIPS = {
    r"conv2d_\w+_m16": {"fma": 128, "stored": [1, 8]},
    r"conv2d_\w+_m32": {"fma": 256, "stored": [2, 8]},
    r"conv2d_\w+_m64": {"fma": 256, "stored": [4, 4]},
    r"conv2d_\w+_m128": {"fma": 512, "stored": [8, 4]},
    r"conv2d_mma_(forward|forward_stats|backward_data)_\w+_n16": {"fma": 256, "stored": [16]},
    r"conv2d_mma_(forward|forward_stats|backward_data)_\w+_n32": {"fma": 512, "stored": [16]},
    r"conv2d_mma_(forward|forward_stats|backward_data)_\w+_n64": {"fma": 1024, "stored": [16]},
}

CLASSES = ["ffma", "hmma", "lds", "ldsm", "ldg", "ldgsts", "sts", "int", "other"]
# Integer and address arithmetic, moves and predicate logic (and their uniform-datapath U forms).
INT_OPS = {
    "IMAD", "IADD3", "IADD", "VIADD", "LEA", "SHF", "SHL", "SHR", "LOP3", "LOP", "ISETP", "IABS",
    "IMNMX", "VIMNMX", "VIADDMNMX", "SEL", "MOV", "PRMT", "POPC", "FLO", "BMSK", "SGXT", "BREV",
    "PLOP3", "IMUL", "ISCADD",
}
OP_CLASS = {"FFMA": "ffma", "HMMA": "hmma", "LDS": "lds", "LDSM": "ldsm", "LDG": "ldg",
            "LDGSTS": "ldgsts", "STS": "sts"}

COLUMNS = [
    "kernel", "file", "regs", "smem", "stack", "spill", "threads", "blocks_per_sm", "unit",
    "loop", "nested", "instr", *CLASSES, "fma", "instr_per_fma", "smem_loads_per_op",
]


def fail(msg):
    sys.exit(f"scripts/sass-costs.py: {msg}")


# ---- SASS ----------------------------------------------------------------------------------------

INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+([^;]*?)\s*;")


def parse_sass(text):
    """{function: [(address, opcode, text)]} from `cuobjdump -sass` output."""
    funcs = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = funcs.setdefault(m.group(1), [])
            continue
        m = INSTR.search(line)
        if m and current is not None:
            body = re.sub(r"^@!?U?P[T\d]+\s+", "", m.group(2))
            current.append((int(m.group(1), 16), body.split()[0], m.group(2)))
    return funcs


def op_class(opcode):
    base = opcode.split(".")[0]
    if base in OP_CLASS:
        return OP_CLASS[base]
    if base in INT_OPS or (base.startswith("U") and base[1:] in INT_OPS):
        return "int"
    return "other"


def mma_fmas(opcode):
    """Multiply-adds per thread of one instruction: 1 for FFMA, m*n*k/32 for HMMA.MNK."""
    base = opcode.split(".")[0]
    if base == "FFMA":
        return 1
    if base == "HMMA":
        shape = opcode.split(".")[1]
        m, n, k = re.fullmatch(r"(16)(8)(8|16|4)", shape).groups()
        return int(m) * int(n) * int(k) // 32
    return 0


def mma_unit(opcode):
    """The unit an FMA instruction runs on: `ffma`, or the tensor-core input type (`tf32`, `bf16`)."""
    if opcode.startswith("HMMA"):
        return opcode.split(".")[-1].lower()
    return "ffma"


def loops(instrs):
    """Loops as (first, last) instruction indices, from branches to an earlier address."""
    index = {a: i for i, (a, _, _) in enumerate(instrs)}
    ends = {}
    for i, (addr, opcode, text) in enumerate(instrs):
        m = re.search(r"\bBRA\b.*0x([0-9a-f]+)$", text)
        if opcode.startswith("BRA") and m:
            target = int(m.group(1), 16)
            # `BRA self` after EXIT is the end-of-code trap, not a loop.
            if target < addr and target in index:
                ends[index[target]] = max(ends.get(index[target], i), i)
    return sorted(ends.items())


def count(instrs, first, last, skip=()):
    c = dict.fromkeys(CLASSES, 0)
    fma = 0
    units = set()
    for i in range(first, last + 1):
        if any(s <= i <= e for s, e in skip):
            continue
        opcode = instrs[i][1]
        c[op_class(opcode)] += 1
        fma += mma_fmas(opcode)
        if mma_fmas(opcode):
            units.add(mma_unit(opcode))
    return c, fma, units


def has(instrs, first, last, pred):
    return any(pred(instrs[i][1]) for i in range(first, last + 1))


def hot_loop(name, instrs):
    """(loop columns) of the kernel's hot loop, or None when it has no loop."""
    all_loops = loops(instrs)
    if not all_loops:
        return None

    def inner(loop):
        return [o for o in all_loops if o != loop and loop[0] <= o[0] and o[1] <= loop[1]]

    def fmas(lp):
        return has(instrs, lp[0], lp[1], lambda op: mma_fmas(op) > 0)

    def fma_instrs(lp):
        return sum(1 for i in range(lp[0], lp[1] + 1) if mma_fmas(instrs[i][1]))

    def barrier(lp):
        return has(instrs, lp[0], lp[1], lambda op: op.startswith("BAR.SYNC"))

    by_size = sorted(all_loops, key=lambda lp: lp[1] - lp[0])
    innermost = [lp for lp in by_size if not inner(lp)]
    hint = next((h for pat, h in TRIPS.items() if re.fullmatch(pat, name)), None)
    tiled = [lp for lp in by_size if fmas(lp) and barrier(lp)]
    if tiled:
        # Not a small loop that merely shares the kernel with the product (an epilogue's).
        most = max(fma_instrs(lp) for lp in tiled)
        loop = next(lp for lp in tiled if 2 * fma_instrs(lp) >= most)
    elif any(fmas(lp) for lp in innermost):
        loop = next(lp for lp in innermost if fmas(lp))
    else:
        def global_ops(lp):
            c, _, _ = count(instrs, lp[0], lp[1])
            return c["ldg"] + c["ldgsts"] + sum(
                1 for i in range(lp[0], lp[1] + 1) if instrs[i][1].startswith("STG"))
        loop = max(innermost, key=lambda lp: (global_ops(lp), -lp[0]))
    nested = [lp for lp in inner(loop) if not any(o != lp and o[0] <= lp[0] and lp[1] <= o[1]
                                                  for o in inner(loop))]
    own, fma, units = count(instrs, loop[0], loop[1], skip=nested)
    total = {k: float(v) for k, v in own.items()}
    if nested and hint is None:
        print(f"warning: {name}: its hot loop nests loops and TRIPS has no entry for it; counting "
              "each once (a lower bound on its instructions)", file=sys.stderr)
        for lp in nested:
            c, f, u = count(instrs, lp[0], lp[1])
            fma += f
            units |= u
            for k in CLASSES:
                total[k] += c[k]
    elif nested:
        stored = list(hint["stored"])
        fma_left = hint["fma"] - fma
        for lp in nested:
            c, f, u = count(instrs, lp[0], lp[1])
            if f:
                trips = fma_left / f
                fma_left = 0
                units |= u
            elif c["sts"] + c["ldgsts"] and stored:
                # Shared-memory stores: plain ones, or cp.async copies (LDGSTS).
                trips = stored.pop(0) / (c["sts"] + c["ldgsts"])
            else:
                fail(f"kernel {name}: nested loop at {instrs[lp[0]][0]:#x} neither multiplies nor "
                     "stores to shared memory; extend TRIPS in scripts/sass-costs.py")
            for k in CLASSES:
                total[k] += trips * c[k]
        if fma_left or stored:
            fail(f"kernel {name}: TRIPS in scripts/sass-costs.py does not match its hot loop "
                 f"({fma_left} FMAs and {stored} stored elements left over)")
        fma = hint["fma"]
    if len(units) > 1:
        fail(f"kernel {name}: its hot loop multiplies on several units {sorted(units)}")
    unit = units.pop() if units else "-"
    instr = sum(total.values())
    ops = total["ffma"] + total["hmma"]
    return {
        "unit": unit,
        "loop": f"{instrs[loop[0]][0]:#x}-{instrs[loop[1]][0]:#x}",
        "nested": len(nested),
        "instr": instr,
        **total,
        "fma": fma,
        "instr_per_fma": instr / fma if fma else None,
        "smem_loads_per_op": (total["lds"] + total["ldsm"]) / ops if ops else None,
    }


# ---- occupancy -----------------------------------------------------------------------------------

# sm_90 limits (CUDA C Programming Guide, "Compute Capabilities", compute capability 9.0; the same
# in src/backend/cost.rs, whose tests check this column against it).
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32


def blocks_per_sm(regs, smem, threads):
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED_PER_BLOCK)
    return min(by_regs, by_smem, WARPS_PER_SM // warps, BLOCKS_PER_SM)


# ---- tools and compilation -----------------------------------------------------------------------


def tool(name, venv):
    found = shutil.which(name)
    if found:
        return found
    for p in sorted((ROOT / venv).glob(f"lib/python3*/site-packages/nvidia/cu13/bin/{name}")):
        return str(p)
    script = "install-nvcc.sh" if name == "nvcc" else "install-sass-tools.sh"
    fail(f"{name} not found on PATH or in {venv}; run scripts/{script}")


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"`{' '.join(map(str, cmd))}` failed:\n{r.stderr[-4000:]}")
    return r


def version(exe):
    out = run([exe, "--version"]).stdout
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    return m.group(1) if m else "unknown"


def build_out_dir(nvcc):
    """build.rs's OUT_DIR (fatbins, the ABI header, the launchers), after `cargo check`."""
    env = dict(os.environ, NVCC=nvcc, LTRAIN_REQUIRE_CUDA="1")
    out = run(["cargo", "check", "--lib", "--quiet", "--message-format=json"], cwd=ROOT, env=env)
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "build-script-executed" and "/build/ltrain-" in msg["out_dir"]:
            return Path(msg["out_dir"])
    fail("`cargo check` reported no build-script output directory for ltrain")


def ptxas_report(nvcc, src, out_dir, tmp):
    """{kernel: (regs, smem, stack, spill bytes)} from ptxas -v, compiled with build.rs's flags."""
    cmd = [nvcc, "-cubin", "-lineinfo", "-O3", "-std=c++17",
           f"-gencode=arch=compute_{ARCH},code=sm_{ARCH}", "-I", str(out_dir), "-Xptxas", "-v",
           "-o", str(Path(tmp) / (src.stem + ".cubin")), str(src)]
    text = run(cmd).stderr
    report = {}
    for block in text.split("Compiling entry function '")[1:]:
        name = block.split("'")[0]
        regs = re.search(r"Used (\d+) registers", block)
        smem = re.search(r"(\d+) bytes smem", block)
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                          r"loads", block)
        report[name] = (int(regs.group(1)), int(smem.group(1)) if smem else 0,
                        int(frame.group(1)), int(frame.group(2)) + int(frame.group(3)))
    return report


def launch_threads(out_dir):
    """{kernel: threads}: its `__launch_bounds__`, else abi::DEFAULT_MAX_THREADS, as build.rs
    wrote them into the launchers."""
    text = (out_dir / "kernels.rs").read_text()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'name: "(\w+)", max_threads: (\d+)', text)}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return str(v)


def rows():
    nvcc = tool("nvcc", ".venv-nvcc")
    cuobjdump = tool("cuobjdump", ".venv-sass")
    out_dir = build_out_dir(nvcc)
    threads = launch_threads(out_dir)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted((ROOT / "kernels").glob("*.cu")):
            fatbin = out_dir / f"{src.stem}.fatbin"
            if not fatbin.is_file():
                fail(f"{fatbin} missing: build.rs did not compile {src.name}")
            sass = parse_sass(run([cuobjdump, "-sass", "-arch", f"sm_{ARCH}", str(fatbin)]).stdout)
            embedded_regs = {m.group(1): int(m.group(2)) for m in re.finditer(
                r"Function (\w+):\s+REG:(\d+)", run([cuobjdump, "-res-usage", str(fatbin)]).stdout)}
            report = ptxas_report(nvcc, src, out_dir, tmp)
            for name in sorted(sass):
                if name not in report:
                    fail(f"{src.name}: ptxas reported nothing for {name}")
                regs, smem, stack, spill = report[name]
                if embedded_regs.get(name) != regs:
                    fail(f"{name}: ptxas -v says {regs} registers, the embedded fatbin "
                         f"{embedded_regs.get(name)}: the flags here drifted from build.rs's")
                t = threads[name]
                row = {"kernel": name, "file": src.name, "regs": regs, "smem": smem,
                       "stack": stack, "spill": spill, "threads": t,
                       "blocks_per_sm": blocks_per_sm(regs, smem, t)}
                row.update(loop_columns(name, sass[name]))
                table.append(row)
    return table, version(nvcc), version(cuobjdump)


def loop_columns(name, instrs):
    hot = hot_loop(name, instrs)
    if hot is None:
        return {c: None for c in COLUMNS[8:]} | {"unit": "-", "loop": "-"}
    return hot


def render(table):
    lines = ["\t".join(COLUMNS)]
    for row in table:
        lines.append("\t".join(fmt(row.get(c)) for c in COLUMNS))
    return "\n".join(lines) + "\n"


HEADER = """\
# The CUDA kernels read from their compiled sm_90 code (generated by scripts/sass-costs.py --write;
# do not edit). nvcc {nvcc}, cuobjdump {cuobjdump}; kernels/ at commit {commit}.
# One row per kernel, the cost model's input (src/backend/cost.rs):
#   regs, smem (static bytes), stack, spill (spill store + load bytes): ptxas -v.
#   threads: the block size the kernel is compiled for (its __launch_bounds__, else 256);
#   blocks_per_sm: resident blocks at that size (65536 registers, 228 KB shared memory with 1 KB
#   reserved per block, 64 warps, 32 blocks per SM). The model recomputes it at each launch's size.
#   unit: what the hot loop multiplies on (ffma, or HMMA's tf32 / bf16 / f16; - none).
#   loop: the hot loop's SASS addresses; nested: loops inside it (counted times their trips, from
#   TRIPS in the script; once each, a lower bound, for a kernel without an entry there).
#   instr .. other: instructions per thread per iteration of the hot loop, by class (int: integer
#   and address arithmetic, moves, predicate logic); fma: useful multiply-adds per thread per
#   iteration (FFMA 1, HMMA m*n*k/32); instr_per_fma = instr / fma: issued instructions per useful
#   FMA; smem_loads_per_op: LDS + LDSM per FFMA or per HMMA.
"""


def commit():
    head = subprocess.run(["git", "log", "-1", "--format=%h", "--", "kernels"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def data_lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"regenerate {TABLE.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help="fail if the table is out of date")
    mode.add_argument("--parse", metavar="FILE", help="loop columns of a SASS listing")
    args = ap.parse_args()
    if args.parse:
        funcs = parse_sass(Path(args.parse).read_text())
        print("\t".join(["kernel", *COLUMNS[8:]]))
        for name, instrs in funcs.items():
            cols = loop_columns(name, instrs)
            print("\t".join([name, *(fmt(cols.get(c)) for c in COLUMNS[8:])]))
        return
    table, nvcc, cuobjdump = rows()
    text = HEADER.format(nvcc=nvcc, cuobjdump=cuobjdump, commit=commit()) + render(table)
    if args.write:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(text)
        print(f"wrote {TABLE.relative_to(ROOT)} ({len(table)} kernels)")
        return
    old = TABLE.read_text() if TABLE.is_file() else ""
    if data_lines(old) != data_lines(text):
        fail(f"{TABLE.relative_to(ROOT)} is out of date with kernels/*.cu: run "
             "`python3 scripts/sass-costs.py --write` and commit it")
    print(f"{TABLE.relative_to(ROOT)} matches the compiled kernels ({len(table)} kernels)")


if __name__ == "__main__":
    main()
