// Package unixsock creates the agent's unix sockets (the node proxy handoff
// socket and the CNI socket) safely across restarts and upgrades.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Listener is a unix listening socket that owns its file: Close removes the
// socket file only while it still names this socket, so an old agent
// shutting down during an upgrade does not remove the new agent's socket.
type Listener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
}

// Listen creates a socket of network "unix" or "unixpacket" at path. It
// binds under a temporary name, sets mode 0600 and renames the socket over
// path, so it is never reachable with looser permissions and a stale socket
// (left by an agent that died, or still served by one being replaced) is
// replaced atomically. Any other kind of file at path is an error. The parent
// directory is created (0750) if missing.
func Listen(network, path string) (*Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("listen %s: exists and is not a socket (%v)", path, fi.Mode().Type())
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp) // left over by a crashed process that had our pid
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: tmp, Net: network})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(tmp)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &Listener{UnixListener: ln, path: path, fi: fi}, nil
}

// Addr returns the socket's final path (not the temporary bind name).
func (l *Listener) Addr() net.Addr {
	return &net.UnixAddr{Name: l.path, Net: l.UnixListener.Addr().Network()}
}

// Close stops listening and removes the socket file if it is still ours.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
		if rerr := os.Remove(l.path); rerr != nil && err == nil {
			err = fmt.Errorf("remove %s: %w", l.path, rerr)
		}
	}
	return err
}

// Path returns the socket file's path.
func (l *Listener) Path() string { return l.path }
