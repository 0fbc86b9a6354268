"""`tally worker` whose Kafka consumer loses one input message once, on purpose: the fault Faust shows
around rebalances (faust-streaming #216/#221), made to happen where a test wants it.

    python tests/lossy_worker.py TOPIC:PARTITION:OFFSET worker --data-dir ...
"""
import sys
from pathlib import Path

from faust.transport.consumer import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streams.cli import main  # noqa: E402

topic, partition, offset = sys.argv[1].rsplit(":", 2)
lost = (topic, int(partition), int(offset))
seeked = False  # Faust has sought its partitions to the committed offsets (recovery, each rebalance)
fetch, seek = Consumer.getmany, Consumer.perform_seek


async def getmany_losing_one(self, timeout):
    global lost
    async for tp, message in fetch(self, timeout):
        if lost is not None and (tp.topic, tp.partition, message.offset) == lost:
            if not seeked:
                continue  # fetched before the seek, which reads it again: dropping it here loses nothing
            print(f"lossy_worker: lost {tp.topic}:{tp.partition}:{message.offset}", flush=True)
            lost = None
            continue
        yield tp, message


async def perform_seek_then_lose(self):
    global seeked
    await seek(self)
    seeked = True


Consumer.getmany = getmany_losing_one
Consumer.perform_seek = perform_seek_then_lose
sys.exit(main(sys.argv[2:]))
