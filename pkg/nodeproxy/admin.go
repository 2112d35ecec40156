package nodeproxy

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves the admin API (bind it to localhost only):
//
//	GET /config_dump   workloads served, with identities, the policy and
//	                   FlowLog objects in force with their problems, and the
//	                   identity provider's state (SVIDs and bundles, never
//	                   keys)
//	GET /identities    the identity provider's state alone
//	GET /flows         flow records (connections and L7 requests),
//	                   filtered; ?follow=1 streams them live (JSON lines)
//	GET /explain       which policies select a pod and what a connection
//	                   or request to it would get (see Explain)
//	GET /status        node proxy summary: readiness, workloads with
//	                   identity, mode and SVID expiry, policy problems
//	GET /debug/flows   the most recent connection records
//	GET /debug/requests the most recent L7 request records
//	GET /policy        policy problems of the last compilation
//	GET|PUT /logging   the log level (?level=debug|info|warn|error)
//	GET|PUT /telemetry flow records and traffic metrics (?enabled=on|off)
//	/debug/pprof/      Go profiles
func (p *Proxy) AdminHandler(level *slog.LevelVar) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.ConfigDump())
	})
	mux.HandleFunc("GET /identities", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.IdentityStatus())
	})
	mux.Handle("GET /flows", p.records)
	mux.HandleFunc("GET /explain", func(w http.ResponseWriter, r *http.Request) {
		e, err := p.Explain(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, e)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Status())
	})
	mux.HandleFunc("GET /debug/flows", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Flows())
	})
	mux.HandleFunc("GET /debug/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Requests())
	})
	mux.HandleFunc("GET /policy", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"problems": p.PolicyProblems()})
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		if l := r.URL.Query().Get("level"); l != "" && level != nil {
			if err := level.UnmarshalText([]byte(l)); err != nil {
				http.Error(w, "bad level: "+err.Error(), http.StatusBadRequest)
				return
			}
			p.log.Info("log level changed", "level", level.Level().String())
		}
		if level != nil {
			writeJSON(w, map[string]string{"level": level.Level().String()})
		}
	})
	mux.HandleFunc("/telemetry", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("enabled") {
		case "":
		case "on", "off":
			if r.Method != http.MethodPut {
				http.Error(w, "use PUT to change telemetry", http.StatusMethodNotAllowed)
				return
			}
			p.SetTelemetry(r.URL.Query().Get("enabled") == "on")
		default:
			http.Error(w, "enabled: on or off", http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]bool{"enabled": !p.telemetryOff.Load()})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ReadyHandler answers /healthz/ready with 200 once Ready, 503 before.
func (p *Proxy) ReadyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if why := p.NotReady(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// MetricsHandler serves /metrics.
func (p *Proxy) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
