// Command protogen generates Go code from the project's protos without a system protoc:
// protocompile parses them, and protoc-gen-go / protoc-gen-go-grpc run as plugins fed a
// CodeGeneratorRequest, exactly as protoc would feed them.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

func main() {
	protoRoot := flag.String("proto", "../../../proto", "directory holding hector/plugin/*.proto")
	out := flag.String("out", "pluginpb", "output directory")
	goPkg := flag.String("package", "hector.dev/testplugins/go-llm/pluginpb", "Go import path of the output")
	plugins := flag.String("plugins", "", "directory holding protoc-gen-go and protoc-gen-go-grpc")
	flag.Parse()
	if err := run(*protoRoot, *out, *goPkg, *plugins); err != nil {
		fmt.Fprintln(os.Stderr, "protogen:", err)
		os.Exit(1)
	}
}

func run(protoRoot, out, goPkg, pluginDir string) error {
	files := []string{"hector/plugin/common.proto", "hector/plugin/llm.proto", "hector/plugin/embedder.proto", "hector/plugin/database.proto"}
	compiler := protocompile.Compiler{Resolver: &protocompile.SourceResolver{ImportPaths: []string{protoRoot}}}
	compiled, err := compiler.Compile(context.Background(), files...)
	if err != nil {
		return err
	}
	var all []*descriptorpb.FileDescriptorProto
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		all = append(all, protodesc.ToFileDescriptorProto(fd))
	}
	for _, f := range compiled {
		add(f)
	}
	params := "paths=source_relative"
	for _, f := range files {
		params += fmt.Sprintf(",M%s=%s;pluginpb", f, goPkg)
	}
	for _, gen := range []string{"protoc-gen-go", "protoc-gen-go-grpc"} {
		req := &pluginpb.CodeGeneratorRequest{FileToGenerate: files, Parameter: proto.String(params), ProtoFile: all}
		in, err := proto.Marshal(req)
		if err != nil {
			return err
		}
		cmd := exec.Command(filepath.Join(pluginDir, gen))
		cmd.Stdin = bytes.NewReader(in)
		cmd.Stderr = os.Stderr
		raw, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("%s: %w", gen, err)
		}
		var resp pluginpb.CodeGeneratorResponse
		if err := proto.Unmarshal(raw, &resp); err != nil {
			return err
		}
		if resp.Error != nil {
			return fmt.Errorf("%s: %s", gen, resp.GetError())
		}
		for _, f := range resp.File {
			// source_relative paths keep hector/plugin/; flatten into one package directory.
			path := filepath.Join(out, filepath.Base(f.GetName()))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, []byte(f.GetContent()), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
