#!/usr/bin/env python3
"""A network-native Hector embedder in Python (grpcio), for the project's tests.

Serves hector.plugin.EmbedderProvider on HECTOR_PLUGIN_ADDR. Stubs are generated at start-up
from the project's protos (HECTOR_PROTO_DIR overrides their location), so nothing generated
lives in the repo. Config keys: model (required), dimension (default 8), and for tests
health_file, shutdown_file, crash_on.
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
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    # Once imported the modules live in memory, so the generated files can go straight away.
    with tempfile.TemporaryDirectory(prefix="hector-stubs-") as out:
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}",
                          "hector/plugin/common.proto", "hector/plugin/embedder.proto"])
        if rc != 0:
            sys.exit(f"py-embedder: cannot compile the plugin protos from {PROTO_DIR}")
        sys.path.insert(0, out)
        from hector.plugin import common_pb2, embedder_pb2, embedder_pb2_grpc
        sys.path.remove(out)
    return common_pb2, embedder_pb2, embedder_pb2_grpc


def embed(text, dimension):
    values = []
    for i in range(dimension):
        u = int.from_bytes(hashlib.sha256(f"{i}:{text}".encode()).digest()[:4], "big")
        values.append(u / 2**31 - 1.0)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Embedder:
    def __init__(self, common_pb2, embedder_pb2, stop):
        self.pb = common_pb2
        self.epb = embedder_pb2
        self.stop = stop
        self.config = None
        self.dimension = 8

    def _require(self, context):
        if self.config is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not initialized")

    def Initialize(self, request, context):
        config = dict(request.config)
        if "model" not in config:
            return self.pb.InitializeResponse(success=False, error="missing required config key: model")
        try:
            dimension = int(config.get("dimension", "8"))
            if dimension < 1:
                raise ValueError
        except ValueError:
            # The value itself stays out of the message: config values may be secrets.
            return self.pb.InitializeResponse(success=False,
                                              error="config key dimension: not a positive integer")
        self.dimension = dimension
        self.config = config
        print(f"py-embedder initialized with {len(config)} config keys", file=sys.stderr, flush=True)
        return self.pb.InitializeResponse(success=True)

    def Shutdown(self, request, context):
        path = (self.config or {}).get("shutdown_file")
        if path:
            with open(path, "w") as f:
                f.write("shutdown")
        # Stopping now would cut off this very reply; give it a moment to leave.
        threading.Timer(0.2, self.stop.set).start()
        return self.pb.ShutdownResponse(success=True)

    def Health(self, request, context):
        path = (self.config or {}).get("health_file")
        if path and os.path.exists(path):
            return self.pb.HealthResponse(healthy=False, message="health file present")
        return self.pb.HealthResponse(healthy=True, message="ok")

    def GetManifest(self, request, context):
        return self.pb.ManifestResponse(
            name="py-hash-embedder", version="1.0.0", author="hector-operator tests",
            description="Deterministic hash embedder in Python", type="embedder_provider",
            protocol="grpc", hector_version=">=0.1.0", capabilities={"batch": "false"})

    def GetStatus(self, request, context):
        return self.pb.StatusResponse(status="ready" if self.config is not None else "loading")

    def Embed(self, request, context):
        self._require(context)
        crash = self.config.get("crash_on", "")
        if crash and request.text == crash:
            os._exit(3)  # a hard crash, no cleanup: what the launcher tests need to observe
        if not request.text:
            return self.epb.EmbedResponse(error="text is empty")
        return self.epb.EmbedResponse(vector=embed(request.text, self.dimension))

    def GetEmbedderInfo(self, request, context):
        self._require(context)
        return self.epb.EmbedderInfo(model_name=self.config["model"], dimension=self.dimension)


def main():
    addr = os.environ.get("HECTOR_PLUGIN_ADDR")
    if not addr:
        print("py-embedder: HECTOR_PLUGIN_ADDR is not set (expected host:port)", file=sys.stderr)
        sys.exit(2)
    common_pb2, embedder_pb2, embedder_pb2_grpc = load_stubs()
    stop = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    embedder_pb2_grpc.add_EmbedderProviderServicer_to_server(
        Embedder(common_pb2, embedder_pb2, stop), server)
    server.add_insecure_port(addr)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"py-embedder listening on {addr}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
