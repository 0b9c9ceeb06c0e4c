package hectorhost

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	pb "hector.dev/testplugins/go-llm/pluginpb"
)

func write(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

func manifest(name, kind string) string {
	return "plugin:\n  name: " + name + "\n  version: 0.1.0\n  type: " + kind + "\n  protocol: grpc\n"
}

func TestAMissingManifestFailsWithHectorsMessageBeforeAnythingStarts(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "hector-plugin-remote")
	// An executable that would leave a trace if it were started.
	trace := filepath.Join(dir, "started")
	write(t, exe, "#!/bin/sh\ntouch "+trace+"\n", 0o755)
	_, err := Load(Candidate{Name: "echo", Path: exe, Section: &Sections[0]}, 0)
	want := "failed to load manifest from " + exe + ".plugin.yaml: failed to read manifest file: open " +
		exe + ".plugin.yaml: no such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	if _, err := os.Stat(trace); !os.IsNotExist(err) {
		t.Fatalf("the executable was started: %v", err)
	}
}

func TestAManifestThatIsNotYAMLFailsNamingTheFile(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "echo")
	write(t, exe+".plugin.yaml", "plugin: [unclosed\n", 0o644)
	_, err := LoadManifest(exe)
	if err == nil || !strings.HasPrefix(err.Error(), "failed to load manifest from "+exe+".plugin.yaml: failed to parse manifest YAML: ") {
		t.Fatalf("got %v", err)
	}
}

func TestManifestFieldsAreRead(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "vectors")
	write(t, exe+".plugin.yaml", "# comment\nplugin:\n  name: vectors\n  version: 1.0.0\n  type: database_provider\n  protocol: grpc\n  hector_version: '>=0.1.0'\n  capabilities: {streaming: false}\n", 0o644)
	m, err := LoadManifest(exe)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "vectors" || m.Type != Database || m.Protocol != "grpc" || m.HectorVersion != ">=0.1.0" {
		t.Fatalf("%+v", m)
	}
}

func TestAnEntryWithoutNameStopsHectorFromStarting(t *testing.T) {
	cases := map[string]string{
		"plugins:\n  llm_providers:\n    echo: {type: grpc, path: /x/echo}\n":                       "plugins validation failed: LLM provider plugin 'echo' validation failed: plugin name is required",
		"plugins:\n  database_providers:\n    vec: {name: vec, type: grpc}\n":                       "plugins validation failed: database provider plugin 'vec' validation failed: plugin path is required",
		"plugins:\n  embedder_providers:\n    emb: {name: emb, type: http, path: /x/emb}\n":         "plugins validation failed: embedder provider plugin 'emb' validation failed: invalid plugin type: http (only 'grpc' is supported)",
		"plugins:\n  tool_providers:\n    t: {path: /x/t}\n  llm_providers:\n    a: {path: /x/a}\n": "plugins validation failed: LLM provider plugin 'a' validation failed: plugin name is required",
	}
	for text, want := range cases {
		_, err := ParseConfig([]byte(text))
		if err == nil || err.Error() != want {
			t.Errorf("%s: got %v\nwant %s", text, err, want)
		}
	}
}

