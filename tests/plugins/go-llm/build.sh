#!/usr/bin/env bash
# Builds the go-plugin test plugin: generates Go code from the project's protos, then
# compiles a static binary to the path given as the first argument.
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUTPUT}")
cd "$(dirname "${BASH_SOURCE[0]}")"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
export GOFLAGS=-mod=readonly CGO_ENABLED=0
go build -o "$tools/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
go run ./cmd/protogen -plugins "$tools"
go build -trimpath -o "$out" .
