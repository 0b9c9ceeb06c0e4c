package hectorhost

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "hector.dev/testplugins/go-llm/pluginpb"
)

// Handshake is Hector's go-plugin handshake.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HECTOR_PLUGIN",
	MagicCookieValue: "hector_plugin_v1",
}

// Lifecycle is what every plugin service offers first.
type Lifecycle interface {
	Initialize(ctx context.Context, in *pb.InitializeRequest, opts ...grpc.CallOption) (*pb.InitializeResponse, error)
	Health(ctx context.Context, in *pb.HealthRequest, opts ...grpc.CallOption) (*pb.HealthResponse, error)
}

// Dispenser is the host side of one plugin type: it hands out a client of that type's
// service for the plugin's connection, whatever the process serves.
type Dispenser struct {
	plugin.NetRPCUnsupportedPlugin
	Type PluginType
}

// GRPCServer is not used by a host.
func (Dispenser) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

// GRPCClient returns the client of the dispenser's type.
func (d Dispenser) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	switch d.Type {
	case LLM:
		return pb.NewLLMProviderClient(conn), nil
	case Embedder:
		return pb.NewEmbedderProviderClient(conn), nil
	case Database:
		return pb.NewDatabaseProviderClient(conn), nil
	case Tool:
		return pb.NewToolProviderClient(conn), nil
	case Reasoning:
		return pb.NewReasoningStrategyClient(conn), nil
	}
	return nil, fmt.Errorf("unknown plugin type %q", d.Type)
}

// hectorDispensers is Hector's plugin map for a manifest type: it registers only the three
// types it has adapters for, so any other type fails at dispense.
func hectorDispensers(t PluginType) map[string]plugin.Plugin {
	switch t {
	case LLM, Database, Embedder:
		return map[string]plugin.Plugin{string(t): Dispenser{Type: t}}
	}
	return nil
}

// implements says whether a dispensed client is of type t's service.
func implements(raw interface{}, t PluginType) bool {
	switch t {
	case LLM:
		_, ok := raw.(pb.LLMProviderClient)
		return ok
	case Database:
		_, ok := raw.(pb.DatabaseProviderClient)
		return ok
	case Embedder:
		_, ok := raw.(pb.EmbedderProviderClient)
		return ok
	}
	return false
}

// wrap is the loader's adapter step: the dispensed client must serve its manifest type.
func wrap(raw interface{}, t PluginType) error {
	labels := map[PluginType]string{LLM: "LLM", Database: "Database", Embedder: "Embedder"}
	label, known := labels[t]
	if !known {
		return fmt.Errorf("unsupported plugin type: %s", t)
	}
	if !implements(raw, t) {
		return fmt.Errorf("plugin does not implement %s provider interface", label)
	}
	return nil
}

// CheckSection is the registry's check after loading: a plugin configured in section s must
// have been dispensed as s's type.
func CheckSection(raw interface{}, s *Section) error {
	if s == nil || implements(raw, s.Type) {
		return nil
	}
	return fmt.Errorf("plugin is not %s", s.noun)
}

// Loaded is a started, initialized plugin.
type Loaded struct {
	Candidate
	Manifest *Manifest
	// Type is the manifest's type, which the plugin was dispensed as.
	Type PluginType
	// Raw is the dispensed client (pb.LLMProviderClient, …).
	Raw    interface{}
	client *plugin.Client
}

// Kill ends the plugin as Hector unloads it: go-plugin's Kill (the controller's Shutdown,
// then the process is killed). It reports whether the process has exited.
func (l *Loaded) Kill() bool {
	l.client.Kill()
	return l.client.Exited()
}

// Lifecycle returns the dispensed client's lifecycle RPCs.
func (l *Loaded) Lifecycle() Lifecycle {
	lc, _ := l.Raw.(Lifecycle)
	return lc
}

// pluginError is Hector's wrapping of a registry failure.
func pluginError(name, message string, err error) error {
	return fmt.Errorf("[Plugin:%s] LoadPlugin failed: %s: %w", name, message, err)
}

// InitError is a failed Initialize: Err is the plugin's own error.
type InitError struct {
	Name string
	Err  error
}

func (e *InitError) Error() string {
	return fmt.Sprintf("[Plugin:%s] LoadPlugin failed: initialization failed: %v", e.Name, e.Err)
}

func (e *InitError) Unwrap() error { return e.Err }

// Load loads c as the component manager does: manifest first, then the process (no
// arguments) dispensed by the manifest's type, Initialize with the string config values,
// and the section check. timeout bounds Initialize. On any failure after the start the
// process is killed.
func Load(c Candidate, timeout time.Duration) (*Loaded, error) {
	manifest, err := LoadManifest(c.Path)
	if err != nil {
		return nil, err
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          hectorDispensers(manifest.Type),
		Cmd:              exec.Command(c.Path), // no arguments, as Hector runs plugins
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     30 * time.Second,
	})
	fail := func(err error) (*Loaded, error) {
		client.Kill()
		return nil, err
	}
	rpc, err := client.Client()
	if err != nil {
		return fail(pluginError(c.Name, "failed to load", fmt.Errorf("failed to get RPC client: %w", err)))
	}
	raw, err := rpc.Dispense(string(manifest.Type))
	if err != nil {
		return fail(pluginError(c.Name, "failed to load", fmt.Errorf("failed to dispense plugin: %w", err)))
	}
	if err := wrap(raw, manifest.Type); err != nil {
		return fail(pluginError(c.Name, "failed to load", err))
	}
	lc, ok := raw.(Lifecycle)
	if !ok {
		return fail(pluginError(c.Name, "failed to load", fmt.Errorf("%T has no lifecycle RPCs", raw)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	init, err := lc.Initialize(ctx, &pb.InitializeRequest{Config: StringConfig(c.Config)})
	if err == nil && !init.Success {
		err = errors.New(init.Error)
	}
	if err != nil {
		return fail(&InitError{Name: c.Name, Err: err})
	}
	if err := CheckSection(raw, c.Section); err != nil {
		return fail(err)
	}
	return &Loaded{Candidate: c, Manifest: manifest, Type: manifest.Type, Raw: raw, client: client}, nil
}
