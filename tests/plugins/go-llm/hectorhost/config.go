// Package hectorhost loads plugins the way Hector's component manager does, so tests can hold
// what the operator publishes to Hector's own rules rather than to this project's idea of them:
//
//   - a Hector configuration (`plugins:` with its sections and `plugin_discovery`) is read,
//     given Hector's defaults and validated with Hector's messages (an entry without `name:`
//     stops Hector from starting);
//   - discovery scans the configured paths for `X.plugin.yaml` next to an executable `X`;
//   - every plugin to load, configured or discovered, first has its manifest read from
//     `<path>.plugin.yaml` (without it the plugin fails: `failed to load manifest from …`);
//   - the executable is started with no arguments under HashiCorp go-plugin (Hector's
//     handshake, gRPC only) and dispensed by the manifest's `type`, which go-plugin does not
//     check against what the process serves; Initialize gets the entry's string values only;
//   - a configured plugin must then be of its section's type (`plugin is not an LLM
//     provider`), as Hector's registries require.
//
// Hector logs a plugin that fails to load and goes on without it; Load returns that error.
package hectorhost

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// PluginType is a manifest's `type`.
type PluginType string

// The plugin types Hector knows.
const (
	LLM       PluginType = "llm_provider"
	Database  PluginType = "database_provider"
	Embedder  PluginType = "embedder_provider"
	Tool      PluginType = "tool_provider"
	Reasoning PluginType = "reasoning_strategy"
)

// Section is one map of Hector's `plugins:` configuration.
type Section struct {
	// Key is the section's YAML key (`llm_providers`).
	Key string
	// Type is the plugin type its entries must have.
	Type PluginType
	// label names an entry in validation messages ("LLM provider plugin 'x' …").
	label string
	// noun names the type in the registry's refusal ("plugin is not an LLM provider").
	noun string
	// loaded says whether Hector's component manager loads the section's entries at all: it
	// validates tool_providers and reasoning_strategies but starts only the other three.
	loaded bool
}

// Sections in the order Hector validates and loads them.
var Sections = []Section{
	{Key: "llm_providers", Type: LLM, label: "LLM provider", noun: "an LLM provider", loaded: true},
	{Key: "database_providers", Type: Database, label: "database provider", noun: "a Database provider", loaded: true},
	{Key: "embedder_providers", Type: Embedder, label: "embedder provider", noun: "an Embedder provider", loaded: true},
	{Key: "tool_providers", Type: Tool, label: "tool provider"},
	{Key: "reasoning_strategies", Type: Reasoning, label: "reasoning strategy"},
}

// PluginConfig is one entry of a section.
type PluginConfig struct {
	Name    string                 `yaml:"name"`
	Type    string                 `yaml:"type"`
	Path    string                 `yaml:"path"`
	Enabled *bool                  `yaml:"enabled"`
	Config  map[string]interface{} `yaml:"config"`
}

// DiscoveryConfig is `plugins.plugin_discovery`.
type DiscoveryConfig struct {
	Enabled            *bool    `yaml:"enabled"`
	Paths              []string `yaml:"paths"`
	ScanSubdirectories *bool    `yaml:"scan_subdirectories"`
}

// PluginConfigs is Hector's `plugins:` section.
type PluginConfigs struct {
	Discovery           DiscoveryConfig          `yaml:"plugin_discovery"`
	LLMProviders        map[string]*PluginConfig `yaml:"llm_providers"`
	DatabaseProviders   map[string]*PluginConfig `yaml:"database_providers"`
	EmbedderProviders   map[string]*PluginConfig `yaml:"embedder_providers"`
	ToolProviders       map[string]*PluginConfig `yaml:"tool_providers"`
	ReasoningStrategies map[string]*PluginConfig `yaml:"reasoning_strategies"`
}

// Config is the part of Hector's configuration file this package reads; other top-level keys
// (agents, llms, …) are ignored.
type Config struct {
	Plugins PluginConfigs `yaml:"plugins"`
}

// Entries returns the map of `section`.
func (p *PluginConfigs) Entries(section Section) map[string]*PluginConfig {
	switch section.Type {
	case LLM:
		return p.LLMProviders
	case Database:
		return p.DatabaseProviders
	case Embedder:
		return p.EmbedderProviders
	case Tool:
		return p.ToolProviders
	}
	return p.ReasoningStrategies
}

func boolPtr(b bool) *bool { return &b }

