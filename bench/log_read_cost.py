"""What reading and decoding one event-log entry costs a process, by how many entries one XREAD returns.

    python -m bench.log_read_cost                   # Redis at 127.0.0.1:6379, uvloop
    python -m bench.log_read_cost --counts 1,10,100,1000 --entries 20000

Every server process reads every entry of the log (storage/bus.py,
``RedisBus._read_forever``); how much that costs per entry depends on how
many entries each XREAD brings: one at a time when the log is quiet, up to
``READ_COUNT`` when it is busy. This appends realistic conversation entries
(a ``new_message`` frame, 25 member ids) to a stream of its own key
(``chatbench:logcost:<random>:log``, deleted afterwards), reads them back the
server's way (its dedicated Redis client, ``_decode``, the per-entry
counters) and reports this process's CPU per entry for each batch size. No
wakeups are in it: the reads follow one another, so the one-per-XREAD figure
is a floor for a process that is woken by every entry (the ``nproc``
workload's observer measures that).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/log_read_cost.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server import eventloop, metrics  # noqa: E402
from storage.bus import _decode, _encode_meta  # noqa: E402
from storage.redis_client import dedicated_client  # noqa: E402


async def measure(url: str, counts: list[int], entries: int) -> dict[int, float]:
    """CPU µs per entry read and decoded, for each XREAD COUNT."""
    key = f"chatbench:logcost:{secrets.token_hex(4)}:log"
    client = dedicated_client(url, 6.0, 1.0)
    meta = _encode_meta({"c": 123456, "m": list(range(6_000_000, 6_000_025))})
    frame = json.dumps({"event": "new_message", "data": {
        "conversation_id": 123456, "id": 9876543, "name": "bench6000001", "avatar": "", "user_id": 6000001,
        "message": "bmdeadbeef:1234", "time": 1796322549}}).encode()
    costs: dict[int, float] = {}
    try:
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(entries):
                pipe.xadd(key, {"k": "conversation", "m": meta, "f": frame})
            await pipe.execute()
        for count in counts:
            last, read = "0-0", 0
            started = time.process_time()
            while read < entries:
                reply = await client.xread({key: last}, count=count)
                batch = [(entry_id.decode(), _decode(fields)) for entry_id, fields in reply[0][1]]
                for _, entry in batch:
                    metrics.log_entry_counters(entry.kind)[0].inc()
                last = batch[-1][0]
                read += len(batch)
            costs[count] = (time.process_time() - started) * 1e6 / read
    finally:
        await client.delete(key)
        await client.aclose()
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.log_read_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--counts", default="1,10,100,1000", help="XREAD COUNT values (default 1,10,100,1000)")
    parser.add_argument("--entries", type=int, default=20000, help="entries read per COUNT (default 20000)")
    parser.add_argument("--event-loop", default="uvloop", choices=eventloop.EVENT_LOOPS)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    costs = eventloop.run(measure(args.redis_url, counts, args.entries), args.event_loop)
    for count, cost in costs.items():
        print(f"XREAD COUNT {count:>5}: {cost:6.1f} µs CPU per entry read and decoded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
