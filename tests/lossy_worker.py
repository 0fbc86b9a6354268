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
fetch = Consumer.getmany


async def getmany_losing_one(self, timeout):
    global lost
    async for tp, message in fetch(self, timeout):
        if lost is not None and (tp.topic, tp.partition, message.offset) == lost:
            print(f"lossy_worker: lost {tp.topic}:{tp.partition}:{message.offset}", flush=True)
            lost = None
            continue
        yield tp, message


Consumer.getmany = getmany_losing_one
sys.exit(main(sys.argv[2:]))
