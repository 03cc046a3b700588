"""The admin service every process serves: failpoints, run-a-task-now, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from grpc import aio

from borealis import faults
from borealis.errors import InvalidRequest
from borealis.metrics import Metrics
from borealis.rpc import handler
from proto import admin_pb2, admin_pb2_grpc

Task = Callable[[], Awaitable[str]]


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, metrics: Metrics, tasks: dict[str, Task]) -> None:
        self._metrics = metrics
        self._tasks = tasks

    @handler
    async def SetFailpoint(
        self, request: admin_pb2.SetFailpointRequest, context: aio.ServicerContext
    ) -> admin_pb2.SetFailpointResponse:
        if not request.name:
            raise InvalidRequest("failpoint name must not be empty")
        faults.set_point(request.name, request.action)
        return admin_pb2.SetFailpointResponse()

    @handler
    async def ListFailpoints(
        self, request: admin_pb2.ListFailpointsRequest, context: aio.ServicerContext
    ) -> admin_pb2.ListFailpointsResponse:
        return admin_pb2.ListFailpointsResponse(failpoints=faults.points())

    @handler
    async def RunTask(
        self, request: admin_pb2.RunTaskRequest, context: aio.ServicerContext
    ) -> admin_pb2.RunTaskResponse:
        task = self._tasks.get(request.task)
        if task is None:
            raise InvalidRequest(
                "unknown task", task=request.task, known=",".join(sorted(self._tasks))
            )
        return admin_pb2.RunTaskResponse(summary=await task())

    @handler
    async def GetMetrics(
        self, request: admin_pb2.GetMetricsRequest, context: aio.ServicerContext
    ) -> admin_pb2.GetMetricsResponse:
        return admin_pb2.GetMetricsResponse(text=self._metrics.render())
