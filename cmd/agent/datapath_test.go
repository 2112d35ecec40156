package main

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestDatapathFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
		want    datapathFlags
	}{
		{want: datapathFlags{mode: "auto", pinDir: "/sys/fs/bpf/palisade", metricsAddr: ":15022"}},
		{args: []string{"--ebpf", "on", "--bpffs", "/run/lab/bpffs", "--metrics-addr", ""}, want: datapathFlags{mode: "on", pinDir: "/run/lab/bpffs"}},
		{args: []string{"--ebpf", "off", "--bpffs", ""}, want: datapathFlags{mode: "off", metricsAddr: ":15022"}},
		{args: []string{"--ebpf", "yes"}, wantErr: "--ebpf"},
		{args: []string{"--bpffs", ""}, wantErr: "--bpffs"},
	} {
		fs := flag.NewFlagSet("agent", flag.ContinueOnError)
		var f datapathFlags
		f.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := f.validate()
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: error %v, want one naming %s", tc.args, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case f != tc.want:
			t.Errorf("%v: %+v, want %+v", tc.args, f, tc.want)
		}
	}
}

// TestDatapathModes: off and an unusable bpffs under auto run
// iptables-only (said once in the log, and in palisade_datapath_mode);
// on refuses to start without the datapath.
func TestDatapathModes(t *testing.T) {
	notBPFFS := filepath.Join(t.TempDir(), "palisade")
	for _, tc := range []struct {
		mode    string
		log     string
		wantErr bool
	}{
		{mode: "off", log: "eBPF datapath off"},
		{mode: "auto", log: "eBPF datapath unavailable on this host; enforcement is iptables-only"},
		{mode: "on", wantErr: true},
	} {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		m, err := openDatapath(datapathFlags{mode: tc.mode, pinDir: notBPFFS}, "n1", nil, log)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "--ebpf on") || !strings.Contains(err.Error(), "bpffs") {
				t.Errorf("%s: error %v, want one naming --ebpf on and bpffs", tc.mode, err)
			}
			continue
		}
		if err != nil || m != nil {
			t.Fatalf("%s: %v %v, want iptables-only", tc.mode, m, err)
		}
		if strings.Count(buf.String(), tc.log) != 1 {
			t.Errorf("%s: log %q, want %q once", tc.mode, buf.String(), tc.log)
		}
		if agentDatapath(m) != nil {
			t.Errorf("%s: a nil Manager must be a nil agent.Datapath", tc.mode)
		}
		reg, err := newRegistry(m)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body := rec.Body.String()
		if !strings.Contains(body, `palisade_datapath_mode{mode="iptables-only"} 1`) || !strings.Contains(body, `palisade_datapath_mode{mode="ebpf"} 0`) {
			t.Errorf("%s: metrics\n%s", tc.mode, body)
		}
		rec = httptest.NewRecorder()
		debugHandler(m).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/drops", nil))
		if b, _ := io.ReadAll(rec.Body); rec.Code != 404 || !strings.Contains(string(b), "iptables-only") {
			t.Errorf("%s: /debug/drops %d %s", tc.mode, rec.Code, b)
		}
	}
}