func TestDefaultsAreHectors(t *testing.T) {
	c, err := ParseConfig([]byte("plugins:\n  llm_providers:\n    echo: {name: echo, path: /x/echo}\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Plugins.LLMProviders["echo"]
	if e.Type != "grpc" || !isTrue(e.Enabled, false) {
		t.Fatalf("%+v", e)
	}
	if isTrue(c.Plugins.Discovery.Enabled, true) {
		t.Fatal("discovery is off unless enabled")
	}
	if _, err := ParseConfig([]byte("plugins: [not, a, mapping]\n")); err == nil {
		t.Fatal("a configuration that is not Hector's shape is refused")
	}
}

func TestAPluginOfAnotherTypeThanItsSectionIsRefused(t *testing.T) {
	// Dispensed by its manifest's type (go-plugin does not check), then held to its section.
	embedder := pb.NewEmbedderProviderClient(nil)
	if err := CheckSection(embedder, &Sections[0]); err == nil || err.Error() != "plugin is not an LLM provider" {
		t.Fatalf("got %v", err)
	}
	llm := pb.NewLLMProviderClient(nil)
	if err := CheckSection(llm, &Sections[1]); err == nil || err.Error() != "plugin is not a Database provider" {
		t.Fatalf("got %v", err)
	}
	if err := CheckSection(llm, &Sections[2]); err == nil || err.Error() != "plugin is not an Embedder provider" {
		t.Fatalf("got %v", err)
	}
	if err := CheckSection(llm, &Sections[0]); err != nil {
		t.Fatal(err)
	}
	if err := CheckSection(embedder, nil); err != nil {
		t.Fatalf("a discovered plugin has no section: %v", err)
	}
	// Hector registers dispensers for three types only.
	if hectorDispensers(Tool) != nil || hectorDispensers("llm") != nil || hectorDispensers(LLM) == nil {
		t.Fatal("dispensers")
	}
	if err := wrap(llm, Embedder); err == nil || err.Error() != "plugin does not implement Embedder provider interface" {
		t.Fatalf("got %v", err)
	}
	if err := wrap(llm, "llm"); err == nil || err.Error() != "unsupported plugin type: llm" {
		t.Fatalf("got %v", err)
	}
}

func TestDiscoveryFindsManifestsNextToExecutables(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "echo"), "#!/bin/sh\n", 0o755)
	// The manifest's name, not the file's, is the plugin's name.
	write(t, filepath.Join(dir, "echo.plugin.yaml"), manifest("echo-llm", "llm_provider"), 0o644)
	write(t, filepath.Join(dir, "vec"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "vec.plugin.yaml"), manifest("vec", "database_provider"), 0o644)
	// Left out, each with a warning:
	write(t, filepath.Join(dir, "gone.plugin.yaml"), manifest("gone", "llm_provider"), 0o644)
	write(t, filepath.Join(dir, "data"), "x", 0o644)
	write(t, filepath.Join(dir, "data.plugin.yaml"), manifest("data", "llm_provider"), 0o644)
	write(t, filepath.Join(dir, "odd"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "odd.plugin.yaml"), manifest("odd", "llm"), 0o644)
	write(t, filepath.Join(dir, "http"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "http.plugin.yaml"), strings.Replace(manifest("http", "llm_provider"), "grpc", "http", 1), 0o644)
	// Not manifests, or below the folder: not looked at.
	write(t, filepath.Join(dir, ".hector-plugin-remote"), "echo\n", 0o644)
	write(t, filepath.Join(dir, "sub", "deep"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "sub", "deep.plugin.yaml"), manifest("deep", "embedder_provider"), 0o644)

	on := true
	found, warnings, err := Discover(DiscoveryConfig{Enabled: &on, Paths: []string{dir, filepath.Join(dir, "missing")}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range found {
		names = append(names, f.Name+"@"+filepath.Base(f.Path))
	}
	if !reflect.DeepEqual(names, []string{"echo-llm@echo", "vec@vec"}) {
		t.Fatalf("found %v", names)
	}
	want := []string{
		"data.plugin.yaml': plugin is not executable: " + filepath.Join(dir, "data"),
		"gone.plugin.yaml': plugin executable not found: " + filepath.Join(dir, "gone"),
		"http.plugin.yaml': invalid manifest: invalid protocol: http (only 'grpc' is supported)",
		"odd.plugin.yaml': invalid manifest: invalid plugin type: llm",
	}
	if len(warnings) != len(want) {
		t.Fatalf("warnings %q", warnings)
	}
	for i, w := range want {
		if !strings.HasSuffix(warnings[i], w) {
			t.Errorf("warning %q does not end with %q", warnings[i], w)
		}
	}

	sub := true
	found, _, err = Discover(DiscoveryConfig{Enabled: &on, Paths: []string{dir}, ScanSubdirectories: &sub})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 3 || found[0].Name != "echo-llm" || found[1].Name != "deep" {
		t.Fatalf("with subdirectories: %+v", found)
	}
	off := false
	if found, _, _ := Discover(DiscoveryConfig{Enabled: &off, Paths: []string{dir}}); len(found) != 0 {
		t.Fatal("discovery off finds nothing")
	}
}

func TestPlanLoadsConfiguredEntriesFirstAndDiscoveredOnesNotConfigured(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"echo", "extra"} {
		write(t, filepath.Join(dir, n), "#!/bin/sh\n", 0o755)
		write(t, filepath.Join(dir, n+".plugin.yaml"), manifest(n, "llm_provider"), 0o644)
	}
	text := "plugins:\n" +
		"  plugin_discovery: {enabled: true, paths: [" + dir + "]}\n" +
		"  embedder_providers:\n    emb: {name: emb, path: /x/emb, config: {dimension: 8, model: m}}\n" +
		"  llm_providers:\n    echo: {name: echo, path: " + dir + "/echo}\n    off: {name: off, path: /x/off, enabled: false}\n" +
		"  tool_providers:\n    tools: {name: tools, path: /x/tools}\n"
	c, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	plan, skipped, _, err := Plan(c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range plan {
		section := "discovered"
		if p.Section != nil {
			section = p.Section.Key
		}
		got = append(got, p.Name+"="+section)
	}
	want := []string{"echo=llm_providers", "emb=embedder_providers", "extra=discovered"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %v, want %v", got, want)
	}
	if skipped["off"] != "disabled" || !strings.Contains(skipped["tools"], "only llm, database and embedder") {
		t.Fatalf("skipped %v", skipped)
	}
	// Initialize gets string values only, as Hector's adapters pass them.
	if s := StringConfig(plan[1].Config); !reflect.DeepEqual(s, map[string]string{"model": "m"}) {
		t.Fatalf("config %v", s)
	}
}
