"""How fast the GPU reads and writes pinned host memory, and whether a CUDA graph can hold it.

    python experiments/perf/host_copy_probe.py [--mib 256] [--chunk-mib 4 32]

Offloading the residual streams to host memory (`offload_streams`) moves every stream a chunk
at a time over the host link; this measures that link as the step would use it:
- H2D and D2H of a `--mib` buffer in chunks of `--chunk-mib`, from/to `pin_memory=True` memory
  and from/to memory page-locked with cudaHostRegister, on the current stream;
- both directions at once, each on its own stream (the copy engines are separate);
- the same chunked copies captured in a CUDA graph and replayed (values checked).
Times are CUDA events, median of 5 after a warm-up. Prints one table, GB/s = 1e9 bytes/s.
"""

from __future__ import annotations

import argparse
import statistics

import torch


def timed(fn, repeats: int = 5) -> float:
    """Median milliseconds of fn() on the current stream (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def registered(n_bytes: int) -> torch.Tensor:
    """A plain CPU tensor page-locked with cudaHostRegister (not torch's pinned allocator)."""
    t = torch.empty(n_bytes, dtype=torch.uint8)
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), n_bytes, 0)
    assert int(err) == 0, f"cudaHostRegister failed: {err}"
    return t


def measure(host: torch.Tensor, dev: torch.Tensor, dev2: torch.Tensor, chunk: int) -> str:
    """One table row's numbers for host memory `host` and copies of `chunk` bytes."""
    n = host.numel()
    pieces = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]

    def h2d() -> None:
        for s in pieces:
            dev[s].copy_(host[s], non_blocking=True)

    def d2h() -> None:
        for s in pieces:
            host[s].copy_(dev2[s], non_blocking=True)

    side = torch.cuda.Stream()

    def both() -> None:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            d2h()
        h2d()
        torch.cuda.current_stream().wait_stream(side)

    up, down, together = timed(h2d), timed(d2h), timed(both)
    # Graph: up to the GPU, +1 there, back down; replayed, the values checked.
    graph_gbs, ok = float("nan"), "capture failed"
    try:
        host.copy_(torch.arange(n, dtype=torch.int64).remainder(200).to(torch.uint8))
        expected = host.clone().add_(1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for s in pieces:
                piece = host[s].to("cuda", non_blocking=True)
                piece.add_(1)
                host[s].copy_(piece, non_blocking=True)
        graph.replay()
        torch.cuda.synchronize()
        ok = "ok" if torch.equal(host, expected) else "WRONG"
        graph_gbs = 2 * n / timed(graph.replay) / 1e6
    except Exception as error:  # reported in the table
        ok = f"capture failed: {type(error).__name__}: {str(error)[:80]}"
    return (
        f"{n / up / 1e6:.1f} | {n / down / 1e6:.1f} | {n / together / 1e6:.1f} | "
        f"{graph_gbs:.1f} | {ok}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[4, 32])
    args = parser.parse_args()
    n = args.mib << 20
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    dev2 = torch.empty(n, dtype=torch.uint8, device="cuda")
    hosts = {"pin_memory": torch.empty(n, dtype=torch.uint8, pin_memory=True),
             "cudaHostRegister": registered(n)}  # fmt: skip
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.mib} MiB")
    print(
        "| host memory | chunk MiB | H2D GB/s | D2H GB/s | both at once GB/s (each way) "
        "| graph H2D+D2H GB/s | graph values |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, host in hosts.items():
        host.copy_(torch.randint(0, 255, (n,), dtype=torch.uint8))
        for chunk_mib in args.chunk_mib:
            print(f"| {name} | {chunk_mib} | {measure(host, dev, dev2, chunk_mib << 20)} |")


if __name__ == "__main__":
    main()
