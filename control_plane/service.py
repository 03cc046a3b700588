"""The control plane's gRPC API (proto/control.proto): what `borealis add-reader`,
`remove-reader`, `endpoint create`, `failover`, `replace-storage-node` and
`scaling`, `pause` and `resume` ask of a running cluster, the router's Resume
for a login held while the cluster is paused, and the instances' heartbeats. Also the
control plane's Admin.GetMetrics (the scaling decisions as metrics).

Handlers run on the gRPC server's threads; every change to the cluster goes
through the Supervisor under its lock, so supervision never sees a half-made change.
"""

from __future__ import annotations

from typing import Any

import grpc

from borealis.errors import BorealisError, grpc_status_of
from borealis.log import get_logger
from control_plane.failover import READER, WRITER, Heartbeat
from control_plane.scaling import ScalingEvent, ScalingSettings
from control_plane.supervisor import Supervisor
from proto import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc

log = get_logger("control_plane.service")

DRAIN_TIMEOUT_MS_DEFAULT = 10_000


class ControlPlaneService(control_pb2_grpc.ControlPlaneServicer):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def AddReader(  # noqa: N802 - gRPC's method name
        self, request: control_pb2.AddReaderRequest, context: grpc.ServicerContext
    ) -> control_pb2.AddReaderResponse:
        try:
            reader = self._supervisor.add_reader(request.tier)
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.AddReaderResponse(name=reader.name, endpoint=reader.url())

    def RemoveReader(  # noqa: N802
        self, request: control_pb2.RemoveReaderRequest, context: grpc.ServicerContext
    ) -> control_pb2.RemoveReaderResponse:
        timeout_ms = request.drain_timeout_ms or DRAIN_TIMEOUT_MS_DEFAULT
        try:
            closed = self._supervisor.remove_reader(request.name, timeout_ms / 1000)
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.RemoveReaderResponse(sessions_closed=closed)

    def CreateEndpoint(  # noqa: N802
        self, request: control_pb2.CreateEndpointRequest, context: grpc.ServicerContext
    ) -> control_pb2.CreateEndpointResponse:
        try:
            url = self._supervisor.create_endpoint(request.name, list(request.instances))
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.CreateEndpointResponse(url=url)

    def Heartbeat(  # noqa: N802
        self, request: control_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> control_pb2.HeartbeatResponse:
        if not request.name or request.role not in (WRITER, READER):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a heartbeat needs a name and a role")
        beat = Heartbeat(
            role=request.role,
            pid=request.pid,
            lsn=request.lsn,
            lag_lsns=request.lag_lsns,
            lag_ms=request.lag_ms,
        )
        interval_ms = self._supervisor.heartbeat(request.name, beat)
        return control_pb2.HeartbeatResponse(interval_ms=interval_ms)

    def Failover(  # noqa: N802
        self, request: control_pb2.FailoverRequest, context: grpc.ServicerContext
    ) -> control_pb2.FailoverResponse:
        try:
            old, new, switchover_s = self._supervisor.planned_failover(request.target)
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.FailoverResponse(
            old_writer=old, new_writer=new, switchover_ms=round(switchover_s * 1000)
        )

    def ReplaceStorageNode(  # noqa: N802
        self, request: control_pb2.ReplaceStorageNodeRequest, context: grpc.ServicerContext
    ) -> control_pb2.ReplaceStorageNodeResponse:
        settings = self._supervisor.replacement.settings
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms else settings.replace_timeout_s
        try:
            done = self._supervisor.replace_storage_node(request.name, timeout_s)
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.ReplaceStorageNodeResponse(
            old_node=done.old_node,
            new_node=done.new_node,
            pgs=done.pgs,
            duration_ms=round(done.duration_s * 1000),
        )

    def SetScaling(  # noqa: N802
        self, request: control_pb2.ScalingSettings, context: grpc.ServicerContext
    ) -> control_pb2.ScalingSettings:
        changes = settings_changes(request)
        try:
            settings = self._supervisor.scaler.set_settings(changes)
        except (TypeError, ValueError) as error:
            log.info("scaling settings refused", error=str(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return settings_message(settings)

    def GetScalingHistory(  # noqa: N802
        self, request: control_pb2.GetScalingHistoryRequest, context: grpc.ServicerContext
    ) -> control_pb2.ScalingHistory:
        scaler = self._supervisor.scaler
        events = scaler.history(request.limit, request.instance)
        return control_pb2.ScalingHistory(
            events=[event_message(event) for event in events],
            settings=settings_message(scaler.settings),
            capacity_bcu=scaler.capacities(),
        )

    def Pause(  # noqa: N802
        self, request: control_pb2.PauseRequest, context: grpc.ServicerContext
    ) -> control_pb2.PauseResponse:
        try:
            done = self._supervisor.pause(request.reason or "asked")
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.PauseResponse(paused=done.paused, pause_ms=round(done.duration_s * 1000))

    def Resume(  # noqa: N802
        self, request: control_pb2.ResumeRequest, context: grpc.ServicerContext
    ) -> control_pb2.ResumeResponse:
        try:
            done = self._supervisor.resume(request.reason or "asked")
        except BorealisError as error:
            _abort(context, error)
        return control_pb2.ResumeResponse(
            resumed=done.resumed, resume_ms=round(done.duration_s * 1000), writer=done.writer
        )


class ControlPlaneAdmin(admin_pb2_grpc.AdminServicer):
    """The control plane's Admin: only GetMetrics (the scaling metrics)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def GetMetrics(  # noqa: N802
        self, request: admin_pb2.GetMetricsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetMetricsResponse:
        return admin_pb2.GetMetricsResponse(text=self._supervisor.scaler.metrics.render())


def settings_changes(request: control_pb2.ScalingSettings) -> dict[str, Any]:
    """The fields a SetScaling request sets (proto3 optional: unset keeps the value)."""
    return {
        field.name: getattr(request, field.name)
        for field in request.DESCRIPTOR.fields
        if request.HasField(field.name)
    }


def settings_message(settings: ScalingSettings) -> control_pb2.ScalingSettings:
    return control_pb2.ScalingSettings(**settings.to_json())


def event_message(event: ScalingEvent) -> control_pb2.ScalingEvent:
    return control_pb2.ScalingEvent(
        time_unix_s=event.time_unix_s,
        instance=event.instance,
        kind=event.kind,
        from_value=event.from_value,
        to_value=event.to_value,
        reason=event.reason,
        inputs=event.inputs,
        error=event.error,
    )


def _abort(context: grpc.ServicerContext, error: BorealisError) -> None:
    log.info("request refused", error=str(error))
    context.abort(grpc_status_of(error), str(error))
