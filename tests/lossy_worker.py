"""`tally worker` whose Kafka consumer loses one input message once, on purpose: the fault Faust shows
around rebalances (faust-streaming #216/#221), made to happen where a test wants it: in Faust's
fetch loop (the profiles and partials topics) or in the actions agent's own reads (its input).

    python tests/lossy_worker.py TOPIC:PARTITION:OFFSET worker --data-dir ...
"""
import sys
from pathlib import Path

from faust.transport.consumer import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streams.cli import main  # noqa: E402
from streams.runtime import reader  # noqa: E402

topic, partition, offset = sys.argv[1].rsplit(":", 2)
lost = (topic, int(partition), int(offset))
seeked = False  # Faust has sought its partitions to the committed offsets (recovery, each rebalance)
fetch, seek, read = Consumer.getmany, Consumer.perform_seek, reader.read_records


def loses(topic: str, partition: int, offset: int) -> bool:
    """Whether this message is the one to lose, now."""
    global lost
    if lost is None or (topic, partition, offset) != lost or not seeked:
        return False  # (fetched before the seek, which reads it again: dropping it would lose nothing)
    print(f"lossy_worker: lost {topic}:{partition}:{offset}", flush=True)
    lost = None
    return True


async def getmany_losing_one(self, timeout):
    async for tp, message in fetch(self, timeout):
        if not loses(tp.topic, tp.partition, message.offset):
            yield tp, message


async def read_losing_one(consumer, partitions, timeout_ms, max_records):
    fetched = await read(consumer, partitions, timeout_ms, max_records)
    return {tp: [r for r in records if not loses(r.topic, r.partition, r.offset)] for tp, records in fetched.items()}


async def perform_seek_then_lose(self):
    global seeked
    await seek(self)
    seeked = True


Consumer.getmany = getmany_losing_one
Consumer.perform_seek = perform_seek_then_lose
reader.read_records = read_losing_one
sys.exit(main(sys.argv[2:]))
