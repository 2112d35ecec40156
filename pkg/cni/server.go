package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-net/palisade/internal/unixsock"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Handler is the agent logic behind the CNI API.
type Handler interface {
	// PodAdded must finish enrollment before returning (the pod's app starts
	// after ADD returns). Its error text is reported to the runtime.
	PodAdded(ctx context.Context, ev PodEvent) error
	// PodDeleted releases what PodAdded set up. It may be called for pods the
	// agent never saw, and more than once.
	PodDeleted(ctx context.Context, ev PodEvent) error
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Logger receives request logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxRequestBytes limits request bodies; zero means
	// DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// ShutdownTimeout is how long Serve lets in-flight requests finish after
	// its context ends; zero means 10s.
	ShutdownTimeout time.Duration
	// Debug serves the paths under PathDebug (the agent's diagnostics,
	// such as /debug/drops); nil answers them 404.
	Debug http.Handler
}

// Server serves the agent's CNI API (see the package documentation). It is
// an http.Handler; Serve and ListenAndServe run it on a unix socket.
type Server struct {
	h        Handler
	debug    http.Handler
	log      *slog.Logger
	maxBytes int64
	shutdown time.Duration
	ready    atomic.Bool

	mu        sync.Mutex
	stopServe context.CancelFunc // set by Start
	served    chan error         // Start's Serve result
}

// NewServer returns a Server calling h. It reports not ready until
// SetReady(true).
func NewServer(h Handler, opts ServerOptions) *Server {
	s := &Server{h: h, debug: opts.Debug, log: opts.Logger, maxBytes: opts.MaxRequestBytes, shutdown: opts.ShutdownTimeout}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "cni-server")
	if s.maxBytes <= 0 {
		s.maxBytes = DefaultMaxRequestBytes
	}
	if s.shutdown <= 0 {
		s.shutdown = 10 * time.Second
	}
	return s
}

// SetReady sets what GET /readyz reports.
func (s *Server) SetReady(ready bool) {
	if s.ready.Swap(ready) != ready {
		s.log.Info("readiness changed", "ready", ready)
	}
}

// Listen creates a Server for h logging to log (nil means slog.Default()),
// listens on path (see ListenUnix) and serves in the background until Close.
func Listen(path string, h Handler, log *slog.Logger) (*Server, error) {
	s := NewServer(h, ServerOptions{Logger: log})
	if err := s.Start(path); err != nil {
		return nil, err
	}
	return s, nil
}

// Start listens on path (see ListenUnix) and serves in the background until
// Close.
func (s *Server) Start(path string) error {
	ln, err := ListenUnix(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopServe != nil {
		ln.Close()
		return fmt.Errorf("cni server: start on %s: already started or closed", path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	s.stopServe, s.served = cancel, served
	go func() { served <- s.Serve(ctx, ln) }()
	return nil
}

// Close stops what Start began: the socket stops accepting, in-flight
// requests get up to ShutdownTimeout to finish, and the socket file is
// removed. It returns Serve's error, if any.
func (s *Server) Close() error {
	s.mu.Lock()
	stop, served := s.stopServe, s.served
	s.stopServe, s.served = func() {}, nil // a later Start fails
	s.mu.Unlock()
	if served == nil {
		return nil
	}
	stop()
	return <-served
}

// ListenAndServe listens on path (see ListenUnix) and serves until ctx is
// done.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	ln, err := ListenUnix(path)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve serves the API on ln until ctx is done, then stops accepting, lets
// in-flight requests finish for up to ShutdownTimeout and closes ln. It
// returns nil when ctx ended it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("serving CNI API", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		ln.Close()
		return fmt.Errorf("cni server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdown)
	defer cancel()
	err := hs.Shutdown(sctx)
	if err != nil {
		hs.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("cni server: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("cni server: shutdown: %w", err)
	}
	return nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving request", "path", r.URL.Path, "panic", p)
			writeError(w, http.StatusInternalServerError, "internal error in palisade agent")
		}
	}()
	switch r.URL.Path {
	case PathAdd:
		s.podEvent(w, r, true)
	case PathDel:
		s.podEvent(w, r, false)
	case PathReadyz:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		if !s.ready.Load() {
			writeError(w, http.StatusServiceUnavailable, "palisade agent not ready")
			return
		}
		writeJSON(w, http.StatusOK, statusBody{Status: "ready"})
	default:
		if s.debug != nil && strings.HasPrefix(r.URL.Path, PathDebug) {
			s.debug.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %q", r.URL.Path))
	}
}

func (s *Server) podEvent(w http.ResponseWriter, r *http.Request, add bool) {
	op := "del"
	if add {
		op = "add"
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.log.Warn("CNI request too large", "op", op, "limit", mbe.Limit)
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Sprintf("read request body: %v", err))
		return
	}
	var ev PodEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		s.log.Warn("malformed CNI request", "op", op, "err", err)
		writeError(w, http.StatusBadRequest, fmt.Sprintf("malformed %s request: %v", op, err))
		return
	}
	if err := ev.validate(add); err != nil {
		s.log.Warn("invalid CNI request", "op", op, "err", err)
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid %s request: %v", op, err))
		return
	}
	log := s.log.With("op", op, "pod", ev.Key(), "uid", ev.UID, "container", ev.ContainerID)
	start := time.Now()
	if add {
		log.Info("pod sandbox added", "netns", ev.Netns, "ips", ev.IPs)
		err = s.h.PodAdded(r.Context(), ev)
	} else {
		log.Info("pod sandbox deleted", "netns", ev.Netns)
		err = s.h.PodDeleted(r.Context(), ev)
	}
	if err != nil {
		log.Error("CNI request failed", "err", err, "took", time.Since(start))
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	log.Info("CNI request done", "took", time.Since(start))
	writeJSON(w, http.StatusOK, statusBody{Status: "ok"})
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method not allowed; use "+allow)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// ListenUnix creates the agent's CNI socket at path (see unixsock.Listen:
// mode 0600, atomic replacement of a stale socket, removal on Close only
// while the file is still this socket).
func ListenUnix(path string) (net.Listener, error) {
	ln, err := unixsock.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cni: %w", err)
	}
	return ln, nil
}
