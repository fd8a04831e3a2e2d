#!/usr/bin/env bash
# Reproduces one of the paper's rows as one long run that survives being stopped: the binary of one fixed
# commit is built into a cache outside the checkout, the data laid out there, and the run started or resumed
# at idle priority (nice 19) in the background with its log. Resume is exact (bit-identical), so the pieces
# of a run spread over several sessions add up to one uninterrupted run of that commit.
#
# Usage:
#   scripts/reproduce.sh start  PRESET SEED [--data-dir DIR | --download] [--commit REV] [--threads N]
#   scripts/reproduce.sh status PRESET SEED        how far the run is (epoch, last top-1, running or not)
#   scripts/reproduce.sh pause  PRESET SEED        kill -STOP the run (while measuring speed on the machine)
#   scripts/reproduce.sh continue PRESET SEED      kill -CONT it
#   scripts/reproduce.sh stop   PRESET SEED        SIGTERM: the run checkpoints at its next step and exits
#
# `start` on a run directory that already has a checkpoint resumes it with the commit that started it.
# Data: CIFAR-10 from ../shared/data/cifar-10 (the xz record files) when present, else --data-dir (an
# official cifar-*-binary directory or .tar.gz) or --download.
# Cache: $LTRAIN_REPRO_HOME, else $XDG_CACHE_HOME/ltrain-reproduce, else ~/.cache/ltrain-reproduce:
#   bin/ltrain-<commit>   src/<commit>/ (the commit's tree)   data/   runs/<preset>-seed<seed>/ (+ .log, .pid)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${LTRAIN_REPRO_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ltrain-reproduce}"

