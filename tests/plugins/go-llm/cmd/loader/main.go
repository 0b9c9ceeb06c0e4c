// Command loader loads a plugin exactly the way Hector's loader does: it runs the executable
// with no arguments under HashiCorp go-plugin (Hector's handshake, gRPC only), dispenses it by
// its plugin type, calls Initialize with string config, then runs the requested calls and
// unloads it with go-plugin's Kill. Every outcome is printed as one JSON line on stdout, so
// tests can count and inspect them.
//
//	loader [-type T] [-config JSON] [-op OP]... [-stdin] [-meta K=V]... [-timeout D] PLUGIN
//
// An OP is `generate:TEXT`, `stream:TEXT`, `embed:TEXT`, `health`, `info` or `sleep:MS`.
// With -stdin, ops are also read one per line from standard input (after the -op ones) until
// it closes or a line says `kill`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "hector.dev/testplugins/go-llm/pluginpb"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HECTOR_PLUGIN",
	MagicCookieValue: "hector_plugin_v1",
}

// lifecycle is what every plugin service offers first.
type lifecycle interface {
	Initialize(ctx context.Context, in *pb.InitializeRequest, opts ...grpc.CallOption) (*pb.InitializeResponse, error)
	Health(ctx context.Context, in *pb.HealthRequest, opts ...grpc.CallOption) (*pb.HealthResponse, error)
}

// hectorPlugin is the host side of one plugin type, as Hector registers it.
type hectorPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	kind string
}

func (hectorPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

func (p hectorPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	switch p.kind {
	case "llm_provider":
		return pb.NewLLMProviderClient(conn), nil
	case "embedder_provider":
		return pb.NewEmbedderProviderClient(conn), nil
	case "database_provider":
		return pb.NewDatabaseProviderClient(conn), nil
	case "tool_provider":
		return pb.NewToolProviderClient(conn), nil
	case "reasoning_strategy":
		return pb.NewReasoningStrategyClient(conn), nil
	}
	return nil, fmt.Errorf("unknown plugin type %q", p.kind)
}

// result is one printed line.
type result struct {
	Op      string    `json:"op"`
	OK      bool      `json:"ok"`
	Code    string    `json:"code,omitempty"`
	Error   string    `json:"error,omitempty"`
	Text    string    `json:"text,omitempty"`
	Chunks  int       `json:"chunks,omitempty"`
	Tokens  int32     `json:"tokens,omitempty"`
	Healthy bool      `json:"healthy,omitempty"`
	Message string    `json:"message,omitempty"`
	Vector  []float32 `json:"vector,omitempty"`
	Header  string    `json:"header,omitempty"`
	Exited  bool      `json:"exited,omitempty"`
	Millis  int64     `json:"ms,omitempty"`
}

var out = json.NewEncoder(os.Stdout)

func emit(r result) {
	// Encode writes one line and go's stdout is unbuffered, so a reader sees it at once.
	_ = out.Encode(r)
}

func failed(op string, err error) result {
	return result{Op: op, Code: status.Code(err).String(), Error: err.Error()}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	kind := flag.String("type", "llm_provider", "plugin type to dispense (llm_provider, embedder_provider, …)")
	configJSON := flag.String("config", "{}", "Initialize config as a JSON object of strings")
	stdin := flag.Bool("stdin", false, "also read ops from standard input, one per line")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	var ops, meta listFlag
	flag.Var(&ops, "op", "an op to run (repeatable)")
	flag.Var(&meta, "meta", "KEY=VALUE metadata sent with every call (repeatable); response header KEY is printed")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: loader [-type T] [-config JSON] [-op OP]... [-stdin] PLUGIN")
		os.Exit(2)
	}
	config := map[string]string{}
	if err := json.Unmarshal([]byte(*configJSON), &config); err != nil {
		fmt.Fprintln(os.Stderr, "loader: -config:", err)
		os.Exit(2)
	}
	os.Exit(run(flag.Arg(0), *kind, config, ops, *stdin, meta, *timeout))
}

func run(path, kind string, config map[string]string, ops []string, stdin bool, meta []string, timeout time.Duration) int {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          map[string]plugin.Plugin{kind: hectorPlugin{kind: kind}},
		Cmd:              exec.Command(path), // no arguments, as Hector runs plugins
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     30 * time.Second,
	})
	defer client.Kill()

	code := session(client, kind, config, ops, stdin, meta, timeout)

	start := time.Now()
	client.Kill()
	emit(result{Op: "kill", OK: true, Exited: client.Exited(), Millis: time.Since(start).Milliseconds()})
	return code
}

