package policy

import (
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/pkg/l7"
)

// golden is a <name>.golden.yaml file: the endpoints, the exact problems
// of <name>.yaml and the decisions expected from it.
type golden struct {
	Endpoints map[string]goldenEndpoint `json:"endpoints"`
	Problems  []string                  `json:"problems"`
	Checks    []goldenCheck             `json:"checks"`
}

type goldenEndpoint struct {
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	IP             string            `json:"ip"`
	Labels         map[string]string `json:"labels"`
	World          bool              `json:"world"`
	Plaintext      bool              `json:"plaintext"`
}

type goldenCheck struct {
	Name   string `json:"name"`
	Egress bool   `json:"egress"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	Port   uint16 `json:"port"`
	HTTP   *struct {
		Method  string      `json:"method"`
		Path    string      `json:"path"`
		Headers http.Header `json:"headers"`
	} `json:"http"`
	Kafka *struct {
		APIKey     int16    `json:"apiKey"`
		APIVersion int16    `json:"apiVersion"`
		ClientID   string   `json:"clientID"`
		Topics     []string `json:"topics"`
	} `json:"kafka"`
	Allow    bool            `json:"allow"`
	Protocol *string         `json:"protocol"`
	Selected *bool           `json:"selected"`
	Policy   string          `json:"policy"`
	Rule     string          `json:"rule"`
	Reason   string          `json:"reason"`
	Edits    []l7.HeaderEdit `json:"edits"`
}

func (e goldenEndpoint) endpoint() Endpoint {
	ep := Endpoint{IP: netip.MustParseAddr(e.IP)}
	if e.World {
		return ep
	}
	ep.InCluster = true
	ep.Namespace, ep.ServiceAccount, ep.Labels = e.Namespace, e.ServiceAccount, e.Labels
	if !e.Plaintext {
		ep.Identity = spiffeid.RequireFromString("spiffe://cluster.local/ns/" + e.Namespace + "/sa/" + e.ServiceAccount)
	}
	return ep
}

// TestCiliumGolden compiles each testdata/cilium/<name>.yaml unchanged and
// checks its problems and decisions against <name>.golden.yaml.
func TestCiliumGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/cilium/*.golden.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, gf := range files {
		name := strings.TrimSuffix(filepath.Base(gf), ".golden.yaml")
		t.Run(name, func(t *testing.T) {
			policyYAML, err := os.ReadFile(filepath.Join("testdata/cilium", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(gf)
			if err != nil {
				t.Fatal(err)
			}
			var g golden
			if err := yaml.UnmarshalStrict(raw, &g); err != nil {
				t.Fatalf("%s: %v", gf, err)
			}
			s, probs := Compile(parseObjects(t, string(policyYAML)))
			var got []string
			for _, p := range probs {
				got = append(got, p.Error())
			}
			if strings.Join(got, "\n") != strings.Join(g.Problems, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(g.Problems, "\n"))
			}
			for _, gc := range g.Checks {
				t.Run(gc.Name, func(t *testing.T) {
					src, ok1 := g.Endpoints[gc.Src]
					dst, ok2 := g.Endpoints[gc.Dst]
					if !ok1 || !ok2 {
						t.Fatalf("unknown endpoint %q or %q", gc.Src, gc.Dst)
					}
					c := check{egress: gc.Egress, src: src.endpoint(), dst: dst.endpoint(), port: gc.Port, want: gc.Allow,
						selected: gc.Selected, policy: gc.Policy, rule: gc.Rule, reason: gc.Reason, edits: gc.Edits}
					if gc.Protocol != nil {
						c.proto = ptr(l7.Protocol(*gc.Protocol))
					}
					if h := gc.HTTP; h != nil {
						c.http = &l7.HTTPRequest{Method: h.Method, Path: h.Path, Host: "x", Header: h.Headers}
						if c.http.Header == nil {
							c.http.Header = http.Header{}
						}
					}
					if k := gc.Kafka; k != nil {
						c.kafka = &l7.KafkaRequest{APIKey: k.APIKey, APIVersion: k.APIVersion, ClientID: k.ClientID, Topics: k.Topics}
					}
					c.run(t, s)
				})
			}
		})
	}
}
