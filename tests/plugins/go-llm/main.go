// Command go-llm is a test plugin built like a plugin of Hector's Go SDK: HashiCorp
// go-plugin over gRPC with Hector's handshake, serving hector.plugin.LLMProvider from Go
// code generated from this project's protos. It echoes the last user message behind the
// configured prefix; extra config keys let tests steer its health, shutdown and crashes.
package main

// Generates ./pluginpb from proto/hector/plugin (gitignored; build.sh runs it too).
//go:generate go run ./cmd/protogen

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "hector.dev/testplugins/go-llm/pluginpb"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HECTOR_PLUGIN",
	MagicCookieValue: "hector_plugin_v1",
}

type server struct {
	pb.UnimplementedLLMProviderServer
	mu     sync.RWMutex
	config map[string]string
	// sick is set by the user message "health:down" and cleared by "health:up", so tests
	// can flip the health of a plugin running where they cannot create files.
	sick bool
}

func (s *server) get(key string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.config[key]
}

func (s *server) Initialize(_ context.Context, req *pb.InitializeRequest) (*pb.InitializeResponse, error) {
	if _, ok := req.Config["prefix"]; !ok {
		return &pb.InitializeResponse{Success: false, Error: "missing required config key: prefix"}, nil
	}
	s.mu.Lock()
	s.config = req.Config
	s.mu.Unlock()
	// Key count only: values may be secrets.
	fmt.Fprintf(os.Stderr, "initialized with %d keys\n", len(req.Config))
	return &pb.InitializeResponse{Success: true}, nil
}

func (s *server) Shutdown(context.Context, *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	if f := s.get("shutdown_file"); f != "" {
		if err := os.WriteFile(f, []byte("shutdown"), 0o644); err != nil {
			return &pb.ShutdownResponse{Success: false, Error: err.Error()}, nil
		}
	}
	return &pb.ShutdownResponse{Success: true}, nil
}

func (s *server) Health(context.Context, *pb.HealthRequest) (*pb.HealthResponse, error) {
	s.mu.RLock()
	sick := s.sick
	s.mu.RUnlock()
	if sick {
		return &pb.HealthResponse{Healthy: false, Message: "switched off by a health:down request"}, nil
	}
	if f := s.get("health_file"); f != "" {
		if _, err := os.Stat(f); err == nil {
			return &pb.HealthResponse{Healthy: false, Message: "health file present"}, nil
		}
	}
	return &pb.HealthResponse{Healthy: true, Message: "ok"}, nil
}

func (s *server) GetManifest(context.Context, *pb.ManifestRequest) (*pb.ManifestResponse, error) {
	// Hector's own Go SDK answers with an empty manifest; config key empty_manifest=true
	// makes this plugin do the same.
	if s.get("empty_manifest") == "true" {
		return &pb.ManifestResponse{}, nil
	}
	return &pb.ManifestResponse{
		Name: "go-echo-llm", Version: "1.0.0", Author: "hector-operator tests",
		Description: "Echo LLM built with go-plugin", Type: "llm_provider", Protocol: "grpc",
		HectorVersion: ">=0.1.0", Capabilities: map[string]string{"streaming": "true"},
	}, nil
}

func (s *server) GetStatus(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.config == nil {
		return &pb.StatusResponse{Status: "loading"}, nil
	}
	return &pb.StatusResponse{Status: "ready"}, nil
}

// answer returns the echoed text and the number of words of the user's message.
func (s *server) answer(req *pb.GenerateRequest) (string, int32, error) {
	s.mu.RLock()
	initialized := s.config != nil
	s.mu.RUnlock()
	if !initialized {
		return "", 0, status.Error(codes.FailedPrecondition, "not initialized")
	}
	last := ""
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == "user" {
			last = req.Messages[i].Content
			break
		}
	}
	if crash := s.get("crash_on"); crash != "" && last == crash {
		os.Exit(3)
	}
	return s.get("prefix") + last, int32(len(strings.Fields(last))), nil
}

// Generate answers; tests steer it with the user messages "health:down"/"health:up" (flip
// the Health answer), "sleep:MS" (answers after MS
// milliseconds, or fails when the caller's deadline passes first) and "deadline?" (answers
// with the milliseconds left until the caller's deadline), and with the request metadata
// "x-echo" (copied to a response header).
func (s *server) Generate(ctx context.Context, req *pb.GenerateRequest) (*pb.GenerateResponse, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("x-echo")) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-echo", md.Get("x-echo")[0]))
	}
	if n := len(req.Messages); n > 0 && (req.Messages[n-1].Content == "health:down" || req.Messages[n-1].Content == "health:up") {
		s.mu.Lock()
		s.sick = req.Messages[n-1].Content == "health:down"
		s.mu.Unlock()
		return &pb.GenerateResponse{Text: req.Messages[n-1].Content}, nil
	}
	if n := len(req.Messages); n > 0 && req.Messages[n-1].Content == "deadline?" {
		if d, ok := ctx.Deadline(); ok {
			return &pb.GenerateResponse{Text: fmt.Sprintf("deadline:%d", time.Until(d).Milliseconds())}, nil
		}
		return &pb.GenerateResponse{Text: "deadline:none"}, nil
	}
	if n := len(req.Messages); n > 0 && strings.HasPrefix(req.Messages[n-1].Content, "sleep:") {
		ms, _ := strconv.Atoi(strings.TrimPrefix(req.Messages[n-1].Content, "sleep:"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	text, tokens, err := s.answer(req)
	if err != nil {
		return nil, err
	}
	return &pb.GenerateResponse{Text: text, TokensUsed: tokens}, nil
}

func (s *server) GenerateStreaming(req *pb.GenerateRequest, stream grpc.ServerStreamingServer[pb.StreamChunk]) error {
	text, tokens, err := s.answer(req)
	if err != nil {
		return err
	}
	for i, word := range strings.Split(text, " ") {
		if i > 0 {
			word = " " + word
		}
		if err := stream.Send(&pb.StreamChunk{Type: pb.StreamChunk_TEXT, Text: word}); err != nil {
			return err
		}
	}
	return stream.Send(&pb.StreamChunk{Type: pb.StreamChunk_DONE, TokensUsed: tokens})
}

func (s *server) GetModelInfo(context.Context, *pb.Empty) (*pb.ModelInfo, error) {
	return &pb.ModelInfo{ModelName: "go-echo", MaxTokens: 4096, Temperature: 0.5}, nil
}

// llmPlugin plugs the server into go-plugin's gRPC mode.
type llmPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl *server
}

func (p *llmPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterLLMProviderServer(s, p.impl)
	return nil
}

func (p *llmPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, fmt.Errorf("go-llm is a plugin, not a host")
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         map[string]plugin.Plugin{"llm": &llmPlugin{impl: &server{}}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