usage() { sed -n '7,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "reproduce.sh: $*" >&2; exit 1; }

[ $# -ge 3 ] || usage
cmd="$1" preset="$2" seed="$3"
shift 3
[[ "$seed" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$seed'"
[ -f "$root/presets/$preset.toml" ] || die "no preset '$preset' (see presets/ or 'ltrain presets')"

run="$home/runs/$preset-seed$seed"
log="$run.log"
pidfile="$run.pid"
commitfile="$run.commit"

running_pid() {
    [ -f "$pidfile" ] || return 1
    local pid
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

status() {
    echo "run:    $run"
    [ -f "$commitfile" ] && echo "commit: $(cat "$commitfile")"
    local pid
    if pid="$(running_pid)"; then
        local state
        state="$(ps -o stat= -p "$pid" | tr -d ' ')"
        case "$state" in T*) echo "state:  paused (pid $pid; '$0 continue $preset $seed')";;
                         *) echo "state:  running (pid $pid)";; esac
    elif [ -f "$run/report.json" ]; then
        echo "state:  finished"
    else
        echo "state:  not running ('$0 start $preset $seed' resumes it)"
    fi
    local metrics="$run/metrics.jsonl"
    if [ ! -s "$metrics" ]; then
        echo "epochs: none finished yet"
        return
    fi
    python3 - "$metrics" "$run/config.toml" <<'EOF'
import json, sys, re
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
epochs = None
for line in open(sys.argv[2]):
    m = re.match(r"\s*epochs\s*=\s*(\d+)", line)
    if m:
        epochs = int(m.group(1))
last = rows[-1]
ev = [r for r in rows if r.get("top1") is not None]
# "seconds" is the run's training time so far (kept across resumes).
wall = last["seconds"]
recent = rows[-6:]
per_epoch = (recent[-1]["seconds"] - recent[0]["seconds"]) / max(len(recent) - 1, 1) if len(recent) > 1 else wall
left = (epochs - last["epoch"]) * per_epoch if epochs else 0
print(f"epochs: {last['epoch']} of {epochs} done, stage {last['stage']}, lr {last['lr']:g}, "
      f"train loss {last['train_loss']:.4f}; {wall / 3600:.2f} h of training so far, "
      f"{per_epoch / 60:.1f} min/epoch lately, about {left / 3600:.1f} h to go")
if ev:
    e = ev[-1]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    print(f"last evaluation (epoch {e['epoch']}): top-1 {fmt(e['top1'])}%, many {fmt(e['many'])}, "
          f"medium {fmt(e['medium'])}, few {fmt(e['few'])}, ECE {fmt(e['ece'])}%")
EOF
}

signal_run() {
    local pid
    pid="$(running_pid)" || die "the run is not running"
    kill "-$1" "$pid"
    echo "sent SIG$1 to $pid"
}

# Lays out CIFAR-10 from the project's shared xz record files (the LDAM rho=10 superset and the test set;
# the preset cuts rho=100 from the superset's per-class prefixes) and prints the data flags.
shared_cifar10_flags() {
    local src="$root/../shared/data/cifar-10" dst="$home/data/cifar-10"
    mkdir -p "$dst"
    for f in train_lt_r10.bin test.bin; do
        if [ ! -f "$dst/$f" ]; then
            xz -dc "$src/$f.xz" > "$dst/$f.part"
            mv "$dst/$f.part" "$dst/$f"
        fi
    done
    echo "--train-file $dst/train_lt_r10.bin --test-file $dst/test.bin"
}

start() {
    local data_flags="" commit="" threads=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --data-dir) [ $# -ge 2 ] || die "--data-dir needs a directory or .tar.gz"
                        data_flags="--data-dir $2"; shift 2;;
            --download) data_flags="--download --data-dir $home/data"; shift;;
            --commit) [ $# -ge 2 ] || die "--commit needs a revision"; commit="$2"; shift 2;;
            --threads) [ $# -ge 2 ] || die "--threads needs a count"; threads="--threads $2"; shift 2;;
            *) die "unknown option '$1'";;
        esac
    done
    if pid="$(running_pid)"; then
        echo "already running (pid $pid)"
        status
        return
    fi
    mkdir -p "$home/bin" "$home/src" "$home/runs"

    # A run keeps the commit that started it; a new one takes --commit or HEAD.
    if [ -f "$commitfile" ]; then
        local stored
        stored="$(cat "$commitfile")"
        if [ -n "$commit" ] && [ "$(git -C "$root" rev-parse "$commit^{commit}")" != "$stored" ]; then
            die "$run was started by commit $stored; it resumes with that commit only (remove the run to start anew)"
        fi
        commit="$stored"
    else
        commit="$(git -C "$root" rev-parse "${commit:-HEAD}^{commit}")" \
            || die "no commit '$commit' in $root"
    fi

    local bin="$home/bin/ltrain-$commit"
    if [ ! -x "$bin" ]; then
        git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null \
            || die "commit $commit (which started $run) is not in $root; fetch it first"
        local src="$home/src/$commit"
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$root" archive "$commit" | tar -x -C "$src"
        echo "building ltrain at $commit (release) ..."
        (cd "$src" && cargo build --release --quiet --target-dir "$home/target")
        cp "$home/target/release/ltrain" "$bin.part"
        mv "$bin.part" "$bin"
    fi

    local args
    if [ -f "$run/checkpoint.safetensors" ]; then
        args="train --resume $run $threads"
        echo "resuming $run with commit $commit"
    else
        if [ -z "$data_flags" ]; then
            [ -f "$root/../shared/data/cifar-10/train_lt_r10.bin.xz" ] && [[ "$preset" == cifar10-* ]] \
                || die "no data for $preset: give --data-dir DIR (official CIFAR binary) or --download"
            data_flags="$(shared_cifar10_flags)"
        fi
        args="train --preset $preset --seed $seed $data_flags --device cpu $threads --out $run"
        echo "$commit" > "$commitfile"
        echo "starting $run with commit $commit"
    fi
    # shellcheck disable=SC2086
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) commit $commit: ltrain $args"
        nohup nice -n 19 "$bin" $args < /dev/null &
        echo $! > "$pidfile"
    } >> "$log" 2>&1
    echo "pid $(cat "$pidfile"), log $log"
}

case "$cmd" in
    start) start "$@";;
    status) status;;
    pause) signal_run STOP;;
    continue) signal_run CONT;;
    stop) signal_run TERM;;
    *) usage;;
esac
