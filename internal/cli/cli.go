// Package cli holds what Palisade's commands share: logging setup, flags that
// also read the environment, and signal handling.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Logging configures slog from --log-level and --log-format.
type Logging struct {
	Level  slog.LevelVar
	Format string
}

// Register adds the logging flags to fs.
func (l *Logging) Register(fs *flag.FlagSet, prefix string) {
	fs.TextVar(&l.Level, "log-level", &l.Level, "log level: debug, info, warn, error (env "+prefix+"LOG_LEVEL)")
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json (env "+prefix+"LOG_FORMAT)")
}

// Logger builds the logger, writing to w.
func (l *Logging) Logger(w io.Writer, component string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: &l.Level}
	var h slog.Handler
	if l.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h).With("component", component)
}

// EnvDefaults sets every flag not given on the command line from the
// environment variable PREFIX + FLAG_NAME (upper case, dashes as
// underscores), so each flag can also be configured by environment.
func EnvDefaults(fs *flag.FlagSet, prefix string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := prefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

// SignalContext returns a context cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// StringList is a repeatable string flag that also accepts comma lists.
type StringList []string

// String implements flag.Value.
func (s *StringList) String() string { return strings.Join(*s, ",") }

// Set implements flag.Value.
func (s *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// Common holds what the agent and the node proxy both need: the node name,
// the standalone cluster source and logging.
type Common struct {
	Node         string
	ClusterPaths StringList
	// Kubeconfig selects Kubernetes mode with that client configuration;
	// with neither it nor ClusterPaths the in-cluster configuration is used.
	Kubeconfig string
	Logging    Logging
}

// Parse registers the common flags (--node, --cluster, --kubeconfig, --log-level,
// --log-format) on fs, parses args, then fills unset flags from PREFIX_*
// environment variables and checks the common ones. It returns ok=false
// with a nil error when --help was asked for.
func (c *Common) Parse(fs *flag.FlagSet, args []string, prefix string) (ok bool, err error) {
	fs.StringVar(&c.Node, "node", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	fs.Var(&c.ClusterPaths, "cluster", "YAML file or directory of cluster objects (standalone mode; repeatable)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server (Kubernetes mode); without it and --cluster, the in-cluster configuration")
	c.Logging.Register(fs, prefix)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, nil
		}
		return false, err
	}
	if err := EnvDefaults(fs, prefix); err != nil {
		return false, err
	}
	if c.Node == "" {
		return false, errors.New("--node is required")
	}
	if len(c.ClusterPaths) > 0 && c.Kubeconfig != "" {
		return false, errors.New("--cluster and --kubeconfig exclude each other")
	}
	if len(c.ClusterPaths) == 0 && c.Kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return false, errors.New("no cluster source: give --cluster (standalone mode) or --kubeconfig, or run in a pod (in-cluster configuration)")
	}
	return true, nil
}

// NewFlagSet returns a flag set whose --help prints usage, then the flags.
func NewFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs
}
