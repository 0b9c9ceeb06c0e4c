// Command host starts a plugin the way Hector does: as a HashiCorp go-plugin child with
// Hector's handshake, over gRPC. It dispenses the LLM provider, initializes it with
// -prefix, calls Generate and GenerateStreaming with -text, pings the plugin, and kills it
// through go-plugin (which asks the plugin to exit). It prints what it saw, one fact per
// line, and exits non-zero on the first failure.
//
// It starts a command line as given and reads no manifest: it checks the go-plugin level
// (handshake, gRPC, Kill). Loading the way Hector's component manager does — the
// `<path>.plugin.yaml` first, dispensed by its type, config sections and discovery — is the
// loader's Hector mode (cmd/loader, package hectorhost).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "hector.dev/testplugins/go-llm/pluginpb"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HECTOR_PLUGIN",
	MagicCookieValue: "hector_plugin_v1",
}

// llmPlugin is the host side only: it hands out a client for the plugin's connection.
type llmPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (llmPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

func (llmPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return pb.NewLLMProviderClient(conn), nil
}

func main() {
	prefix := flag.String("prefix", "host: ", "config value for the plugin's prefix key")
	text := flag.String("text", "hello", "user message")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: host [-prefix P] [-text T] PLUGIN [ARGS...]")
		os.Exit(2)
	}
	if err := run(flag.Args(), *prefix, *text); err != nil {
		fmt.Fprintln(os.Stderr, "host:", err)
		os.Exit(1)
	}
}

func run(command []string, prefix, text string) error {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          map[string]plugin.Plugin{"llm": llmPlugin{}},
		Cmd:              exec.Command(command[0], command[1:]...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     30 * time.Second,
	})
	defer client.Kill()

	rpc, err := client.Client()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	raw, err := rpc.Dispense("llm")
	if err != nil {
		return fmt.Errorf("dispense: %w", err)
	}
	llm := raw.(pb.LLMProviderClient)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	init, err := llm.Initialize(ctx, &pb.InitializeRequest{Config: map[string]string{"prefix": prefix}})
	if err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	if !init.Success {
		return fmt.Errorf("initialize refused: %s", init.Error)
	}
	fmt.Println("initialized: true")

	req := &pb.GenerateRequest{Messages: []*pb.Message{{Role: "user", Content: text}}}
	gen, err := llm.Generate(ctx, req)
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	fmt.Printf("generate: %s\n", gen.Text)

	stream, err := llm.GenerateStreaming(ctx, req)
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	var chunks []string
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		chunks = append(chunks, chunk.Text)
	}
	fmt.Printf("stream: %d chunks: %s\n", len(chunks), strings.Join(chunks, ""))

	if err := rpc.Ping(); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	fmt.Println("ping: ok")

	start := time.Now()
	client.Kill()
	fmt.Printf("exited: %t after %dms\n", client.Exited(), time.Since(start).Milliseconds())
	return nil
}
