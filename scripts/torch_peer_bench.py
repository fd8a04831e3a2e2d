#!/usr/bin/env python3
"""The shared PyTorch peer (shared/peers/torch_resnet32_3e.py) with what `ltrain bench` also times:

    python3 scripts/torch_peer_bench.py --threads 2 --expert-width reduced --stage2 --steps 5

--expert-width reduced: experts' layer2/layer3 widths 24/48 instead of 32/64 (ltrain's default).
--stage2: the stage-2 step: the shared trunk once on ONE view of the batch, every expert on that
  same h, loss = sum over experts of the batch mean of per-sample-weighted logit-adjusted cross
  entropy (random positive weights, standing in for SLA's), SGD as in the peer.
Stage 1 is the peer's own `bench` (three views, no mixup). The model code is the peer's, imported by
path (--peer); it prints samples_per_second=X (batch * steps / seconds) as the peer does.
"""
import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "torch_resnet32_3e.py"
WIDTHS = {"full": (32, 64), "reduced": (24, 48)}


def load_peer(path):
    spec = importlib.util.spec_from_file_location("torch_resnet32_3e", path)
    if spec is None:
        sys.exit(f"cannot import the peer {path}")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer


def bench_stage2(peer, batch, steps, threads, classes=10):
    """The peer's `bench` with the stage-2 step (CPU, fp32, eager)."""
    torch, F = peer.torch, peer.F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = peer.ResNet32x3(classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    counts = torch.tensor(
        [int(5000 * 0.01 ** (c / (classes - 1))) for c in range(classes)], dtype=torch.float
    )
    log_prior = (counts / counts.sum()).log()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, classes, (batch,))
    weights = [torch.rand(batch) + 0.1 for _ in model.experts]

    def step():
        h = model.shared(x)
        loss = sum(
            (w * F.cross_entropy(e(h)[0] + log_prior, y, reduction="none")).mean()
            for e, w in zip(model.experts, weights)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    t = peer.time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (peer.time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peer", type=Path, default=DEFAULT_PEER, help=f"the peer [{DEFAULT_PEER}]")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expert-width", choices=sorted(WIDTHS), default="full")
    ap.add_argument("--stage2", action="store_true")
    a = ap.parse_args()
    peer = load_peer(a.peer)
    # ResNet32x3 builds Expert(num_classes): its default widths are the experts' widths.
    peer.Expert.__init__.__defaults__ = WIDTHS[a.expert_width]
    if a.stage2:
        sps = bench_stage2(peer, a.batch, a.steps, a.threads)
    else:
        sps = peer.bench(a.batch, a.steps, a.threads)
    m = peer.ResNet32x3()
    total = sum(p.numel() for p in m.parameters())
    print(f"params total={total} per_expert={sum(p.numel() for p in m.experts[0].parameters())}")
    print(
        f"torch {peer.torch.__version__} device=cpu batch={a.batch} expert_width={a.expert_width} "
        f"stage={2 if a.stage2 else 1} threads={a.threads} steps={a.steps} "
        f"samples_per_second={sps:.1f}"
    )


if __name__ == "__main__":
    main()
