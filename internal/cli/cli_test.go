package cli

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestCommonParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		ok      bool
		wantErr string
		node    string
		paths   string
		level   string
	}{
		{name: "flags", args: []string{"--node", "n1", "--cluster", "a.yaml,b", "--cluster", "c"}, ok: true, node: "n1", paths: "a.yaml,b,c", level: "INFO"},
		{name: "environment fills unset flags", env: map[string]string{"T_NODE": "n2", "T_CLUSTER": "x", "T_LOG_LEVEL": "debug"}, ok: true, node: "n2", paths: "x", level: "DEBUG"},
		{name: "flag beats environment", args: []string{"--node", "flag"}, env: map[string]string{"T_NODE": "env", "T_CLUSTER": "x"}, ok: true, node: "flag", paths: "x", level: "INFO"},
		{name: "missing node", args: []string{"--cluster", "x"}, wantErr: "--node is required"},
		{name: "missing cluster source", args: []string{"--node", "n"}, env: map[string]string{"KUBERNETES_SERVICE_HOST": ""}, wantErr: "no cluster source"},
		{name: "kubeconfig", args: []string{"--node", "n", "--kubeconfig", "/k"}, ok: true, node: "n", level: "INFO"},
		{name: "in-cluster", args: []string{"--node", "n"}, env: map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, ok: true, node: "n", level: "INFO"},
		{name: "two sources", args: []string{"--node", "n", "--kubeconfig", "/k", "--cluster", "x"}, wantErr: "exclude each other"},
		{name: "bad env value names the variable", args: []string{"--node", "n", "--cluster", "x"}, env: map[string]string{"T_LOG_LEVEL": "loud"}, wantErr: "T_LOG_LEVEL"},
		{name: "help", args: []string{"--help"}},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: "not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", "")
			t.Setenv("KUBERNETES_SERVICE_HOST", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var c Common
			ok, err := c.Parse(fs, tt.args, "T_")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.ok {
				t.Fatalf("ok=%v err=%v, want ok=%v", ok, err, tt.ok)
			}
			if !ok {
				return
			}
			if c.Node != tt.node || c.ClusterPaths.String() != tt.paths || c.Logging.Level.Level().String() != tt.level {
				t.Fatalf("got node=%q paths=%q level=%s", c.Node, c.ClusterPaths.String(), c.Logging.Level.Level())
			}
		})
	}
}