// isTrue reads an optional flag with its default.
func isTrue(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// setDefaults fills in what Hector fills in before validating: entries are `grpc` and enabled
// unless they say otherwise; discovery is off and, when on without paths, scans Hector's two
// default folders.
func (p *PluginConfigs) setDefaults() {
	if len(p.Discovery.Paths) == 0 {
		p.Discovery.Paths = []string{"./plugins", "~/.hector/plugins"}
	}
	if p.Discovery.Enabled == nil {
		p.Discovery.Enabled = boolPtr(false)
	}
	if p.Discovery.ScanSubdirectories == nil {
		p.Discovery.ScanSubdirectories = boolPtr(false)
	}
	for _, s := range Sections {
		for _, e := range p.Entries(s) {
			if e == nil {
				continue
			}
			if e.Type == "" {
				e.Type = "grpc"
			}
			if e.Enabled == nil {
				e.Enabled = boolPtr(true)
			}
		}
	}
}

// validate refuses what Hector refuses at start: an entry without name or path, or of a
// protocol other than grpc. The first failure, in section order then name order, is returned.
func (p *PluginConfigs) validate() error {
	for _, s := range Sections {
		entries := p.Entries(s)
		for _, name := range sortedNames(entries) {
			e := entries[name]
			if e == nil {
				continue
			}
			var problem string
			switch {
			case e.Name == "":
				problem = "plugin name is required"
			case e.Path == "":
				problem = "plugin path is required"
			case e.Type != "" && e.Type != "grpc":
				problem = fmt.Sprintf("invalid plugin type: %s (only 'grpc' is supported)", e.Type)
			default:
				continue
			}
			return fmt.Errorf("plugins validation failed: %s plugin '%s' validation failed: %s", s.label, name, problem)
		}
	}
	return nil
}

func sortedNames(entries map[string]*PluginConfig) []string {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParseConfig reads a Hector configuration (or a fragment holding only `plugins:`), gives it
// Hector's defaults and validates it.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("failed to parse configuration: %w", err)
	}
	c.Plugins.setDefaults()
	if err := c.Plugins.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// ReadConfig is ParseConfig of the file at path.
func ReadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read configuration: %w", err)
	}
	return ParseConfig(data)
}

// Manifest is the `plugin:` mapping of a `.plugin.yaml`.
type Manifest struct {
	Name          string                 `yaml:"name"`
	Version       string                 `yaml:"version"`
	Author        string                 `yaml:"author"`
	Description   string                 `yaml:"description"`
	Type          PluginType             `yaml:"type"`
	Protocol      string                 `yaml:"protocol"`
	HectorVersion string                 `yaml:"hector_version"`
	Capabilities  map[string]interface{} `yaml:"capabilities"`
	ConfigSchema  struct {
		Required []string               `yaml:"required"`
		Optional []string               `yaml:"optional"`
		Defaults map[string]interface{} `yaml:"defaults"`
	} `yaml:"config_schema"`
	Homepage         string `yaml:"homepage"`
	License          string `yaml:"license"`
	RepositoryURL    string `yaml:"repository_url"`
	DocumentationURL string `yaml:"documentation_url"`
}

// ManifestSuffix is what Hector appends to a plugin's path to find its manifest.
const ManifestSuffix = ".plugin.yaml"

