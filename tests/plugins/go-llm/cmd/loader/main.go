// Command loader loads plugins the way Hector does and calls them. Every outcome is printed as
// one JSON line on stdout, so tests can count and inspect them.
//
// Direct mode runs one executable as Hector's gRPC loader does: no arguments, HashiCorp
// go-plugin (Hector's handshake, gRPC only), dispensed as -type, Initialize with -config, the
// requested calls, then go-plugin's Kill:
//
//	loader [-type T] [-config JSON] [-op OP]... [-stdin] [-meta K=V]... [-timeout D] PLUGIN
//
// Hector mode does what Hector's component manager does with a configuration (package
// hectorhost): -hector-config FILE is a Hector configuration, such as the published
// plugins.yaml; -discover DIR (repeatable) turns plugin discovery on for DIR. Every plugin it
// names is loaded — its `<path>.plugin.yaml` read first, the process dispensed by the
// manifest's type, Initialize with the entry's string config — and ops address a plugin by
// name, `NAME/OP`:
//
//	loader [-hector-config FILE] [-discover DIR]... [-op NAME/OP]... [-stdin]
//
// An OP is `generate:TEXT`, `stream:TEXT`, `info` (model or embedder info), `embed:TEXT`,
// `create:COLLECTION:SIZE`, `upsert:COLLECTION:ID:X,Y,…[:KEY=VALUE,…]`,
// `search:COLLECTION:X,Y,…:K`, `delete:COLLECTION:ID`, `drop:COLLECTION`, `health` or
// `sleep:MS`. With -stdin, ops are also read one per line from standard input (after the -op
// ones) until it closes or a line says `kill`.
//
// Exit codes: 0 done (a failed call is a line, not an exit code), 1 the plugin did not start
// or dispense, 2 usage, 3 Initialize failed (direct mode), 4 a plugin failed to load (Hector
// mode: Hector would log it and run without it), 5 the configuration or discovery failed
// (Hector would not start).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"hector.dev/testplugins/go-llm/hectorhost"
	pb "hector.dev/testplugins/go-llm/pluginpb"
)

