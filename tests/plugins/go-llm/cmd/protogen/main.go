// Command protogen generates Go code from the project's protos without a system protoc:
// protocompile parses them, and protoc-gen-go / protoc-gen-go-grpc run as plugins fed a
// CodeGeneratorRequest, exactly as protoc would feed them.
//
// Run it from the module directory (go generate and build.sh do): paths default to
// locations relative to tests/plugins/go-llm.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// The code generators, as declared by the tool directives of go.mod.
var generators = []struct{ name, pkg string }{
	{"protoc-gen-go", "google.golang.org/protobuf/cmd/protoc-gen-go"},
	{"protoc-gen-go-grpc", "google.golang.org/grpc/cmd/protoc-gen-go-grpc"},
}

func main() {
	protoRoot := flag.String("proto", "../../../proto", "import root holding hector/plugin/*.proto")
	out := flag.String("out", "pluginpb", "output directory")
	goPkg := flag.String("package", "hector.dev/testplugins/go-llm/pluginpb", "Go import path of the output")
	plugins := flag.String("plugins", "", "directory holding prebuilt protoc-gen-go and protoc-gen-go-grpc (default: build them)")
	flag.Parse()
	if err := run(*protoRoot, *out, *goPkg, *plugins); err != nil {
		fmt.Fprintln(os.Stderr, "protogen:", err)
		os.Exit(1)
	}
}

func run(protoRoot, out, goPkg, pluginDir string) error {
	// Every proto of the package, so the plugin sees the same messages as the Rust side.
	matches, err := filepath.Glob(filepath.Join(protoRoot, "hector/plugin/*.proto"))
	if err != nil {
		return err
	}
	if len(matches) == 0 {
		return fmt.Errorf("no protos under %s/hector/plugin", protoRoot)
	}
	var files []string
	for _, m := range matches {
		rel, err := filepath.Rel(protoRoot, m)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
	}
	sort.Strings(files)

	compiler := protocompile.Compiler{
		Resolver: &protocompile.SourceResolver{ImportPaths: []string{protoRoot}},
		// Keep comments, as protoc does, so they reach the generated code.
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := compiler.Compile(context.Background(), files...)
	if err != nil {
		return err
	}
	// protoc sends every file of the request, dependencies before dependents.
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

	if pluginDir == "" {
		tmp, err := os.MkdirTemp("", "protogen")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if err := buildGenerators(tmp); err != nil {
			return err
		}
		pluginDir = tmp
	}

	// The protos' go_package names an upstream module; M options map them into this one.
	params := []string{"paths=source_relative"}
	for _, f := range files {
		params = append(params, fmt.Sprintf("M%s=%s;pluginpb", f, goPkg))
	}
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: files,
		Parameter:      proto.String(strings.Join(params, ",")),
		ProtoFile:      all,
	}
	in, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	written := map[string]bool{}
	for _, gen := range generators {
		if err := generate(filepath.Join(pluginDir, gen.name), in, out, written); err != nil {
			return fmt.Errorf("%s: %w", gen.name, err)
		}
	}
	// Drop the output of protos since removed.
	old, err := filepath.Glob(filepath.Join(out, "*.go"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if !written[f] {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

// writeIfChanged replaces path by rename, and only when its content differs: several builds
// run this at once (tests build the plugin and the hosts in parallel), and a `go build` of one
// must never see the package half written by another.
func writeIfChanged(path string, content []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".protogen-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// buildGenerators compiles the generator tools of go.mod into dir.
func buildGenerators(dir string) error {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, gen := range generators {
		args = append(args, gen.pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building code generators: %w", err)
	}
	return nil
}

// generate runs one protoc plugin binary on the encoded request and writes its files,
// recording them in written.
func generate(bin string, req []byte, out string, written map[string]bool) error {
	cmd := exec.Command(bin)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Stderr = os.Stderr
	raw, err := cmd.Output()
	if err != nil {
		return err
	}
	var resp pluginpb.CodeGeneratorResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return err
	}
	if resp.Error != nil {
		return fmt.Errorf("%s", resp.GetError())
	}
	for _, f := range resp.File {
		if f.GetInsertionPoint() != "" {
			return fmt.Errorf("unexpected insertion point in %s", f.GetName())
		}
		// source_relative keeps the hector/plugin/ prefix; the package is one flat directory.
		path := filepath.Join(out, filepath.Base(f.GetName()))
		if err := writeIfChanged(path, []byte(f.GetContent())); err != nil {
			return err
		}
		written[path] = true
	}
	return nil
}
