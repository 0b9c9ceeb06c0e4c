#!/usr/bin/env bash
# Builds the go-plugin test plugin (or, with a second argument such as ./cmd/host, another
# command of this module): generates Go code from the project's protos, then compiles a
# static binary to the path given as the first argument (for GOARCH, when set: the generator
# itself always runs on the host).
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUTPUT [PACKAGE]}")
package=${2:-.}
cd "$(dirname "${BASH_SOURCE[0]}")"
# No VCS stamping: the checkout may lack git or belong to another user.
export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
env -u GOARCH go run ./cmd/protogen
go build -trimpath -o "$out" "$package"
