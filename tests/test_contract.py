"""The committed generated code matches proto/, and the contract's helpers behave."""
import subprocess
import sys
import uuid
from pathlib import Path

from streams.contract import UserAction, new_event_id

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    assert generated, "protoc produced nothing"
    for relative in generated:
        committed = ROOT / "streams" / "contract" / relative
        assert committed.exists(), f"{relative} is not committed: run `make proto`"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} is stale: run `make proto`"


def test_event_ids_are_uuid7_and_time_ordered():
    ids = [new_event_id(1_700_000_000_000 + i) for i in range(100)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(new_event_id(1) for _ in range(1000))) == 1000


def test_amundsen_action_log_fields_round_trip():
    action = UserAction(command="_get_table_metadata", start_epoch_ms=1, end_epoch_ms=2, user="ann@example.com",
                        host_name="h", pos_args_json="[]", keyword_args_json='{"table_key": "t"}', output="{}",
                        error="", event_id="e", app="amundsen", schema_version=1, properties={"k": "v"})
    decoded = UserAction.FromString(action.SerializeToString())
    assert decoded == action