// hit is one search result.
type hit struct {
	ID       string            `json:"id"`
	Score    float32           `json:"score"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// result is one printed line.
type result struct {
	Op        string    `json:"op"`
	Plugin    string    `json:"plugin,omitempty"`
	Type      string    `json:"type,omitempty"`
	Path      string    `json:"path,omitempty"`
	OK        bool      `json:"ok"`
	Code      string    `json:"code,omitempty"`
	Error     string    `json:"error,omitempty"`
	Text      string    `json:"text,omitempty"`
	Chunks    int       `json:"chunks,omitempty"`
	Tokens    int32     `json:"tokens,omitempty"`
	Healthy   bool      `json:"healthy,omitempty"`
	Message   string    `json:"message,omitempty"`
	Vector    []float32 `json:"vector,omitempty"`
	Dimension int32     `json:"dimension,omitempty"`
	Results   []hit     `json:"results,omitempty"`
	Header    string    `json:"header,omitempty"`
	Exited    bool      `json:"exited,omitempty"`
	Millis    int64     `json:"ms,omitempty"`
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
	hectorConfig := flag.String("hector-config", "", "a Hector configuration to load plugins from, as Hector's component manager does")
	stdin := flag.Bool("stdin", false, "also read ops from standard input, one per line")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	var ops, meta, discover listFlag
	flag.Var(&ops, "op", "an op to run (repeatable)")
	flag.Var(&meta, "meta", "KEY=VALUE metadata sent with every call (repeatable); response header KEY is printed")
	flag.Var(&discover, "discover", "a plugin discovery path (repeatable; turns discovery on)")
	flag.Parse()
	calls := caller{meta: meta, timeout: *timeout}
	if *hectorConfig != "" || len(discover) > 0 {
		if flag.NArg() != 0 {
			fmt.Fprintln(os.Stderr, "usage: loader [-hector-config FILE] [-discover DIR]... [-op NAME/OP]... [-stdin]")
			os.Exit(2)
		}
		os.Exit(runHector(*hectorConfig, discover, ops, *stdin, calls))
	}
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: loader [-type T] [-config JSON] [-op OP]... [-stdin] PLUGIN")
		os.Exit(2)
	}
	config := map[string]string{}
	if err := json.Unmarshal([]byte(*configJSON), &config); err != nil {
		fmt.Fprintln(os.Stderr, "loader: -config:", err)
		os.Exit(2)
	}
	os.Exit(run(flag.Arg(0), *kind, config, ops, *stdin, calls))
}

// caller makes the calls of either mode: each with its own deadline and the -meta pairs.
type caller struct {
	meta    []string
	timeout time.Duration
}

func (c caller) context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	var pairs []string
	for _, m := range c.meta {
		k, v, _ := strings.Cut(m, "=")
		pairs = append(pairs, k, v)
	}
	if len(pairs) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, pairs...)
	}
	return ctx, cancel
}

// echoKey is the metadata key whose response header is printed: the last -meta key.
func (c caller) echoKey() string {
	if len(c.meta) == 0 {
		return ""
	}
	k, _, _ := strings.Cut(c.meta[len(c.meta)-1], "=")
	return k
}

func (c caller) do(raw interface{}, op string) result {
	lc, _ := raw.(hectorhost.Lifecycle)
	ctx, cancel := c.context()
	defer cancel()
	return call(ctx, raw, lc, op, c.echoKey())
}

// forEachOp runs ops, then (with stdin) the lines of standard input until `kill`.
func forEachOp(ops []string, stdin bool, do func(string)) {
	for _, op := range ops {
		do(op)
	}
	if !stdin {
		return
	}
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

func run(path, kind string, config map[string]string, ops []string, stdin bool, calls caller) int {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  hectorhost.Handshake,
		Plugins:          map[string]plugin.Plugin{kind: hectorhost.Dispenser{Type: hectorhost.PluginType(kind)}},
		Cmd:              exec.Command(path), // no arguments, as Hector runs plugins
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     30 * time.Second,
	})
	defer client.Kill()

	code := session(client, kind, config, ops, stdin, calls)

	start := time.Now()
	client.Kill()
	emit(result{Op: "kill", OK: true, Exited: client.Exited(), Millis: time.Since(start).Milliseconds()})
	return code
}

func session(client *plugin.Client, kind string, config map[string]string, ops []string, stdin bool, calls caller) int {
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
	lc, ok := raw.(hectorhost.Lifecycle)
	if !ok {
		emit(result{Op: "dispense", Error: fmt.Sprintf("%T has no lifecycle RPCs", raw)})
		return 1
	}
	ctx, cancel := calls.context()
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
	forEachOp(ops, stdin, func(op string) { emit(calls.do(raw, op)) })
	return 0
}

// runHector loads every plugin of the configuration as Hector's component manager does, runs
// the ops addressed to them, and unloads them all.
func runHector(configPath string, discover []string, ops []string, stdin bool, calls caller) int {
	config := &hectorhost.Config{}
	if configPath != "" {
		c, err := hectorhost.ReadConfig(configPath)
		if err != nil {
			emit(result{Op: "config", Path: configPath, Error: err.Error()})
			return 5
		}
		config = c
	} else if c, err := hectorhost.ParseConfig(nil); err == nil {
		config = c
	}
	if len(discover) > 0 {
		on := true
		config.Plugins.Discovery.Enabled = &on
		config.Plugins.Discovery.Paths = discover
	}
	plan, skipped, warnings, err := hectorhost.Plan(config)
	if err != nil {
		emit(result{Op: "config", Error: err.Error()})
		return 5
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "Warning:", w)
	}
	names := make([]string, 0, len(skipped))
	for n := range skipped {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		emit(result{Op: "skip", Plugin: n, OK: true, Message: skipped[n]})
	}

	code := 0
	loaded := map[string]*hectorhost.Loaded{}
	var order []*hectorhost.Loaded
	for _, c := range plan {
		line := result{Op: "load", Plugin: c.Name, Path: c.Path}
		if _, dup := loaded[c.Name]; dup {
			line.Error = fmt.Sprintf("[Plugin:%s] LoadPlugin failed: registration failed: already registered", c.Name)
			emit(line)
			code = 4
			continue
		}
		l, err := hectorhost.Load(c, calls.timeout)
		if err != nil {
			// Hector logs this as a warning and runs without the plugin.
			line.Error = err.Error()
			emit(line)
			code = 4
			continue
		}
		line.OK, line.Type = true, string(l.Type)
		emit(line)
		loaded[c.Name] = l
		order = append(order, l)
	}

	forEachOp(ops, stdin, func(op string) {
		name, rest, ok := strings.Cut(op, "/")
		l := loaded[name]
		switch {
		case !ok:
			emit(result{Op: op, Error: "expected NAME/OP"})
		case l == nil:
			emit(result{Op: rest, Plugin: name, Error: "plugin not loaded: " + name})
		default:
			r := calls.do(l.Raw, rest)
			r.Plugin = name
			emit(r)
		}
	})

	for _, l := range order {
		start := time.Now()
		exited := l.Kill()
		emit(result{Op: "kill", Plugin: l.Name, OK: true, Exited: exited, Millis: time.Since(start).Milliseconds()})
	}
	return code
}

// floats parses `X,Y,…`.
func floats(s string) ([]float32, error) {
	var v []float32
	for _, f := range strings.Split(s, ",") {
		x, err := strconv.ParseFloat(strings.TrimSpace(f), 32)
		if err != nil {
			return nil, fmt.Errorf("not a vector %q: %w", s, err)
		}
		v = append(v, float32(x))
	}
	return v, nil
}

// pairs parses `KEY=VALUE,…`.
func pairs(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

func call(ctx context.Context, raw interface{}, lc hectorhost.Lifecycle, op, echoKey string) result {
	name, arg, _ := strings.Cut(op, ":")
	var header metadata.MD
	request := &pb.GenerateRequest{Messages: []*pb.Message{{Role: "user", Content: arg}}}
	llm, isLLM := raw.(pb.LLMProviderClient)
	emb, isEmbedder := raw.(pb.EmbedderProviderClient)
	db, isDB := raw.(pb.DatabaseProviderClient)
	bad := func(what string) result { return result{Op: name, Error: "not " + what} }
	switch name {
	case "health":
		if lc == nil {
			return bad("a plugin")
		}
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
		if !isLLM {
			return bad("an LLM provider")
		}
		g, err := llm.Generate(ctx, request, grpc.Header(&header))
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: true, Text: g.Text, Tokens: g.TokensUsed, Header: first(header, echoKey)}
	case "stream":
		if !isLLM {
			return bad("an LLM provider")
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
		switch {
		case isLLM:
			i, err := llm.GetModelInfo(ctx, &pb.Empty{})
			if err != nil {
				return failed(name, err)
			}
			return result{Op: name, OK: true, Text: i.ModelName, Tokens: i.MaxTokens}
		case isEmbedder:
			i, err := emb.GetEmbedderInfo(ctx, &pb.Empty{})
			if err != nil {
				return failed(name, err)
			}
			return result{Op: name, OK: true, Text: i.ModelName, Dimension: i.Dimension}
		}
		return bad("an LLM or embedder provider")
	case "embed":
		if !isEmbedder {
			return bad("an embedder provider")
		}
		e, err := emb.Embed(ctx, &pb.EmbedRequest{Text: arg})
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: e.Error == "", Error: e.Error, Vector: e.Vector}
	case "create", "upsert", "search", "delete", "drop":
		if !isDB {
			return bad("a database provider")
		}
		return callDatabase(ctx, db, name, arg)
	}
	return result{Op: name, Error: "unknown op " + strconv.Quote(op)}
}

func callDatabase(ctx context.Context, db pb.DatabaseProviderClient, name, arg string) result {
	parts := strings.Split(arg, ":")
	usage := map[string]string{
		"create": "create:COLLECTION:SIZE",
		"upsert": "upsert:COLLECTION:ID:X,Y,…[:KEY=VALUE,…]",
		"search": "search:COLLECTION:X,Y,…:K",
		"delete": "delete:COLLECTION:ID",
		"drop":   "drop:COLLECTION",
	}
	want := map[string][2]int{"create": {2, 2}, "upsert": {3, 4}, "search": {3, 3}, "delete": {2, 2}, "drop": {1, 1}}[name]
	if len(parts) < want[0] || len(parts) > want[1] {
		return result{Op: name, Error: "expected " + usage[name]}
	}
	outcome := func(ok bool, msg string, err error) result {
		if err != nil {
			return failed(name, err)
		}
		return result{Op: name, OK: ok && msg == "", Error: msg}
	}
	switch name {
	case "create":
		size, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			return result{Op: name, Error: "expected " + usage[name]}
		}
		r, err := db.CreateCollection(ctx, &pb.CreateCollectionRequest{Collection: parts[0], VectorSize: size})
		return outcome(r.GetSuccess(), r.GetError(), err)
	case "upsert":
		v, err := floats(parts[2])
		if err != nil {
			return result{Op: name, Error: err.Error()}
		}
		req := &pb.UpsertRequest{Collection: parts[0], Id: parts[1], Vector: v}
		if len(parts) == 4 {
			req.Metadata = pairs(parts[3])
		}
		r, err := db.Upsert(ctx, req)
		return outcome(r.GetSuccess(), r.GetError(), err)
	case "search":
		v, err := floats(parts[1])
		if err != nil {
			return result{Op: name, Error: err.Error()}
		}
		k, err := strconv.ParseInt(parts[2], 10, 32)
		if err != nil {
			return result{Op: name, Error: "expected " + usage[name]}
		}
		r, err := db.Search(ctx, &pb.SearchRequest{Collection: parts[0], Vector: v, TopK: int32(k)})
		if err != nil {
			return failed(name, err)
		}
		res := result{Op: name, OK: r.Error == "", Error: r.Error}
		for _, h := range r.Results {
			res.Results = append(res.Results, hit{ID: h.Id, Score: h.Score, Metadata: h.Metadata})
		}
		return res
	case "delete":
		r, err := db.Delete(ctx, &pb.DeleteRequest{Collection: parts[0], Id: parts[1]})
		return outcome(r.GetSuccess(), r.GetError(), err)
	}
	r, err := db.DeleteCollection(ctx, &pb.DeleteCollectionRequest{Collection: parts[0]})
	return outcome(r.GetSuccess(), r.GetError(), err)
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
