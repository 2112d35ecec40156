// Package netns runs code inside another network namespace and creates
// sockets there.
//
// Linux network namespaces belong to threads, not processes. A goroutine that
// wants to act inside a pod's namespace locks its OS thread, switches the
// thread with setns(2), does its work and switches back. If switching back
// fails, the thread is left locked so that the Go runtime discards it instead
// of returning a thread in a foreign namespace to the pool.
//
// Sockets keep the namespace they were created in, so a listener or a
// connection created here can be used from any goroutine afterwards.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Handle is an open network namespace. The zero value is not usable; obtain
// one with Open or FromFd.
type Handle struct {
	f *os.File
}

// Open opens the network namespace at path, for example /var/run/netns/NAME or
// /proc/PID/ns/net.
func Open(path string) (*Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	if err := checkNetns(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return &Handle{f: f}, nil
}

// FromFile wraps an already open namespace file, for example one received over
// a unix socket. The Handle takes ownership of f.
func FromFile(f *os.File) (*Handle, error) {
	if err := checkNetns(f); err != nil {
		f.Close()
		return nil, err
	}
	return &Handle{f: f}, nil
}

func checkNetns(f *os.File) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("not a namespace file (fs type %#x)", st.Type)
	}
	return nil
}

// Fd returns the file descriptor of the namespace.
func (h *Handle) Fd() int { return int(h.f.Fd()) }

// File returns the underlying file, for passing it to another process.
func (h *Handle) File() *os.File { return h.f }

// Inode returns the namespace's inode number, which identifies it uniquely on
// this host for as long as it exists.
func (h *Handle) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(h.Fd(), &st); err != nil {
		return 0, fmt.Errorf("stat netns: %w", err)
	}
	return st.Ino, nil
}

// Close releases the handle. The namespace itself lives on while anything
// else refers to it.
func (h *Handle) Close() error { return h.f.Close() }

// Do runs fn with the calling goroutine's thread inside the namespace.
// fn must not start goroutines that expect to run in the namespace.
func (h *Handle) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(h.Fd(), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime will destroy it when this
		// goroutine exits instead of reusing a thread in the wrong netns.
		return fmt.Errorf("restore netns: %w (fn: %v)", err, ferr)
	}
	runtime.UnlockOSThread()
	return ferr
}

// SocketOptions are applied to every socket created by Listen and Dial.
type SocketOptions struct {
	// Mark is set with SO_MARK when non-zero.
	Mark uint32
	// ReusePort sets SO_REUSEPORT on listeners, so that an old and a new
	// process can serve the same address during an upgrade.
	ReusePort bool
	// Transparent sets IP_TRANSPARENT, allowing a dialer to bind a source
	// address that is not local.
	Transparent bool
}

func (o SocketOptions) control(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if o.Mark != 0 {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); serr != nil {
				serr = fmt.Errorf("SO_MARK: %w", serr)
				return
			}
		}
		if o.ReusePort {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEPORT: %w", serr)
				return
			}
		}
		if o.Transparent {
			level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
			if network == "tcp6" {
				level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
			}
			if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr != nil {
				serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Listen creates a TCP listener inside the namespace. A nil Handle means the
// current namespace.
func Listen(ctx context.Context, h *Handle, address string, o SocketOptions) (net.Listener, error) {
	lc := net.ListenConfig{Control: o.control}
	var ln net.Listener
	listen := func() error {
		var err error
		ln, err = lc.Listen(ctx, "tcp", address)
		return err
	}
	var err error
	if h == nil {
		err = listen()
	} else {
		err = h.Do(listen)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", address, err)
	}
	return ln, nil
}

// Dialer creates TCP connections inside a namespace.
type Dialer struct {
	// Netns is the namespace to dial from; nil means the current one.
	Netns *Handle
	// Options are applied to each socket.
	Options SocketOptions
	// LocalAddr, when set, is bound before connecting.
	LocalAddr *net.TCPAddr
}

// DialContext connects to address from inside the namespace. The whole dial
// runs on a thread switched into the namespace: the socket is created there
// and the connect's route lookup happens there. The thread is held only while
// the connect is in flight.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	nd := net.Dialer{Control: d.Options.control}
	if d.LocalAddr != nil {
		nd.LocalAddr = d.LocalAddr
	}
	if d.Netns == nil {
		return nd.DialContext(ctx, network, address)
	}
	var (
		c   net.Conn
		err error
	)
	derr := d.Netns.Do(func() error {
		c, err = nd.DialContext(ctx, network, address)
		return nil
	})
	if derr != nil {
		return nil, derr
	}
	return c, err
}
