package lab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	pnetns "github.com/palisade-net/palisade/pkg/netns"
)

// ForwardCommand is the lab executable's hidden subcommand that forwards
// TCP connections from 127.0.0.1 of the root network namespace to an
// address inside a lab netns (the API server in the underlay netns). The
// lab starts it as "$(LAB_BIN) forward --netns NETNS --listen-fd 3 --to
// ADDR"; RunForward implements it.
const ForwardCommand = "forward"

// RunForward runs the forward subcommand with its flags:
//
//	--netns NAME     the lab netns to connect from (required)
//	--to HOST:PORT   where to connect inside it (required)
//	--listen-fd N    serve the listening socket inherited as fd N, or
//	--listen ADDR    listen on ADDR, which must be a loopback address
//
// It serves until ctx ends or the netns disappears (checked every half
// second, by name and inode), so that a forwarder whose lab was torn down
// without it exits by itself and never keeps the namespace alive.
func RunForward(ctx context.Context, args []string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fs := flag.NewFlagSet(ForwardCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	netnsName := fs.String("netns", "", "lab netns to connect from")
	to := fs.String("to", "", "HOST:PORT inside the netns")
	fd := fs.Int("listen-fd", -1, "inherited listening socket")
	listen := fs.String("listen", "", "loopback address to listen on")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	if *netnsName == "" || *to == "" || (*fd < 0) == (*listen == "") {
		return errors.New("forward: want --netns NAME --to HOST:PORT and one of --listen-fd N or --listen ADDR")
	}
	if _, _, err := net.SplitHostPort(*to); err != nil {
		return fmt.Errorf("forward: --to: %w", err)
	}
	if *listen != "" {
		if ap, err := netip.ParseAddrPort(*listen); err != nil || !ap.Addr().IsLoopback() {
			return fmt.Errorf("forward: --listen %q: want a loopback HOST:PORT", *listen)
		}
	}
	ino := netnsInode(*netnsName)
	if ino == 0 {
		return fmt.Errorf("forward: netns %s not found", *netnsName)
	}
	var ln net.Listener
	if *fd >= 0 {
		f := os.NewFile(uintptr(*fd), "listener")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("forward: listener fd %d: %w", *fd, err)
		}
		ln = l
	} else {
		var lc net.ListenConfig
		var err error
		if ln, err = lc.Listen(ctx, "tcp", *listen); err != nil {
			return fmt.Errorf("forward: %w", err)
		}
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("forward: refusing to serve %s: not a loopback address", ln.Addr())
	}
	fw := &forwarder{netns: *netnsName, inode: ino, to: *to, log: log, conns: map[net.Conn]struct{}{}}
	return fw.serve(ctx, ln)
}

type forwarder struct {
	netns string
	inode uint64
	to    string
	log   *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (f *forwarder) serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.log.Info("forwarding", "listen", ln.Addr().String(), "netns", f.netns, "to", f.to)
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if netnsInode(f.netns) != f.inode {
					f.log.Info("netns is gone; exiting", "netns", f.netns)
					cancel()
					return
				}
			}
		}
	}()
	go func() {
		<-ctx.Done()
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("forward: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.handle(ctx, c)
		}()
	}
}

// track adds c to the open connections, false once the forwarder stops.
func (f *forwarder) track(ctx context.Context, c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *forwarder) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	if !f.track(ctx, c) {
		return
	}
	defer f.untrack(c)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := f.dial(dctx)
	cancel()
	if err != nil {
		f.log.Warn("dial failed", "from", c.RemoteAddr().String(), "to", f.to, "error", err)
		return
	}
	defer up.Close()
	if !f.track(ctx, up) {
		return
	}
	defer f.untrack(up)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(up, c) }()
	go func() { defer wg.Done(); pipe(c, up) }()
	wg.Wait()
}

// dial connects from inside the netns, opened for this dial only; it
// refuses a netns that is no longer the one the forwarder started with.
func (f *forwarder) dial(ctx context.Context) (net.Conn, error) {
	h, err := pnetns.Open(netnsPath(f.netns))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if ino, err := h.Inode(); err != nil || ino != f.inode {
		return nil, fmt.Errorf("netns %s was replaced", f.netns)
	}
	d := &pnetns.Dialer{Netns: h}
	return d.DialContext(ctx, "tcp", f.to)
}

// pipe copies src to dst, then half-closes dst (at src's EOF) or closes
// both (on an error, so that the other direction ends too).
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	cw, ok := dst.(interface{ CloseWrite() error })
	if err != nil || !ok {
		_ = dst.Close()
		_ = src.Close()
		return
	}
	_ = cw.CloseWrite()
}
