"""The offline AWS harness's own fixes (devtools/): what they change, without timing anything.

- devtools.moto_sqs speeds moto up: moto computed every attribute of the queue, each a scan of its
  messages, for every message it handed out. The replacement must still drop expired messages.
- devtools.lambda_env.LambdaEnvironment.close may be called by two threads at once (an
  invocation that timed out while the harness stops): one of them stops the process.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from devtools import moto_sqs
from devtools.lambda_env import FunctionSpec, LambdaEnvironment
from devtools.support.aws import use_fake_credentials


def test_moto_as_patched_hands_out_messages_without_computing_every_queue_attribute(monkeypatch):
    use_fake_credentials(monkeypatch)
    # Restored after the test: the patch is for the emulator's process only.
    monkeypatch.setattr(
        SQSBackend,
        "is_message_valid_based_on_retention_period",
        SQSBackend.is_message_valid_based_on_retention_period,
    )
    moto_sqs._speed_up_moto()
    computed: list[str] = []
    every_attribute = Queue.attributes.fget  # type: ignore[attr-defined]

    def counted(queue: Queue) -> dict:
        computed.append(queue.name)
        return every_attribute(queue)

    monkeypatch.setattr(Queue, "attributes", property(counted))
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        for body in ("kept", "expired"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues["q"]
        expired = next(m for m in queue._messages if m.body == "expired")
        expired.sent_timestamp -= 61_000  # ms: sent 61 s ago, past the 60 s retention
        computed.clear()
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in received] == ["kept"]
    assert computed == []  # moto's own check computes them all, for each message


class _SlowToStop:
    """A stand-in process. The first close to read its pid waits for a second close to come in;
    that second one is held until the environment has let go of its process. On a close() that
    reads self._process twice, the second close then finds None where it had seen a process."""

    def __init__(self, environment: LambdaEnvironment) -> None:
        self._environment = environment
        self._readers = 0
        self._second_came = threading.Event()
        self.kills = 0

    @property
    def pid(self) -> int:
        self._readers += 1
        if self._readers == 1:
            self._second_came.wait(1.0)
        else:
            self._second_came.set()
            deadline = time.monotonic() + 1.0
            while self._environment._process is not None and time.monotonic() < deadline:
                time.sleep(0.005)
        return os.getpid()

    def kill(self) -> None:
        self.kills += 1

    def wait(self) -> int:
        return -9


def test_two_threads_closing_one_environment_stop_its_process_once(tmp_path):
    spec = FunctionSpec("Worker", Path("."), "app.lambda_handler", timeout_seconds=1, memory_mb=128)
    environment = LambdaEnvironment(spec, {}, tmp_path / "worker.log")
    process = _SlowToStop(environment)
    environment._process = process  # type: ignore[assignment]
    errors: list[BaseException] = []

    def close() -> None:
        try:
            environment.close()
        except BaseException as error:  # whatever a thread raised, the test reports
            errors.append(error)

    threads = [threading.Thread(target=close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors == [] and process.kills == 1
    assert environment._process is None