func session(client *plugin.Client, kind string, config map[string]string, ops []string, stdin bool, meta []string, timeout time.Duration) int {
	rpc, err := client.Client()
	if err != nil {
		emit(result{Op: "start", Error: err.Error()})
		return 1
	}
	raw, err := rpc.Dispense(kind)
	if err != nil {
		emit(result{Op: "dispense", Error: err.Error()})
		return 1
	}
	lc, ok := raw.(lifecycle)
	if !ok {
		emit(result{Op: "dispense", Error: fmt.Sprintf("%T has no lifecycle RPCs", raw)})
		return 1
	}
	var pairs []string
	var echoKey string
	for _, m := range meta {
		k, v, _ := strings.Cut(m, "=")
		pairs = append(pairs, k, v)
		echoKey = k
	}
	ctxFor := func() (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		if len(pairs) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, pairs...)
		}
		return ctx, cancel
	}

	ctx, cancel := ctxFor()
	init, err := lc.Initialize(ctx, &pb.InitializeRequest{Config: config})
	cancel()
	switch {
	case err != nil:
		emit(failed("initialize", err))
		return 3
	case !init.Success:
		emit(result{Op: "initialize", Error: init.Error})
		return 3
	}
	emit(result{Op: "initialize", OK: true})

	do := func(op string) {
		ctx, cancel := ctxFor()
		defer cancel()
		emit(call(ctx, raw, lc, op, echoKey))
	}
	for _, op := range ops {
		do(op)
	}
	if stdin {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			op := strings.TrimSpace(lines.Text())
			if op == "kill" {
				break
			}
			if op != "" {
				do(op)
			}
		}
	}
	return 0
}

func call(ctx context.Context, raw interface{}, lc lifecycle, op, echoKey string) result {
	name, arg, _ := strings.Cut(op, ":")
	var header metadata.MD
	request := &pb.GenerateRequest{Messages: []*pb.Message{{Role: "user", Content: arg}}}
	switch name {
	case "health":
		h, err := lc.Health(ctx, &pb.HealthRequest{})
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: true, Healthy: h.Healthy, Message: h.Message}
	case "sleep":
		ms, _ := strconv.Atoi(arg)
		time.Sleep(time.Duration(ms) * time.Millisecond)
		return result{Op: name, OK: true}
	case "generate":
		llm, ok := raw.(pb.LLMProviderClient)
		if !ok {
			return result{Op: name, Error: "not an LLM provider"}
		}
		g, err := llm.Generate(ctx, request, grpc.Header(&header))
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: true, Text: g.Text, Tokens: g.TokensUsed, Header: first(header, echoKey)}
	case "stream":
		llm, ok := raw.(pb.LLMProviderClient)
		if !ok {
			return result{Op: name, Error: "not an LLM provider"}
		}
		stream, err := llm.GenerateStreaming(ctx, request)
		if err != nil {
			return failed(name, err)
		}
		r := result{Op: name}
		for {
			chunk, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				f := failed(name, err)
				f.Chunks = r.Chunks
				return f
			}
			r.Chunks++
			r.Text += chunk.Text
			if chunk.Type == pb.StreamChunk_DONE {
				r.Tokens = chunk.TokensUsed
			}
		}
		r.OK = true
		return r
	case "info":
		llm, ok := raw.(pb.LLMProviderClient)
		if !ok {
			return result{Op: name, Error: "not an LLM provider"}
		}
		i, err := llm.GetModelInfo(ctx, &pb.Empty{})
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: true, Text: i.ModelName, Tokens: i.MaxTokens}
	case "embed":
		emb, ok := raw.(pb.EmbedderProviderClient)
		if !ok {
			return result{Op: name, Error: "not an embedder provider"}
		}
		e, err := emb.Embed(ctx, &pb.EmbedRequest{Text: arg})
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: e.Error == "", Error: e.Error, Vector: e.Vector}
	}
	return result{Op: name, Error: "unknown op " + strconv.Quote(op)}
}

func first(md metadata.MD, key string) string {
	if key == "" {
		return ""
	}
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
