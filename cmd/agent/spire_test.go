package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/internal/cli"
	"github.com/palisade-net/palisade/pkg/registration"
	"github.com/palisade-net/palisade/pkg/workload"
)

func TestSPIREFlags(t *testing.T) {
	const node = "spiffe://cluster.local/palisade/node/n1"
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; the flag's name must be in it
		manage  bool
		nodeID  string
		ttl     time.Duration
		td      string
	}{
		{name: "default is off", td: "cluster.local"},
		{name: "off ignores the rest", args: []string{"--spire-entries", "off", "--spire-node-id", "garbage"}, td: "cluster.local"},
		{
			name:   "manage",
			args:   []string{"--spire-entries", "manage", "--spire-server-socket", "/run/spire/api.sock", "--spire-node-id", node, "--spire-svid-ttl", "1h"},
			manage: true, nodeID: node, ttl: time.Hour, td: "cluster.local",
		},
		{
			name: "manage from the environment",
			env: map[string]string{
				"PALISADE_SPIRE_ENTRIES": "manage", "PALISADE_SPIRE_SERVER_SOCKET": "/s", "PALISADE_SPIRE_NODE_ID": "spiffe://example.org/n/1",
				"PALISADE_TRUST_DOMAIN": "example.org", "PALISADE_SPIRE_SVID_TTL": "90s",
			},
			manage: true, nodeID: "spiffe://example.org/n/1", ttl: 90 * time.Second, td: "example.org",
		},
		{name: "unknown mode", args: []string{"--spire-entries", "on"}, wantErr: "--spire-entries"},
		{name: "manage needs the socket", args: []string{"--spire-entries", "manage", "--spire-node-id", node}, wantErr: "--spire-server-socket or --spire-server-addr is required"},
		{name: "socket or address", args: []string{"--spire-entries", "manage", "--spire-node-id", node, "--spire-server-socket", "/s", "--spire-server-addr", "spire:8081"}, wantErr: "exclude each other"},
		{name: "address needs the workload socket", args: []string{"--spire-entries", "manage", "--spire-node-id", node, "--spire-server-addr", "spire:8081"}, wantErr: "--spire-workload-socket is required"},
		{name: "manage needs the node ID", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s"}, wantErr: "--spire-node-id is required"},
		{name: "bad node ID", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s", "--spire-node-id", "http://x/y"}, wantErr: "--spire-node-id"},
		{name: "node ID without path", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s", "--spire-node-id", "spiffe://cluster.local"}, wantErr: "--spire-node-id"},
		{name: "node ID in another trust domain", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s", "--spire-node-id", "spiffe://other.org/n"}, wantErr: "--spire-node-id spiffe://other.org/n is not in trust domain cluster.local (--trust-domain)"},
		{name: "bad trust domain", args: []string{"--trust-domain", "Not A Domain"}, wantErr: "--trust-domain"},
		{name: "negative TTL", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s", "--spire-node-id", node, "--spire-svid-ttl", "-1s"}, wantErr: "--spire-svid-ttl"},
		{name: "fractional TTL", args: []string{"--spire-entries", "manage", "--spire-server-socket", "/s", "--spire-node-id", node, "--spire-svid-ttl", "1.5s"}, wantErr: "--spire-svid-ttl"},
		{name: "bad TTL in the environment names the variable", env: map[string]string{"PALISADE_SPIRE_SVID_TTL": "soon"}, wantErr: "PALISADE_SPIRE_SVID_TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"NODE_NAME", "PALISADE_SPIRE_ENTRIES", "PALISADE_SPIRE_SERVER_SOCKET", "PALISADE_SPIRE_NODE_ID", "PALISADE_SPIRE_SVID_TTL", "PALISADE_TRUST_DOMAIN"} {
				t.Setenv(k, "") // restored after the test
				os.Unsetenv(k)
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			fs := cli.NewFlagSet("t", "")
			fs.SetOutput(io.Discard)
			var f spireFlags
			f.register(fs)
			var common cli.Common
			ok, err := common.Parse(fs, append([]string{"--node", "n1", "--cluster", "x"}, tt.args...), "PALISADE_")
			var s spireSettings
			if err == nil {
				if !ok {
					t.Fatal("parse stopped without an error")
				}
				s, err = f.validate()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.manage != tt.manage || s.trustDomain.Name() != tt.td || s.svidTTL != tt.ttl || (tt.manage && s.nodeID.String() != tt.nodeID) {
				t.Fatalf("got manage=%v td=%s node=%s ttl=%s", s.manage, s.trustDomain, s.nodeID, s.svidTTL)
			}
		})
	}
}

func TestServiceAccounts(t *testing.T) {
	got := serviceAccounts([]workload.Workload{
		{Namespace: "shop", Name: "a", ServiceAccount: "web"},
		{Namespace: "shop", Name: "b"},
	})
	want := []registration.ServiceAccount{{Namespace: "shop", Name: "web"}, {Namespace: "shop", Name: "default"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestStartSPIREOff(t *testing.T) {
	hook, stop, err := startSPIRE(context.Background(), spireSettings{}, slog.New(slog.DiscardHandler))
	if err != nil || hook != nil {
		t.Fatalf("off: hook=%v err=%v, want no hook", hook != nil, err)
	}
	stop()
}
