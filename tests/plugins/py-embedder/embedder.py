#!/usr/bin/env python3
"""A network-native Hector embedder in Python (grpcio), for the project's tests.

Serves hector.plugin.EmbedderProvider on HECTOR_PLUGIN_ADDR. Stubs are generated at start-up
from the project's protos (HECTOR_PROTO_DIR overrides their location). Config keys: model
(required), dimension (default 8), and for tests health_file, shutdown_file, crash_on.
"""
import hashlib
import math
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("HECTOR_PROTO_DIR", os.path.join(HERE, "..", "..", "..", "proto"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="hector-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for name in ("common", "embedder"):
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", f"hector/plugin/{name}.proto"])
        if rc != 0:
            sys.exit(f"py-embedder: cannot compile {name}.proto from {PROTO_DIR}")
    sys.path.insert(0, out)
    from hector.plugin import common_pb2, embedder_pb2, embedder_pb2_grpc  # noqa: E402
    return common_pb2, embedder_pb2, embedder_pb2_grpc


common_pb2, embedder_pb2, embedder_pb2_grpc = load_stubs()


def embed(text, dimension):
    values = []
    for i in range(dimension):
        u = int.from_bytes(hashlib.sha256(f"{i}:{text}".encode()).digest()[:4], "big")
        values.append(u / 2**31 - 1.0)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Embedder(embedder_pb2_grpc.EmbedderProviderServicer):
    def __init__(self, stop):
        self.config = None
        self.dimension = 8
        self.stop = stop

    def _require(self, context):
        if self.config is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not initialized")

    def Initialize(self, request, context):
        config = dict(request.config)
        if "model" not in config:
            return common_pb2.InitializeResponse(success=False, error="missing required config key: model")
        try:
            dimension = int(config.get("dimension", "8"))
            if dimension < 1:
                raise ValueError
        except ValueError:
            return common_pb2.InitializeResponse(success=False, error="config key dimension: not a positive integer")
        self.dimension = dimension
        self.config = config
        # Key count only: values may be secrets.
        print(f"py-embedder initialized with {len(config)} keys", file=sys.stderr, flush=True)
        return common_pb2.InitializeResponse(success=True)

    def Shutdown(self, request, context):
        path = (self.config or {}).get("shutdown_file")
        if path:
            with open(path, "w") as f:
                f.write("shutdown")
        # Stop after this reply has gone out.
        threading.Timer(0.2, self.stop.set).start()
        return common_pb2.ShutdownResponse(success=True)

    def Health(self, request, context):
        path = (self.config or {}).get("health_file")
        if path and os.path.exists(path):
            return common_pb2.HealthResponse(healthy=False, message="health file present")
        return common_pb2.HealthResponse(healthy=True, message="ok")

    def GetManifest(self, request, context):
        return common_pb2.ManifestResponse(
            name="py-hash-embedder", version="1.0.0", author="hector-operator tests",
            description="Deterministic hash embedder in Python", type="embedder_provider",
            protocol="grpc", hector_version=">=0.1.0", capabilities={"batch": "false"})

    def GetStatus(self, request, context):
        return common_pb2.StatusResponse(status="ready" if self.config is not None else "loading")

    def Embed(self, request, context):
        self._require(context)
        crash = self.config.get("crash_on", "")
        if crash and request.text == crash:
            os._exit(3)
        if not request.text:
            return embedder_pb2.EmbedResponse(error="text is empty")
        return embedder_pb2.EmbedResponse(vector=embed(request.text, self.dimension))

    def GetEmbedderInfo(self, request, context):
        self._require(context)
        return embedder_pb2.EmbedderInfo(model_name=self.config["model"], dimension=self.dimension)


def main():
    addr = os.environ.get("HECTOR_PLUGIN_ADDR")
    if not addr:
        print("py-embedder: HECTOR_PLUGIN_ADDR is not set", file=sys.stderr)
        sys.exit(2)
    stop = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    embedder_pb2_grpc.add_EmbedderProviderServicer_to_server(Embedder(stop), server)
    server.add_insecure_port(addr)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"py-embedder listening on {addr}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
