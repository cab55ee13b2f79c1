"""AT's AWS execution path, offline: the real dispatcher and worker functions, SQS, and the event
source mapping between them, with every setting read from template.yaml.

    with AwsTopology(db_env, overrides={...}) as aws:
        aws.invoke_dispatcher()                  # one scheduled invocation (blocks for its run)
        aws.wait_until(lambda: ...)              # while the event source mapping feeds workers

- SQS is moto in server mode, in its own process (so the emulator does not share this process's
  GIL with the mapping it serves); queues are created with the template's VisibilityTimeout and
  RedrivePolicy (maxReceiveCount, the dead-letter queue).
- The event source mapping long-polls the task queue, batches up to BatchSize records within
  MaximumBatchingWindowInSeconds, invokes at most ScalingConfig.MaximumConcurrency workers at
  once, deletes what succeeded and leaves reported failures to come back after the visibility
  timeout, as Lambda's SQS poller does.
- Each function runs in execution environments of its own (devtools.lambda_env): one invocation
  at a time, a cold start when a new one is needed, killed when it outlives its Timeout.
Environment variables are the template's, resolved with the stack's parameters, then pointed at
this machine: the database, moto's endpoint, the queue URL. `overrides` replaces template values
(e.g. AT_LEASE_SECONDS or the queue's VisibilityTimeout) to make a test's scenario short.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.lambda_env import ROOT, FunctionSpec, Invocation, LambdaEnvironment
from devtools.make_events import records_from_received
from devtools.support.http import free_port

TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
LONG_POLL_SECONDS = 20
# Values for the template's parameters that have no default (they name real AWS resources).
_REQUIRED_PARAMETERS = {
    "DbHost": "127.0.0.1",
    "DbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:offline",
    "SubnetIds": "subnet-offline",
    "SecurityGroupIds": "sg-offline",
}


@dataclass(frozen=True)
class QueueSettings:
    visibility_timeout: int
    max_receive_count: int


@dataclass(frozen=True)
class MappingSettings:
    batch_size: int
    batching_window_seconds: float
    max_concurrency: int


@dataclass(frozen=True)
class TemplateSettings:
    """What template.yaml says about the execution path."""

    dispatcher: FunctionSpec
    worker: FunctionSpec
    mapping: MappingSettings
    queue: QueueSettings
    schedule_seconds: float

    @classmethod
    def read(cls, template: Path = TEMPLATE, parameters: dict[str, str] | None = None) -> TemplateSettings:
        from samcli.lib.providers.sam_function_provider import SamFunctionProvider
        from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

        with warnings.catch_warnings():  # SAM's template validation uses deprecated jsonschema APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            stacks, _ = SamLocalStackProvider.get_stacks(
                str(template), parameter_overrides=_REQUIRED_PARAMETERS | (parameters or {})
            )
        functions = SamFunctionProvider(stacks)
        resources = stacks[0].template_dict["Resources"]
        worker = functions.get("WorkerFunction")
        dispatcher = functions.get("DispatcherFunction")
        assert worker is not None and dispatcher is not None
        [sqs_event] = [e for e in worker.events.values() if e["Type"] == "SQS"]
        mapping = sqs_event["Properties"]
        schedule = next(e for e in dispatcher.events.values() if e["Type"] == "Schedule")["Properties"]["Schedule"]
        queue = resources["TaskQueue"]["Properties"]
        return cls(
            dispatcher=_spec("DispatcherFunction", dispatcher),
            worker=_spec("WorkerFunction", worker),
            mapping=MappingSettings(
                batch_size=int(mapping["BatchSize"]),
                batching_window_seconds=float(mapping.get("MaximumBatchingWindowInSeconds", 0)),
                max_concurrency=int(mapping.get("ScalingConfig", {}).get("MaximumConcurrency", 1000)),
            ),
            queue=QueueSettings(
                visibility_timeout=int(queue["VisibilityTimeout"]),
                max_receive_count=int(queue["RedrivePolicy"]["maxReceiveCount"]),
            ),
            schedule_seconds=_rate_seconds(schedule),
        )


def _spec(name: str, function: Any) -> FunctionSpec:
    return FunctionSpec(
        name=name,
        code_uri=ROOT / function.codeuri,
        handler=function.handler,
        timeout_seconds=float(function.timeout),
        memory_mb=int(function.memory),
        environment={k: str(v) for k, v in (function.environment or {}).get("Variables", {}).items()},
    )


def _rate_seconds(expression: str) -> float:
    # "rate(1 minute)" / "rate(5 minutes)" / "rate(1 hour)"
    amount, unit = expression.removeprefix("rate(").removesuffix(")").split()
    return int(amount) * {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600}[unit]


@dataclass
class MappingStats:
    invocations: int = 0
    records: int = 0
    failed_records: int = 0
    errors: int = 0  # invocations that failed as a whole (error, timeout)
    billed_ms: float = 0.0  # duration rounded up to the millisecond, plus init on cold starts
    cold_starts: int = 0
    init_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, invocation: Invocation, records: int, failed: int) -> None:
        with self.lock:
            self.invocations += 1
            self.records += records
            self.failed_records += failed
            self.errors += invocation.error is not None
            self.billed_ms += math.ceil(invocation.duration_ms + (invocation.init_ms or 0.0))
            if invocation.init_ms is not None:
                self.cold_starts += 1
                self.init_ms.append(invocation.init_ms)


class EventSourceMapping:
    """Lambda's SQS poller: at most max_concurrency invocations at once, each its own environment."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        settings: MappingSettings,
        new_environment: Callable[[int], LambdaEnvironment],
    ) -> None:
        self._sqs, self._url, self._arn, self._settings = sqs, queue_url, queue_arn, settings
        self._new_environment = new_environment
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = MappingStats()
        self.environments: list[LambdaEnvironment] = []
        self._warm: dict[int, LambdaEnvironment] = {}

    def start(self) -> EventSourceMapping:
        for slot in range(self._settings.max_concurrency):
            thread = threading.Thread(target=self._poll, args=(slot,), name=f"esm-{slot}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def prewarm(self) -> None:
        """An environment for every slot, started now (as after earlier traffic): the load that
        follows meets no cold start. Their inits are not billed to what follows."""
        for slot in range(self._settings.max_concurrency):
            environment = self._new_environment(slot)
            environment.warm()
            self.environments.append(environment)
            self._warm[slot] = environment

    def stop(self) -> None:
        """Stops invoking; a poller still in a long poll leaves when it returns (its thread is a daemon)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(0.1)
        for environment in self.environments:
            environment.close()

    def _poll(self, slot: int) -> None:
        environment: LambdaEnvironment | None = None
        while not self._stopping.is_set():
            try:
                messages = self._receive_batch()
            except Exception:  # moto went away as the harness stopped
                if self._stopping.is_set():
                    return
                raise
            if not messages or self._stopping.is_set():
                continue
            if environment is None:  # this slot's first invocation: a cold start unless prewarmed
                environment = self._warm.pop(slot, None)
            if environment is None:
                environment = self._new_environment(slot)
                self.environments.append(environment)
            event = records_from_received(messages, self._arn)
            invocation = environment.invoke(event)
            failed = self._failed_ids(invocation, messages)
            done = [m for m in messages if m["MessageId"] not in failed]
            for start in range(0, len(done), 10):
                chunk = done[start : start + 10]
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
                self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            self.stats.add(invocation, len(messages), len(failed))

    def _receive_batch(self) -> list[dict]:
        """Up to BatchSize messages: what arrives within the batching window (at once when it is 0)."""
        wanted = self._settings.batch_size
        window_ends = time.monotonic() + self._settings.batching_window_seconds
        messages: list[dict] = []
        while len(messages) < wanted and not self._stopping.is_set():
            # Lambda's pollers long-poll (20 s), which is also what SQS bills for an idle queue.
            wait = LONG_POLL_SECONDS if not messages else max(0, min(20, math.ceil(window_ends - time.monotonic())))
            batch = self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=min(10, wanted - len(messages)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(batch)
            if messages and (not batch or time.monotonic() >= window_ends):
                break
        return messages

    @staticmethod
    def _failed_ids(invocation: Invocation, messages: list[dict]) -> set[str]:
        """ReportBatchItemFailures: the ids the function named; all of them when it failed or answered nonsense."""
        all_ids = {m["MessageId"] for m in messages}
        result = invocation.result
        if invocation.error is not None or not isinstance(result, dict):
            return all_ids
        try:
            named = {failure["itemIdentifier"] for failure in result.get("batchItemFailures", [])}
        except (TypeError, KeyError):
            return all_ids
        return all_ids if not named <= all_ids else named


class AwsTopology:
    def __init__(
        self,
        db_env: dict[str, str],
        *,
        overrides: dict[str, str] | None = None,
        parameters: dict[str, str] | None = None,
        visibility_timeout: int | None = None,
        max_concurrency: int | None = None,
        batch_size: int | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.settings = TemplateSettings.read(parameters=parameters)
        self._db_env, self._overrides = db_env, overrides or {}
        self._visibility_timeout = visibility_timeout or self.settings.queue.visibility_timeout
        mapping = self.settings.mapping
        self.mapping_settings = MappingSettings(
            batch_size=batch_size or mapping.batch_size,
            batching_window_seconds=mapping.batching_window_seconds,
            max_concurrency=max_concurrency or mapping.max_concurrency,
        )
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="at-aws-"))
        self._stack = contextlib.ExitStack()
        self.dispatcher_invocations: list[Invocation] = []
        self.dispatchers: list[LambdaEnvironment] = []
        self._idle_dispatchers: list[LambdaEnvironment] = []
        self._dispatcher_lock = threading.Lock()
        self._schedule_stopped = threading.Event()

    # --- lifecycle ---
    def __enter__(self) -> AwsTopology:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        import boto3

        port = free_port()
        log = self._stack.enter_context(open(self.log_dir / "moto.log", "ab"))
        moto = subprocess.Popen(
            [sys.executable, "-m", "devtools.moto_sqs", "--port", str(port)], cwd=ROOT, stdout=log, stderr=log
        )

        def stop_moto() -> None:
            moto.terminate()
            moto.wait(10)

        self._stack.callback(stop_moto)
        self.endpoint = f"http://127.0.0.1:{port}"
        from botocore.config import Config

        self.sqs = boto3.client(
            "sqs",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            # Every poller long-polls at once: one connection each (Lambda's pollers are separate).
            config=Config(max_pool_connections=self.mapping_settings.max_concurrency + 4),
        )
        _wait_for(lambda: _answers(port), 20, "moto did not start")
        dlq_url = self.sqs.create_queue(QueueName="at-TaskDeadLetterQueue")["QueueUrl"]
        self.dlq_url = dlq_url
        dlq_arn = self._arn(dlq_url)
        redrive = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": {self.settings.queue.max_receive_count}}}'
        self.queue_url = self.sqs.create_queue(
            QueueName="at-TaskQueue",
            Attributes={"VisibilityTimeout": str(self._visibility_timeout), "RedrivePolicy": redrive},
        )["QueueUrl"]
        self.mapping = EventSourceMapping(
            self.sqs,
            self.queue_url,
            self._arn(self.queue_url),
            self.mapping_settings,
            lambda slot: self._environment(self.settings.worker, f"worker-{slot}"),
        )
        self.mapping.start()
        self._stack.callback(self.mapping.stop)
        self._stack.callback(self._close_dispatchers)

    def _close_dispatchers(self) -> None:
        for environment in self.dispatchers:
            environment.close()

    def _arn(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def _environment(self, spec: FunctionSpec, label: str) -> LambdaEnvironment:
        return LambdaEnvironment(spec, self.environ(spec), self.log_dir / f"{label}.log")

    def environ(self, spec: FunctionSpec) -> dict[str, str]:
        """The function's variables as Lambda would set them here: template, then this machine."""
        machine = {
            "TASK_QUEUE_URL": self.queue_url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # moto's
            "DB_SSLMODE": "disable",
            "DB_SECRET_ARN": "",
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon offline
            "AT_HTTP_ALLOW_PRIVATE": "1",  # the callback sink is on 127.0.0.1
            # What the template sets from the same values, for the event source as emulated here.
            "AT_WORKER_BATCH_SIZE": str(self.mapping_settings.batch_size),
            "AT_WORKER_MAX_CONCURRENCY": str(self.mapping_settings.max_concurrency),
        }
        template = {k: v for k, v in spec.environment.items() if k != "TASK_QUEUE_URL"}
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")}
        return base | template | machine | self._db_env | self._overrides

    # --- driving it ---
    def invoke_dispatcher(self) -> Invocation:
        """One scheduled invocation: the dispatcher runs its loop (AT_DISPATCH_RUN_SECONDS) and returns.
        Invocations that overlap (the schedule fires while one still runs) get environments of their own."""
        from devtools.make_events import scheduled_event

        with self._dispatcher_lock:
            environment = (
                self._idle_dispatchers.pop()
                if self._idle_dispatchers
                else self._environment(self.settings.dispatcher, f"dispatcher-{len(self.dispatchers)}")
            )
            if environment not in self.dispatchers:
                self.dispatchers.append(environment)
        try:
            invocation = environment.invoke(scheduled_event())
        finally:
            with self._dispatcher_lock:
                self._idle_dispatchers.append(environment)
        self.dispatcher_invocations.append(invocation)
        return invocation

    def dispatch_in_background(self, invocations: int = 1) -> threading.Thread:
        """Invoke the dispatcher `invocations` times back to back, in a thread."""
        thread = threading.Thread(target=lambda: [self.invoke_dispatcher() for _ in range(invocations)], daemon=True)
        thread.start()
        return thread

    def start_schedule(self) -> None:
        """Invoke the dispatcher at once and then every `rate(...)` of the template, as EventBridge does."""

        def tick() -> None:
            while not self._schedule_stopped.is_set():
                threading.Thread(target=self.invoke_dispatcher, daemon=True).start()
                self._schedule_stopped.wait(self.settings.schedule_seconds)

        thread = threading.Thread(target=tick, name="schedule", daemon=True)
        thread.start()
        self._stack.callback(self._schedule_stopped.set)

    def sqs_requests(self) -> dict[str, int]:
        """Requests SQS answered so far, by action (every client: dispatcher, mapping, workers)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.endpoint}/_at/requests", timeout=5) as response:
            return json.loads(response.read())

    def queue_depths(self) -> tuple[int, int]:
        """(messages in the task queue, visible or in flight; messages in the dead-letter queue)."""
        names: Any = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        main: Any = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        dead: Any = self.sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=names)["Attributes"]
        return sum(int(main[n]) for n in names), sum(int(dead[n]) for n in names)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


@contextlib.contextmanager
def running(db_env: dict[str, str], **kwargs: Any) -> Iterator[AwsTopology]:
    with AwsTopology(db_env, **kwargs) as topology:
        yield topology
