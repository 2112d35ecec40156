package handoff

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// sockListener is the agent's SOCK_SEQPACKET listening socket.
//
// listenSocket binds under a temporary name, sets mode 0600 and renames the
// socket over path, so the socket is never reachable with looser permissions
// and a stale file from a previous agent is replaced atomically. Close
// removes path only while it still names this listener's socket, so an old
// agent shutting down during an upgrade does not remove the socket of the
// new one.
type sockListener struct {
	ln   *net.UnixListener
	path string
	fi   os.FileInfo
}

// listenSocket creates the agent's socket at path. An existing socket file
// at path (left by an agent that died, or still served by an agent being
// replaced) is replaced; any other kind of file is an error. The parent
// directory is created (0750) if missing.
func listenSocket(path string) (*sockListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("listen %s: exists and is not a socket (%v)", path, fi.Mode().Type())
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp) // left over by a crashed process that had our pid
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*sockListener, error) {
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
	return &sockListener{ln: ln, path: path, fi: fi}, nil
}

// Close stops listening and removes the socket file if it is still ours.
func (l *sockListener) Close() error {
	err := l.ln.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
		if rerr := os.Remove(l.path); rerr != nil && err == nil {
			err = fmt.Errorf("remove %s: %w", l.path, rerr)
		}
	}
	return err
}
