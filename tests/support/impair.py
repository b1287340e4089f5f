"""A userspace stand-in for ``tc qdisc ... netem delay D loss P``, for kernels built without
``sch_netem`` (the harness in ``tests/support/hosts.py`` tries netem first).

Run inside the switch namespace between a host's switch-side veth end and a spare bridge port,
it copies every Ethernet frame from one link to the other after ``--delay-ms`` and drops
``--loss-pct`` percent of them, independently in each direction: the same link as netem on both
ends of the veth pair gives. Frames are whole wire frames (the harness turns checksum and
segmentation offloads off on every host link), so a dropped frame is one lost TCP segment that
the sender retransmits, as on a real lossy link.

    python -m tests.support.impair SWITCH_SIDE_LINK SPARE_LINK --delay-ms 100 --loss-pct 2

Prints ``ready`` once both links are open; runs until killed."""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def open_link(name: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((name, 0))
    # Frames for the other hosts' MAC addresses too, not only this link's own.
    index = socket.if_nametoindex(name)
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                 index.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder)
                 + bytes(10))
    s.setblocking(False)
    return s


def forward(a: socket.socket, b: socket.socket, delay_s: float, loss: float,
            rng: random.Random) -> None:
    other = {a: b, b: a}
    pending: list[tuple[float, int, socket.socket, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for s in readable:
            for _ in range(256):
                try:
                    frame, addr = s.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:  # what this process itself sent on the link
                    continue
                if rng.random() < loss:
                    continue
                heapq.heappush(pending, (now + delay_s, seq, other[s], frame))
                seq += 1
        while pending and pending[0][0] <= now:
            _, _, out, frame = heapq.heappop(pending)
            try:
                out.send(frame)
            except OSError:  # a link down (a partition on top of the slow link): dropped
                pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("link_a")
    p.add_argument("link_b")
    p.add_argument("--delay-ms", type=float, default=100.0)
    p.add_argument("--loss-pct", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    a, b = open_link(args.link_a), open_link(args.link_b)
    print("ready", flush=True)
    forward(a, b, args.delay_ms / 1000, args.loss_pct / 100, random.Random(args.seed))


if __name__ == "__main__":
    main()