// LoadManifest reads the manifest of the plugin executable at path, as the component manager
// does before it starts any plugin: `<path>.plugin.yaml`, and no other place.
func LoadManifest(path string) (*Manifest, error) {
	manifestPath := path + ManifestSuffix
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		return nil, fmt.Errorf("failed to load manifest from %s: failed to read manifest file: %w", manifestPath, err)
	}
	var doc struct {
		Plugin Manifest `yaml:"plugin"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("failed to load manifest from %s: failed to parse manifest YAML: %w", manifestPath, err)
	}
	return &doc.Plugin, nil
}

// Discovered is a plugin found by discovery.
type Discovered struct {
	// Name is the manifest's name (not the file's), which is what Hector registers it as.
	Name     string
	Path     string
	Manifest *Manifest
}

// Discover scans the paths of `d` as Hector's discovery does. A path that does not exist is
// skipped; a path `P` with `P.plugin.yaml` beside it is one plugin; otherwise every
// `*.plugin.yaml` in the folder (or below it, with scan_subdirectories) names an executable
// beside it. A manifest that is invalid, or whose executable is missing or not executable, is
// left out with a warning. Plugins are returned in path order, each executable once.
func Discover(d DiscoveryConfig) ([]*Discovered, []string, error) {
	if !isTrue(d.Enabled, false) {
		return nil, nil, nil
	}
	var out []*Discovered
	var warnings []string
	seen := map[string]bool{}
	for _, p := range d.Paths {
		expanded := expandHome(p)
		if _, err := os.Stat(expanded); os.IsNotExist(err) {
			continue
		}
		found, warned, err := scan(expanded, isTrue(d.ScanSubdirectories, false))
		if err != nil {
			return nil, nil, fmt.Errorf("plugin discovery failed: failed to scan path '%s': %w", p, err)
		}
		warnings = append(warnings, warned...)
		for _, f := range found {
			if !seen[f.Path] {
				seen[f.Path] = true
				out = append(out, f)
			}
		}
	}
	return out, warnings, nil
}

func scan(path string, recursive bool) ([]*Discovered, []string, error) {
	if _, err := os.Stat(path + ManifestSuffix); err == nil {
		d, err := discovered(path, path+ManifestSuffix)
		if err != nil {
			return nil, nil, err
		}
		return []*Discovered{d}, nil, nil
	}
	var manifests []string
	if recursive {
		err := filepath.Walk(path, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if !info.IsDir() && strings.HasSuffix(p, ManifestSuffix) {
				manifests = append(manifests, p)
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("failed to walk directory '%s': %w", path, err)
		}
	} else {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, nil, fmt.Errorf("failed to read directory '%s': %w", path, err)
		}
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ManifestSuffix) {
				manifests = append(manifests, filepath.Join(path, e.Name()))
			}
		}
	}
	var out []*Discovered
	var warnings []string
	for _, m := range manifests {
		d, err := discovered(strings.TrimSuffix(m, ManifestSuffix), m)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("Failed to load plugin manifest '%s': %v", m, err))
			continue
		}
		out = append(out, d)
	}
	return out, warnings, nil
}

func discovered(exec, manifestPath string) (*Discovered, error) {
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		return nil, fmt.Errorf("failed to read manifest: %w", err)
	}
	var doc struct {
		Plugin Manifest `yaml:"plugin"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("failed to parse manifest: %w", err)
	}
	m := &doc.Plugin
	if err := validateDiscovered(m); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	info, err := os.Stat(exec)
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("plugin executable not found: %s", exec)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to stat executable: %w", err)
	}
	if info.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("plugin is not executable: %s", exec)
	}
	return &Discovered{Name: m.Name, Path: exec, Manifest: m}, nil
}

// validateDiscovered is discovery's check of a manifest (a configured plugin's manifest is
// not checked: it is only read for its type).
func validateDiscovered(m *Manifest) error {
	switch {
	case m.Name == "":
		return fmt.Errorf("manifest missing 'name' field")
	case m.Version == "":
		return fmt.Errorf("manifest missing 'version' field")
	case m.Type == "":
		return fmt.Errorf("manifest missing 'type' field")
	case m.Protocol == "":
		return fmt.Errorf("manifest missing 'protocol' field")
	}
	known := false
	for _, s := range Sections {
		known = known || s.Type == m.Type
	}
	if !known {
		return fmt.Errorf("invalid plugin type: %s", m.Type)
	}
	if m.Protocol != "grpc" {
		return fmt.Errorf("invalid protocol: %s (only 'grpc' is supported)", m.Protocol)
	}
	return nil
}

func expandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return p
}

// Candidate is a plugin the component manager will try to load.
type Candidate struct {
	// Name is what Hector registers it as: the entry's key, or a discovered manifest's name.
	Name string
	// Path is the executable.
	Path string
	// Section is the configured entry's section; nil for a discovered plugin, whose manifest
	// type decides.
	Section *Section
	// Config is the entry's `config:` (nothing for a discovered plugin).
	Config map[string]interface{}
}

// Plan lists what the component manager loads, in its order: the enabled entries of the
// llm, database and embedder sections (by name within a section), then every discovered
// plugin whose name no section configures. Entries of the tool and reasoning sections are
// not loaded by Hector; they are returned as skipped, with the reason.
func Plan(c *Config) (load []Candidate, skipped map[string]string, warnings []string, err error) {
	discovered, warnings, err := Discover(c.Plugins.Discovery)
	if err != nil {
		return nil, nil, nil, err
	}
	skipped = map[string]string{}
	configured := map[string]bool{}
	for i := range Sections {
		s := &Sections[i]
		entries := c.Plugins.Entries(*s)
		for _, name := range sortedNames(entries) {
			configured[name] = true
			e := entries[name]
			switch {
			case e == nil:
			case !isTrue(e.Enabled, true):
				skipped[name] = "disabled"
			case !s.loaded:
				skipped[name] = "Hector's component manager starts only llm, database and embedder providers"
			default:
				load = append(load, Candidate{Name: name, Path: e.Path, Section: s, Config: e.Config})
			}
		}
	}
	for _, d := range discovered {
		if configured[d.Name] {
			continue
		}
		load = append(load, Candidate{Name: d.Name, Path: d.Path, Config: map[string]interface{}{}})
	}
	return load, skipped, warnings, nil
}

// StringConfig is what Initialize receives from an entry's config: string values only, others
// dropped, as Hector's adapters do.
func StringConfig(config map[string]interface{}) map[string]string {
	out := map[string]string{}
	for k, v := range config {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}
